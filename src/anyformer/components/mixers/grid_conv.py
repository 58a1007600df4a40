"""Convolutional token mixers over a 2-D grid of tokens: HorNet's recursive gated
convolution ``gnconv`` and Hyena-N-D's 2-D implicit long convolution ``hyena_2d``.

Both read ``dims.grid = (H, W)`` and ``dims.n_prefix`` at build time: the first
``n_prefix`` tokens (CLS, registers) are prefix tokens, the rest the row-major grid. A
prefix token takes the *pointwise path*: the same projections and gates, with the spatial
convolution replaced by its tap at offset (0, 0), as if the token stood alone on a 1x1
grid; so prefix tokens never mix with each other or with the grid inside these mixers
(attention layers or the head's pooling connect them). Padded tokens
(``ctx.padding_mask``) are zeroed before every spatial convolution, so they never reach
a real token. A model without a grid is refused by ``check_dims``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator
from torch import nn

from anyformer.components.attention.common import (
    Impl,
    ImplCheck,
    check_grid_length,
    grid_problem,
    merge_grid,
    split_grid,
)
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register


def _masked(u: torch.Tensor, ctx: Context) -> torch.Tensor:
    """``u`` with padded tokens zeroed."""
    if ctx.padding_mask is None:
        return u
    return u * ctx.padding_mask[..., None].to(u.dtype)


# --------------------------------------------------------------------------- gnconv
class GnConvParams(BaseModel):
    """Parameters of ``gnconv``.

    - ``order``: the interaction order n (1..5); the channels of step k are
      ``d_model / 2^(n-1-k)``, so ``d_model`` must be divisible by ``2^(n-1)``.
    - ``kernel_size``: side of the depthwise convolution (odd; HorNet uses 7).
    - ``scale``: factor on the depthwise convolution's output (HorNet's 1/3, which
      keeps the product of n gates from growing at initialisation).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    order: int = Field(3, ge=1, le=5)
    kernel_size: PositiveInt = 7
    scale: PositiveFloat = 1.0 / 3.0

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {v}; e.g. {v + 1})")
        return v


@register(
    "attention",
    "gnconv",
    paper=Paper(
        "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
        2022,
        "Rao et al.",
    ),
    summary="recursive gated convolution over the 2-D token grid: n-th order spatial "
    "interactions from depthwise convolutions and gates (needs a grid)",
    params=GnConvParams,
    caps=Capabilities(
        causal_safe=False, complexity="O(n k^2)", position_modes=("none", "embed"), grid=True
    ),
)
class GnConv(nn.Module):
    """g^n Conv (HorNet, Rao et al. 2022): with widths ``C_k = d / 2^(n-1-k)``,

        [p_0, q] = W_in x,   [q_0, ..., q_{n-1}] = s * DWConv(q)   (split by C_k),
        p_{k+1} = (W_k p_k) ⊙ q_{k+1},   p_1 = p_0 ⊙ q_0,   y = W_out p_n,

    where DWConv is one depthwise ``k x k`` convolution over the grid of all
    ``sum C_k`` channels, W_k a pointwise ``C_k -> C_{k+1}`` projection and ``s`` the
    scale. Order 1 is a gated depthwise convolution ``W_out (p_0 ⊙ DWConv(q))``. Each
    recursion step multiplies in one more spatially mixed gate, so the output is an n-th
    order polynomial of the inputs in the ``k x k`` neighbourhood (all gates come from
    the one depthwise convolution, as in HorNet). Prefix tokens take the
    pointwise path (the depthwise convolution's centre tap and bias). Not supported: the
    global-filter (FFT) variant of DWConv in HorNet-GF.
    """

    def __init__(self, dims: Dims, params: GnConvParams) -> None:
        super().__init__()
        if dims.grid is None:
            raise ValueError(f"gnconv {grid_problem(dims)}")
        d, n = dims.d_model, params.order
        self.grid, self.n_prefix, self.scale = dims.grid, dims.n_prefix, params.scale
        self.widths = [d // 2 ** (n - 1 - k) for k in range(n)]
        c = sum(self.widths)
        self.proj_in = nn.Linear(d, self.widths[0] + c, bias=dims.bias)
        k = params.kernel_size
        self.dwconv = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        self.pws = nn.ModuleList(
            nn.Linear(self.widths[i], self.widths[i + 1], bias=dims.bias) for i in range(n - 1)
        )
        self.proj_out = nn.Linear(d, d, bias=dims.bias)
        self.proj_out.residual_projection = True

    @staticmethod
    def check_dims(params: GnConvParams, dims: Dims) -> str | None:
        problem = grid_problem(dims)
        if problem:
            return problem
        step = 2 ** (params.order - 1)
        if dims.d_model % step:
            return (
                f"order={params.order} splits d_model into widths d/2^k, so d_model="
                f"{dims.d_model} must be divisible by 2^(order-1)={step}"
            )
        return None

    def spatial(self, q: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The depthwise convolution over the grid; prefix tokens see only themselves."""
        prefix, image = split_grid(_masked(q, ctx), self.n_prefix, self.grid)
        k = self.dwconv.kernel_size[0] // 2
        centre = self.dwconv.weight[:, 0, k, k]
        bias = self.dwconv.bias if self.dwconv.bias is not None else 0.0
        return merge_grid(prefix * centre + bias, self.dwconv(image))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        check_grid_length("gnconv", x.shape[1], self.n_prefix, self.grid)
        p, q = self.proj_in(x).split((self.widths[0], sum(self.widths)), dim=-1)
        gates = (self.spatial(q, ctx) * self.scale).split(self.widths, dim=-1)
        y = p * gates[0]
        for pw, gate in zip(self.pws, gates[1:]):
            y = pw(y) * gate
        return self.proj_out(y)


# --------------------------------------------------------------------------- hyena_2d
class Hyena2DParams(BaseModel):
    """Parameters of ``hyena_2d``.

    - ``order``: the Hyena order N (number of long convolutions and gates; 2 in Hyena).
    - ``n_freqs``: sinusoid frequencies per axis in the filter MLP's offset features.
    - ``filter_hidden``: hidden width of the filter MLP.
    - ``impl``: ``fast`` (2-D FFT, O(n log n)) or ``reference`` (the dense sum over every
      pair of grid cells, O(n^2)); they agree in outputs and gradients.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"order": 1})
    order: int = Field(2, ge=1, le=4)
    n_freqs: PositiveInt = 4
    filter_hidden: PositiveInt = 32
    impl: Impl = "fast"


def conv2d_fft(u: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D linear convolution ``y[r, c] = sum_{a, b} h[a, b] u[r - a, c - b]``
    over offsets ``a in [-(H-1), H-1]``, ``b in [-(W-1), W-1]``, zero outside the grid.

    ``u`` is ``[B, C, H, W]``, ``taps`` ``[C, 2H-1, 2W-1]`` with offset (0, 0) at index
    ``(H-1, W-1)``. Zero-padded FFTs of size ``(2H, 2W)``: the wrapped-around part of the
    circular convolution falls outside the cropped window."""
    h, w = u.shape[-2:]
    dtype = torch.promote_types(u.dtype, torch.float32)
    s = (2 * h, 2 * w)
    spec = torch.fft.rfft2(u.to(dtype), s=s) * torch.fft.rfft2(taps.to(dtype), s=s)
    full = torch.fft.irfft2(spec, s=s)
    return full[..., h - 1 : 2 * h - 1, w - 1 : 2 * w - 1].to(u.dtype)


def conv2d_dense(u: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`conv2d_fft`: ``y[p] = sum_q h(pos_p - pos_q) u[q]`` written
    as one dense ``[HW, HW]`` matrix per channel."""
    b, c, h, w = u.shape
    rows = torch.arange(h, device=u.device).repeat_interleave(w)
    cols = torch.arange(w, device=u.device).repeat(h)
    dr = rows[:, None] - rows[None, :] + h - 1
    dc = cols[:, None] - cols[None, :] + w - 1
    matrix = taps[:, dr, dc]  # [C, HW, HW]
    y = torch.einsum("cpq,bcq->bcp", matrix, u.reshape(b, c, h * w))
    return y.reshape(b, c, h, w)


@register(
    "attention",
    "hyena_2d",
    paper=Paper("Multi-Dimensional Hyena for Spatial Inductive Bias", 2023, "Zimerman and Wolf"),
    summary="Hyena over the 2-D token grid: gated 2-D long convolutions whose filters an "
    "MLP of the (row, col) offset generates, via 2-D FFT (needs a grid)",
    params=Hyena2DParams,
    caps=Capabilities(
        causal_safe=False, complexity="O(n log n)", position_modes=("none", "embed"), grid=True
    ),
)
class Hyena2D(nn.Module):
    """Hyena N-D (Zimerman and Wolf, 2023) for N = 2, after Hyena (Poli et al., 2023):

        [v, x_1, ..., x_N] = W_in x,   z_0 = v,
        z_i = x_i ⊙ (h_i ⊛ z_{i-1} + d_i ⊙ z_{i-1}),   y = W_out z_N,

    where ``h_i ⊛`` is a depthwise 2-D convolution over the whole grid (taps at every
    offset (a, b), ``|a| < H``, ``|b| < W``) and ``d_i`` a learned per-channel skip. The
    filters are implicit: ``h_i(a, b) = MLP(f(a, b)) * exp(-alpha_c sqrt(a^2 + b^2))``,
    with ``f`` the offsets scaled to [-1, 1] and their sines and cosines at ``n_freqs``
    frequencies per axis, and per-channel decay rates ``alpha_c`` spread geometrically
    from ``1 / max(H, W)`` to 1 per cell (as Hyena's decay window). Computed by 2-D FFT
    or, for ``impl='reference'``, as the dense pairwise sum. Prefix tokens take the
    pointwise path (the filter's tap at offset (0, 0)). Not supported: Hyena's short
    convolutions on the projections, and the paper's alternative N-D filter
    parametrisations (this is its MLP-over-positions variant).
    """

    def __init__(self, dims: Dims, params: Hyena2DParams) -> None:
        super().__init__()
        if dims.grid is None:
            raise ValueError(f"hyena_2d {grid_problem(dims)}")
        d, n = dims.d_model, params.order
        h, w = self.grid = dims.grid
        self.n_prefix, self.order, self.impl, self.d = dims.n_prefix, n, params.impl, d
        self.inp = nn.Linear(d, (n + 1) * d, bias=dims.bias)
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True
        self.skip = nn.Parameter(torch.ones(n, d))
        a = torch.arange(-(h - 1), h).float()[:, None].expand(2 * h - 1, 2 * w - 1)
        b = torch.arange(-(w - 1), w).float()[None, :].expand(2 * h - 1, 2 * w - 1)
        freqs = torch.arange(1, params.n_freqs + 1).float() * math.pi
        sa, sb = a[..., None] / max(h - 1, 1), b[..., None] / max(w - 1, 1)
        feats = torch.cat([sa, sb, (sa * freqs).sin(), (sa * freqs).cos()], dim=-1)
        feats = torch.cat([feats, (sb * freqs).sin(), (sb * freqs).cos()], dim=-1)
        self.register_buffer("features", feats, persistent=False)  # [2H-1, 2W-1, F]
        alpha = torch.exp(torch.linspace(math.log(1.0 / max(h, w)), 0.0, d)).repeat(n)
        decay = torch.exp(-alpha * (a**2 + b**2).sqrt()[..., None])  # [2H-1, 2W-1, N d]
        self.register_buffer("decay", decay, persistent=False)
        self.filter_in = nn.Linear(feats.shape[-1], params.filter_hidden)
        self.filter_out = nn.Linear(params.filter_hidden, n * d)

    @staticmethod
    def check_dims(params: Hyena2DParams, dims: Dims) -> str | None:
        return grid_problem(dims)

    def filters(self) -> torch.Tensor:
        """Taps ``[N, d, 2H-1, 2W-1]``; offset (0, 0) at index ``(H-1, W-1)``."""
        taps = self.filter_out(torch.sin(self.filter_in(self.features))) * self.decay
        return taps.permute(2, 0, 1).reshape(self.order, self.d, *taps.shape[:2])

    def long_conv(self, z: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        """``h ⊛ z`` over the grid; prefix tokens get the (0, 0) tap alone."""
        h, w = self.grid
        prefix, image = split_grid(z, self.n_prefix, self.grid)
        conv = conv2d_fft if self.impl == "fast" else conv2d_dense
        return merge_grid(prefix * taps[:, h - 1, w - 1], conv(image, taps.to(z.dtype)))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        check_grid_length("hyena_2d", x.shape[1], self.n_prefix, self.grid)
        v, *gates = self.inp(x).chunk(self.order + 1, dim=-1)
        taps = self.filters()
        z = v
        for i, gate in enumerate(gates):
            z = _masked(z, ctx)
            z = gate * (self.long_conv(z, taps[i]) + self.skip[i] * z)
        return self.out(z)
