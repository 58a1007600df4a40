"""Attention over a 2-D grid of tokens: strip attention (``strip_attention``) and CvT's
convolutional projection (``conv_attention``).

Both read ``dims.grid = (H, W)`` and ``dims.n_prefix`` at build time (the first
``n_prefix`` tokens are prefix tokens such as CLS, the rest the row-major grid) and are
refused by ``check_dims`` in a model without a grid. Prefix tokens attend globally (to
every token) and every token may attend to them; what differs between the two is how the
grid tokens see each other.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator
from torch import nn

from anyformer.components.attention.common import (
    Impl,
    ImplCheck,
    check_grid_length,
    grid_problem,
    masked_bias,
    merge_grid,
    merge_heads,
    reference_attention,
    split_grid,
    split_heads,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register


def _refuse_causal(name: str, ctx: Context) -> None:
    if ctx.causal:
        raise ValueError(f"{name} reads the whole grid; it cannot run in a causal decoder")


def _key_padding(ctx: Context, keys: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean ``[B, 1, 1, Tk]`` (True = a real key), of the key indices ``keys``."""
    if ctx.padding_mask is None:
        return None
    mask = ctx.padding_mask if keys is None else ctx.padding_mask[:, keys]
    return mask[:, None, None, :]


# --------------------------------------------------------------------------- strips
class StripParams(BaseModel):
    """``strip``: the width of a strip, in grid rows (row heads) and columns (column heads);
    it must divide both sides of the grid. ``impl``: ``fast`` (attention inside each strip,
    O(n (H + W) strip)) or ``reference`` (full attention with the strip mask, O(n^2))."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    strip: PositiveInt = 1
    impl: Impl = "fast"


@register(
    "attention",
    "strip_attention",
    paper=Paper(
        "S2AFormer: Strip Self-Attention for Efficient Vision Transformer", 2025, "Xu et al."
    ),
    summary="attention inside horizontal strips (half the heads) and vertical strips (the "
    "other half) of the token grid; prefix tokens attend globally (needs a grid)",
    params=StripParams,
    caps=Capabilities(
        causal_safe=False,
        complexity="O(n sqrt(n))",
        position_modes=("none", "embed", "rotary"),
        grid=True,
    ),
)
class StripAttention(QKVHeads):
    """Multi-head softmax attention restricted to strips of the grid.

    The first ``n_heads // 2`` heads are *row heads*: a grid token at row r attends to
    the grid tokens whose row lies in the same band of ``strip`` rows
    (``r // strip``); the other heads are *column heads*, the same with columns. Every
    grid token also attends to the prefix tokens, and prefix tokens attend to every
    token. Two layers thus connect any two cells (row, then column), at a cost of
    ``n (strip W + strip H)`` scores instead of ``n^2``.

    After the strip attention of "S2AFormer: Strip Self-Attention for Efficient Vision
    Transformer", Xu et al., 2025, in the cross-shaped (row/column strip) reading; the
    paper's SSA also shrinks K/V spatially and Q/K in channels, which this variant does
    not (``conv_attention`` with ``kv_stride`` gives the spatial reduction). Rotary
    position schemes rotate q/k by the flat token index; score biases are not supported.
    """

    def __init__(self, dims: Dims, params: StripParams) -> None:
        super().__init__(dims)
        if dims.grid is None:
            raise ValueError(f"strip_attention {grid_problem(dims)}")
        self.grid, self.n_prefix = dims.grid, dims.n_prefix
        self.strip, self.impl = params.strip, params.impl
        self.row_heads = dims.n_heads // 2

    @staticmethod
    def check_dims(params: StripParams, dims: Dims) -> str | None:
        problem = grid_problem(dims)
        if problem:
            return problem
        if dims.n_heads < 2:
            return f"needs n_heads >= 2 (row and column heads), got n_heads={dims.n_heads}"
        h, w = dims.grid  # type: ignore[misc]
        if h % params.strip or w % params.strip:
            return f"strip={params.strip} must divide both sides of the {h}x{w} grid"
        return None

    def strip_mask(self, device: torch.device) -> torch.Tensor:
        """Boolean ``[n_heads, T, T]``: which key each query may see (the reference)."""
        h, w = self.grid
        p, s = self.n_prefix, self.strip
        cell = torch.arange(h * w, device=device)
        band_r, band_c = (cell // w) // s, (cell % w) // s
        t = p + h * w
        masks = []
        for band in (band_r, band_c):
            m = torch.ones(t, t, dtype=torch.bool, device=device)
            m[p:, p:] = band[:, None] == band[None, :]
            masks.append(m)
        n_col = self.n_heads - self.row_heads
        return torch.stack([masks[0]] * self.row_heads + [masks[1]] * n_col)

    def _strips(self, t: torch.Tensor, columns: bool) -> torch.Tensor:
        """Grid part of ``[B, h, T, ...]`` -> ``[B, h, n_strips, strip * side, ...]``."""
        h, w = self.grid
        b, nh = t.shape[:2]
        g = t[:, :, self.n_prefix :].reshape(b, nh, h, w, *t.shape[3:])
        if columns:
            g = g.transpose(2, 3)
            h, w = w, h
        return g.reshape(b, nh, h // self.strip, self.strip * w, *t.shape[3:])

    def _unstrip(self, y: torch.Tensor, columns: bool) -> torch.Tensor:
        h, w = self.grid
        b, nh, d = y.shape[0], y.shape[1], y.shape[-1]
        if columns:
            return y.reshape(b, nh, w, h, d).transpose(2, 3).reshape(b, nh, h * w, d)
        return y.reshape(b, nh, h * w, d)

    def _fast(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context
    ) -> torch.Tensor:
        p = self.n_prefix
        drop = self.dropout if self.training else 0.0
        pad = ctx.padding_mask
        outs = []
        for columns, heads in (
            (False, slice(0, self.row_heads)),
            (True, slice(self.row_heads, None)),
        ):
            qs, ks, vs = (self._strips(t[:, heads], columns) for t in (q, k, v))
            n_strips = qs.shape[2]
            pk = k[:, heads, None, :p].expand(-1, -1, n_strips, -1, -1)
            pv = v[:, heads, None, :p].expand(-1, -1, n_strips, -1, -1)
            ks, vs = torch.cat((pk, ks), dim=3), torch.cat((pv, vs), dim=3)
            bias = None
            if pad is not None:
                cells = self._strips(pad[:, None, :, None], columns)[..., 0]  # [B,1,S,L]
                prefix = pad[:, None, None, :p].expand(-1, -1, n_strips, -1)
                allowed = torch.cat((prefix, cells), dim=-1)[:, :, :, None, :]
                bias = masked_bias(None, allowed, q.dtype)
            y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=bias, dropout_p=drop)
            outs.append(self._unstrip(y, columns))
        grid_out = torch.cat(outs, dim=1)
        allowed = _key_padding(ctx)
        bias = masked_bias(None, allowed, q.dtype)
        pre = F.scaled_dot_product_attention(q[:, :, :p], k, v, attn_mask=bias, dropout_p=drop)
        return torch.cat((pre, grid_out), dim=2)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        _refuse_causal("strip_attention", ctx)
        check_grid_length("strip_attention", x.shape[1], self.n_prefix, self.grid)
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        if self.impl == "fast":
            y = self._fast(q, k, v, ctx)
        else:
            allowed = self.strip_mask(x.device)
            keys = _key_padding(ctx)
            if keys is not None:
                allowed = allowed & keys
            bias = masked_bias(None, allowed, q.dtype)
            y = reference_attention(q, k, v, bias, self.dropout, self.training)
        return self.out(merge_heads(y))


# --------------------------------------------------------------------------- CvT
class ConvAttentionParams(BaseModel):
    """``kernel_size``: side of the depthwise convolutions (odd; CvT uses 3).
    ``kv_stride``: stride of the key/value convolutions (CvT uses 2: fewer keys).
    ``impl``: ``fast`` (fused ``scaled_dot_product_attention``) or ``reference``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"kv_stride": 2})
    kernel_size: PositiveInt = 3
    kv_stride: PositiveInt = 1
    impl: Impl = "fast"

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {v}; e.g. {v + 1})")
        return v


@register(
    "attention",
    "conv_attention",
    paper=Paper("CvT: Introducing Convolutions to Vision Transformers", 2021, "Wu et al."),
    summary="softmax attention with depthwise-separable convolutional q/k/v projections "
    "over the token grid; strided keys/values optional (needs a grid)",
    params=ConvAttentionParams,
    caps=Capabilities(
        causal_safe=False,
        complexity="O(n^2 / stride^2)",
        position_modes=("none", "embed", "rotary", "bias"),
        grid=True,
    ),
)
class ConvAttention(nn.Module):
    """CvT's convolutional projection (Wu et al., 2021): for each of q, k, v a depthwise
    ``k x k`` convolution over the grid (stride 1 for q, ``kv_stride`` for k and v)
    followed by a pointwise linear map, then multi-head softmax attention and an output
    projection. Prefix tokens (CLS) skip the convolutions (CvT splits the class token off
    before them) and attend globally; every query sees them.

    With ``kv_stride = s`` the keys and values are the ``ceil(H/s) x ceil(W/s)`` outputs
    of the strided convolutions; the key of output cell (i, j) sits at grid cell
    ``(i s, j s)`` (its centre): that cell's flat index gives its position for rotary and
    score-bias schemes, and it counts as padding when that cell is padding. Padded tokens
    are zeroed before the convolutions, so they reach no real token. CvT's BatchNorm
    after the depthwise convolution is left out (a token mixer sees no batch statistics
    at inference).
    """

    def __init__(self, dims: Dims, params: ConvAttentionParams) -> None:
        super().__init__()
        if dims.grid is None:
            raise ValueError(f"conv_attention {grid_problem(dims)}")
        d, k, s = dims.d_model, params.kernel_size, params.kv_stride
        self.grid, self.n_prefix, self.impl = dims.grid, dims.n_prefix, params.impl
        self.n_heads, self.dropout = dims.n_heads, dims.dropout
        self.conv_q = nn.Conv2d(d, d, k, padding=k // 2, groups=d)
        self.conv_k = nn.Conv2d(d, d, k, stride=s, padding=k // 2, groups=d)
        self.conv_v = nn.Conv2d(d, d, k, stride=s, padding=k // 2, groups=d)
        self.q_proj = nn.Linear(d, d, bias=dims.bias)
        self.k_proj = nn.Linear(d, d, bias=dims.bias)
        self.v_proj = nn.Linear(d, d, bias=dims.bias)
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True
        h, w = self.grid
        rows = torch.arange(0, h, s)[:, None] * w + torch.arange(0, w, s)[None, :]
        keys = torch.cat((torch.arange(self.n_prefix), self.n_prefix + rows.flatten()))
        self.register_buffer("key_index", keys, persistent=False)

    @staticmethod
    def check_dims(params: ConvAttentionParams, dims: Dims) -> str | None:
        return grid_problem(dims)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        _refuse_causal("conv_attention", ctx)
        check_grid_length("conv_attention", x.shape[1], self.n_prefix, self.grid)
        if ctx.padding_mask is not None:
            x = x * ctx.padding_mask[..., None].to(x.dtype)
        prefix, image = split_grid(x, self.n_prefix, self.grid)
        q = split_heads(self.q_proj(merge_grid(prefix, self.conv_q(image))), self.n_heads)
        k = split_heads(self.k_proj(merge_grid(prefix, self.conv_k(image))), self.n_heads)
        v = split_heads(self.v_proj(merge_grid(prefix, self.conv_v(image))), self.n_heads)
        q_pos = ctx.bias_positions()
        k_pos = q_pos[self.key_index]
        q, k = ctx.position.rotate(q, k, q_pos, k_pos)
        bias = ctx.position.score_bias(q_pos, k_pos)
        bias = masked_bias(bias, _key_padding(ctx, self.key_index), q.dtype)
        if self.impl == "fast":
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        else:
            y = reference_attention(q, k, v, bias, self.dropout, self.training)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Depthwise convolutions, four projections, scores and weighted sum."""
        d, k = self.q_proj.in_features, self.conv_q.kernel_size[0]
        s = self.conv_k.stride[0]
        keys = self.n_prefix + math.ceil(self.grid[0] / s) * math.ceil(self.grid[1] / s)
        return 2 * d * k * k * 3 + 4 * 2 * d * d + 4 * keys * d
