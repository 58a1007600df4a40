"""SmoothQuant re-parameterisation: the smoothed float model equals the original (1e-5),
folds go into the norms that feed only linear layers, and smoothing an outlier channel
lowers the int8 error."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import anyformer
from anyformer.compress.qlinear import Int8Linear
from anyformer.compress.smooth import FOLD_TOLERANCE, smooth_model, smoothing_factor
from anyformer.compress.stats import collect

BASE = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_len=32, init_std=0.2)


def _smoothed(model: nn.Module, alpha: float = 0.5) -> tuple[Any, torch.Tensor, torch.Tensor]:
    model.eval()
    batches = [torch.randint(0, 40, (3, 16)) for _ in range(2)]
    with torch.no_grad():
        before = model(batches[0]).clone()
    stats = collect(model, model, batches)
    result = smooth_model(model, stats, alpha, lambda: model(batches[0]))
    with torch.no_grad():
        after = model(batches[0])
    return result, before, after


@pytest.mark.parametrize(
    ("overrides", "folded"),
    [
        ({}, 4),  # quickstart's pre-norm layernorm: q/k/v and the FFN's up fold
        (dict(norm="rmsnorm", ffn={"name": "glu", "variant": "swiglu"}), 4),
        (dict(attention="gated"), 2),  # the gate reads the norm's output: q/k/v cannot fold
        (dict(norm_placement="post"), 0),  # a post-norm's output is also the residual
    ],
    ids=["layernorm", "rmsnorm-glu", "gated", "post-norm"],
)
def test_smoothed_float_model_equals_the_original(overrides: dict, folded: int) -> None:
    model = anyformer.build_model({**BASE, **overrides})
    result, before, after = _smoothed(model)
    assert len(result.folded) == folded
    assert float((after - before).abs().max() / before.abs().max()) <= 1e-5
    assert result.max_diff <= FOLD_TOLERANCE
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert set(result.unfolded) | {n for v in result.folded.values() for n in v} == set(linears)
    result.remove_hooks()  # the float model without its hooks is no longer equivalent
    with torch.no_grad():
        changed = model(torch.randint(0, 40, (3, 16)))
    assert changed.shape == before.shape


def test_smoothing_factor_balances_activation_and_weight_ranges() -> None:
    act = torch.tensor([8.0, 1.0, 0.0])
    w = torch.tensor([[0.5, 2.0, 1.0], [-1.0, 0.5, 1.0]])
    s = smoothing_factor(act, [w], 0.5)
    assert torch.allclose(s, torch.tensor([(8.0 / 1.0) ** 0.5, (1.0 / 2.0) ** 0.5, 1.0]))
    # after smoothing, channel j's activation range and weight range are equal (alpha 0.5)
    assert torch.allclose((act / s)[:2], (w.abs().amax(0) * s)[:2])


def test_smoothing_an_outlier_channel_lowers_int8_error() -> None:
    """A layer whose input has one channel 60x larger (the outliers of LLM.int8 and
    SmoothQuant): per-token int8 loses the small channels; smoothing moves the range into
    the weights and the error drops."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(256, 64)
    x[:, 5] *= 60
    ref = lin(x).detach()
    plain = Int8Linear.from_linear(lin)(x)
    s = smoothing_factor(x.abs().amax(0), [lin.weight], 0.5)
    smoothed = nn.Linear(64, 48)
    with torch.no_grad():
        smoothed.weight.copy_(lin.weight * s)
        smoothed.bias.copy_(lin.bias)
    assert torch.allclose(smoothed(x / s), ref, rtol=1e-5, atol=1e-5)  # exact in float
    good = Int8Linear.from_linear(smoothed, smooth=1.0 / s)(x)
    err_plain = float((plain - ref).norm() / ref.norm())
    err_smooth = float((good - ref).norm() / ref.norm())
    assert err_smooth < 0.5 * err_plain
