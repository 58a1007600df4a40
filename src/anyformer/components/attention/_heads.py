"""Plumbing shared by the softmax-family variants (differential, gated, clipped_softmax,
collapsed, symmetric, urpe, complex, tensor_3way): head splitting, the masks a context
asks for, and the softmax core (fused or reference) that several variants wrap.

Registers nothing. The fused q/k/v projection of :class:`QKVHeads` has the same
parameter names and layout as :class:`~anyformer.components.attention.softmax.SoftmaxAttention`
(``qkv``, ``out``), so weights can be copied between them in equivalence tests.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.attention.softmax import (
    cached_bias,
    extend_cache,
    key_mask,
    masked_bias,
    reference_attention,
)
from anyformer.components.base import Context
from anyformer.nn import causal_mask, combine_masks
from anyformer.registry import Dims

Impl = Literal["sdpa", "reference"]


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, H*D]`` -> ``[B, H, T, D]``."""
    b, t, _ = x.shape
    return x.reshape(b, t, n_heads, -1).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, T, H*D]``."""
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d)


def allowed_mask(ctx: Context, t: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = query may see key), broadcastable to ``[B, H, T, T]``:
    the causal mask when ``ctx.causal``, AND the key-padding mask, AND (packed rows) the
    same-document mask; ``None`` if none applies."""
    return combine_masks(causal_mask(t, device=device) if ctx.causal else None, key_mask(ctx))


def context_bias(
    ctx: Context, t: int, dtype: torch.dtype, device: torch.device, position_bias: bool = True
) -> torch.Tensor | None:
    """Additive score bias: the positional scheme's ``score_bias`` (if ``position_bias``)
    plus a very negative value where :func:`allowed_mask` forbids attention."""
    pos = ctx.bias_positions()
    bias = ctx.position.score_bias(pos, pos) if position_bias else None
    return masked_bias(bias, allowed_mask(ctx, t, device), dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: Context,
    impl: Impl = "sdpa",
    dropout: float = 0.0,
    training: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T + position bias + masks) v on ``[B, H, T, D]`` tensors.

    ``scale`` defaults to ``1/sqrt(q.shape[-1])``. ``impl='sdpa'`` uses the fused
    kernel, ``'reference'`` the explicit :func:`reference_attention`; they agree.
    With ``ctx.cache`` the keys and values (``k``/``v`` already rotated) are appended to
    this call's cache slot and the new queries attend over all cached ones.
    """
    t = q.shape[-2]
    if scale is not None:
        q = q * (scale * math.sqrt(q.shape[-1]))
    drop = dropout if training else 0.0
    if ctx.cache is not None:
        k, v, key_positions = extend_cache(ctx, k, v)
        full = cached_bias(ctx, key_positions, q.dtype)
    else:
        pos = ctx.bias_positions()
        bias = ctx.position.score_bias(pos, pos)
        if impl == "sdpa" and bias is None and ctx.padding_mask is None and ctx.segments is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=ctx.causal)
        full = masked_bias(bias, allowed_mask(ctx, t, q.device), q.dtype)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=drop)
    return reference_attention(q, k, v, full, dropout, training)


class QKVHeads(nn.Module):
    """Base of the variants that keep the usual fused q/k/v projection and an output
    projection: ``qkv: d_model -> 3 d_model`` (q, k, v in that order) and
    ``out: d_model -> d_model`` (a residual projection)."""

    def __init__(self, dims: Dims) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.dropout = dims.dropout
        d = dims.n_heads * dims.d_head
        self.qkv = nn.Linear(dims.d_model, 3 * d, bias=dims.bias)
        self.out = nn.Linear(d, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, H, T, d_head]``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = self.n_heads
        return split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def projection_flops(self) -> int:
        """Forward FLOPs per token of the q/k/v and output projections."""
        return 2 * (
            self.qkv.in_features * self.qkv.out_features
            + self.out.in_features * self.out.out_features
        )

    def flops_per_token(self, seq_len: int) -> int:
        """Projections plus scores and weighted sum over ``seq_len`` keys."""
        return self.projection_flops() + 4 * seq_len * self.n_heads * self.d_head
