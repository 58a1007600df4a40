"""Query-sparse attention: Informer's ProbSparse self-attention."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt

from anyformer.components.attention.common import Impl, ImplCheck, masked_bias, merge_heads
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register


class ProbSparseParams(BaseModel):
    """Parameters of ``prob_sparse`` attention.

    - ``factor``: Informer's sampling factor c. ``u = c * ceil(ln n)`` queries are active
      (n = real tokens, or in a decoder the real tokens up to the query) and
      ``c * ceil(ln max_len)`` keys are sampled per query for the sparsity measurement.
      A factor large enough that ``u >= n`` makes every query active (= softmax attention).
    - ``impl``: ``fast`` (measurement on sampled keys, full attention computed only for
      the active queries) or ``reference`` (exact measurement over all keys, dense
      attention for every query, lazy rows replaced afterwards); ``sampled`` is the
      deprecated name of ``fast``. The two pick the same active queries only when the
      samples find each query's top scores; with every query active (``factor`` large)
      both are softmax attention.
    - ``seed``: seed of the fixed key-sample table; layer ``l`` draws from
      ``torch.Generator().manual_seed(seed * 1_000_003 + l)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (every query active, where the sampled measurement cannot change the result
    #: and the gathered attention must still equal the dense one)
    IMPL_CHECK: ClassVar[ImplCheck] = ({"factor": 100},)
    factor: PositiveInt = 5
    impl: Impl = "fast"
    seed: int = 0


def n_active(factor: int, n: torch.Tensor) -> torch.Tensor:
    """Informer's active-query budget ``u = min(c * ceil(ln n), n)``, at least 1 (integer tensor)."""
    n = n.clamp(min=1)
    u = factor * torch.ceil(torch.log(n.to(torch.float64))).long()
    return torch.minimum(u.clamp(min=1), n.long())


def prefix_rank(m: torch.Tensor, cap: int | None = None, chunk: int = 256) -> torch.Tensor:
    """``rank[..., i] = #{j < i : m[..., j] >= m[..., i]}`` (earlier entries win ties),
    capped at ``cap``: the rank of each entry among the entries before it, which is what
    a streaming top-u needs (entry i is in the top u of its prefix iff ``rank < u``).

    Without ``cap``: O(T^2) comparisons, ``chunk`` queries at a time (the reference).
    With ``cap``: only the ``cap`` largest values before each chunk can matter (if all of
    them are >= m_i, the rank is >= cap anyway), so each chunk compares against those
    and against itself: O(T (cap + chunk)) comparisons.
    """
    t = m.shape[-1]
    out = []
    j = torch.arange(t, device=m.device)
    top = m.new_full((*m.shape[:-1], 0), float("-inf"))  # the cap largest before the chunk
    for a in range(0, t, chunk):
        b = min(t, a + chunk)
        i = torch.arange(a, b, device=m.device)
        cur = m[..., a:b]
        earlier = j[None, a:b] < i[:, None]  # [C, C]
        within = ((m[..., None, a:b] >= cur[..., :, None]) & earlier).sum(-1)
        if cap is None:
            before = (m[..., None, :a] >= cur[..., :, None]).sum(-1)
            out.append(within + before)
            continue
        before = (top[..., None, :] >= cur[..., :, None]).sum(-1)
        out.append((within + before).clamp(max=cap))
        merged = torch.cat((top, cur), dim=-1)
        top = merged.topk(min(cap, merged.shape[-1]), dim=-1).values
    return torch.cat(out, dim=-1)


def lazy_output(v: torch.Tensor, real: torch.Tensor, causal: bool) -> torch.Tensor:
    """What a lazy query outputs: mean of the real values (bidirectional) or their
    cumulative mean up to the query (causal). ``v`` ``[B, H, T, D]``, ``real`` ``[B, T]``."""
    w = real[:, None, :, None].to(v.dtype)
    if causal:
        return (v * w).cumsum(2) / w.cumsum(2).clamp(min=1)
    mean = (v * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp(min=1)
    return mean.expand_as(v)


@register(
    "attention",
    "prob_sparse",
    paper=Paper(
        "Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting",
        2021,
        "Zhou et al.",
    ),
    summary="ProbSparse: only the top-u queries by max-minus-mean score get softmax "
    "attention, the rest output the mean of V (cumulative mean when causal)",
    params=ProbSparseParams,
    caps=Capabilities(complexity="O(n log n)"),
)
class ProbSparseAttention(QKVHeads):
    """Informer's ProbSparse self-attention.

    Each query's sparsity measurement is ``M(q_i, K) = max_j s_ij - mean_j s_ij`` with
    ``s_ij = q_i . k_j / sqrt(d_head) + bias_ij``, computed on ``c ln(max_len)`` keys drawn
    per query from a fixed seeded table (``impl=fast``), or exactly over all keys
    (``impl=reference``). The ``u = c ceil(ln n)`` queries with the largest M ("active")
    get ordinary softmax attention; every other ("lazy") query outputs the mean of the
    values. Layout as :class:`SoftmaxAttention` (one fused qkv projection, an output
    projection), so weights transfer; with ``u >= n`` it *is* softmax attention.

    Padding: the measurement, the mean and the budget ``u`` use real tokens only, and the
    samples are drawn among the real keys, so padding never changes real tokens.

    Causal safety (our choice, documented): Informer's decoder measures M on keys from
    the whole sequence and ranks all queries together, so whether query i is active
    depends on later tokens. Here, in causal mode, (1) M is measured on keys ``j <= i``
    only, (2) the budget is the prefix budget ``u_i = c ceil(ln n_i)`` with ``n_i`` the real
    tokens up to i, and (3) query i is active when fewer than ``u_i`` earlier queries
    have a measurement at least as large (a streaming top-u). Lazy queries output the
    cumulative mean of the values (Informer's code uses the cumulative sum; the mean keeps
    the scale of the bidirectional case). The activity test compares each query with the
    u largest earlier measurements and its own chunk (:func:`prefix_rank`), O(n (u + 256)).
    The number of active queries is then about ``u (1 + ln(n / u))`` instead of u.

    Paper: "Informer: Beyond Efficient Transformer for Long Sequence Time-Series
    Forecasting", Zhou et al., 2021. Not supported: self-attention distilling and the
    generative decoder (other parts of Informer), KV-cache decoding.
    """

    def __init__(self, dims: Dims, params: ProbSparseParams) -> None:
        super().__init__(dims)
        self.factor = params.factor
        self.impl = params.impl
        self.max_len = dims.max_len
        n_samples = params.factor * max(1, math.ceil(math.log(dims.max_len)))
        gen = torch.Generator().manual_seed(params.seed * 1_000_003 + dims.layer)
        table = torch.rand(dims.max_len, n_samples, generator=gen, dtype=torch.float64)
        self.register_buffer("sample_table", table, persistent=False)

    # ------------------------------------------------------------------ measurement
    def exact_measurement(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        bias: torch.Tensor | None,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """``max - mean`` of each query's scores over all its allowed keys, ``[B, H, T]``."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if bias is not None:
            scores = scores + bias
        count = allowed.sum(-1).clamp(min=1)
        top = scores.masked_fill(~allowed, float("-inf")).amax(-1)
        mean = scores.masked_fill(~allowed, 0.0).sum(-1) / count
        return top - mean

    def sampled_measurement(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        bias: torch.Tensor | None,
        real: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        """``max - mean`` over sampled keys, ``[B, H, T]``.

        Sample s of query i is the ``floor(r_is * n_i)``-th real key, ``r`` the fixed
        table and ``n_i`` the real keys available to i (all of them, or those ``<= i``).
        """
        b, h, t, d = q.shape
        realf = real.long()
        available = realf.cumsum(1) if causal else realf.sum(1, keepdim=True).expand(b, t)
        # positions of the real keys in order, then the padded ones
        order = torch.argsort((~real).long(), dim=1, stable=True)  # [B, T]
        r = self.sample_table[:t].to(q.device)  # [T, S]
        rank = (r[None] * available[:, :, None]).long()  # [B, T, S]
        rank = torch.minimum(rank, (available[:, :, None] - 1).clamp(min=0))
        index = torch.gather(order, 1, rank.reshape(b, -1)).reshape(b, t, -1)
        # rows of [B*T, H, D] are contiguous, so picking keys is a fast index_select
        flat_k = k.transpose(1, 2).reshape(b * t, h, d)
        flat_q = q.transpose(1, 2).reshape(b * t, h, d) / math.sqrt(d)
        index = index + torch.arange(b, device=q.device)[:, None, None] * t
        top = torch.full((b * t, h), float("-inf"), dtype=q.dtype, device=q.device)
        total = torch.zeros((b * t, h), dtype=q.dtype, device=q.device)
        rows = torch.arange(t, device=q.device).repeat(b)
        for s in range(index.shape[-1]):
            idx = index[:, :, s].reshape(-1)  # [B*T] flat key rows
            score = (flat_q * flat_k.index_select(0, idx)).sum(-1)  # [B*T, H]
            if bias is not None:
                score = score + bias[:, rows, idx % t].T
            top = torch.maximum(top, score)
            total = total + score
        m = top - total / index.shape[-1]
        return m.view(b, t, h).transpose(1, 2)

    # ------------------------------------------------------------------ selection
    def active_queries(self, m: torch.Tensor, real: torch.Tensor, causal: bool) -> torch.Tensor:
        """Boolean ``[B, H, T]``: which queries get full attention."""
        m = m.masked_fill(~real[:, None, :], float("-inf"))
        if causal:
            budget = n_active(self.factor, real.long().cumsum(1))[:, None, :]  # [B, 1, T]
            cap = int(budget.max()) if budget.numel() else 1
            return (prefix_rank(m, cap) < budget) & real[:, None, :]
        budget = n_active(self.factor, real.long().sum(1))[:, None, None]  # [B, 1, 1]
        order = torch.argsort(m, dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(m.shape[-1], device=m.device).expand_as(order))
        return rank < budget

    # ------------------------------------------------------------------ attention
    def _probs(self, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(-1)
        if self.dropout and self.training:
            probs = F.dropout(probs, self.dropout)
        return probs

    def attend_dense(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        active: torch.Tensor,
        lazy: torch.Tensor,
        bias: torch.Tensor | None,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Reference: softmax attention for every query, then lazy rows replaced."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        scores = scores + masked_bias(bias, allowed, q.dtype)
        y = self._probs(scores) @ v
        return torch.where(active[..., None], y, lazy)

    def attend_gathered(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        active: torch.Tensor,
        lazy: torch.Tensor,
        bias: torch.Tensor | None,
        real: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        """Fast: softmax attention computed only for the active queries (gather, scatter)."""
        b, h, t, d = q.shape
        counts = active.sum(-1)  # [B, H]
        u = int(counts.max()) if counts.numel() else 0
        if u == 0:
            return lazy
        # active positions first (in order), then the lazy ones
        idx = torch.argsort((~active).long(), dim=-1, stable=True)[..., :u]  # [B, H, U]
        valid = torch.arange(u, device=q.device) < counts[..., None]
        rows_d = idx[..., None].expand(b, h, u, d)
        scores = torch.gather(q, 2, rows_d) @ k.transpose(-1, -2) / math.sqrt(d)  # [B,H,U,T]
        rows_bias = None
        if bias is not None:
            rows_bias = torch.gather(bias.expand(b, h, t, t), 2, idx[..., None].expand(b, h, u, t))
        allowed = real[:, None, None, :]
        if causal:
            allowed = allowed & (torch.arange(t, device=q.device) <= idx[..., None])
        scores = scores + masked_bias(rows_bias, allowed, q.dtype)
        ya = self._probs(scores) @ v
        ya = torch.where(valid[..., None], ya, torch.gather(lazy, 2, rows_d))
        return lazy.scatter(2, rows_d, ya)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.max_len:
            raise ValueError(
                f"prob_sparse: sequence length {t} exceeds model.max_len={self.max_len} "
                f"(its key-sample table has max_len rows)"
            )
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        bias = ctx.position.score_bias(ctx.positions, ctx.positions)
        real = (
            ctx.padding_mask.bool()
            if ctx.padding_mask is not None
            else torch.ones(b, t, dtype=torch.bool, device=x.device)
        )
        lazy = lazy_output(v, real, ctx.causal)
        if self.impl == "reference":
            allowed = real[:, None, None, :]
            if ctx.causal:
                allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            with torch.no_grad():
                m = self.exact_measurement(q, k, bias, allowed)
                active = self.active_queries(m, real, ctx.causal)
            y = self.attend_dense(q, k, v, active, lazy, bias, allowed)
        else:
            with torch.no_grad():
                m = self.sampled_measurement(q, k, bias, real, ctx.causal)
                active = self.active_queries(m, real, ctx.causal)
            y = self.attend_gathered(q, k, v, active, lazy, bias, real, ctx.causal)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, the sampled measurement, and full rows for ~u of seq_len queries."""
        proj = self.projection_flops()
        width = self.n_heads * self.d_head
        samples = self.sample_table.shape[1]
        u = self.factor * max(1, math.ceil(math.log(max(seq_len, 1))))
        rows = min(u, seq_len) / max(seq_len, 1)
        return proj + 2 * samples * width + int(4 * seq_len * width * rows)
