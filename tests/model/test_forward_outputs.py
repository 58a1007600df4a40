"""A pure forward: everything a pass computes besides its outputs (exits, loss-window
iterates, blocks executed) comes back in its ``ModelOutput``; no module keeps anything
of a call, so forwards may interleave."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.model.output import ModelOutput
from anyformer.model.transformer import Transformer, build_model

V, SEP = 32, 2

#: Parameters that make a schedule compute its extras (every other schedule: defaults).
EXTRAS: dict[str, dict[str, Any]] = {
    "looped": {"loops": 3, "loss_window": 2},
    "algoformer": {"loops": 3, "loss_window": 2},
    "early_exit": {"threshold": 0.5},
}


def _model(depth: str) -> Transformer:
    torch.manual_seed(0)
    return build_model(
        dict(vocab_size=V, d_model=32, n_heads=4, n_layers=3, max_len=64,
             depth={"name": depth, **EXTRAS.get(depth, {})})
    )  # fmt: skip


def _tokens(seed: int, b: int = 3, t: int = 10) -> torch.Tensor:
    x = torch.randint(4, V, (b, t), generator=torch.Generator().manual_seed(seed))
    x[:, 3] = SEP  # continuous_thought places its thoughts after the first SEP
    return x


def _state(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's attributes: the objects themselves, copies of containers and of
    buffer values (an in-place change counts)."""
    snap = {}
    for name, module in model.named_modules():
        attrs: dict[str, Any] = {}
        for key, value in vars(module).items():
            if isinstance(value, (list, dict, set)):
                value = (value, type(value)(value))  # identity and contents
            attrs[key] = value
        attrs["buffer values"] = {k: b.clone() for k, b in module.named_buffers(recurse=False)}
        snap[name] = attrs
    return snap


def _same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    changed = []
    for name in a.keys() | b.keys():
        x, y = a.get(name, {}), b.get(name, {})
        for key in x.keys() | y.keys():
            if key not in x or key not in y:
                changed.append(f"{name}.{key} added or removed")
            elif key == "buffer values":
                if x[key].keys() != y[key].keys() or not all(
                    torch.equal(x[key][k], y[key][k]) for k in x[key]
                ):
                    changed.append(f"{name} buffers")
            elif isinstance(x[key], tuple) and len(x[key]) == 2 and isinstance(y[key], tuple):
                if x[key][0] is not y[key][0] or x[key][1] != y[key][1]:
                    changed.append(f"{name}.{key}")
            elif x[key] is not y[key]:
                changed.append(f"{name}.{key}")
    return changed


@pytest.mark.parametrize("depth", registry.components("depth"))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_forward_changes_no_attribute_of_any_module(depth: str, mode: str) -> None:
    model = _model(depth).train(mode == "train")
    before = _state(model)
    out = model(_tokens(0), return_outputs=True)
    assert isinstance(out, ModelOutput)
    model.training_outputs(_tokens(1))
    assert _same(before, _state(model)) == []


@pytest.mark.parametrize("depth", ["early_exit", "looped", "algoformer"])
def test_interleaved_training_forwards_keep_their_own_extras(depth: str) -> None:
    model = _model(depth).train()
    a, b = _tokens(0), _tokens(1)
    alone_a = model(a, return_outputs=True)
    assert len(alone_a.extra_logits) == (2 if depth == "early_exit" else 1)
    loss = sum(w * F.cross_entropy(o.flatten(0, 1), a.flatten()) for w, o in alone_a.weighted())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    first = model(a, return_outputs=True)
    second = model(b, return_outputs=True)  # runs between a's forward and a's backward
    for got, want in zip(first.trained_outputs, alone_a.trained_outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(second.extra_logits[0], first.extra_logits[0])
    loss = sum(w * F.cross_entropy(o.flatten(0, 1), a.flatten()) for w, o in first.weighted())
    for got, want in zip(torch.autograd.grad(loss, list(model.parameters())), grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_interleaved_early_exit_evaluations_keep_their_own_depths() -> None:
    model = _model("early_exit").eval()
    a, b = _tokens(0), _tokens(5)
    mask = torch.ones_like(b, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.no_grad():
        first_exit = model.train()(a, return_outputs=True).extra_logits[0]
    model.depth.threshold = float(model.depth.confidence(first_exit).median())
    model.eval()
    alone_a, alone_b = model(a, return_outputs=True), model(b, mask, return_outputs=True)
    first, second = model(a, return_outputs=True), model(b, mask, return_outputs=True)
    assert not torch.equal(alone_a.blocks_executed[:, :6], alone_b.blocks_executed[:, :6])
    for got, want in ((first, alone_a), (second, alone_b)):
        assert torch.equal(got.blocks_executed, want.blocks_executed)
        assert torch.equal(got.logits, want.logits)
    real = second.blocks_executed[mask].float().mean()  # the mean counts real tokens only
    assert float(second.mean_blocks_executed) == pytest.approx(float(real))
    assert float(first.mean_blocks_executed) == pytest.approx(
        float(first.blocks_executed.float().mean())
    )


def test_plain_calls_return_the_logits_of_the_output_object() -> None:
    for depth in ("stack", "early_exit"):
        model = _model(depth).train()
        x = _tokens(0)
        out = model(x, return_outputs=True)
        assert torch.equal(model(x), out.logits)
        pairs = model.training_outputs(x)
        assert [w for w, _ in pairs] == [w for w, _ in out.weighted()]
        for (_, got), want in zip(pairs, out.trained_outputs, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
