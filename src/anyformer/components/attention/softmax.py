"""Multi-head softmax attention with grouped/multi-query key-value heads."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt

from anyformer.components.attention.common import (
    Impl,
    ImplCheck,
    QKVRecorder,
    attention_bias,
    cached_bias,
    extend_cache,
    masked_bias,
    merge_heads,
    reference_attention,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.nn import causal_mask
from anyformer.registry import Capabilities, Dims, Paper, register


class SoftmaxParams(BaseModel):
    """``kv_heads``: key/value heads (``None`` = one per query head; 1 = multi-query).
    ``impl``: ``fast`` (fused ``scaled_dot_product_attention``) or ``reference``
    (explicit matmul-softmax-matmul, the readable form the fast path is tested against;
    ``sdpa`` is the deprecated name of ``fast``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (one key/value head per query head, and grouped)
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"kv_heads": 1})
    kv_heads: PositiveInt | None = None
    impl: Impl = "fast"


@register(
    "attention",
    "softmax",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="multi-head scaled dot-product attention; grouped/multi-query heads via kv_heads "
    "(Shazeer 2019; Ainslie et al. 2023)",
    params=SoftmaxParams,
    caps=Capabilities(packing=True, complexity="O(n^2)", kv_cache=True, prefix=True),
)
class SoftmaxAttention(QKVHeads):
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

    #: Set by :func:`~anyformer.components.attention.common.recording` to receive this
    #: layer's ``(q, k, v, bias, is_causal)`` on every forward (knowledge distillation
    #: reads attention distributions and relations from it); ``None``: nothing recorded.
    record: QKVRecorder | None = None

    def __init__(self, dims: Dims, params: SoftmaxParams) -> None:
        super().__init__(dims, params.kv_heads)
        self.impl = params.impl

    @staticmethod
    def check_dims(params: SoftmaxParams, dims: Dims) -> str | None:
        kv = params.kv_heads
        if kv is not None and (kv > dims.n_heads or dims.n_heads % kv):
            return f"kv_heads={kv} must divide n_heads={dims.n_heads}"
        return None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        t = x.shape[1]
        h, g = self.n_heads, self.kv_heads
        q, k, v = self.project(x)  # [B, H or G, T, D]
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        if ctx.cache is not None:
            k, v, key_positions = extend_cache(ctx, k, v)
            full, is_causal = cached_bias(ctx, key_positions, q.dtype), False
        else:
            full, is_causal = attention_bias(ctx, t, q.dtype, x.device)
        if g != h:
            k = k.repeat_interleave(h // g, dim=1)
            v = v.repeat_interleave(h // g, dim=1)
        if self.record is not None:
            self.record(q, k, v, full, is_causal)
        drop = self.dropout if self.training else 0.0
        if self.impl == "fast":
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=full, dropout_p=drop, is_causal=is_causal
            )
        else:
            if is_causal:
                full = masked_bias(None, causal_mask(t, device=x.device), q.dtype)
            y = reference_attention(q, k, v, full, self.dropout, self.training)
        return self.out(merge_heads(y))
