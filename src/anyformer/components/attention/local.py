"""Local attention: a sliding window (Longformer) and FIT's groups with global latents."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anyformer.components.attention.common import (
    Impl,
    ImplCheck,
    cached_bias,
    extend_cache,
    masked_bias,
)
from anyformer.components.attention.qkv import QKVHeads, project_qkv, qkv_projection
from anyformer.components.base import Context
from anyformer.nn import padding_to_key_mask
from anyformer.nn.local_ops import band_mask, blocked_local_attention, masked_attention
from anyformer.registry import Capabilities, Dims, Paper, register


class SlidingWindowParams(BaseModel):
    """Parameters of ``sliding_window`` attention.

    - ``window``: width w. A decoder's query i sees keys ``i - w < j <= i`` (w keys,
      itself included); an encoder's sees ``|i - j| < w`` (2w - 1 keys, symmetric).
    - ``impl``: ``fast`` (queries in blocks of w scoring only the neighbouring blocks:
      O(n w) time and memory) or ``reference`` (full scores with a banded boolean mask
      through SDPA: O(n^2)); ``blocked`` and ``masked`` are their deprecated names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (windows shorter than its sequences, so that the blocks matter)
    IMPL_CHECK: ClassVar[ImplCheck] = ({"window": 3}, {"window": 4})
    window: PositiveInt = 128
    impl: Impl = "fast"


@register(
    "attention",
    "sliding_window",
    paper=Paper("Longformer: The Long-Document Transformer", 2020, "Beltagy et al."),
    summary="softmax attention restricted to a local window of width w (causal: the w most "
    "recent keys; encoder: |i - j| < w)",
    params=SlidingWindowParams,
    caps=Capabilities(complexity="O(n w)", kv_cache=True),
)
class SlidingWindowAttention(QKVHeads):
    """Softmax attention in which query i sees only keys j with ``0 <= i - j < w`` in a
    decoder, or ``|i - j| < w`` in an encoder (Longformer's local window, without its
    task-specific global tokens or dilation).

    With ``w >= T`` it is exactly softmax attention (same parameter names, ``qkv`` and
    ``out``, as ``softmax``). Rotary positions rotate q/k and score-bias positions are
    added to the scores; key padding is honoured. Incremental decoding keeps the last w
    keys and values in a rolling buffer (``ctx.cache``), so memory stays constant.

    Paper: "Longformer: The Long-Document Transformer", Beltagy et al., 2020.
    Does not support: Longformer's global attention tokens and dilated windows,
    grouped key/value heads, packed rows (``segments``).
    """

    def __init__(self, dims: Dims, params: SlidingWindowParams) -> None:
        super().__init__(dims)
        self.causal = dims.causal
        self.params = params

    @staticmethod
    def check_dims(params: SlidingWindowParams, dims: Dims) -> str | None:
        # the default window on a shorter model is full attention (as documented above);
        # a window chosen wider than max_len is a mistake
        default = type(params).model_fields["window"].default
        if params.window > dims.max_len and params.window != default:
            return (
                f"window={params.window} is wider than max_len={dims.max_len}, so it restricts "
                f"nothing; use a window of at most {dims.max_len} (or attention softmax)"
            )
        return None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        drop = self.dropout if self.training else 0.0
        window = self.params.window
        if ctx.cache is not None:
            k, v, key_positions = extend_cache(ctx, k, v, window)
            full = cached_bias(ctx, key_positions, q.dtype, window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=drop)
        elif self.params.impl == "fast":
            y = blocked_local_attention(
                q, k, v, window, ctx.causal, ctx.padding_mask, ctx.positions,
                ctx.position.score_bias, drop,
            )  # fmt: skip
        else:
            allowed = band_mask(t, window, ctx.causal, x.device)
            if ctx.padding_mask is not None:
                allowed = allowed & padding_to_key_mask(ctx.padding_mask)
            bias = ctx.position.score_bias(ctx.positions, ctx.positions)
            full = masked_bias(bias, allowed, q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus scores and sums over the window."""
        proj = self.projection_flops()
        keys = self.params.window if self.causal else 2 * self.params.window - 1
        return proj + 4 * min(keys, seq_len) * self.n_heads * self.d_head


class LocalGlobalParams(BaseModel):
    """Parameters of ``local_global`` (FIT) attention.

    - ``group_size``: data tokens per group G (positions ``[g G, (g + 1) G)``); local
      attention runs within a group. Cost ``n G + (n m / G)^2`` is least near
      ``G = (n m^2)^(1/3)`` (about 16 at n = 256 and 40 at n = 4096 with m = 4). In a
      decoder the global path starts to matter only when the input is longer than G.
    - ``n_latents``: latent tokens per group; they read their group, attend globally
      among all groups' latents, and are read back by the data tokens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    group_size: PositiveInt = 8
    n_latents: PositiveInt = 4


@register(
    "attention",
    "local_global",
    paper=Paper("FIT: Far-reaching Interleaved Transformers", 2023, "Chen and Li"),
    summary="FIT: attention within groups of tokens plus global attention over a few latent "
    "tokens per group that read their group and are read back (causal-safe)",
    params=LocalGlobalParams,
    caps=Capabilities(complexity="O(n g + (n m / g)^2)", position_modes=("none", "embed")),
)
class LocalGlobalAttention(nn.Module):
    """FIT's local/global interleaving inside one mixer.

    Tokens are split into groups of G consecutive positions, each with m latent tokens
    (learned initial states shared by all groups). In one call:

    1. *read*: each group's latents cross-attend to the real tokens of their group;
    2. *global*: all latents self-attend (in a decoder, block-causally: latents of group
       g see latents of groups <= g);
    3. *local + write*: each token attends, in one softmax, to the tokens of its group
       (causally in a decoder) and to latents: in an encoder those of its own group; in a
       decoder those of the *previous* group g - 1, which have read only positions
       < g G <= t and, through the global step, summarise all earlier groups.

    So the mixer is causal-safe by construction (tested by perturbation): no output at
    t depends on a later input. Group 0's tokens in a decoder see only local context.
    Groups are absolute (a partial last group is masked), so right padding is invariant.
    Cost O(n G) locally plus O((n m / G)^2) globally.

    Paper: "FIT: Far-reaching Interleaved Transformers", Chen and Li, 2023. Deviation:
    FIT keeps the latents as a separate stream through the network with their own
    layers; here the block interface carries only data tokens, so latents are
    re-initialised from learned states in every layer and one layer does read, global
    and write. Does not support: rotary or score-bias positions, a KV cache or
    recurrent decoding.
    """

    def __init__(self, dims: Dims, params: LocalGlobalParams) -> None:
        super().__init__()
        d = dims.d_model
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.group = params.group_size
        self.n_latents = params.n_latents
        self.dropout = dims.dropout
        self.qkv = qkv_projection(dims)
        self.latents = nn.Parameter(0.02 * torch.randn(params.n_latents, d))
        self.read_q = nn.Linear(d, d, bias=dims.bias)
        self.read_out = nn.Linear(d, d, bias=dims.bias)
        self.global_norm = nn.LayerNorm(d, bias=dims.bias)
        self.global_qkv = qkv_projection(dims)
        self.global_out = nn.Linear(d, d, bias=dims.bias)
        self.write_norm = nn.LayerNorm(d, bias=dims.bias)
        self.write_kv = qkv_projection(dims, parts=2)  # keys and values of the latents
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, L, H, Dh]`` or ``[B, n, L, D]`` -> ``[B, H, n, L, Dh]``."""
        b, n, length = x.shape[:3]
        return x.reshape(b, n, length, self.n_heads, self.d_head).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, d = x.shape
        g, m = self.group, self.n_latents
        n = math.ceil(t / g)
        drop = self.dropout if self.training else 0.0
        real = ctx.padding_mask
        real = torch.ones(b, t, dtype=torch.bool, device=x.device) if real is None else real
        real = F.pad(real.bool(), (0, n * g - t), value=False).view(b, n, g)
        group_real = real.any(dim=-1)  # [B, n]
        grouped = F.pad(x, (0, 0, 0, n * g - t)).view(b, n, g, d)
        q, k, v = (self._heads(y) for y in project_qkv(self.qkv, grouped, heads_first=False))

        # 1. each group's latents read the real tokens of their group
        z = self.latents.expand(b, n, m, d)
        rq = self._heads(self.read_q(self.latents)[None, None])  # the same for every group
        read = masked_attention(rq, k, v, real[:, None, :, None, :], drop)
        z = z + self.read_out(read.permute(0, 2, 3, 1, 4).reshape(b, n, m, d))

        # 2. latents attend globally (block-causally over groups in a decoder)
        gq, gk, gv = project_qkv(self.global_qkv, self.global_norm(z).reshape(b, n * m, d))
        allowed = group_real.repeat_interleave(m, dim=1)[:, None, None, :]  # keys of real groups
        if ctx.causal:
            gid = torch.arange(n, device=x.device).repeat_interleave(m)
            allowed = allowed & (gid[None, :] <= gid[:, None])
        # every latent of a real group may see its own group, so no real row is empty;
        # rows of all-padding groups are finite (uniform) and never read back
        full = masked_bias(None, allowed, gq.dtype)
        glob = F.scaled_dot_product_attention(gq, gk, gv, attn_mask=full, dropout_p=drop)
        z = z + self.global_out(glob.transpose(1, 2).reshape(b, n, m, d))

        # 3. tokens attend to their group's tokens and to latents (previous group if causal)
        lk, lv = (
            self._heads(y)
            for y in project_qkv(self.write_kv, self.write_norm(z), heads_first=False)
        )
        latent_ok = group_real
        if ctx.causal:
            lk = F.pad(lk, (0, 0, 0, 0, 1, 0))[:, :, :n]
            lv = F.pad(lv, (0, 0, 0, 0, 1, 0))[:, :, :n]
            latent_ok = F.pad(group_real, (1, 0), value=False)[:, :n]
        local = real[:, None, :, None, :].expand(b, 1, n, g, g)
        if ctx.causal:
            local = local & torch.ones(g, g, dtype=torch.bool, device=x.device).tril()
        latent = latent_ok[:, None, :, None, None].expand(b, 1, n, g, m)
        y = masked_attention(
            q, torch.cat((k, lk), dim=3), torch.cat((v, lv), dim=3),
            torch.cat((local, latent), dim=-1), drop,
        )  # fmt: skip
        y = y.permute(0, 2, 3, 1, 4).reshape(b, n * g, d)[:, :t]
        return self.out(y)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: token projections, the latents' projections and
        attention amortised over a group, local scores over G keys plus m latents."""
        d, g, m = self.qkv.in_features, self.group, self.n_latents
        n_groups = math.ceil(seq_len / g)
        tokens = 2 * d * 3 * d + 2 * d * d + 4 * (min(g, seq_len) + m) * d
        # per latent: read_out, global qkv and out, write_kv; read over G tokens; global
        # over all n/G * m latents (read_q is computed once, not per token)
        latent_proj = 2 * d * d * (1 + 3 + 1 + 2)
        latent_attn = 4 * g * d + 4 * n_groups * m * d
        return tokens + m * (latent_proj + latent_attn) // g
