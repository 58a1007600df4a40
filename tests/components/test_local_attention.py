"""Local attention: sliding_window (blocked == masked, window >= T == softmax) and FIT's
local_global (causal by construction, padding invariant, information crosses groups)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import anyformer.components.attention.local  # noqa: F401 - registers the local variants
from anyformer.components.base import Context
from anyformer.model.transformer import build_model
from anyformer.registry import Dims, get

POSITIONS = ["none", "rope", "alibi", "t5_bias"]


def model(
    attention: dict, kind: str = "decoder", position: str = "none", **extra: object
) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = dict(kind=kind, vocab_size=32, d_model=32, n_heads=4, n_layers=2, max_len=64)
    return build_model(dict(spec, attention=attention, position=position, **extra)).eval()


def scale_up(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give a module O(1)-scale weights, so tolerances and 'changed' checks mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return module


def layer(net: torch.nn.Module) -> torch.nn.Module:
    return scale_up(net.blocks[0].mixer)


def context(net: torch.nn.Module, t: int, padding: torch.Tensor | None = None) -> Context:
    return Context(torch.arange(t), net.causal, net.position, padding)


# --------------------------------------------------------------------------- sliding_window
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_blocked_equals_masked_reference(kind: str, position: str) -> None:
    net = model({"name": "sliding_window", "window": 4}, kind, position, n_outputs=2)
    mix = layer(net)
    x = torch.randn(2, 23, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, 17:] = False
    ctx = context(net, 23, mask)
    for window in (1, 4, 7, 30):
        mix.params = mix.params.model_copy(update={"window": window, "impl": "fast"})
        blocked = mix(x, ctx)
        mix.params = mix.params.model_copy(update={"impl": "reference"})
        masked = mix(x, ctx)
        assert blocked.abs().mean() > 0.1
        torch.testing.assert_close(blocked[mask], masked[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_window_covering_the_sequence_is_softmax_attention(kind: str, impl: str) -> None:
    spec = dict(kind=kind, d_model=32, n_heads=4, max_len=64, n_outputs=2)
    softmax = model("softmax", position="rope", **spec)
    local = model({"name": "sliding_window", "window": 20, "impl": impl}, position="rope", **spec)
    a, b = layer(softmax), local.blocks[0].mixer
    b.load_state_dict(a.state_dict())  # the same weights under the same names
    x = torch.randn(2, 20, 32, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 14:] = False
    for padding in (None, mask):
        expected = a(x, context(softmax, 20, padding))
        torch.testing.assert_close(
            b(x, context(local, 20, padding)), expected, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_each_query_sees_exactly_its_window(kind: str) -> None:
    window, t, s = 3, 16, 7
    net = model({"name": "sliding_window", "window": window}, kind, n_outputs=2)
    mix = layer(net)
    x = torch.randn(1, t, 32, generator=torch.Generator().manual_seed(4))
    changed = x.clone()
    changed[:, s] += 1.0
    diff = (mix(x, context(net, t)) - mix(changed, context(net, t))).abs().amax(-1)[0]
    offset = torch.arange(t) - s  # query i minus the perturbed key s
    inside = (offset >= 0) & (offset < window) if kind == "decoder" else offset.abs() < window
    assert (diff[inside] > 1e-4).all()
    assert (diff[~inside] == 0).all()


def test_window_one_is_the_value_of_the_token_itself() -> None:
    net = model({"name": "sliding_window", "window": 1})
    mix = layer(net)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(5))
    v = mix.qkv(x)[..., 64:]
    torch.testing.assert_close(mix(x, context(net, 9)), mix.out(v))


# --------------------------------------------------------------------------- both variants
VARIANTS = [
    {"name": "sliding_window", "window": 3},
    {"name": "local_global", "group_size": 4, "n_latents": 2},
]


@pytest.mark.parametrize("attention", VARIANTS, ids=lambda a: a["name"])
def test_decoder_is_causal_by_perturbation(attention: dict) -> None:
    net = model(attention)
    for block in net.blocks:
        scale_up(block.mixer)
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 32, (2, 19), generator=gen)
    for s in (0, 5, 8, 13):  # group starts, middles and ends
        changed = tokens.clone()
        changed[:, s] = (changed[:, s] + 1) % 32
        a, b = net(tokens), net(changed)
        torch.testing.assert_close(a[:, :s], b[:, :s], atol=0, rtol=0)
        assert (a[:, s] - b[:, s]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", VARIANTS, ids=lambda a: a["name"])
def test_encoder_padding_invariance(attention: dict) -> None:
    net = model(attention, "encoder", head="token_classify", n_outputs=3)
    for block in net.blocks:
        scale_up(block.mixer)
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 32, (2, 10), generator=gen)
    padded = torch.cat((tokens, torch.randint(0, 32, (2, 9), generator=gen)), dim=1)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[:, 10:] = False  # the last real group is partial and two groups are all padding
    torch.testing.assert_close(net(padded, mask)[:, :10], net(tokens), atol=1e-5, rtol=1e-5)


def test_local_global_carries_information_across_groups_through_latents() -> None:
    for kind in ("decoder", "encoder"):
        net = model({"name": "local_global", "group_size": 4, "n_latents": 2}, kind, n_outputs=2)
        mix = layer(net)
        x = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(8))
        changed = x.clone()
        changed[:, 1] += 1.0  # a token of group 0
        diff = (mix(x, context(net, 16)) - mix(changed, context(net, 16))).abs().amax(-1)[0]
        assert (diff[4:] > 1e-5).all()  # one layer reaches every later group


def test_local_global_latents_are_rejected_with_rotary() -> None:
    from anyformer.errors import SpecError

    with pytest.raises(SpecError, match="does not support"):
        build_model(dict(vocab_size=32, d_model=32, attention="local_global", position="rope"))
    assert get("attention", "sliding_window").caps.complexity == "O(n w)"


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("attention", VARIANTS, ids=lambda a: a["name"])
def test_gradients_reach_every_parameter(attention: dict) -> None:
    net = model(attention).train()
    tokens = torch.randint(0, 32, (2, 14), generator=torch.Generator().manual_seed(9))
    net(tokens).logsumexp(-1).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention", VARIANTS, ids=lambda a: a["name"])
def test_tiny_overfit(attention: dict) -> None:
    net = model(attention).train()
    tokens = torch.randint(0, 32, (8, 17), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(tokens[:, :-1]).reshape(-1, 32), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_flops_per_token_grow_with_window_not_length() -> None:
    entry = get("attention", "sliding_window")
    mix = entry.build(entry.make_params({"window": 16}), Dims(32, 4, 4096, causal=True))
    assert mix.flops_per_token(1024) == mix.flops_per_token(4096)
