"""Attention with relative positions built into the attention map: ``urpe`` (a learned
Toeplitz matrix multiplying the softmax probabilities) and ``complex`` (per-head complex
rotations that mix a semantic angle with a relative-position angle)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.components.attention.common import Impl, attend, context_bias, merge_heads
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, NoParams, Paper, register


# --------------------------------------------------------------------------- urpe
@register(
    "attention",
    "urpe",
    paper=Paper("Your Transformer May Not be as Powerful as You Expect", 2022, "Luo et al."),
    summary="universal RPE: softmax probabilities multiplied elementwise by a learned "
    "per-head Toeplitz matrix C[i - j]",
    params=NoParams,
    caps=Capabilities(complexity="O(n^2)"),
)
class URPEAttention(QKVHeads):
    """(softmax(Q K^T / sqrt(d_head) + B) * C_h) V per head h, then the output projection.

    C_h[i, j] = c_h[i - j] is a learned Toeplitz matrix, one per head (initialised to
    ones, where the layer equals softmax attention). Softmax rows are right-stochastic;
    multiplying by C lifts that restriction, which the paper proves is what RPE-based
    Transformers need to be universal approximators. B is the model's relative bias if
    its position scheme acts by ``bias`` (the paper builds URPE on such RPEs); rotary
    schemes rotate q/k. Masked entries are zero before the product, so causality and
    padding are kept. A decoder learns the ``max_len`` offsets i - j >= 0, an encoder all
    ``2 max_len - 1``.

    Paper: "Your Transformer May Not be as Powerful as You Expect", Luo et al., 2022.
    Not supported: positions at or beyond ``model.max_len`` (an error), a fused kernel,
    grouped key/value heads, KV cache.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__(dims)
        self.max_len = dims.max_len
        self.causal = dims.causal
        n_offsets = dims.max_len if dims.causal else 2 * dims.max_len - 1
        self.toeplitz_coef = nn.Parameter(torch.ones(dims.n_heads, n_offsets))

    def toeplitz(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """C ``[H, Tq, Tk]`` with C[h, i, j] = c_h[q_pos[i] - k_pos[j]] (0 for j after i in a
        decoder; such entries are masked anyway)."""
        top = int(torch.maximum(q_pos.max(), k_pos.max())) if q_pos.numel() else 0
        if top >= self.max_len:
            raise ValueError(
                f"urpe has relative weights for distances below model.max_len="
                f"{self.max_len}, but got position {top}; raise model.max_len"
            )
        rel = q_pos[:, None] - k_pos[None, :]
        if self.causal:
            coef = self.toeplitz_coef[:, rel.clamp(min=0)]
            return coef * (rel >= 0)
        return self.toeplitz_coef[:, rel + self.max_len - 1]

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if not ctx.causal and self.causal:
            raise ValueError(
                "urpe was built for a decoder (causal) and has no weights for "
                "keys after the query; build it with kind=encoder"
            )
        q, k, v = self.project(x)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5
        bias = context_bias(ctx, x.shape[1], scores.dtype, x.device)
        if bias is not None:
            scores = scores + bias
        probs = scores.softmax(-1) * self.toeplitz(ctx.positions, ctx.positions).to(q.dtype)
        if self.dropout and self.training:
            probs = nn.functional.dropout(probs, self.dropout)
        return self.out(merge_heads(probs @ v))


# --------------------------------------------------------------------------- complex
def polar(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Modulus and angle of a + ib, with finite gradients at 0 (angle 0 there)."""
    zero = (a == 0) & (b == 0)
    a_safe = torch.where(zero, torch.ones_like(a), a)
    r = torch.where(zero, torch.zeros_like(a), torch.hypot(a_safe, b))
    return r, torch.atan2(b, a_safe)


class ComplexParams(BaseModel):
    """``base``: base of the relative-position frequencies omega_c = base^(-2c/d_head)
    (as in RoPE). ``impl``: ``fast`` (fused kernel on the rotated q/k) or ``reference``
    (explicit softmax), tested equal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: PositiveFloat = 10000.0
    impl: Impl = "fast"


@register(
    "attention",
    "complex",
    paper=Paper(
        "ComplexFormer: Disruptively Advancing Transformer Inference Ability via "
        "Head-Specific Complex Vector Attention",
        2025,
        "Shao et al.",
    ),
    summary="complex multi-head attention: per-head polar q/k whose phase difference mixes "
    "a learned scaling of the semantic angle with a learned relative-position angle",
    params=ComplexParams,
    caps=Capabilities(
        packing=True,
        complexity="O(n^2)",
        kv_cache=True,
        prefix=True,
        position_modes=("none", "embed", "bias"),
    ),
)
class ComplexAttention(QKVHeads):
    """Score(m, n) = sum_c |q_mc| |k_nc| cos(s_hc (theta_q,mc - theta_k,nc) + p_hc omega_c (m - n)) / sqrt(d_head).

    Each head's real q/k (``d_head`` channels) become ``d_head/2`` complex numbers
    q_c = q[c] + i q[c + d_head/2] in polar form (modulus, angle theta) — the paper's
    per-head Euler transformation. The phase between query m and key n is the paper's
    adaptive rotation Adapt(AS_mn) + Delta(P_mn) with, per head and frequency c, a learned
    scale s of the semantic angle difference AS and a learned scale p of the RoPE-style
    relative angle omega_c (m - n) (both initialised to 1, where the layer equals softmax
    attention with RoPE; p = 0 removes positions). The scores are the real part of
    q' conj(k') for per-token rotated vectors q'_c = |q_c| exp(i (s theta_q + p omega m)),
    so the fused attention kernel applies.

    Simplifications (the paper is withdrawn; this follows its abstract): Adapt is a
    learned per-head, per-frequency linear scale applied to each token's principal angle
    in (-pi, pi], which equals scaling the wrapped difference up to multiples of 2 pi s
    (exactly when s is an integer); Delta is a learned scale of fixed RoPE frequencies.
    A positional scheme that biases scores adds to them; rotary schemes are rejected since
    the layer rotates by position itself.

    Paper: "ComplexFormer: Disruptively Advancing Transformer Inference Ability via
    Head-Specific Complex Vector Attention", Shao et al., 2025. Requires an even d_head.
    Not supported: grouped key/value heads. Decodes with a KV cache (of the rotated keys)
    and accepts packed rows (rotating by the per-document positions).
    """

    def __init__(self, dims: Dims, params: ComplexParams) -> None:
        super().__init__(dims)
        self.impl = params.impl
        half = dims.d_head // 2
        freq = params.base ** (-torch.arange(0, 2 * half, 2, dtype=torch.float32) / dims.d_head)
        self.register_buffer("freq", freq, persistent=False)
        self.angle_scale = nn.Parameter(torch.ones(dims.n_heads, half))
        self.position_scale = nn.Parameter(torch.ones(dims.n_heads, half))

    @staticmethod
    def check_dims(params: ComplexParams, dims: Dims) -> str | None:
        if dims.d_head % 2:
            return f"complex pairs channels into complex numbers: d_head={dims.d_head} must be even"
        return None

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """|x_c| exp(i (s theta_c + p omega_c t)) as real ``[B, H, T, d_head]``."""
        half = x.shape[-1] // 2
        r, theta = polar(x[..., :half].float(), x[..., half:].float())
        pos = positions.to(torch.float32).unsqueeze(-1) * self.freq  # [T, half] or [B, T, half]
        pos = pos.unsqueeze(-3) if pos.dim() == 3 else pos
        phase = self.angle_scale[:, None, :] * theta + self.position_scale[:, None, :] * pos
        return torch.cat((r * phase.cos(), r * phase.sin()), dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        q, k = self.rotate(q, ctx.positions), self.rotate(k, ctx.positions)
        y = attend(q, k, v, ctx, self.impl, self.dropout, self.training)
        return self.out(merge_heads(y))


__all__ = ["ComplexAttention", "URPEAttention", "polar"]
