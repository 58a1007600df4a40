"""Prefix tuning: learned keys and values that every query of a layer can attend to.

"Prefix-Tuning: Optimizing Continuous Prompts for Generation", Li and Liang, 2021: each
softmax attention layer gets ``n_tokens`` learned key and value vectors per key/value
head, ``P_k, P_v [kv_heads, n, d_head]``, concatenated in front of the layer's own keys
and values; every query may attend to them (they are not rotated by the position scheme
and no mask hides them), the layer's own keys keep their causal and padding masks. The
paper reparameterises the prefix through an MLP for stable optimisation; here the
prefix is trained directly (their "without reparameterization" ablation), started from
``N(0, 1)`` scaled like the layer's keys would be. Only ``softmax`` is supported (it is
refused for other mixers by name); caches and packed rows are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.attention.common import attention_bias, masked_bias, merge_heads
from anyformer.errors import SpecError
from anyformer.model.transformer import mixer_name
from anyformer.nn import causal_mask

#: Mixers prefix tuning supports (the softmax family with its usual q/k/v heads)
PREFIX_MIXERS = ("softmax",)


class Prefix(nn.Module):
    """The learned ``keys`` and ``values`` ``[kv_heads, n, d_head]`` of one layer."""

    def __init__(self, kv_heads: int, n_tokens: int, d_head: int) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.randn(kv_heads, n_tokens, d_head) * 0.02)
        self.values = nn.Parameter(torch.randn(kv_heads, n_tokens, d_head) * 0.02)


def prefix_forward(mixer: nn.Module, x: torch.Tensor, ctx: Any) -> torch.Tensor:
    """Softmax attention over the layer's prefix and its own keys (see the module)."""
    if ctx.cache is not None or ctx.segments is not None:
        raise SpecError("adapter.kind=prefix: cached decoding and packed rows are not supported")
    b, t = x.shape[:2]
    h, g = mixer.n_heads, mixer.kv_heads
    q, k, v = mixer.project(x)
    q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
    bias, is_causal = attention_bias(ctx, t, q.dtype, x.device)
    if is_causal:
        bias = masked_bias(None, causal_mask(t, device=x.device), q.dtype)
    if bias is None:
        bias = torch.zeros(t, t, dtype=q.dtype, device=x.device)
    n = mixer.prefix.keys.shape[1]
    front = torch.zeros((*bias.shape[:-1], n), dtype=bias.dtype, device=bias.device)
    bias = torch.cat([front, bias], dim=-1)
    pk = mixer.prefix.keys.to(k.dtype).expand(b, -1, -1, -1)
    pv = mixer.prefix.values.to(v.dtype).expand(b, -1, -1, -1)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    if g != h:
        k = k.repeat_interleave(h // g, dim=1)
        v = v.repeat_interleave(h // g, dim=1)
    drop = mixer.dropout if mixer.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
    return mixer.out(merge_heads(y))


def add_prefix(model: Any, n_tokens: int) -> list[Prefix]:
    """Give every block's mixer a :class:`Prefix` (``mixer.prefix``) and run it through
    :func:`prefix_forward`; refuses mixers outside :data:`PREFIX_MIXERS` by name."""
    found = []
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        name = mixer_name(mixer)
        if name not in PREFIX_MIXERS:
            raise SpecError(
                f"adapter.kind=prefix: layer {i}'s attention='{name}' has no keys and values "
                f"to prefix; prefix tuning supports {', '.join(PREFIX_MIXERS)} (use "
                f"adapter.kind=lora or prompt)"
            )
        device = mixer.qkv.weight.device
        mixer.prefix = Prefix(mixer.kv_heads, n_tokens, mixer.d_head).to(device)
        mixer.forward = lambda x, ctx, m=mixer: prefix_forward(m, x, ctx)
        found.append(mixer.prefix)
    return found
