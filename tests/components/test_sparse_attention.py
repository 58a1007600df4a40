"""prob_sparse (Informer), linformer and binary_hash (EcoFormer): exact special cases,
fast == reference, causality, padding, validation, gradients and a tiny overfit."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from anyformer.components.attention.projected import BinaryHashAttention, BinaryHashParams
from anyformer.components.attention.sparse import (
    ProbSparseAttention,
    ProbSparseParams,
    lazy_output,
    n_active,
    prefix_rank,
)
from anyformer.components.base import Context
from anyformer.components.position import NoPosition
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.registry import Dims, NoParams, get

V = 32


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


def _causal_perturbation(spec: dict[str, Any], t_len: int = 40) -> None:
    model = build_model(spec).eval()
    x = torch.randint(0, V, (2, t_len))
    with torch.no_grad():
        base = model(x)
        for t in (1, 9, 23, t_len - 1):
            y = x.clone()
            y[:, t] = (y[:, t] + 7) % V
            out = model(y)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(out[:, t:], base[:, t:])


def _padding_invariance(spec: dict[str, Any]) -> None:
    model = build_model(spec).eval()
    x = torch.randint(0, V, (3, 40))
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[:, :29] = True
    with torch.no_grad():
        alone = model(x[:, :29])
        padded = model(x, padding_mask=mask)
        x2 = x.clone()
        x2[:, 29:] = (x2[:, 29:] + 5) % V
        other = model(x2, padding_mask=mask)
    torch.testing.assert_close(padded[:, :29], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other[:, :29], alone, atol=1e-5, rtol=1e-5)


def _grads_everywhere(spec: dict[str, Any]) -> None:
    model = build_model(spec)
    x = torch.randint(0, V, (2, 24))
    model(x).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def _overfit(spec: dict[str, Any], steps: int = 40) -> tuple[float, float]:
    """One fixed batch; the decoder predicts the next token, the encoder the previous one."""
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randint(0, V, (4, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(x)
        if spec["kind"] == "decoder":
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)
            )
        else:
            loss = torch.nn.functional.cross_entropy(
                logits[:, 1:].reshape(-1, V), x[:, :-1].reshape(-1)
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


# --------------------------------------------------------------------------- prob_sparse
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
@pytest.mark.parametrize("position", ["none", "rope", "alibi"])
def test_prob_sparse_with_every_query_active_is_softmax(
    impl: str, kind: str, position: str
) -> None:
    # factor 100: u = 100 * ceil(ln n) >= n for every n <= 64, so no query is lazy
    sparse = build_model(
        _spec(kind, {"name": "prob_sparse", "factor": 100, "impl": impl}, position)
    ).eval()
    dense = build_model(_spec(kind, {"name": "softmax", "impl": "reference"}, position)).eval()
    dense.load_state_dict(sparse.state_dict())
    x = torch.randint(0, V, (3, 21))
    mask = torch.ones(3, 21, dtype=torch.bool)
    mask[1, 15:] = False
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), atol=1e-6, rtol=1e-6)
        a, b = sparse(x, padding_mask=mask), dense(x, padding_mask=mask)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_prob_sparse_gathered_attention_equals_dense_reference(causal: bool) -> None:
    """With lazy queries (which the registry-wide impl test, run with every query
    active, does not reach): outputs and the gradients of q, k, v and the bias agree."""
    module = ProbSparseAttention(Dims(32, 4, 64, causal), ProbSparseParams()).double()
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = module.project(x)
    real = torch.ones(2, 30, dtype=torch.bool)
    real[1, 22:] = False
    active = (torch.rand(2, 4, 30) < 0.3) & real[:, None]
    allowed = real[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(30, 30, dtype=torch.bool).tril()
    rows = real[:, None, :, None].to(torch.float64)
    weights = torch.randn(2, 4, 30, 8, dtype=torch.float64)
    results = []
    for path in ("dense", "gathered"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        bias = torch.randn(
            4, 30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
        )
        bias.requires_grad_(True)
        lazy = lazy_output(leaves[2], real, causal)
        if path == "dense":
            y = module.attend_dense(*leaves, active, lazy, bias, allowed)
        else:
            y = module.attend_gathered(*leaves, active, lazy, bias, real, causal)
        (y * rows * weights).sum().backward()
        results.append([y.detach() * rows] + [t.grad for t in (*leaves, bias)])
    for dense, fast in zip(*results):
        torch.testing.assert_close(fast, dense, atol=1e-10, rtol=1e-8)


def test_prob_sparse_lazy_queries_output_the_mean_of_values() -> None:
    module = ProbSparseAttention(
        Dims(32, 4, 64, False), ProbSparseParams(factor=1, impl="reference")
    )
    x = torch.randn(2, 48, 32)
    q, k, v = module.project(x)
    real = torch.ones(2, 48, dtype=torch.bool)
    allowed = real[:, None, None, :]
    m = module.exact_measurement(q, k, None, allowed)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    torch.testing.assert_close(m, scores.amax(-1) - scores.mean(-1))
    active = module.active_queries(m, real, causal=False)
    u = math.ceil(math.log(48))
    assert (active.sum(-1) == u).all(), "exactly u = c ceil(ln n) active queries per head"
    top = m.topk(u, dim=-1).indices
    assert torch.equal(active, torch.zeros_like(active).scatter(-1, top, True))
    y = module.attend_dense(q, k, v, active, lazy_output(v, real, False), None, allowed)
    mean_v = v.mean(2, keepdim=True).expand_as(v)
    torch.testing.assert_close(y[~active], mean_v[~active])


def test_prob_sparse_causal_activity_is_a_streaming_top_u() -> None:
    m = torch.randn(3, 2, 50)
    m[..., 40:45] = m[..., 3:4]  # ties: earlier entries count as larger
    rank = prefix_rank(m, chunk=7)
    brute = torch.zeros_like(rank)
    for i in range(50):
        brute[..., i] = (m[..., :i] >= m[..., i : i + 1]).sum(-1)
    assert torch.equal(rank, brute)
    for cap in (1, 4, 9):  # the fast form keeps only the cap largest earlier values
        assert torch.equal(prefix_rank(m, cap=cap, chunk=7), brute.clamp(max=cap))
    module = ProbSparseAttention(Dims(32, 4, 64, True), ProbSparseParams(factor=1))
    real = torch.ones(3, 50, dtype=torch.bool)
    active = module.active_queries(m, real, causal=True)
    budget = n_active(1, torch.arange(1, 51))
    assert torch.equal(active, brute < budget)
    # the first queries are always active; the decision for i never looks at j > i
    assert active[..., 0].all()
    m2 = m.clone()
    m2[..., 30:] = torch.randn(3, 2, 20) * 10
    assert torch.equal(module.active_queries(m2, real, True)[..., :30], active[..., :30])


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_prob_sparse_decoder_never_reads_the_future(impl: str) -> None:
    _causal_perturbation(
        _spec("decoder", {"name": "prob_sparse", "factor": 1, "impl": impl}, "rope")
    )


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_prob_sparse_encoder_ignores_padding(impl: str) -> None:
    _padding_invariance(
        _spec("encoder", {"name": "prob_sparse", "factor": 1, "impl": impl}, "learned")
    )


def test_prob_sparse_sampling_is_seeded_and_deterministic() -> None:
    a = ProbSparseAttention(Dims(32, 4, 64, True, layer=1), ProbSparseParams(seed=3))
    b = ProbSparseAttention(Dims(32, 4, 64, True, layer=1), ProbSparseParams(seed=3))
    c = ProbSparseAttention(Dims(32, 4, 64, True, layer=2), ProbSparseParams(seed=3))
    assert torch.equal(a.sample_table, b.sample_table)
    assert not torch.equal(a.sample_table, c.sample_table)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x, _ctx(40, True)), a(x, _ctx(40, True)), atol=0, rtol=0)
        torch.testing.assert_close(a(x, _ctx(40, True)), b(x, _ctx(40, True)), atol=0, rtol=0)


def test_prob_sparse_gradients_and_overfit() -> None:
    spec = _spec("decoder", {"name": "prob_sparse", "factor": 1})
    _grads_everywhere(spec)
    first, last = _overfit(spec)
    assert last < 0.5 * first, (first, last)


# --------------------------------------------------------------------------- linformer
def test_linformer_is_rejected_in_a_decoder_with_a_reason() -> None:
    with pytest.raises(SpecError, match="linformer.*not causal-safe.*kind=encoder"):
        build_model(_spec("decoder", "linformer"))
    entry = get("attention", "linformer")
    assert entry.caps.causal_safe is False
    msg = entry.check(entry.make_params({}), Dims(32, 4, 64, causal=True))
    assert msg is not None and "cannot be causal" in msg
    with pytest.raises(SpecError, match="k=128 must be <= max_len=64"):
        build_model(_spec("encoder", {"name": "linformer", "k": 128}))
    with pytest.raises(SpecError, match="position='rope'.*linformer"):
        build_model(_spec("encoder", "linformer", "rope"))


def test_linformer_with_identity_projections_is_softmax() -> None:
    spec = dict(
        kind="encoder",
        vocab_size=V,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=16,
        position="learned",
        head="token_classify",
        n_outputs=5,
    )
    lin = build_model({**spec, "attention": {"name": "linformer", "k": 16}}).eval()
    soft = build_model({**spec, "attention": {"name": "softmax", "impl": "reference"}}).eval()
    state = {k: v for k, v in lin.state_dict().items() if "proj_" not in k}
    soft.load_state_dict(state)
    with torch.no_grad():
        for block in lin.blocks:
            block.mixer.proj_k.copy_(torch.eye(16))
            block.mixer.proj_v.copy_(torch.eye(16))
        x = torch.randint(0, V, (3, 16))
        torch.testing.assert_close(lin(x), soft(x), atol=1e-5, rtol=1e-5)


def test_linformer_padding_gradients_overfit_and_length_limit() -> None:
    spec = _spec("encoder", {"name": "linformer", "k": 8}, "learned")
    _padding_invariance(spec)
    _grads_everywhere(_spec("encoder", {"name": "linformer", "k": 8}))
    first, last = _overfit(_spec("encoder", {"name": "linformer", "k": 8}, "learned"))
    assert last < 0.5 * first, (first, last)
    shared = build_model(_spec("encoder", {"name": "linformer", "share_kv": True}))
    assert shared.blocks[0].mixer.proj_k is shared.blocks[0].mixer.proj_v
    module = build_model(spec).blocks[0].mixer
    with pytest.raises(ValueError, match="exceeds model.max_len=64"):
        module(torch.randn(1, 65, 32), _ctx(65, False))


# --------------------------------------------------------------------------- binary_hash
def _binary_reference(module: BinaryHashAttention, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Quadratic form: similarity = matching bits + 1/2, rows normalised."""
    b, t, d = x.shape
    q, k, v = (z.view(b, t, 4, -1).transpose(1, 2) for z in module.qkv(x).split(d, dim=-1))
    bq, bk = module.hash_codes(q), module.hash_codes(k)
    matches = (bq[..., :, None, :] == bk[..., None, :, :]).sum(-1).to(x.dtype)
    assert torch.equal(matches, (module.bits + bq @ bk.transpose(-1, -2)) / 2)
    sim = matches + 0.5
    allowed = torch.ones(t, t, dtype=torch.bool)
    if ctx.causal:
        allowed = allowed.tril()
    if ctx.padding_mask is not None:
        allowed = allowed & ctx.padding_mask[:, None, None, :]
    sim = sim * allowed
    y = (sim / sim.sum(-1, keepdim=True)) @ v
    return module.out(y.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("causal", [True, False])
def test_binary_hash_is_linear_attention_on_matching_bits(causal: bool) -> None:
    module = BinaryHashAttention(Dims(32, 4, 64, causal), BinaryHashParams(bits=8, chunk_size=8))
    x = torch.randn(2, 37, 32)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    ctx = _ctx(37, causal, mask)
    with torch.no_grad():
        fast, ref = module(x, ctx), _binary_reference(module, x, ctx)
    torch.testing.assert_close(fast[mask], ref[mask], atol=1e-5, rtol=1e-5)


def test_binary_hash_chunked_equals_recurrent() -> None:
    chunked = build_model(_spec("decoder", {"name": "binary_hash", "chunk_size": 8})).eval()
    recurrent = build_model(_spec("decoder", {"name": "binary_hash", "impl": "reference"})).eval()
    recurrent.load_state_dict(chunked.state_dict())
    x = torch.randint(0, V, (2, 29))
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), recurrent(x), atol=1e-5, rtol=1e-5)


def test_binary_hash_step_decoding_equals_forward() -> None:
    module = BinaryHashAttention(Dims(32, 4, 64, True), BinaryHashParams(chunk_size=8))
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        full = module(x, _ctx(19, True))
        state, outs = None, []
        for t in range(19):
            y, state = module.step(x[:, t], state)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_binary_hash_codes_are_binary_with_a_straight_through_gradient() -> None:
    module = BinaryHashAttention(Dims(32, 4, 64, True), BinaryHashParams())
    q = torch.randn(2, 4, 10, 8, requires_grad=True)
    codes = module.hash_codes(q)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    codes.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert module.hash_weight.grad is not None and module.hash_weight.grad.abs().sum() > 0


def test_binary_hash_causal_padding_gradients_overfit() -> None:
    _causal_perturbation(_spec("decoder", "binary_hash"))
    _padding_invariance(_spec("encoder", "binary_hash", "learned"))
    _grads_everywhere(_spec("decoder", "binary_hash"))
    first, last = _overfit(_spec("decoder", "binary_hash"), steps=60)
    assert last < 0.5 * first, (first, last)
