"""Multi-head softmax attention with grouped/multi-query key-value heads."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anyformer.components.base import Context
from anyformer.nn import causal_mask, combine_masks, padding_to_key_mask
from anyformer.nn.kv_cache import KVBuffer, cached_key_mask
from anyformer.nn.packing import segment_mask
from anyformer.registry import Capabilities, Dims, Paper, register


class SoftmaxParams(BaseModel):
    """``kv_heads``: key/value heads (``None`` = one per query head; 1 = multi-query).
    ``impl``: ``sdpa`` (fused ``scaled_dot_product_attention``) or ``reference``
    (explicit matmul-softmax-matmul, the readable form the fast path is tested against)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kv_heads: PositiveInt | None = None
    impl: Literal["sdpa", "reference"] = "sdpa"


def masked_bias(
    bias: torch.Tensor | None, allowed: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """Fold a boolean ``allowed`` mask into an additive float bias (very negative where not allowed)."""
    if allowed is None:
        return bias
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    blocked = blocked.masked_fill(~allowed, torch.finfo(dtype).min / 2)
    return blocked if bias is None else bias.to(dtype) + blocked


def key_mask(ctx: Context) -> torch.Tensor | None:
    """Boolean mask of the keys each query may see besides causality: real (unpadded) keys
    ``[B, 1, 1, T]`` and, in packed rows, keys of the same document ``[B, 1, T, T]``."""
    keys = padding_to_key_mask(ctx.padding_mask) if ctx.padding_mask is not None else None
    docs = segment_mask(ctx.segments) if ctx.segments is not None else None
    return combine_masks(keys, docs)


def attention_bias(
    ctx: Context, t: int, dtype: torch.dtype, device: torch.device, position_bias: bool = True
) -> tuple[torch.Tensor | None, bool]:
    """``(bias, is_causal)`` for self-attention over ``t`` tokens without a cache.

    ``bias`` is the positional score bias (if ``position_bias``) plus a very negative
    value where the causal, padding or document mask forbids attention; when there is
    nothing but (possibly) causality it is ``None`` and ``is_causal`` says whether the
    causal mask still has to be applied (so SDPA can use its fused causal path).
    """
    pos = ctx.bias_positions()
    bias = ctx.position.score_bias(pos, pos) if position_bias else None
    keys = key_mask(ctx)
    if bias is None and keys is None:
        return None, ctx.causal
    allowed = combine_masks(causal_mask(t, device=device) if ctx.causal else None, keys)
    return masked_bias(bias, allowed, dtype), False


def extend_cache(
    ctx: Context, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the new keys/values ``[B, G, T, D]`` (already rotated) to this call's slot of
    ``ctx.cache``; returns all keys, values and key positions the new queries may see."""
    if not ctx.causal:
        raise ValueError("a KV cache is for causal decoding; this attention is bidirectional")
    if ctx.padding_mask is not None or ctx.segments is not None:
        raise ValueError("cached decoding takes unpadded, unpacked rows (no padding_mask/segments)")
    slot = ctx.cache.slot()  # type: ignore[union-attr]
    if slot.state is None:
        slot.state = KVBuffer(window, capacity=ctx.cache.capacity)  # type: ignore[union-attr]
    return slot.state.extend(k, v, ctx.positions)


def cached_bias(
    ctx: Context,
    key_positions: torch.Tensor,
    dtype: torch.dtype,
    window: int | None = None,
    position_bias: bool = True,
) -> torch.Tensor | None:
    """Additive bias of the new queries over cached keys: score bias plus the causal (and
    window) mask from absolute positions, and the cache's ``key_mask`` of padded rows
    ``[B, 1, Tq, Tk]``; ``None`` when nothing needs masking."""
    bias = ctx.position.score_bias(ctx.positions, key_positions) if position_bias else None
    allowed = cached_key_mask(ctx.positions, key_positions, window)
    cache = ctx.cache
    if cache is not None and cache.key_mask is not None:  # rows padded at the front
        real = cache.key_mask[:, key_positions.clamp(min=0)][:, None, None, :]  # [B,1,1,Tk]
        allowed = real if allowed is None else allowed & real
        cache.masked()
    return masked_bias(bias, allowed, dtype)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, written out; q/k/v ``[B, H, T, D]``."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    if dropout and training:
        probs = F.dropout(probs, dropout)
    return probs @ v


@register(
    "attention",
    "softmax",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="multi-head scaled dot-product attention; grouped/multi-query heads via kv_heads "
    "(Shazeer 2019; Ainslie et al. 2023)",
    params=SoftmaxParams,
    caps=Capabilities(packing=True, complexity="O(n^2)", kv_cache=True),
)
class SoftmaxAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head) + B) V per head, then an output projection.

    Q, K, V come from one fused projection. With ``kv_heads = g < n_heads`` each group of
    ``n_heads / g`` query heads shares one key/value head ("Fast Transformer Decoding:
    One Write-Head is All You Need", Shazeer 2019; "GQA", Ainslie et al. 2023). The
    positional scheme in the context may rotate q/k or add a score bias B. Causal,
    bidirectional and key-padding masks are supported. Incremental decoding keeps the
    (rotated) keys and values of past tokens in a :class:`~anyformer.nn.kv_cache.KVBuffer`
    (``ctx.cache``); packed rows (``ctx.segments``) get a block-diagonal mask.

    Paper: "Attention Is All You Need", Vaswani et al., 2017.
    """

    def __init__(self, dims: Dims, params: SoftmaxParams) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.kv_heads = params.kv_heads or dims.n_heads
        self.d_head = dims.d_head
        self.impl = params.impl
        self.dropout = dims.dropout
        width = (self.n_heads + 2 * self.kv_heads) * self.d_head
        self.qkv = nn.Linear(dims.d_model, width, bias=dims.bias)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    @staticmethod
    def check_dims(params: SoftmaxParams, dims: Dims) -> str | None:
        kv = params.kv_heads
        if kv is not None and (kv > dims.n_heads or dims.n_heads % kv):
            return f"kv_heads={kv} must divide n_heads={dims.n_heads}"
        return None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, _ = x.shape
        h, g, d = self.n_heads, self.kv_heads, self.d_head
        heads = self.qkv(x).view(b, t, h + 2 * g, d).transpose(1, 2)
        q, k, v = heads.split((h, g, g), dim=1)  # [B, H or G, T, D]
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        if ctx.cache is not None:
            k, v, key_positions = extend_cache(ctx, k, v)
            full, is_causal = cached_bias(ctx, key_positions, q.dtype), False
        else:
            full, is_causal = attention_bias(ctx, t, q.dtype, x.device)
        if g != h:
            k = k.repeat_interleave(h // g, dim=1)
            v = v.repeat_interleave(h // g, dim=1)
        drop = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=full, dropout_p=drop, is_causal=is_causal
            )
        else:
            if is_causal:
                full = masked_bias(None, causal_mask(t, device=x.device), q.dtype)
            y = reference_attention(q, k, v, full, self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus scores and weighted sum over seq_len keys."""
        proj = 2 * self.qkv.in_features * self.qkv.out_features
        proj += 2 * self.out.in_features * self.out.out_features
        return proj + 4 * seq_len * self.n_heads * self.d_head
