"""Higher-order attention: each query attends to pairs of keys (exact cubic form)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.attention.common import allowed_mask, merge_heads
from anyformer.components.attention.qkv import linear_flops, project_qkv, qkv_projection
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, NoParams, Paper, register

#: Longest sequence the exact O(n^3) form accepts.
MAX_LEN = 256


def pair_mask(allowed: torch.Tensor | None) -> torch.Tensor | None:
    """From a query-key mask ``[..., T, T]`` to a query-pair mask ``[..., T, T, T]``:
    query i may use pair (j, k) when it may see j and k."""
    if allowed is None:
        return None
    return allowed.unsqueeze(-1) & allowed.unsqueeze(-2)


def tensor_attention(
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    v1: torch.Tensor,
    v2: torch.Tensor,
    allowed: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """out_i = sum_{j,k} P_ijk (v1_j * v2_k), P_i = softmax over pairs (j, k) of
    s_ijk = sum_d q_id k1_jd k2_kd / sqrt(d), on ``[B, H, T, d]`` tensors.

    ``allowed`` (boolean, broadcastable to ``[B, H, T, T]``) says which keys a query may
    see; a pair is allowed when both of its keys are.
    """
    b, h, t, d = q.shape
    scores = torch.einsum("bhid,bhjd,bhkd->bhijk", q, k1, k2) / math.sqrt(d)
    pairs = pair_mask(allowed)
    if pairs is not None:  # in place of an additive O(n^3) bias tensor (as masked_bias makes)
        scores = scores.masked_fill(~pairs, torch.finfo(scores.dtype).min / 2)
    probs = scores.flatten(-2).softmax(-1).view(b, h, t, t, t)
    if dropout and training:
        probs = F.dropout(probs, dropout)
    inner = probs @ v2.unsqueeze(2)  # [B, H, i, j, d]: sum_k P_ijk v2_k
    return (inner * v1.unsqueeze(2)).sum(-2)


@register(
    "attention",
    "tensor_3way",
    paper=Paper(
        "How to Capture Higher-order Correlations? Generalizing Matrix Softmax Attention "
        "to Kronecker Computation",
        2023,
        "Alman & Song",
    ),
    summary="third-order attention: each query scores pairs of keys with a trilinear form, "
    "softmax over all n^2 pairs (exact, cubic cost, short sequences only)",
    caps=Capabilities(complexity="O(n^3)", position_modes=("none", "embed"), max_len=MAX_LEN),
)
class Tensor3WayAttention(nn.Module):
    """out_i = sum_{j,k} softmax_{(j,k)}(<q_i, k1_j, k2_k> / sqrt(d_head)) (v1_j * v2_k) per
    head, then the output projection.

    The "tensor-type" attention D^{-1} exp(Q (K1 (x) K2)^T) (V1 (x) V2) of Alman and Song,
    with (x) the row-wise Kronecker (column-wise Khatri-Rao) product: the score of query i
    and key pair (j, k) is the trilinear form sum_d q_id k1_jd k2_kd, and the value of a
    pair is the elementwise product v1_j * v2_k. Computed exactly, so time O(n^3 d) and
    memory O(n^3) per head: sequences are limited to 256 tokens. In a decoder query i uses
    pairs with j, k <= i; padded keys take part in no pair. Scaled by 1/sqrt(d_head) (the
    paper's analysis uses exp(. / d)).

    Paper: "How to Capture Higher-order Correlations? Generalizing Matrix Softmax Attention
    to Kronecker Computation", Alman and Song, 2023. Not supported: the paper's
    near-linear approximation for bounded entries, rotary or bias positions (a trilinear
    score has no relative-position form; use ``embed`` schemes or none), KV cache.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.dropout = dims.dropout
        d = dims.n_heads * dims.d_head
        self.qkv = qkv_projection(dims, parts=5)  # q, k1, k2, v1, v2
        self.out = nn.Linear(d, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    @staticmethod
    def check_dims(params: NoParams, dims: Dims) -> str | None:
        if dims.max_len > MAX_LEN:
            return f"tensor_3way is O(n^3); max_len={dims.max_len} exceeds its limit {MAX_LEN}"
        return None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        t = x.shape[1]
        if t > MAX_LEN:
            raise ValueError(
                f"tensor_3way is O(n^3); a sequence of {t} tokens exceeds its limit {MAX_LEN}"
            )
        q, k1, k2, v1, v2 = project_qkv(self.qkv, x)
        allowed = allowed_mask(ctx, t, x.device)
        y = tensor_attention(q, k1, k2, v1, v2, allowed, self.dropout, self.training)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Projections; n^2 pair scores and the pair-weighted sum per query."""
        proj = linear_flops(self.qkv, self.out)
        return proj + 4 * seq_len * seq_len * self.n_heads * self.d_head


__all__ = ["Tensor3WayAttention", "pair_mask", "tensor_attention"]
