"""Quantized linear layers: int8 products within a stated bound of float32, exact integer
accumulation, int4 packing, activation statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from anyformer.compress.qlinear import (
    Int4WeightLinear,
    Int8Linear,
    dequantize_int4,
    fbgemm_available,
    int8_matmul,
    quantize_groups_int4,
    quantize_per_channel,
)
from anyformer.compress.stats import InputStats


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        (lambda lin, x: Int8Linear.from_linear(lin), 1e-2),
        (
            lambda lin, x: Int8Linear.from_linear(lin, input_scale=float(x.abs().max()) / 127),
            1.5e-2,
        ),
        (lambda lin, x: Int4WeightLinear.from_linear(lin, 32), 0.1),
    ],
    ids=["int8-dynamic", "int8-static", "int4-weight"],
)
def test_quantized_linear_is_within_its_bound_of_float(make, bound: float) -> None:
    """Relative (Frobenius) error on Gaussian data: int8 dynamic <= 1e-2, static
    (calibrated per-tensor scale) <= 1.5e-2, int4 groups of 32 <= 0.1."""
    for seed in range(3):
        torch.manual_seed(seed)
        lin = nn.Linear(128, 96)
        x = torch.randn(4, 16, 128)
        y = make(lin, x)(x)
        assert y.shape == (4, 16, 96)
        assert _rel(y, lin(x).detach()) <= bound


def test_int8_product_accumulates_exactly_in_int32() -> None:
    a = torch.randint(-127, 128, (7, 33), dtype=torch.int8)
    w = torch.randint(-127, 128, (5, 33), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, w), (a.long() @ w.long().t()).float())


def test_per_channel_weights_round_to_the_nearest_step() -> None:
    w = torch.randn(6, 10)
    w[2] = 0.0
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.all((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7)
    assert float(s[2]) == 1.0 and not q[2].any()


def test_int4_packing_round_trips_values_on_the_grid() -> None:
    """Weights already on the int4 grid (k * scale, |k| <= 7) come back exactly, with
    an odd number of input channels and a last partial group."""
    scale = torch.tensor([[0.5, 0.25, 2.0]])
    k = torch.randint(-7, 8, (1, 37)).float()
    k[0, 0], k[0, 16], k[0, 32] = 7, 7, 7  # each group's max-abs sets its scale
    w = k * scale.repeat_interleave(16, dim=1)[:, :37]
    packed, s = quantize_groups_int4(w, 16)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 19)
    assert torch.equal(dequantize_int4(packed, s, 37, 16), w)


def test_input_stats_match_numpy_moments() -> None:
    rec = InputStats()
    parts = [torch.randn(3, 5, 8) * 2 + 1, torch.randn(4, 8) ** 3]
    for p in parts:
        rec.add(p)
    flat = np.concatenate([p.reshape(-1).double().numpy() for p in parts])
    c = flat - flat.mean()
    assert rec.kurtosis == pytest.approx((c**4).mean() / (c**2).mean() ** 2, rel=1e-9)
    assert rec.max_abs == pytest.approx(np.abs(flat).max())
    stacked = torch.cat([p.reshape(-1, 8) for p in parts])
    assert torch.allclose(rec.channel_max, stacked.abs().amax(0))


def test_gaussian_inputs_have_kurtosis_three() -> None:
    rec = InputStats()
    rec.add(torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0)))
    assert rec.kurtosis == pytest.approx(3.0, abs=0.05)


def _per_tensor_reference(lin: nn.Linear, q: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """fbgemm's dynamic product by hand: activations asymmetric uint8 per tensor over a
    7-bit range (``reduce_range``), weights the layer's own per-channel int8 values."""
    x = x.reshape(-1, q.in_features)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 127
    zero = min(max(round(-lo / scale), 0), 127)
    xq = torch.clamp(torch.round(x / scale) + zero, 0, 127)
    return ((xq - zero) * scale) @ q.dequantized().t() + lin.bias.detach()


@pytest.mark.skipif(not fbgemm_available(), reason="no fbgemm kernel in this PyTorch build")
def test_fbgemm_kernel_runs_the_same_int8_weights_with_per_tensor_activations() -> None:
    """The fbgemm kernel equals the hand-computed per-tensor product (float rounding only),
    stays within int8's bound of float32, and follows new weights after a reload."""
    for seed in range(3):
        torch.manual_seed(seed)
        lin = nn.Linear(128, 96)
        x = torch.randn(4, 16, 128)
        q = Int8Linear.from_linear(lin)
        q.kernel = "fbgemm"
        y = q(x)
        ref = _per_tensor_reference(lin, q, x).view(4, 16, 96)
        assert float((y - ref).abs().max()) <= 1e-3 * float(ref.abs().max())
        assert _rel(y, lin(x).detach()) <= 2e-2
    twin = copy.deepcopy(q)  # packed weights copy with the layer
    assert torch.equal(twin(x), y)
    other = Int8Linear.from_linear(nn.Linear(128, 96))
    other.kernel = "fbgemm"
    other(x)  # packs its own weights
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(x), y)  # repacked from the loaded weights


def test_a_kernel_the_layer_cannot_run_is_refused() -> None:
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="kernel 'cuda' is not one of int_mm, fbgemm"):
        Int8Linear.from_linear(lin).kernel = "cuda"
    with pytest.raises(ValueError, match="not int8-static"):
        Int8Linear.from_linear(lin, input_scale=0.1).kernel = "fbgemm"
