"""Token mixers over a 2-D grid of tokens: what each computes (HorNet's gnconv, Hyena-N-D's
2-D long convolution, strip attention, CvT's convolutional projection), how prefix
tokens are treated, and the refusal of a model without a grid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anyformer import registry
from anyformer.components.attention.grid import (
    ConvAttention,
    ConvAttentionParams,
    StripAttention,
    StripParams,
)
from anyformer.components.attention.softmax import SoftmaxAttention, SoftmaxParams
from anyformer.components.base import Context
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.components.mixers.grid_conv import (
    GnConv,
    GnConvParams,
    Hyena2D,
    Hyena2DParams,
    conv2d_dense,
    conv2d_fft,
)
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure
from anyformer.lab.contracts.mixer import grid_cells_ignore_padding, grid_for
from anyformer.model.transformer import build_model
from anyformer.registry import Capabilities, Dims, Entry, NoParams, Paper, register
from anyformer.spec import ModelSpec, parse

GRID_MIXERS = ["gnconv", "hyena_2d", "strip_attention", "conv_attention"]
H, W, P, D = 4, 4, 1, 16
T = P + H * W
DIMS = Dims(d_model=D, n_heads=4, max_len=T, causal=False, grid=(H, W), n_prefix=P)


def _ctx(t: int = T, mask: torch.Tensor | None = None) -> Context:
    position = registry.get("position", "none").build(None, DIMS)
    return Context(torch.arange(t), False, position, padding_mask=mask)


def _x(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _cell(r: int, c: int) -> int:
    return P + r * W + c


def _changed(mixer: torch.nn.Module, token: int, seed: int = 0) -> torch.Tensor:
    """Boolean ``[T]``: which outputs change when ``token`` changes."""
    x = _x(seed)
    y = x.clone()
    y[:, token] += 3 * torch.randn(D, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        a, b = mixer(x, _ctx()), mixer(y, _ctx())
    return ((a - b).abs() > 1e-6).any(dim=-1).any(dim=0)


# --------------------------------------------------------------------------- refusal
@pytest.mark.parametrize("name", GRID_MIXERS)
def test_a_model_without_a_grid_is_refused_naming_the_embedder(name: str) -> None:
    data = dict(kind="encoder", vocab_size=11, d_model=16, n_heads=4, n_layers=1, max_len=16)
    data.update(attention=name, position="none", head="token_classify", n_outputs=3)
    with pytest.raises(SpecError) as err:
        parse(ModelSpec, data)
    msg = str(err.value)
    assert f"attention='{name}'" in msg and "2-D grid" in msg and "model.embedder" in msg
    entry = registry.get("attention", name)
    assert entry.caps.grid and not entry.caps.causal_safe and entry.caps.bidirectional
    assert entry.check(entry.make_params(), DIMS) is None


def test_grid_specific_parameters_are_checked_against_the_grid() -> None:
    gn, strip = registry.get("attention", "gnconv"), registry.get("attention", "strip_attention")
    odd = Dims(d_model=36, n_heads=4, max_len=T, causal=False, grid=(H, W), n_prefix=P)
    assert "d_model=36 must be divisible by 2^(order-1)=8" in (
        gn.check(gn.make_params({"order": 4}), odd) or ""
    )
    assert gn.check(gn.make_params({"order": 3}), odd) is None
    assert "strip=3 must divide both sides of the 4x4 grid" in (
        strip.check(strip.make_params({"strip": 3}), DIMS) or ""
    )
    with pytest.raises(SpecError, match="kernel_size=4: kernel_size must be odd"):
        gn.make_params({"kernel_size": 4})
    with pytest.raises(SpecError, match="order=6"):
        gn.make_params({"order": 6})


@pytest.mark.parametrize("name", GRID_MIXERS)
def test_an_input_that_is_not_the_layout_is_refused(name: str) -> None:
    entry = registry.get("attention", name)
    mixer = entry.build(entry.make_params(), DIMS)
    with pytest.raises(ValueError, match="do not form the model's layout of 1 prefix"):
        mixer(torch.randn(2, T - 1, D), _ctx(T - 1))


def test_the_checks_grid_fits_the_test_length() -> None:
    assert grid_for(12) == (2, 2, 5) and grid_for(17) == (1, 4, 4) and grid_for(11) == (1, 2, 5)


# --------------------------------------------------------------------------- gnconv
def test_gnconv_order_one_is_the_gated_depthwise_convolution() -> None:
    torch.manual_seed(0)
    mixer = GnConv(DIMS, GnConvParams(order=1, kernel_size=3, scale=0.5))
    x = _x()
    p, q = F.linear(x, mixer.proj_in.weight, mixer.proj_in.bias).split(D, dim=-1)
    wt, bias = mixer.dwconv.weight, mixer.dwconv.bias
    image = q[:, P:].reshape(2, H, W, D).permute(0, 3, 1, 2)
    conv = F.conv2d(image, wt, bias, padding=1, groups=D).permute(0, 2, 3, 1).reshape(2, H * W, D)
    prefix = q[:, :P] * wt[:, 0, 1, 1] + bias  # the prefix token alone on a 1x1 grid
    gate = 0.5 * torch.cat((prefix, conv), dim=1)
    want = F.linear(p * gate, mixer.proj_out.weight, mixer.proj_out.bias)
    torch.testing.assert_close(mixer(x, _ctx()), want)


def test_gnconv_recursion_multiplies_one_gate_per_order() -> None:
    torch.manual_seed(0)
    mixer = GnConv(DIMS, GnConvParams(order=3, kernel_size=3))
    assert mixer.widths == [4, 8, 16]
    x = _x()
    p, q = mixer.proj_in(x).split((4, 28), dim=-1)
    g0, g1, g2 = (mixer.spatial(q, _ctx()) / 3).split((4, 8, 16), dim=-1)
    want = mixer.proj_out(mixer.pws[1](mixer.pws[0](p * g0) * g1) * g2)
    torch.testing.assert_close(mixer(x, _ctx()), want)


def test_gnconv_reads_the_kernel_neighbourhood_and_prefix_tokens_stay_pointwise() -> None:
    torch.manual_seed(0)
    mixer = GnConv(DIMS, GnConvParams(order=3, kernel_size=3))
    changed = _changed(mixer, _cell(1, 1))
    expect = torch.zeros(T, dtype=torch.bool)
    for r in range(3):
        for c in range(3):
            expect[_cell(r, c)] = True
    assert torch.equal(changed, expect)
    assert torch.equal(_changed(mixer, 0), torch.arange(T) == 0)


# --------------------------------------------------------------------------- hyena_2d
def test_the_2d_convolutions_compute_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 3, 4
    u = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    taps = torch.randn(5, 2 * h - 1, 2 * w - 1, generator=g, dtype=torch.float64)
    want = torch.zeros_like(u)
    for r in range(h):
        for c in range(w):
            for r2 in range(h):
                for c2 in range(w):  # y[r, c] += h[r - r2, c - c2] u[r2, c2]
                    want[..., r, c] += taps[:, r - r2 + h - 1, c - c2 + w - 1] * u[..., r2, c2]
    torch.testing.assert_close(conv2d_dense(u, taps), want)
    torch.testing.assert_close(conv2d_fft(u, taps), want)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_hyena_2d_fast_equals_reference_in_outputs_and_gradients(order: int) -> None:
    mixers = []
    for impl in ("fast", "reference"):
        torch.manual_seed(0)
        mixers.append(Hyena2D(DIMS, Hyena2DParams(order=order, impl=impl)).double())
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, _cell(2, 3)] = False
    outs, grads = [], []
    for mixer in mixers:
        x = _x(dtype=torch.float64).requires_grad_(True)
        y = mixer(x, _ctx(mask=mask))
        (y * _x(5, torch.float64)).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad] + [p.grad for p in mixer.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=1e-8)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("order", [1, 2])
def test_hyena_2d_with_a_delta_filter_is_a_pointwise_gated_map(order: int) -> None:
    torch.manual_seed(0)
    mixer = Hyena2D(DIMS, Hyena2DParams(order=order))
    c = torch.randn(order, D)
    delta = torch.zeros(order, D, 2 * H - 1, 2 * W - 1)
    delta[:, :, H - 1, W - 1] = c
    mixer.filters = lambda: delta  # type: ignore[method-assign]
    x = _x()
    v, *gates = mixer.inp(x).chunk(order + 1, dim=-1)
    z = v
    for i, gate in enumerate(gates):
        z = gate * (c[i] + mixer.skip[i]) * z
    torch.testing.assert_close(mixer(x, _ctx()), mixer.out(z))
    for token in (0, _cell(2, 1)):
        assert torch.equal(_changed(mixer, token), torch.arange(T) == token)


def test_hyena_2d_filters_span_the_whole_grid_but_not_the_prefix() -> None:
    torch.manual_seed(0)
    mixer = Hyena2D(DIMS, Hyena2DParams())
    assert tuple(mixer.filters().shape) == (2, D, 2 * H - 1, 2 * W - 1)
    changed = _changed(mixer, _cell(0, 0))
    assert changed[P:].all() and not changed[:P].any()
    assert torch.equal(_changed(mixer, 0), torch.arange(T) == 0)


# --------------------------------------------------------------------------- strips
@pytest.mark.parametrize("strip", [1, 2])
def test_a_token_attends_only_within_its_row_and_column_strips(strip: int) -> None:
    torch.manual_seed(0)
    mixer = StripAttention(DIMS, StripParams(strip=strip))
    r, c = 1, 2
    for r2 in range(H):
        for c2 in range(W):
            changed = _changed(mixer, _cell(r2, c2))
            same = r2 // strip == r // strip or c2 // strip == c // strip
            assert bool(changed[_cell(r, c)]) == same, (r2, c2)
            assert changed[0]  # the prefix token attends globally
    assert _changed(mixer, 0).all()  # every token attends to the prefix


def test_row_heads_see_only_rows_and_column_heads_only_columns() -> None:
    torch.manual_seed(0)
    mixer = StripAttention(DIMS, StripParams())
    x = _x()
    y = x.clone()
    y[:, _cell(1, 3)] += 1.0  # same row as (1, 0), other column
    heads = []
    for inp in (x, y):
        q, k, v = mixer.project(inp)
        heads.append(mixer._fast(q, k, v, _ctx()))
    diff = (heads[0] - heads[1]).abs()[:, :, _cell(1, 0)].amax(dim=(0, 2))
    assert (diff[:2] > 1e-6).all() and (diff[2:] == 0).all()


@pytest.mark.parametrize("strip", [1, 2, 4])
def test_strip_fast_equals_the_masked_reference(strip: int) -> None:
    dims = Dims(d_model=D, n_heads=4, max_len=24, causal=False, grid=(4, 4), n_prefix=2)
    x = torch.randn(2, 18, D, dtype=torch.float64)
    mask = torch.ones(2, 18, dtype=torch.bool)
    mask[0, 5], mask[1, 1] = False, False
    outs = []
    for impl in ("fast", "reference"):
        torch.manual_seed(0)
        mixer = StripAttention(dims, StripParams(strip=strip, impl=impl)).double()
        outs.append(mixer(x, _ctx(18, mask)) * mask[..., None])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------- CvT
def _identity_convs(mixer: ConvAttention) -> None:
    with torch.no_grad():
        for conv in (mixer.conv_q, mixer.conv_k, mixer.conv_v):
            conv.weight.fill_(1.0)
            conv.bias.zero_()


def _softmax_like(mixer: ConvAttention) -> SoftmaxAttention:
    plain = SoftmaxAttention(DIMS, SoftmaxParams())
    with torch.no_grad():
        plain.qkv.weight.copy_(
            torch.cat([mixer.q_proj.weight, mixer.k_proj.weight, mixer.v_proj.weight])
        )
        plain.qkv.bias.copy_(torch.cat([mixer.q_proj.bias, mixer.k_proj.bias, mixer.v_proj.bias]))
        plain.out.load_state_dict(mixer.out.state_dict())
    return plain


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_conv_attention_with_identity_1x1_convolutions_is_softmax_attention(impl: str) -> None:
    torch.manual_seed(0)
    mixer = ConvAttention(DIMS, ConvAttentionParams(kernel_size=1, impl=impl))
    _identity_convs(mixer)
    x = _x()
    torch.testing.assert_close(mixer(x, _ctx()), _softmax_like(mixer)(x, _ctx()))


@pytest.mark.parametrize("position", ["none", "rope", "t5_bias"])
def test_strided_keys_are_the_strided_cells_and_the_prefix(position: str) -> None:
    """With kv_stride=2 and identity 1x1 convolutions the keys are the prefix and the
    cells (2i, 2j), at those cells' positions (rotation, score bias)."""
    torch.manual_seed(0)
    mixer = ConvAttention(DIMS, ConvAttentionParams(kernel_size=1, kv_stride=2))
    _identity_convs(mixer)
    keys = [0, _cell(0, 0), _cell(0, 2), _cell(2, 0), _cell(2, 2)]
    assert mixer.key_index.tolist() == keys
    scheme = registry.get("position", position).build(None, DIMS)
    with torch.no_grad():
        for p in scheme.parameters():
            p.normal_()
    x = _x()
    plain = _softmax_like(mixer)
    q_pos, k_pos = torch.arange(T), torch.tensor(keys)
    q = plain.project(x)[0]
    _, k, v = plain.project(x[:, keys])
    q, k = scheme.rotate(q, k, q_pos, k_pos)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // 4)
    bias = scheme.score_bias(q_pos, k_pos)
    scores = scores if bias is None else scores + bias
    want = plain.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, T, D))
    ctx = Context(torch.arange(T), False, scheme)
    torch.testing.assert_close(mixer(x, ctx), want)


def test_conv_attention_convolutions_mix_neighbours_and_skip_the_prefix() -> None:
    torch.manual_seed(0)
    mixer = ConvAttention(DIMS, ConvAttentionParams(kernel_size=3))
    x = _x()
    q = mixer.q_proj(torch.cat((x[:, :P], mixer.conv_q(x[:, P:].reshape(2, H, W, D).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)), 1))  # fmt: skip
    y = x.clone()
    y[:, _cell(0, 0)] += 1.0
    q2 = mixer.q_proj(torch.cat((y[:, :P], mixer.conv_q(y[:, P:].reshape(2, H, W, D).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)), 1))  # fmt: skip
    moved = ((q - q2).abs() > 0).any(-1).any(0)
    assert moved.nonzero().flatten().tolist() == [
        _cell(0, 0),
        _cell(0, 1),
        _cell(1, 0),
        _cell(1, 1),
    ]


# --------------------------------------------------------------------------- checks bite
class _LeakyGnConv(GnConv):
    """gnconv whose convolution also reads padded cells."""

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return super().forward(x, Context(ctx.positions, ctx.causal, ctx.position))


def test_the_grid_padding_check_catches_a_mixer_that_reads_padded_cells() -> None:
    entry = registry.get("attention", "gnconv")
    grid_cells_ignore_padding(entry)
    leaky = Entry(
        "attention", "leaky", _LeakyGnConv, Paper("a test", 2026), "test", GnConvParams,
        Capabilities(causal_safe=False, grid=True),
    )  # fmt: skip
    with pytest.raises(CheckFailure, match="padded grid cells changed"):
        grid_cells_ignore_padding(leaky)


# --------------------------------------------------------------------------- in a model
class _Pixels(Embedder):
    """A throwaway grid embedder: every pixel of ``[B, C, H, W]`` a token, CLS first."""

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        super().__init__()
        self.proj = nn.Linear(spec.input_shape[0], spec.d_model)
        self.cls = nn.Parameter(torch.randn(spec.d_model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        cells = self.proj(inputs.flatten(2).transpose(1, 2))
        return torch.cat((self.cls.expand(len(inputs), 1, -1), cells), dim=1)

    @classmethod
    def layout(cls, params: NoParams, spec: ModelSpec) -> TokenLayout:
        _, h, w = spec.input_shape
        return TokenLayout(length=1 + h * w, grid=(h, w), n_prefix=1)


@pytest.mark.parametrize("name", GRID_MIXERS)
def test_a_model_with_a_grid_embedder_builds_and_trains_each_grid_mixer(name: str) -> None:
    register("embedder", "test_pixels", paper=None, summary="t", caps=Capabilities(grid=True))(
        _Pixels
    )
    try:
        data = dict(kind="encoder", d_model=16, n_heads=4, n_layers=2, max_len=T)
        data.update(embedder="test_pixels", input_shape=[3, H, W], attention=name)
        data.update(position="none", head="classify", n_outputs=5)
        spec = parse(ModelSpec, data)
        assert spec.dims().grid == (H, W) and spec.dims().n_prefix == 1
        torch.manual_seed(0)
        model = build_model(spec)
        images = torch.randn(2, 3, H, W)
        model(images).pow(2).mean().backward()
        assert model(images).shape == (2, 5)
        mixers = [m for m in model.modules() if type(m).__name__ in ("GnConv", "Hyena2D", "StripAttention", "ConvAttention")]  # fmt: skip
        assert len(mixers) == 2 and all(m.grid == (H, W) for m in mixers)
        grads = [p.grad for m in mixers for p in m.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        data.update(input_shape=[3, H, W + 1])  # 21 tokens > max_len=17
        with pytest.raises(SpecError, match="max_len"):
            parse(ModelSpec, data)
    finally:
        registry._REGISTRY["embedder"].pop("test_pixels", None)
        registry._BY_CLASS.pop(_Pixels, None)
