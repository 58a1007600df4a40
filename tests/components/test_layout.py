"""Residual layouts and hybrid (per-layer) stacks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec, ModelSpec, parse

BASE: dict[str, Any] = dict(
    vocab_size=40, d_model=32, n_heads=4, n_layers=2, max_len=32, position="rope"
)
X = torch.randint(0, 40, (2, 11))


def _copy_into(dst: torch.nn.Module, mapping: dict[str, str], src: torch.nn.Module) -> None:
    """Load ``src``'s weights into ``dst``, renaming submodule prefixes by ``mapping``."""
    state = dst.state_dict()
    for name, value in src.state_dict().items():
        for old, new in mapping.items():
            if f".{old}." in name:
                name = name.replace(f".{old}.", f".{new}.")
                break
        if name in state:
            state[name] = value
    dst.load_state_dict(state)


@pytest.mark.parametrize("layout", ["parallel", "macaron", "sandwich"])
def test_without_an_ffn_every_pre_norm_layout_is_pre(layout: str) -> None:
    pre = build_model({**BASE, "ffn": "none"}).eval()
    other = build_model({**BASE, "ffn": "none", "norm_placement": layout}).eval()
    _copy_into(other, {"norm_mixer": "norm1", "norm": "norm1"}, pre)
    assert other.num_params() == pre.num_params()
    with torch.no_grad():
        torch.testing.assert_close(other(X), pre(X), atol=0, rtol=0)


def _zero_ffn(ffn: torch.nn.Module) -> None:
    for p in ffn.down.parameters():
        torch.nn.init.zeros_(p)


def test_macaron_with_a_silent_first_half_step_is_pre_norm() -> None:
    mac = build_model({**BASE, "norm_placement": {"name": "macaron", "ffn_weight": 1.0}}).eval()
    pre = build_model(BASE).eval()
    for block in mac.blocks:
        _zero_ffn(block.ffn)
    _copy_into(pre, {"norm_mixer": "norm1", "norm_ffn2": "norm2", "ffn2": "ffn"}, mac)
    with torch.no_grad():
        torch.testing.assert_close(mac(X), pre(X), atol=1e-6, rtol=1e-6)


def test_sandwich_runs_n_ffns_on_each_side() -> None:
    model = build_model({**BASE, "norm_placement": {"name": "sandwich", "n_ffn": 2}}).eval()
    block = model.blocks[0]
    assert len(block.extra_ffns) == 3 and len(block.ffn_norms) == 4
    pre = build_model(BASE).eval()
    for b in model.blocks:  # silence all but the last FFN: then it is the pre-norm block
        for f in [b.ffn, *b.extra_ffns[:2]]:
            _zero_ffn(f)
    _copy_into(pre, {"norm_mixer": "norm1", "ffn_norms.3": "norm2", "extra_ffns.2": "ffn"}, model)
    with torch.no_grad():
        torch.testing.assert_close(model(X), pre(X), atol=1e-6, rtol=1e-6)


def test_sandwich_norm_bounds_each_branch() -> None:
    norm = {"name": "layernorm", "eps": 1e-12}  # so the norm is exactly scale-invariant
    model = build_model({**BASE, "norm": norm, "norm_placement": "sandwich_norm"}).eval()
    with torch.no_grad():
        before = model(X)
        for block in model.blocks:  # the output norm removes any scale of the branch
            block.mixer.out.weight.mul_(50.0)
            block.mixer.out.bias.mul_(50.0)
        after = model(X)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_post_norm_outputs_are_normalised() -> None:
    model = build_model({**BASE, "norm_placement": "post", "head": "token_regress", "n_outputs": 1})
    out = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: out.setdefault("h", o))
    model(X)
    h = out["h"]
    torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        h.var(-1, unbiased=False), torch.ones(h.shape[:-1]), atol=1e-3, rtol=0
    )
    assert isinstance(model.norm, torch.nn.Identity)


def test_every_layout_learns() -> None:
    """(Causality, padding and gradients to every parameter: the layout contract checks.)"""
    for layout in registry.components("layout"):
        torch.manual_seed(0)
        model = build_model({**BASE, "norm_placement": layout})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        y = torch.randint(0, 40, X.shape)
        losses = []
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(X).reshape(-1, 40), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (layout, losses[0], losses[-1])


# --------------------------------------------------------------------------- hybrid stacks
def test_per_layer_overrides_build_a_hybrid_stack() -> None:
    spec = parse(
        ModelSpec,
        {
            **BASE,
            "n_layers": 4,
            "attention": {"name": "sliding_window", "window": 4},
            "layers": {1: {"attention": "softmax"}, 3: {"attention": "softmax", "ffn": "glu"}},
        },
    )
    model = build_model(spec)
    names = [type(b.mixer).__name__ for b in model.blocks]
    assert names[1] == names[3] == "SoftmaxAttention" and names[0] == names[2] != names[1]
    assert type(model.blocks[3].ffn).__name__ != type(model.blocks[1].ffn).__name__


def test_hybrid_stack_from_the_command_line_round_trips(tmp_path: Any) -> None:
    spec = ExperimentSpec.from_dict(
        {"model": {"n_layers": 3, "attention": "sliding_window"}}
    ).with_overrides(["model.layers.2.attention=softmax", "model.layers.0.norm_placement=post"])
    assert spec.model.layer(2).attention.name == "softmax"
    assert spec.model.layer(0).norm_placement.name == "post"
    assert spec.model.layer(1).attention.name == "sliding_window"
    path = tmp_path / "s.yaml"
    spec.save(path)
    assert ExperimentSpec.from_yaml(path) == spec
    assert "attention: null" not in path.read_text() and "ffn: null" not in path.read_text()


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [
        ({5: {"attention": "softmax"}}, "layers.5"),
        ({1: {"attention": "linformer"}}, "layers.1.attention='linformer'"),
        ({0: {"attention": "sofmax"}}, "softmax"),
        ({0: {"atention": "softmax"}}, "attention"),
    ],
)
def test_bad_per_layer_overrides_name_the_layer(layers: dict, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(ModelSpec, {**BASE, "layers": layers})
    assert fragment in str(info.value), str(info.value)
