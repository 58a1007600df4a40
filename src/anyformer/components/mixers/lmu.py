"""Legendre Memory Unit token mixer: a fixed linear memory of a sliding window, in a
parallel (convolution) form and a recurrent (one token at a time) form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt
from torch import nn

from anyformer.components.attention.common import Impl
from anyformer.components.base import Context, step_through
from anyformer.nn.long_conv import long_conv_fft
from anyformer.registry import Capabilities, Dims, Paper, register


class LMUParams(BaseModel):
    """Parameters of the ``lmu`` mixer.

    - ``order``: q, the number of Legendre polynomials that represent the window
      (memory size per channel).
    - ``channels``: memory input channels ``u = W_u x`` (``None``: ``max(1, d_model // 4)``).
    - ``theta``: length of the remembered window in tokens (``None``: ``max_len``).
    - ``impl``: ``fast`` (the memory for all tokens at once, as an FFT convolution with
      the LTI impulse response) or ``reference`` (the state update token by token);
      ``parallel`` and ``recurrent`` are their deprecated names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    order: PositiveInt = 16
    channels: PositiveInt | None = None
    theta: PositiveFloat | None = None
    impl: Impl = "fast"


def legendre_state_space(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The LMU's continuous system ``theta m'(t) = A m(t) + B u(t)`` (float64), divided by theta.

    ``A_ij = (2i + 1) * (-1 if i < j else (-1)^(i - j + 1))``, ``B_i = (2i + 1) (-1)^i``:
    the Padé approximation of a delay of theta whose state holds the Legendre
    coefficients of the last theta time units of u.
    """
    i = torch.arange(order, dtype=torch.float64)[:, None]
    j = torch.arange(order, dtype=torch.float64)[None, :]
    sign = torch.where(i < j, -torch.ones(()), (-1.0) ** (i - j + 1))
    a = (2 * i + 1) * sign
    b = (2 * torch.arange(order, dtype=torch.float64) + 1) * (-1.0) ** torch.arange(order)
    return a / theta, b / theta


def discretize_zoh(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold with step 1: ``A_bar = exp(A)``, ``B_bar = A^{-1} (exp(A) - I) B``,
    read off the exponential of the block matrix ``[[A, B], [0, 0]]``."""
    q = a.shape[0]
    block = torch.zeros(q + 1, q + 1, dtype=a.dtype)
    block[:q, :q] = a
    block[:q, q] = b
    e = torch.linalg.matrix_exp(block)
    return e[:q, :q], e[:q, q]


@register(
    "attention",
    "lmu",
    paper=Paper(
        "Legendre Memory Units: Continuous-Time Representation in Recurrent Neural Networks",
        2019,
        "Voelker et al.",
    ),
    summary="Legendre Memory Unit: a fixed linear memory of the last theta tokens "
    "(Legendre coefficients); parallel (FFT) and recurrent forms",
    params=LMUParams,
    caps=Capabilities(
        complexity="O(n log n)", recurrent=True, kv_cache=True, position_modes=("none", "embed")
    ),
)
class LMU(nn.Module):
    """m_t = A_bar m_{t-1} + B_bar u_t per channel of u = W_u x, y_t = W_o gelu(W_m m_t + W_x x_t).

    The memory m_t (``channels x order``) holds the Legendre coefficients of the last
    ``theta`` values of each channel of u; A_bar, B_bar are the zero-order-hold
    discretisation of the LMU's continuous delay system and are fixed. Because the
    memory is linear and u does not depend on earlier outputs, the memory of every token
    is the convolution of u with the impulse response ``H_s = A_bar^s B_bar``: the
    parallel form computes it by FFT; the recurrent form runs the update token by token
    (and :meth:`step` decodes with constant memory). The two are tested equal. Only past
    tokens enter m_t, so the mixer is causal; padded inputs are zeroed.

    Papers: "Legendre Memory Units: Continuous-Time Representation in Recurrent Neural
    Networks", Voelker, Kajić and Eliasmith, 2019; parallel form from "Parallelizing
    Legendre Memory Unit Training", Chilkuri and Eliasmith, 2021; used as a token mixer in
    "LMUFormer", Liu et al., 2024. Not supported: the original LMU's nonlinear recurrent
    connections (h_{t-1} -> u_t), which would forbid the parallel form; spiking variants;
    packed rows. With ``ctx.cache`` (generation) the forward runs :meth:`step` from the
    cached memory.
    """

    def __init__(self, dims: Dims, params: LMUParams) -> None:
        super().__init__()
        d = dims.d_model
        self.order = params.order
        self.channels = params.channels or max(1, d // 4)
        self.max_len = dims.max_len
        self.impl = params.impl
        theta = params.theta or float(dims.max_len)
        a, b = discretize_zoh(*legendre_state_space(params.order, theta))
        response = torch.empty(dims.max_len, params.order, dtype=torch.float64)
        state = b
        for s in range(dims.max_len):
            response[s] = state
            state = a @ state
        # kept in float64 and cast where used: both forms then read the same constants
        # (in float32 exactly what a float32 buffer held; in float64 nothing is rounded)
        self.register_buffer("a_bar", a, persistent=False)
        self.register_buffer("b_bar", b, persistent=False)
        self.register_buffer("response", response, persistent=False)
        self.encode = nn.Linear(d, self.channels, bias=dims.bias)
        self.memory = nn.Linear(self.channels * params.order, d, bias=dims.bias)
        self.direct = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True

    def _readout(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.memory(m.flatten(-2)) + self.direct(x)
        return self.out(F.gelu(h))

    def memory_parallel(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> memories ``[B, T, C, order]`` by FFT convolution with ``H``."""
        t = u.shape[1]
        return long_conv_fft(u[..., None], self.response[:t, None, :].to(u.dtype))

    def memory_recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> memories ``[B, T, C, order]``, one state update per token."""
        m = u.new_zeros(*u.shape[:1], u.shape[2], self.order)
        out = []
        for t in range(u.shape[1]):
            m = self.update(m, u[:, t])
            out.append(m)
        return torch.stack(out, dim=1)

    def update(self, m: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
        """One step: ``m [B, C, order]``, ``u_t [B, C]`` -> ``A_bar m + B_bar u_t``."""
        return m @ self.a_bar.T.to(m.dtype) + u_t[..., None] * self.b_bar.to(m.dtype)

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Constant-memory decoding: ``x_t [B, D]`` and the memory -> ``(y_t, memory)``."""
        if state is None:
            state = x_t.new_zeros(x_t.shape[0], self.channels, self.order)
        state = self.update(state, self.encode(x_t))
        return self._readout(state, x_t), state

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.cache is not None:
            return step_through(self, x, ctx)
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"lmu: sequence length {t} exceeds model.max_len={self.max_len}, the length "
                f"of its precomputed impulse response"
            )
        u = self.encode(x)
        if ctx.padding_mask is not None:
            u = u * ctx.padding_mask[..., None].to(u.dtype)
        m = self.memory_parallel(u) if self.impl == "fast" else self.memory_recurrent(u)
        return self._readout(m, x)

    def flops_per_token(self, seq_len: int) -> int:
        """Projections (encode, memory read-out, direct, out); the FFT convolution is
        O(log n) per token and memory element and left out."""
        total = 0
        for lin in (self.encode, self.memory, self.direct, self.out):
            total += 2 * lin.in_features * lin.out_features
        return total
