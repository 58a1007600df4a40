"""Softmax-family attention variants: differential, gated, clipped_softmax, collapsed,
symmetric, urpe, complex, tensor_3way.

Each variant is checked against a known special case (an exact equivalence with plain
softmax attention, or a hand-written form of its formula), then for causality in a built
decoder, padding invariance in a built encoder, gradients to every parameter and a tiny
overfit.
"""

from __future__ import annotations

import math

import pytest
import torch

import anyformer.components.attention.differential as differential
import anyformer.components.attention.higher_order as higher_order
import anyformer.components.attention.minimal as minimal
import anyformer.components.attention.quantizable as quantizable
import anyformer.components.attention.relative as relative
from anyformer import registry
from anyformer.components.attention.softmax import SoftmaxAttention, SoftmaxParams
from anyformer.components.base import Context
from anyformer.components.position import (
    AlibiPosition,
    NoPosition,
    RopeParams,
    RotaryPosition,
    T5Params,
    T5RelativeBias,
)
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.registry import Dims, NoParams

torch.set_num_threads(1)

ENC = Dims(d_model=32, n_heads=4, max_len=16, causal=False)
DEC = Dims(d_model=32, n_heads=4, max_len=16, causal=True)
TOL = 1e-5


def build(name: str, dims: Dims = ENC, **params: object) -> torch.nn.Module:
    torch.manual_seed(0)
    entry = registry.get("attention", name)
    return entry.build(entry.make_params(params), dims).eval()


def make_ctx(
    t: int,
    causal: bool = False,
    position: torch.nn.Module | None = None,
    padding: torch.Tensor | None = None,
) -> Context:
    position = position if position is not None else NoPosition(ENC, NoParams())
    return Context(torch.arange(t), causal, position, padding)


def softmax_twin(module: torch.nn.Module, dims: Dims = ENC) -> SoftmaxAttention:
    """Reference softmax attention holding the same qkv/out weights as ``module``."""
    twin = SoftmaxAttention(dims, SoftmaxParams(impl="reference")).eval()
    twin.load_state_dict(module.state_dict(), strict=False)
    return twin


def padding(b: int = 2, t: int = 10, pad: int = 3) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - pad :] = False
    return mask


def x_input(b: int = 2, t: int = 10, d: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest absolute difference (at real tokens when ``mask`` is given)."""
    diff = (a - b).detach().abs()
    if mask is not None:
        diff = diff[mask]
    return float(diff.max())


# =========================================================================== gated
def test_gated_with_open_gate_equals_softmax() -> None:
    gated = build("gated", gate_bias_init=30.0)
    rope = RotaryPosition(ENC, RopeParams())
    x, pad = x_input(), padding()
    for ctx in (make_ctx(10, position=rope, padding=pad), make_ctx(10, causal=True)):
        assert close(gated(x, ctx), softmax_twin(gated)(x, ctx), ctx.padding_mask) < TOL


def test_gated_with_closed_gate_makes_no_update() -> None:
    gated = build("gated", gate_bias_init=-30.0)
    y = gated(x_input(), make_ctx(10, causal=True))
    assert close(y, gated.out.bias.expand_as(y)) < 1e-6


def test_gated_gate_depends_on_each_heads_input_slice() -> None:
    gated = build("gated")
    x = x_input()
    gate = gated.gate(x)
    by_hand = torch.sigmoid(
        torch.stack(
            [
                x[..., h * 8 : (h + 1) * 8] @ gated.gate_weight[h] + gated.gate_bias[h]
                for h in range(4)
            ],
            dim=1,
        )
    )
    assert close(gate.squeeze(-1), by_hand) < 1e-6
    assert gate.std() > 0  # conditioned on the input, not a constant


# =========================================================================== clipped
def test_clipped_softmax_with_no_stretch_equals_softmax() -> None:
    clipped = build("clipped_softmax", gamma=0.0, zeta=1.0)
    alibi = AlibiPosition(ENC, NoParams())
    x, pad = x_input(), padding()
    for ctx in (make_ctx(10, position=alibi, padding=pad), make_ctx(10, causal=True)):
        assert close(clipped(x, ctx), softmax_twin(clipped)(x, ctx), ctx.padding_mask) < TOL


def test_clipped_softmax_reaches_exact_zeros_and_ones() -> None:
    scores = torch.tensor([[0.0, 0.1, 9.0], [0.0, 0.0, 0.0]])
    probs = quantizable.clipped_softmax(scores, gamma=-0.03, zeta=1.03)
    assert probs[0, 0] == 0.0 and probs[0, 2] == 1.0
    softmax = scores.softmax(-1)
    assert torch.allclose(probs[1], 1.06 * softmax[1] - 0.03)
    # default gamma is -alpha / max_len (the paper's length scaling)
    assert build("clipped_softmax").gamma == pytest.approx(-4.0 / ENC.max_len)
    assert build("clipped_softmax", alpha=2.0).gamma == pytest.approx(-2.0 / 16)


def test_clipped_softmax_masked_keys_stay_zero() -> None:
    scores = torch.zeros(1, 4)
    bias = torch.tensor([[0.0, 0.0, torch.finfo(torch.float32).min / 2, 0.0]])
    probs = quantizable.clipped_softmax(scores + bias, gamma=0.0, zeta=1.5)
    assert probs[0, 2] == 0.0


# =========================================================================== differential
def differential_by_hand(
    m: differential.DifferentialAttention, x: torch.Tensor, causal: bool
) -> torch.Tensor:
    """The paper's equations written out head by head (no rotary, no padding)."""
    t, dh = x.shape[1], m.d_head
    q, k, v = m.qkv(x).chunk(3, -1)
    lam = (
        torch.exp(m.lambda_q1 @ m.lambda_k1) - torch.exp(m.lambda_q2 @ m.lambda_k2) + m.lambda_init
    )
    # channels of map 1 / map 2: each rotary pair (c, c + dh/2) stays in one map
    map1 = [c for c in range(dh) if c % (dh // 2) < dh // 4]
    map2 = [c for c in range(dh) if c % (dh // 2) >= dh // 4]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    heads = []
    for h in range(m.n_heads):
        qh, kh, vh = (z[..., h * dh : (h + 1) * dh] for z in (q, k, v))
        maps = []
        for idx in (map1, map2):
            s = qh[..., idx] @ kh[..., idx].transpose(-1, -2) / math.sqrt(dh / 2)
            maps.append((s.masked_fill(future, -math.inf) if causal else s).softmax(-1))
        o = (maps[0] - lam * maps[1]) @ vh
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight
        heads.append(o * (1 - m.lambda_init))
    return m.out(torch.cat(heads, -1))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_differential_matches_the_papers_formula(causal: bool, impl: str) -> None:
    m = build("differential", DEC if causal else ENC, impl=impl)
    x = x_input()
    assert close(m(x, make_ctx(10, causal=causal)), differential_by_hand(m, x, causal)) < TOL


def test_differential_fast_path_matches_reference_with_rotary_and_padding() -> None:
    fast = build("differential", impl="fast")
    ref = build("differential", impl="reference")
    ref.load_state_dict(fast.state_dict())
    ctx = make_ctx(10, position=RotaryPosition(ENC, RopeParams()), padding=padding())
    assert close(fast(x_input(), ctx), ref(x_input(), ctx), ctx.padding_mask) < TOL


def test_differential_lambda_schedule_and_reparameterisation() -> None:
    model = build_model(_spec("differential", n_layers=3))
    inits = [block.mixer.lambda_init for block in model.blocks]
    expected = [0.8 - 0.6 * math.exp(-0.3 * (layer - 1)) for layer in (1, 2, 3)]
    assert inits == pytest.approx(expected)
    assert inits[0] == pytest.approx(0.2)
    m = build("differential", lambda_init=0.5)
    with torch.no_grad():
        for p in (m.lambda_q1, m.lambda_k1, m.lambda_q2, m.lambda_k2):
            p.zero_()
    assert float(m.lam().detach()) == pytest.approx(0.5)  # exp(0) - exp(0) + lambda_init


def test_differential_rejects_head_width_not_multiple_of_4() -> None:
    with pytest.raises(SpecError, match="multiple of 4"):
        build_model(_spec("differential", d_model=24))  # d_head = 6


# =========================================================================== collapsed
def fold_softmax_into_collapsed(
    soft: SoftmaxAttention, collapsed: minimal.CollapsedAttention
) -> None:
    """W_QK^h = W_Q^h W_K^h^T and b^h = W_K^h b_Q^h (nn.Linear stores W^T)."""
    d, h, dh = 32, 4, 8
    wq, wk, wv = soft.qkv.weight.split(d)
    bq, bk, bv = soft.qkv.bias.split(d)
    with torch.no_grad():
        for i in range(h):
            rows = slice(i * dh, (i + 1) * dh)
            collapsed.qk.weight[i * d : (i + 1) * d] = wk[rows].T @ wq[rows]
            collapsed.qk.bias[i * d : (i + 1) * d] = wk[rows].T @ bq[rows]
        collapsed.value.weight.copy_(wv)
        collapsed.value.bias.copy_(bv)
        collapsed.out.load_state_dict(soft.out.state_dict())


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_collapsed_equals_softmax_with_query_key_folded(impl: str) -> None:
    torch.manual_seed(3)
    soft = SoftmaxAttention(ENC, SoftmaxParams(impl="reference")).eval()
    torch.nn.init.normal_(soft.qkv.bias)  # the folding must also carry the biases
    collapsed = build("collapsed", impl=impl)
    fold_softmax_into_collapsed(soft, collapsed)
    t5 = T5RelativeBias(ENC, T5Params())
    x = x_input()
    for ctx in (make_ctx(10, position=t5, padding=padding()), make_ctx(10, causal=True)):
        assert close(collapsed(x, ctx), soft(x, ctx), ctx.padding_mask) < TOL


def test_collapsed_head_width_is_a_block_diagonal_model_width() -> None:
    head = build("collapsed", width="head")
    model = build("collapsed", width="model")
    d, dh = 32, 8
    with torch.no_grad():
        model.qk.weight.zero_()
        model.qk.bias.zero_()
        for i in range(4):
            block = slice(i * d + i * dh, i * d + (i + 1) * dh)
            model.qk.weight[block, i * dh : (i + 1) * dh] = head.qk_weight[i].T
            model.qk.bias[block] = head.qk_bias[i]
        model.value.load_state_dict(head.value.state_dict())
        model.out.load_state_dict(head.out.state_dict())
    ctx = make_ctx(10, causal=True)
    assert close(head(x_input(), ctx), model(x_input(), ctx)) < TOL
    # d_head^2 (+ d_head bias) per head instead of d_model^2 (+ d_model)
    assert head.qk_weight.numel() + head.qk_bias.numel() == 4 * (dh * dh + dh)


# =========================================================================== symmetric
@pytest.mark.parametrize("form", ["cholesky", "symmetrized"])
@pytest.mark.parametrize("width", ["model", "head"])
def test_symmetric_scores_are_symmetric(form: str, width: str) -> None:
    m = build("symmetric", form=form, width=width)
    scores = m.scores(x_input())
    assert close(scores, scores.transpose(-1, -2)) < 1e-5
    span = 32 if width == "model" else 8
    assert m.tril.numel() == 4 * span * (span + 1) // 2  # half of the matrix
    if form == "cholesky":  # positive semi-definite: self-similarity is never negative
        assert torch.linalg.eigvalsh(m.matrix()).min() > -1e-6
        assert scores.diagonal(dim1=-2, dim2=-1).min() >= 0


def test_symmetrized_equals_collapsed_with_the_same_matrix() -> None:
    no_bias = Dims(d_model=32, n_heads=4, max_len=16, causal=False, bias=False)
    sym = build("symmetric", no_bias, form="symmetrized")
    col = build("collapsed", no_bias)
    with torch.no_grad():
        col.qk.weight.copy_(sym.matrix().transpose(-1, -2).reshape(4 * 32, 32))
    col.value.load_state_dict(sym.value.state_dict())
    col.out.load_state_dict(sym.out.state_dict())
    ctx = make_ctx(10, padding=padding())
    assert close(sym(x_input(), ctx), col(x_input(), ctx), ctx.padding_mask) < TOL


@pytest.mark.parametrize("name", ["collapsed", "symmetric", "complex", "gated"])
def test_fast_path_matches_reference(name: str) -> None:
    fast, ref = build(name, impl="fast"), build(name, impl="reference")
    ref.load_state_dict(fast.state_dict())
    x = x_input()
    for ctx in (
        make_ctx(10, causal=True),
        make_ctx(10, position=AlibiPosition(ENC, NoParams()), padding=padding()),
    ):
        assert close(fast(x, ctx), ref(x, ctx), ctx.padding_mask) < TOL


# =========================================================================== urpe
@pytest.mark.parametrize("dims", [ENC, DEC], ids=["encoder", "decoder"])
def test_urpe_with_all_ones_equals_softmax(dims: Dims) -> None:
    urpe = build("urpe", dims)
    assert torch.equal(urpe.toeplitz_coef, torch.ones_like(urpe.toeplitz_coef))  # its init
    t5 = T5RelativeBias(dims, T5Params())
    pad = None if dims.causal else padding()
    ctx = make_ctx(10, causal=dims.causal, position=t5, padding=pad)
    assert close(urpe(x_input(), ctx), softmax_twin(urpe, dims)(x_input(), ctx), pad) < TOL


@pytest.mark.parametrize("dims", [ENC, DEC], ids=["encoder", "decoder"])
def test_urpe_multiplies_probabilities_by_a_toeplitz_matrix(dims: Dims) -> None:
    urpe = build("urpe", dims)
    with torch.no_grad():
        urpe.toeplitz_coef.normal_()
    t, x = 10, x_input()
    c = urpe.toeplitz(torch.arange(t), torch.arange(t))
    offset = 0 if dims.causal else dims.max_len - 1
    for i in range(t):
        for j in range(t):
            expected = urpe.toeplitz_coef[:, i - j + offset] if (i >= j or not dims.causal) else 0
            assert torch.equal(c[:, i, j], expected * torch.ones(4))
    q, k, v = urpe.project(x)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    if dims.causal:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
    y = (s.softmax(-1) * c) @ v
    by_hand = urpe.out(y.transpose(1, 2).reshape(2, t, 32))
    assert close(urpe(x, make_ctx(t, causal=dims.causal)), by_hand) < TOL


def test_urpe_rejects_positions_beyond_max_len() -> None:
    urpe = build("urpe")
    with pytest.raises(ValueError, match="model.max_len=16"):
        urpe(x_input(t=20), make_ctx(20))


# =========================================================================== complex
def test_complex_with_unit_scales_equals_softmax_with_rope() -> None:
    cplx = build("complex")
    rope = RotaryPosition(ENC, RopeParams())
    for ctx_c, ctx_s in (
        (make_ctx(10, padding=padding()), make_ctx(10, position=rope, padding=padding())),
        (make_ctx(10, causal=True), make_ctx(10, causal=True, position=rope)),
    ):
        y = cplx(x_input(), ctx_c)
        assert close(y, softmax_twin(cplx)(x_input(), ctx_s), ctx_c.padding_mask) < TOL


def test_complex_without_position_angle_equals_softmax() -> None:
    cplx = build("complex")
    with torch.no_grad():
        cplx.position_scale.zero_()
    ctx = make_ctx(10, causal=True)
    assert close(cplx(x_input(), ctx), softmax_twin(cplx)(x_input(), ctx)) < TOL


def test_complex_depends_on_relative_positions_only() -> None:
    cplx = build("complex")
    with torch.no_grad():  # non-trivial per-head adaptive rotations
        cplx.angle_scale.uniform_(0.5, 1.5)
        cplx.position_scale.uniform_(-2.0, 2.0)
    ctx = make_ctx(10, causal=True)
    shifted = Context(torch.arange(10) + 37, True, ctx.position)
    y = cplx(x_input(), ctx)
    assert close(y, cplx(x_input(), shifted)) < 1e-4
    assert close(y, softmax_twin(cplx)(x_input(), ctx)) > 1e-3  # the scales matter


def test_complex_polar_has_finite_gradient_at_zero() -> None:
    a = torch.tensor([0.0, 1.0], requires_grad=True)
    b = torch.tensor([0.0, -1.0], requires_grad=True)
    r, theta = relative.polar(a, b)
    (r * torch.cos(0.7 * theta)).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# =========================================================================== tensor_3way
def tensor_3way_by_loops(
    m: higher_order.Tensor3WayAttention, x: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """s_ijk = sum_d q_id k1_jd k2_kd / sqrt(d); softmax over allowed (j, k); sum P (v1_j * v2_k)."""
    b, t, _ = x.shape
    h, dh = m.n_heads, m.d_head
    q, k1, k2, v1, v2 = m.qkv(x).chunk(5, -1)
    y = torch.zeros(b, t, h * dh)
    for n in range(b):
        for hh in range(h):
            sl = slice(hh * dh, (hh + 1) * dh)
            for i in range(t):
                pairs = [
                    (j, k)
                    for j in range(t)
                    for k in range(t)
                    if allowed[n, i, j] and allowed[n, i, k]
                ]
                s = torch.stack(
                    [(q[n, i, sl] * k1[n, j, sl] * k2[n, k, sl]).sum() for j, k in pairs]
                )
                p = (s / math.sqrt(dh)).softmax(0)
                y[n, i, sl] = sum(pp * v1[n, j, sl] * v2[n, k, sl] for pp, (j, k) in zip(p, pairs))
    return m.out(y)


@pytest.mark.parametrize("causal", [False, True])
def test_tensor_3way_matches_explicit_sum_over_key_pairs(causal: bool) -> None:
    dims = Dims(d_model=8, n_heads=2, max_len=8, causal=causal)
    m = build("tensor_3way", dims)
    t, x = 5, x_input(t=5, d=8)
    pad = padding(t=t, pad=2)
    allowed = pad[:, None, :].expand(2, t, t).clone()
    if causal:
        allowed &= torch.ones(t, t, dtype=torch.bool).tril()
    y = m(x, make_ctx(t, causal=causal, padding=pad))
    assert close(y, tensor_3way_by_loops(m, x, allowed), pad) < TOL


@pytest.mark.parametrize("causal", [False, True])
def test_tensor_3way_with_constant_second_key_and_value_equals_softmax(causal: bool) -> None:
    dims = DEC if causal else ENC
    m = build("tensor_3way", dims)
    with torch.no_grad():  # k2 = 1 and v2 = 1: s_ijk = q_i . k1_j, pairs sum to softmax over j
        m.qkv.weight[64:96].zero_()
        m.qkv.bias[64:96].fill_(1.0)
        m.qkv.weight[128:160].zero_()
        m.qkv.bias[128:160].fill_(1.0)
    twin = SoftmaxAttention(dims, SoftmaxParams(impl="reference")).eval()
    with torch.no_grad():
        twin.qkv.weight.copy_(torch.cat([m.qkv.weight[:64], m.qkv.weight[96:128]]))
        twin.qkv.bias.copy_(torch.cat([m.qkv.bias[:64], m.qkv.bias[96:128]]))
    twin.out.load_state_dict(m.out.state_dict())
    pad = None if causal else padding()
    ctx = make_ctx(10, causal=causal, padding=pad)
    assert close(m(x_input(), ctx), twin(x_input(), ctx), pad) < TOL


def test_tensor_3way_refuses_long_sequences() -> None:
    entry = registry.get("attention", "tensor_3way")
    problem = entry.check(NoParams(), Dims(d_model=32, n_heads=4, max_len=4096, causal=True))
    assert problem == "tensor_3way is O(n^3); max_len=4096 exceeds its limit 256"
    with pytest.raises(SpecError, match="max_len=4096"):
        build_model(_spec("tensor_3way", max_len=4096))
    with pytest.raises(ValueError, match="exceeds its limit 256"):
        build("tensor_3way")(torch.zeros(1, 257, 32), make_ctx(257))


# =========================================================================== built models
VARIANTS = [
    ("differential", {}, "rope"),
    ("gated", {}, "rope"),
    ("clipped_softmax", {}, "alibi"),
    ("collapsed", {}, "t5_bias"),
    ("collapsed", {"width": "head"}, "none"),
    ("symmetric", {}, "learned"),
    ("symmetric", {"form": "symmetrized", "width": "head"}, "alibi"),
    ("urpe", {}, "t5_bias"),
    ("complex", {}, "none"),
    ("tensor_3way", {}, "none"),
]
IDS = [f"{n}-{'-'.join(map(str, p.values()))}-{pos}".replace("--", "-") for n, p, pos in VARIANTS]


def _spec(name: str, params: dict | None = None, position: str = "none", **kw: object) -> dict:
    base = dict(
        kind="decoder",
        vocab_size=32,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=16,
        attention={"name": name, **(params or {})},
        position=position,
        head="lm",
    )
    return {**base, **kw}


@pytest.mark.parametrize(("name", "params", "position"), VARIANTS, ids=IDS)
def test_decoder_is_causal(name: str, params: dict, position: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(name, params, position)).eval()
    tokens = torch.randint(0, 32, (2, 16))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 32
    a, b = model(tokens), model(changed)
    assert close(a[:, :9], b[:, :9]) < 1e-6
    assert close(a[:, 9:], b[:, 9:]) > 1e-4  # the change does reach later tokens


@pytest.mark.parametrize(("name", "params", "position"), VARIANTS, ids=IDS)
def test_encoder_ignores_padding(name: str, params: dict, position: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(name, params, position, kind="encoder")).eval()
    tokens = torch.randint(0, 32, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 8:] = False
    other = tokens.clone()
    other[:, 8:] = (other[:, 8:] + 5) % 32
    a = model(tokens, mask)
    assert close(a, model(other, mask), mask) < 1e-5
    assert close(a[:, :8], model(tokens[:, :8])) < 1e-5  # same as the unpadded sequence


@pytest.mark.parametrize(("name", "params", "position"), VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(name: str, params: dict, position: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(name, params, position))
    tokens = torch.randint(0, 32, (2, 16))  # full max_len: every relative offset is used
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().max() > 0, pname


@pytest.mark.parametrize(("name", "params", "position"), VARIANTS, ids=IDS)
def test_tiny_overfit(name: str, params: dict, position: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(name, params, position))
    tokens = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
