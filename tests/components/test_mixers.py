"""MetaFormer-family token mixers: pooling, identity, fixed_random, causal_conv, lmu.

Exact forms (window means, row-softmaxed random matrix, FFT == direct convolution, LMU
parallel == recurrent and the Legendre read-out of a delayed input), causality by
perturbation in built decoders, padding invariance in encoders, gradients, overfit.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from anyformer.components.base import Context
from anyformer.components.mixers.conv import CausalConv, CausalConvParams
from anyformer.components.mixers.lmu import LMU, LMUParams, discretize_zoh, legendre_state_space
from anyformer.components.mixers.metaformer import (
    FixedRandom,
    FixedRandomParams,
    Pooling,
    PoolingParams,
    random_tile,
)
from anyformer.components.position import NoPosition
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.nn.long_conv import long_conv_direct, long_conv_fft
from anyformer.registry import Dims, NoParams

V = 32
MIXERS = [
    "pooling",
    "identity",
    "fixed_random",
    "causal_conv",
    {"name": "causal_conv", "filter": "explicit", "gate": False},
    "lmu",
]


def _spec(kind: str, attention: Any, position: str = "none", **extra: Any) -> dict[str, Any]:
    spec = dict(
        kind=kind,
        vocab_size=V,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=64,
        attention=attention,
        position=position,
        **extra,
    )
    if kind == "encoder":
        spec.update(head="token_classify", n_outputs=V)
    return spec


def _ctx(t: int, causal: bool, mask: torch.Tensor | None = None) -> Context:
    dims = Dims(32, 4, 64, causal)
    return Context(torch.arange(t), causal, NoPosition(dims, NoParams()), mask)


def _name(m: Any) -> str:
    return m if isinstance(m, str) else "-".join(f"{v}" for v in m.values())


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("mixer", MIXERS, ids=_name)
def test_decoder_never_reads_the_future(mixer: Any) -> None:
    model = build_model(_spec("decoder", mixer)).eval()
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        base = model(x)
        for t in (1, 13, 39):
            y = x.clone()
            y[:, t] = (y[:, t] + 7) % V
            out = model(y)
            # FFT convolutions leave ~1e-7 rounding noise, nothing more
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(out[:, t:], base[:, t:])


@pytest.mark.parametrize("mixer", MIXERS, ids=_name)
def test_encoder_padding_does_not_reach_real_tokens(mixer: Any) -> None:
    model = build_model(_spec("encoder", mixer, "learned")).eval()
    x = torch.randint(0, V, (3, 40))
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[:, :27] = True
    mask[2, :20] = False  # left padding too: padded tokens inside the window
    x2 = torch.where(mask, x, (x + 9) % V)
    with torch.no_grad():
        a, b = model(x, padding_mask=mask), model(x2, padding_mask=mask)
        alone = model(x[:2, :27])
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:2, :27], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", MIXERS, ids=_name)
def test_gradients_reach_every_parameter_and_a_batch_is_overfit(mixer: Any) -> None:
    spec = _spec("decoder", mixer, "learned")
    model = build_model(spec)
    x = torch.randint(0, V, (4, 16))
    model(x).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# --------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pool_size", [1, 3, 5])
def test_pooling_is_the_window_mean_of_real_tokens_minus_the_token(
    causal: bool, pool_size: int
) -> None:
    pool = Pooling(Dims(8, 2, 32, causal), PoolingParams(pool_size=pool_size))
    x = torch.randn(2, 11, 8)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[1, 2] = False
    y = pool(x, _ctx(11, causal, mask))
    half = (pool_size - 1) // 2
    for b in range(2):
        for t in range(11):
            lo, hi = (t - pool_size + 1, t) if causal else (t - half, t + half)
            idx = [j for j in range(max(0, lo), min(10, hi) + 1) if mask[b, j]]
            want = (x[b, idx].mean(0) if idx else torch.zeros(8)) - x[b, t]
            torch.testing.assert_close(y[b, t], want, atol=1e-6, rtol=1e-6)


def test_pooling_rejects_an_even_centred_window() -> None:
    with pytest.raises(SpecError, match="pool_size=4 must be odd"):
        build_model(_spec("encoder", {"name": "pooling", "pool_size": 4}))
    build_model(_spec("decoder", {"name": "pooling", "pool_size": 4}))  # causal: any size


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_identity_mixes_no_tokens(kind: str) -> None:
    model = build_model(_spec(kind, "identity", "learned")).eval()
    x = torch.randint(0, V, (2, 12))
    y = x.clone()
    y[:, 5] = (y[:, 5] + 3) % V
    with torch.no_grad():
        a, b = model(x), model(y)
        z = torch.randn(2, 12, 32)
        assert torch.equal(model.blocks[0].mixer(z, _ctx(12, kind == "decoder")), z)
    changed = (a - b).abs().amax(-1) > 0
    assert changed[:, 5].all() and not changed[:, :5].any() and not changed[:, 6:].any()


# --------------------------------------------------------------------------- fixed_random
@pytest.mark.parametrize("causal", [True, False])
def test_fixed_random_is_a_row_softmax_of_a_frozen_matrix(causal: bool) -> None:
    mixer = FixedRandom(Dims(8, 2, 32, causal, layer=1), FixedRandomParams(seed=4))
    assert not list(mixer.parameters()), "the matrix is a buffer, never trained"
    x = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    y = mixer(x, _ctx(10, causal, mask))
    r = random_tile(4, 1, 0, 0)[:10, :10]
    for b in range(2):
        for t in range(10):
            cols = [j for j in range(10) if mask[b, j] and (not causal or j <= t)]
            w = r[t, cols].softmax(-1)
            torch.testing.assert_close(y[b, t], w @ x[b, cols], atol=1e-6, rtol=1e-6)
    other = FixedRandom(Dims(8, 2, 32, causal, layer=2), FixedRandomParams(seed=4))
    assert not torch.equal(other.matrix(10), mixer.matrix(10)), "each layer draws its own matrix"
    fresh = FixedRandom(Dims(8, 2, 200, causal, layer=1), FixedRandomParams(seed=4))
    big = fresh.matrix(150)  # entries never depend on the length asked for
    assert torch.equal(big[:10, :10], r) and torch.equal(big[64:128, 0:64], random_tile(4, 1, 1, 0))


# --------------------------------------------------------------------------- causal_conv
@pytest.mark.parametrize("first", [0, -6, -9])
def test_long_conv_fft_equals_direct_and_toeplitz(first: int) -> None:
    t = 10
    u = torch.randn(2, t, 3, dtype=torch.float64)
    taps = torch.randn(t - first, 3, dtype=torch.float64)
    want = torch.zeros_like(u)
    for i in range(t):
        for k in range(taps.shape[0]):
            j = i - first - k
            if 0 <= j < t:
                want[:, i] += taps[k] * u[:, j]
    torch.testing.assert_close(long_conv_direct(u, taps, first), want)
    torch.testing.assert_close(long_conv_fft(u, taps, first), want)


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("filt", ["implicit", "explicit"])
@pytest.mark.parametrize("causal", [True, False])
def test_causal_conv_fft_equals_direct(filt: str, causal: bool, two_sided: bool) -> None:
    params = CausalConvParams(filter=filt, two_sided=two_sided)
    fast = CausalConv(Dims(16, 2, 48, causal), params)
    ref = CausalConv(Dims(16, 2, 48, causal), params.model_copy(update={"impl": "reference"}))
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():  # give the implicit filter non-trivial taps
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 48, 16)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[1, 30:] = False
    for ctx in (_ctx(48, causal), _ctx(41, causal), _ctx(48, causal, mask)):
        t = ctx.positions.numel()
        torch.testing.assert_close(fast(x[:, :t], ctx), ref(x[:, :t], ctx), atol=1e-5, rtol=1e-5)


def test_causal_conv_filter_reads_only_the_past_in_decoders() -> None:
    conv = CausalConv(Dims(16, 2, 32, True), CausalConvParams())
    taps, first = conv.filter(20, causal=True)
    assert first == 0 and taps.shape == (20, 16)
    enc = CausalConv(Dims(16, 2, 32, False), CausalConvParams())
    taps, first = enc.filter(20, causal=False)
    assert first == -19 and taps.shape == (39, 16)
    taps_c, first_c = enc.filter(20, causal=True)  # an encoder-built filter run causally
    assert first_c == 0 and torch.equal(taps_c, taps[19:])
    with pytest.raises(ValueError, match="exceeds model.max_len=32"):
        conv(torch.randn(1, 33, 16), _ctx(33, True))


# --------------------------------------------------------------------------- lmu
@pytest.mark.parametrize("causal", [True, False])
def test_lmu_parallel_equals_recurrent_and_step(causal: bool) -> None:
    par = LMU(Dims(32, 4, 64, causal), LMUParams(order=12, theta=20.0))
    rec = LMU(Dims(32, 4, 64, causal), LMUParams(order=12, theta=20.0, impl="reference"))
    rec.load_state_dict(par.state_dict())
    x = torch.randn(2, 64, 32)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[0, 50:] = False
    with torch.no_grad():
        for ctx in (_ctx(64, causal), _ctx(64, causal, mask)):
            a, b = par(x, ctx), rec(x, ctx)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        state, steps = None, []
        for t in range(64):
            y, state = par.step(x[:, t], state)
            steps.append(y)
        torch.testing.assert_close(
            torch.stack(steps, 1), par(x, _ctx(64, causal)), atol=1e-4, rtol=1e-4
        )


def test_lmu_memory_holds_the_legendre_coefficients_of_the_window() -> None:
    """Reading the memory with shifted Legendre polynomials recovers u(t - r theta)."""
    order, theta, t_len = 12, 32.0, 200
    a, b = discretize_zoh(*legendre_state_space(order, theta))
    mixer = LMU(Dims(32, 4, t_len, True), LMUParams(order=order, theta=theta))
    t = torch.arange(t_len, dtype=torch.float32)
    u = torch.sin(2 * math.pi * t / 80)[None, :, None]
    m = mixer.memory_parallel(u)[0, :, 0].double()  # [T, order]
    for r in (0.25, 0.5, 1.0):
        p = torch.tensor(
            [
                (-1) ** i
                * sum(math.comb(i, j) * math.comb(i + j, j) * (-r) ** j for j in range(i + 1))
                for i in range(order)
            ],
            dtype=torch.float64,
        )
        # zero-order hold: the memory after step i describes the held input up to time i + 1
        want = torch.sin(2 * math.pi * (t.double() - r * theta + 0.5) / 80)
        err = (m @ p - want)[100:].abs().max()
        assert err < 5e-3, (r, err)
    assert torch.allclose(mixer.a_bar.double(), a, atol=1e-6)
    assert torch.allclose(mixer.b_bar.double(), b, atol=1e-6)
