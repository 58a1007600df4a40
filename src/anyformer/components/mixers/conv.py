"""Long convolution token mixer in the Hyena spirit: a depthwise filter as long as the input."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anyformer.components.attention.common import Impl, ImplCheck
from anyformer.components.base import Context
from anyformer.nn.long_conv import long_conv_direct, long_conv_fft
from anyformer.registry import Capabilities, Dims, Paper, register


class CausalConvParams(BaseModel):
    """Parameters of the ``causal_conv`` mixer.

    - ``filter``: ``implicit`` (taps are a small MLP of sinusoidal features of the offset,
      times a fixed exponential decay per channel, as in Hyena) or ``explicit`` (one
      learned tap per offset and channel).
    - ``impl``: ``fast`` (FFT, O(n log n)) or ``reference`` (O(n^2) shifted sums, what
      the fast form is tested against); ``fft`` and ``direct`` are their deprecated names.
    - ``gate``: multiply the convolution output by a second projection of the input
      (Hyena's data-controlled gating); without it the mixer is linear in its input.
    - ``two_sided``: in an encoder, let the filter also read later tokens (offsets
      ``-(max_len-1) .. max_len-1``); decoders are always causal.
    - ``n_freqs``: sinusoid frequencies in the implicit filter's offset features.
    - ``filter_hidden``: hidden width of the implicit filter's MLP.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"filter": "explicit", "gate": False})
    filter: Literal["implicit", "explicit"] = "implicit"
    impl: Impl = "fast"
    gate: bool = True
    two_sided: bool = True
    n_freqs: PositiveInt = 8
    filter_hidden: PositiveInt = 32


class ImplicitFilter(nn.Module):
    """taps(s) = MLP(z(s)) * exp(-alpha_c |s|), z(s) = [s/L, sin(2 pi f s/L), cos(2 pi f s/L)]."""

    def __init__(self, max_len: int, channels: int, n_freqs: int, hidden: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("freqs", torch.arange(1, n_freqs + 1).float(), persistent=False)
        self.inp = nn.Linear(1 + 2 * n_freqs, hidden)
        self.outp = nn.Linear(hidden, channels)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        s = offsets.float()[:, None]
        angle = 2 * math.pi * s * self.freqs / self.max_len
        z = torch.cat((s / self.max_len, angle.sin(), angle.cos()), dim=-1)
        return self.outp(torch.sin(self.inp(z)))


@register(
    "attention",
    "causal_conv",
    paper=Paper(
        "Hyena Hierarchy: Towards Larger Convolutional Language Models", 2023, "Poli et al."
    ),
    summary="depthwise long convolution over the sequence (filter as long as max_len, "
    "implicit or explicit), via FFT, with a multiplicative gate",
    params=CausalConvParams,
    caps=Capabilities(complexity="O(n log n)", position_modes=("none", "embed")),
)
class CausalConv(nn.Module):
    """y = W_o [ (h * u + d ⊙ u) ⊙ g ],  [u, g] = W_i x, depthwise over channels.

    ``h * u`` is a long convolution along time with one filter per channel and taps at
    every offset up to ``max_len - 1``: ``(h * u)_t = sum_{s=0}^{t} h_s u_{t-s}``, so it
    reads only the past; computed by FFT with zero padding to twice the length (no
    circular wrap-around), and tested equal to the direct O(n^2) sum. ``d`` is a learned
    per-channel skip. Filters decay with a fixed per-channel rate ``alpha_c`` spread
    geometrically from ``3/max_len`` (long memory) to ``3/8`` (a few tokens). In an
    encoder with ``two_sided`` the filter also covers negative offsets. Padded inputs are
    zeroed before the convolution, so they never reach real tokens.

    In the spirit of "Hyena Hierarchy: Towards Larger Convolutional Language Models",
    Poli et al., 2023 (implicit filters, decay modulation, gating); this is one order
    of Hyena (one convolution, one gate) without its short convolutions; a Hyena layer is
    also the token mixer of "Multi-Dimensional Hyena for Spatial Inductive Bias", Zimerman
    and Wolf, 2023. Not supported:
    sequences longer than ``max_len``, a constant-memory recurrent decode.
    """

    def __init__(self, dims: Dims, params: CausalConvParams) -> None:
        super().__init__()
        d = dims.d_model
        self.max_len = dims.max_len
        self.impl = params.impl
        self.gate = params.gate
        self.two_sided = params.two_sided and not dims.causal
        self.inp = nn.Linear(d, 2 * d if params.gate else d, bias=dims.bias)
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True
        self.skip = nn.Parameter(torch.ones(d))
        alpha = torch.exp(torch.linspace(math.log(3.0 / dims.max_len), math.log(3.0 / 8), d))
        self.register_buffer("alpha", alpha, persistent=False)
        span = dims.max_len - 1
        offsets = torch.arange(-span if self.two_sided else 0, span + 1)
        self.register_buffer("offsets", offsets, persistent=False)
        self.implicit: ImplicitFilter | None = None
        self.taps: nn.Parameter | None = None
        if params.filter == "implicit":
            self.implicit = ImplicitFilter(dims.max_len, d, params.n_freqs, params.filter_hidden)
        else:
            decay = torch.exp(-alpha * offsets.abs().float()[:, None])
            self.taps = nn.Parameter(0.1 * torch.randn(len(offsets), d) * decay)

    def filter(self, t: int, causal: bool) -> tuple[torch.Tensor, int]:
        """Taps for a length-``t`` input and the offset of the first tap."""
        lo = -(t - 1) if self.two_sided and not causal else 0
        zero = self.max_len - 1 if self.two_sided else 0  # index of offset 0
        sl = slice(zero + lo, zero + t)
        offsets = self.offsets[sl]
        if self.implicit is not None:
            taps = self.implicit(offsets) * torch.exp(-self.alpha * offsets.abs().float()[:, None])
        else:
            assert self.taps is not None
            taps = self.taps[sl]
        return taps, lo

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"causal_conv: sequence length {t} exceeds model.max_len={self.max_len}, "
                f"the length of its filters"
            )
        h = self.inp(x)
        u, g = h.chunk(2, dim=-1) if self.gate else (h, None)
        if ctx.padding_mask is not None:
            u = u * ctx.padding_mask[..., None].to(u.dtype)
        taps, first = self.filter(t, ctx.causal)
        conv = long_conv_fft if self.impl == "fast" else long_conv_direct
        y = conv(u, taps.to(u.dtype), first) + self.skip * u
        if g is not None:
            y = y * g
        return self.out(y)

    def flops_per_token(self, seq_len: int) -> int:
        """Projections plus three real FFTs of length ~2n per channel (~5 n log2(2n) each),
        divided over the n tokens."""
        proj = 2 * self.inp.in_features * self.inp.out_features
        proj += 2 * self.out.in_features * self.out.out_features
        log_n = max(1, math.ceil(math.log2(2 * max(seq_len, 1))))
        return proj + 3 * 5 * 2 * log_n * self.out.in_features
