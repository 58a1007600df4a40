"""Cross-attention (encoder–decoder attention): the decoder's tokens attend over the
encoder's output.

Registered in the ``attention`` slot with the capability ``memory``: it is a block's
cross-attention sublayer (``model.cross_attention`` of ``kind: encoder_decoder``), never
a self-attention mixer (validation refuses it there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anyformer.components.attention.common import masked_bias, merge_heads
from anyformer.components.attention.qkv import linear_flops, project_qkv, qkv_projection
from anyformer.components.base import Context
from anyformer.nn import padding_to_key_mask
from anyformer.registry import Capabilities, Dims, Paper, register


class CrossParams(BaseModel):
    """``kv_heads``: key/value heads over the memory (``None`` = one per query head;
    fewer: grouped/multi-query cross-attention)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kv_heads: PositiveInt | None = None


@register(
    "attention",
    "cross",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="cross-attention: decoder queries over the encoder's output (ctx.memory), "
    "memory keys/values computed once per layer when decoding with a cache",
    params=CrossParams,
    caps=Capabilities(complexity="O(n m)", kv_cache=True, memory=True),
)
class CrossAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head) + M) V per head, then an output projection, where the
    queries Q come from the decoder's tokens ``x`` and the keys K and values V from the
    encoder's output ``ctx.memory [B, S, D]``; ``M`` hides padded source tokens
    (``ctx.memory_mask [B, S]``, True at real ones). Every target token sees every real
    source token, so the sublayer is causal-safe in the decoder.

    No positional scheme acts on the scores: positions reach the decoder through its
    self-attention and embeddings and the encoder through its own (as in the paper and in
    T5). With ``ctx.cache`` (cached decoding) the memory's keys and values are computed
    on the first call and kept in this call's cache slot, then reused at every new token.

    Paper: "Attention Is All You Need", Vaswani et al., 2017 (section 3.2.3,
    "encoder-decoder attention").
    """

    def __init__(self, dims: Dims, params: CrossParams) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.kv_heads = params.kv_heads or dims.n_heads
        self.d_head = dims.d_head
        self.dropout = dims.dropout
        self.q = qkv_projection(dims, groups=(dims.n_heads,))
        self.kv = qkv_projection(dims, groups=(self.kv_heads, self.kv_heads))
        self.out = nn.Linear(dims.n_heads * dims.d_head, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    @staticmethod
    def check_dims(params: CrossParams, dims: Dims) -> str | None:
        kv = params.kv_heads
        if kv is not None and (kv > dims.n_heads or dims.n_heads % kv):
            return f"kv_heads={kv} must divide n_heads={dims.n_heads}"
        return None

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, kv_heads, S, d_head]`` of the encoder's output."""
        k, v = project_qkv(self.kv, memory)
        return k, v

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.memory is None:
            raise ValueError(
                "cross attention reads the encoder's output (ctx.memory), and this context "
                "has none: pass source= (or memory=) to an encoder_decoder model"
            )
        (q,) = project_qkv(self.q, x)
        if ctx.cache is not None:
            slot = ctx.cache.slot()
            if slot.state is None:  # first call (the prompt): once per layer
                slot.state = self.memory_kv(ctx.memory)
            k, v = slot.state
            ctx.cache.masked()  # decoder padding never enters the memory's keys
        else:
            k, v = self.memory_kv(ctx.memory)
        if self.kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
        mask = ctx.memory_mask
        bias = masked_bias(None, padding_to_key_mask(mask) if mask is not None else None, q.dtype)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Projections (the memory's keys and values counted per target token, as if
        the source were as long as the target) plus scores and weighted sum over
        ``seq_len`` memory tokens."""
        return linear_flops(self.q, self.kv, self.out) + 4 * seq_len * self.n_heads * self.d_head


__all__ = ["CrossAttention", "CrossParams"]
