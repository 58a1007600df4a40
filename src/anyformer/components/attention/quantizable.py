"""Attention that can "do nothing" without outliers: gated attention and clipped softmax.

Both from "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do
Nothing", Bondarenko, Nagel and Blankevoort, 2023. A head that wants no update has to
push its softmax inputs to extremes to reach (near) zero weights, which grows outliers
in the residual stream; a sigmoid gate on the head's output (``gated``) or a stretched,
clipped softmax that reaches exact zeros (``clipped_softmax``) removes that pressure.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.components.attention.common import (
    Impl,
    attend,
    cached_bias,
    context_bias,
    extend_cache,
    merge_heads,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register

PAPER = Paper(
    "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do Nothing",
    2023,
    "Bondarenko, Nagel & Blankevoort",
)


# --------------------------------------------------------------------------- gated
class GatedParams(BaseModel):
    """``gate_bias_init``: initial bias b_init of every head's gate, so the gates start at
    sigmoid(b_init) (0 -> 0.5; the paper finds sigmoid(b_init) in about [0.1, 0.9] works).
    ``impl``: ``fast`` (fused kernel) or ``reference`` (explicit softmax), tested equal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gate_bias_init: float = 0.0
    impl: Impl = "fast"


@register(
    "attention",
    "gated",
    paper=PAPER,
    summary="softmax attention whose per-head output is scaled by a sigmoid gate of the "
    "input, so a head can switch itself off",
    params=GatedParams,
    caps=Capabilities(packing=True, complexity="O(n^2)", kv_cache=True, prefix=True),
)
class GatedAttention(QKVHeads):
    """y_h = sigmoid(G_h(x)) * softmax(Q_h K_h^T / sqrt(d_head) + B) V_h, then the output
    projection.

    The gate of head h at token t is ``G_h(x_t) = w_h . x_t[h] + b_h``: a linear map of the
    head's own ``d_head``-slice of the input token (the paper's "Linear" gate: shared over
    positions, not over heads; ``n_heads * (d_head + 1)`` extra parameters). The gate bias
    exists even when ``model.bias`` is false: it sets the initial openness. With a large
    ``gate_bias_init`` the gate is 1 and the layer is exactly softmax attention.

    Paper: "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do
    Nothing", Bondarenko et al., 2023. Not supported: grouped key/value heads, the
    paper's MLP-shaped gate variants. Decodes with a KV cache; accepts packed rows.
    """

    def __init__(self, dims: Dims, params: GatedParams) -> None:
        super().__init__(dims)
        self.impl = params.impl
        self.gate_weight = nn.Parameter(torch.randn(dims.n_heads, dims.d_head) * 0.02)
        self.gate_bias = nn.Parameter(torch.full((dims.n_heads,), params.gate_bias_init))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate probabilities ``[B, H, T, 1]`` from the input ``[B, T, D]``."""
        b, t, _ = x.shape
        heads = x.reshape(b, t, self.n_heads, self.d_head)
        logits = torch.einsum("bthd,hd->bht", heads, self.gate_weight)
        return torch.sigmoid(logits + self.gate_bias[:, None]).unsqueeze(-1)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        y = attend(q, k, v, ctx, self.impl, self.dropout, self.training)
        return self.out(merge_heads(self.gate(x) * y))

    def flops_per_token(self, seq_len: int) -> int:
        return super().flops_per_token(seq_len) + 2 * self.n_heads * self.d_head


# --------------------------------------------------------------------------- clipped
def clipped_softmax(scores: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """clip((zeta - gamma) * softmax(scores) + gamma, 0, 1) over the last dimension.

    Probabilities below ``-gamma / (zeta - gamma)`` become exactly 0 and those above
    ``(1 - gamma) / (zeta - gamma)`` exactly 1; ``gamma = 0, zeta = 1`` is the softmax.
    """
    probs = scores.softmax(dim=-1)
    return ((zeta - gamma) * probs + gamma).clamp(0.0, 1.0)


class ClippedSoftmaxParams(BaseModel):
    """``alpha``: sets the lower stretch gamma = -alpha / max_len (the paper's
    length-scaled parameterisation; alpha in [2, 4] worked across lengths; 4 with length
    128 gives their gamma ~ -0.03). ``gamma``: an explicit gamma <= 0 that overrides
    ``alpha``. ``zeta``: upper stretch >= 1 (the paper finds zeta > 1 unnecessary, so 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(4.0, ge=0.0)
    gamma: float | None = Field(None, le=0.0)
    zeta: float = Field(1.0, ge=1.0)


@register(
    "attention",
    "clipped_softmax",
    paper=PAPER,
    summary="softmax attention with probabilities stretched to (gamma, zeta) and clipped "
    "to [0, 1], so exact zeros need no extreme scores",
    params=ClippedSoftmaxParams,
    caps=Capabilities(packing=True, complexity="O(n^2)", kv_cache=True, prefix=True),
)
class ClippedSoftmaxAttention(QKVHeads):
    """clip((zeta - gamma) softmax(Q K^T / sqrt(d_head) + B) + gamma, 0, 1) V per head.

    gamma < 0 lets small weights become exactly zero (and clipped entries pass no
    gradient, so scores stop growing); zeta > 1 lets large weights become exactly one.
    Rows no longer sum to one. gamma = -alpha / T with T the model's ``max_len`` (the
    paper's "maximum sequence length"), fixed per model so that a token's output does not
    depend on how many tokens follow it. Masked keys get probability 0 before stretching
    and so stay exactly 0 after clipping.

    Paper: "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do
    Nothing", Bondarenko et al., 2023. Not supported: a fused kernel (this is the explicit
    reference form), grouped key/value heads. Decodes with a KV cache; accepts packed rows.
    """

    def __init__(self, dims: Dims, params: ClippedSoftmaxParams) -> None:
        super().__init__(dims)
        self.gamma = params.gamma if params.gamma is not None else -params.alpha / dims.max_len
        self.zeta = params.zeta

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        if ctx.cache is not None:
            k, v, key_positions = extend_cache(ctx, k, v)
            bias = cached_bias(ctx, key_positions, q.dtype)
        else:
            bias = context_bias(ctx, x.shape[1], q.dtype, x.device)
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5
        if bias is not None:
            scores = scores + bias
        probs = clipped_softmax(scores, self.gamma, self.zeta)
        if self.dropout and self.training:
            probs = nn.functional.dropout(probs, self.dropout)
        return self.out(merge_heads(probs @ v))


__all__ = ["ClippedSoftmaxAttention", "GatedAttention", "clipped_softmax"]
