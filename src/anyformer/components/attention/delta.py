"""DeltaNet: linear attention whose fast-weight state is updated by the delta rule."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anyformer.components.attention.common import Impl, ImplCheck
from anyformer.components.attention.qkv import linear_flops, project_qkv, qkv_projection
from anyformer.components.base import Context, step_through
from anyformer.nn.linear_scan import delta_rule_chunked, delta_rule_recurrent, delta_rule_step
from anyformer.registry import Capabilities, Dims, Paper, register


class DeltaParams(BaseModel):
    """Parameters of ``delta`` attention.

    - ``impl``: ``fast`` (the WY/UT chunked parallel form of Yang et al. 2024) or
      ``reference`` (the sequential delta rule, token by token); ``chunked`` and
      ``recurrent`` are their deprecated names.
    - ``chunk_size``: tokens per chunk for ``impl=fast``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (several chunks)
    IMPL_CHECK: ClassVar[ImplCheck] = ({"chunk_size": 4},)
    impl: Impl = "fast"
    chunk_size: PositiveInt = 64


@register(
    "attention",
    "delta",
    paper=Paper(
        "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
        2024,
        "Yang et al.",
    ),
    summary="DeltaNet: fast-weight state S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T, "
    "y_t = S_t q_t (Schlag et al. 2021); chunked WY form and sequential recurrence",
    params=DeltaParams,
    caps=Capabilities(
        complexity="O(n)",
        recurrent=True,
        bidirectional=False,
        kv_cache=True,
        position_modes=("none", "embed"),
    ),
)
class DeltaAttention(nn.Module):
    """DeltaNet: per head, a fast-weight matrix ``S`` is written by the delta rule
    ``S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T`` and read by ``y_t = S_t q_t``.

    Keys and queries are L2-normalised per head and ``beta_t = sigmoid(w_beta^T x_t)`` is
    a per-head learning rate in (0, 1), so each step moves the value stored under
    ``k_t`` a fraction ``beta_t`` towards ``v_t`` (instead of only adding, as linear
    attention does), which is what helps associative recall. The state has constant
    size, so decoding is :meth:`step` (with ``ctx.cache`` the forward runs it token by
    token from the cached state). Padded tokens get ``beta = 0`` (they write nothing).

    Papers: "Linear Transformers Are Secretly Fast Weight Programmers", Schlag et al.,
    2021 (the delta rule); "Parallelizing Linear Transformers with the Delta Rule over
    Sequence Length", Yang et al., 2024 (the chunked WY/UT form, ``impl=fast``).

    Does not support: bidirectional use (the recurrence is causal only; encoders are
    rejected), rotary or score-bias positions, attention dropout, packed rows. The short
    convolutions, SiLU on q/k and output norm of Yang et al.'s full layer are left out.
    """

    def __init__(self, dims: Dims, params: DeltaParams) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.params = params
        self.qkv = qkv_projection(dims)
        self.beta = nn.Linear(dims.d_model, dims.n_heads, bias=dims.bias)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    @staticmethod
    def check_dims(params: DeltaParams, dims: Dims) -> str | None:
        if not dims.causal:
            return "delta is causal only (the delta rule is a left-to-right recurrence); use kind=decoder"
        return None

    def _project(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised q, k, v ``[..., H, Dh]`` and beta ``[..., H]`` from ``x [..., D]``."""
        q, k, v = project_qkv(self.qkv, x, heads_first=False)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        return q, k, v, torch.sigmoid(self.beta(x))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if not ctx.causal:
            raise ValueError("delta attention is causal only; build it in a decoder")
        if ctx.cache is not None:
            return step_through(self, x, ctx)
        b, t, d = x.shape
        q, k, v, beta = self._project(x)
        q, k, v, beta = (
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            beta.transpose(1, 2),
        )
        if ctx.padding_mask is not None:
            beta = beta * ctx.padding_mask[:, None, :].to(beta.dtype)
        if self.params.impl == "reference":
            y, _ = delta_rule_recurrent(q, k, v, beta)
        else:
            y, _ = delta_rule_chunked(q, k, v, beta, self.params.chunk_size)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The empty fast-weight state ``[B, H, Dh, Dh]``."""
        dtype = dtype or self.qkv.weight.dtype
        return torch.zeros(
            batch, self.n_heads, self.d_head, self.d_head, device=device, dtype=dtype
        )

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one token ``x_t [B, D]`` in constant memory; equals :meth:`forward` (tested)."""
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        q, k, v, beta = self._project(x_t)
        y, state = delta_rule_step(q, k, v, beta, state)
        return self.out(y.reshape(x_t.shape[0], -1)), state

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus the state read, error and update
        (``6 Dh^2`` per head, recurrent count)."""
        proj = linear_flops(self.qkv, self.beta, self.out)
        return proj + self.n_heads * 6 * self.d_head * self.d_head
