"""Differential attention: the difference of two softmax maps cancels common-mode noise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.components.attention.common import Impl, attend, context_bias, merge_heads
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register


def lambda_init_schedule(layer: int) -> float:
    """The paper's lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for 1-based layer l;
    ``layer`` here is 0-based (``Dims.layer``), i.e. ``l - 1``."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def two_maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the last dimension (size d, a multiple of 4) into the channels of map 1 and
    map 2, each of size d/2, keeping every rotary pair (c, c + d/2) inside one map.

    Channel ``c = r*(d/2) + m*(d/4) + j`` belongs to map ``m``; within a map, the result is
    ordered ``[r=0 | r=1]`` so the pairs stay (c, c + d/4) for a further rotation."""
    parts = x.unflatten(-1, (2, 2, -1))  # (rotary half r, map m, j)
    return parts[..., :, 0, :].flatten(-2), parts[..., :, 1, :].flatten(-2)


class DifferentialParams(BaseModel):
    """``lambda_init``: the constant lambda_init; ``None`` uses the paper's depth schedule
    0.8 - 0.6 exp(-0.3 * layer) with the 0-based layer index (the paper's l - 1).
    ``impl``: ``fast`` (two fused softmax-attention calls, A1 V - lambda A2 V) or
    ``reference`` (the explicit map (A1 - lambda A2) applied to V); tested equal.
    ``eps``: epsilon of the per-head RMS norm."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    lambda_init: float | None = None
    impl: Impl = "fast"
    eps: PositiveFloat = 1e-5


@register(
    "attention",
    "differential",
    paper=Paper("Differential Transformer", 2024, "Ye et al."),
    summary="difference of two softmax maps from split q/k halves with a learned, "
    "re-parameterised lambda, then a per-head RMS norm",
    params=DifferentialParams,
    caps=Capabilities(complexity="O(n^2)", prefix=True),
)
class DifferentialAttention(QKVHeads):
    """y_h = (1 - lambda_init) RMSNorm((softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))) V)
    per head, then the output projection; d = d_head / 2.

    Each head's query and key (``d_head`` channels) are split into two halves (Q1, Q2;
    K1, K2) that give two attention maps over the same values (``d_head`` channels), so the
    parameter count equals softmax attention with the same ``n_heads`` (the paper instead
    halves the head count and doubles the value width). lambda is shared by the heads of a
    layer and re-parameterised as lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init
    with learned vectors in R^d (initialised N(0, 0.1^2)); lambda_init follows the depth
    schedule of the paper. The RMS norm is per head with a learned gain shared by heads.

    Positions: a rotary scheme rotates the full q/k before the split; the split keeps each
    rotary channel pair inside one map (map 1 gets the high, map 2 the low frequencies), so
    both maps stay relative-position encodings. A score bias is added to both maps.
    With dropout, ``reference`` drops entries of the difference map; ``fast`` drops each
    map independently.

    Paper: "Differential Transformer", Ye et al., 2024. Requires d_head divisible by 4.
    Not supported: grouped key/value heads, KV cache.
    """

    def __init__(self, dims: Dims, params: DifferentialParams) -> None:
        super().__init__(dims)
        self.impl = params.impl
        self.eps = params.eps
        self.lambda_init = (
            params.lambda_init
            if params.lambda_init is not None
            else lambda_init_schedule(dims.layer)
        )
        half = dims.d_head // 2
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.norm_weight = nn.Parameter(torch.ones(dims.d_head))

    @staticmethod
    def check_dims(params: DifferentialParams, dims: Dims) -> str | None:
        if dims.d_head % 4:
            return (
                f"differential splits each head into two q/k maps of whole rotary pairs, so "
                f"d_head = d_model/n_heads = {dims.d_head} must be a multiple of 4"
            )
        return None

    def lam(self) -> torch.Tensor:
        """The current lambda (a scalar tensor)."""
        one = torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
        two = torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
        return one - two + self.lambda_init

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        q1, q2 = two_maps(q)
        k1, k2 = two_maps(k)
        lam = self.lam().to(q.dtype)
        if self.impl == "fast":
            y1 = attend(q1, k1, v, ctx, "fast", self.dropout, self.training)
            y2 = attend(q2, k2, v, ctx, "fast", self.dropout, self.training)
            y = y1 - lam * y2
        else:
            scale = 1.0 / math.sqrt(q1.shape[-1])
            bias = context_bias(ctx, x.shape[1], q.dtype, x.device)
            s1 = q1 @ k1.transpose(-1, -2) * scale
            s2 = q2 @ k2.transpose(-1, -2) * scale
            if bias is not None:
                s1, s2 = s1 + bias, s2 + bias
            probs = s1.softmax(-1) - lam * s2.softmax(-1)
            if self.dropout and self.training:
                probs = F.dropout(probs, self.dropout)
            y = probs @ v
        y = F.rms_norm(y, (self.d_head,), self.norm_weight, self.eps) * (1.0 - self.lambda_init)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, two half-width score maps and two weighted sums over ``seq_len`` keys."""
        return self.projection_flops() + 6 * seq_len * self.n_heads * self.d_head


__all__ = ["DifferentialAttention", "lambda_init_schedule", "two_maps"]
