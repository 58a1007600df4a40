"""Positional schemes: none (NoPE), learned, sinusoidal, rope, alibi, t5_bias.

Each acts at exactly one point (see :class:`~anyformer.components.base.PositionScheme`):
``embed`` (added to token embeddings), ``rotary`` (rotates q/k) or ``bias``
(added to attention scores). The registry records which, so spec validation can
reject a scheme that a mixer cannot take.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt
from torch import nn

from anyformer.components.base import PositionScheme
from anyformer.nn import alibi_slopes, apply_rotary, rotary_angles, t5_bucket
from anyformer.registry import Capabilities, Dims, NoParams, Paper, register


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@register(
    "position",
    "none",
    paper=Paper(
        "The Impact of Positional Encoding on Length Generalization in Transformers",
        2023,
        "Kazemnejad et al.",
    ),
    summary="NoPE: no explicit positions; a causal decoder infers order from its mask",
    caps=Capabilities(position_mode="none"),
)
class NoPosition(PositionScheme):
    """No positional information at all (NoPE).

    A causal decoder can still recover positions from the causal mask; an encoder
    without positions is permutation-equivariant.
    Paper: "The Impact of Positional Encoding on Length Generalization in
    Transformers", Kazemnejad et al., 2023.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()


@register(
    "position",
    "learned",
    paper=Paper("Convolutional Sequence to Sequence Learning", 2017, "Gehring et al."),
    summary="a trained embedding per absolute position, added to token embeddings",
    caps=Capabilities(position_mode="embed"),
)
class LearnedPosition(PositionScheme):
    """x_t + P[t] with a trained table P of ``max_len`` rows.

    Paper: "Convolutional Sequence to Sequence Learning", Gehring et al., 2017 (also
    used by GPT and BERT). Does not support positions >= ``max_len``: such inputs raise
    an error naming ``model.max_len``.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()
        self.table = nn.Embedding(dims.max_len, dims.d_model)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced (torch.export, ONNX): no data-dependent check
            return x + self.table(positions)
        top = int(positions.max()) if positions.numel() else 0
        if top >= self.table.num_embeddings:
            raise ValueError(
                f"position {top} is beyond model.max_len={self.table.num_embeddings} of the "
                f"learned position table; raise model.max_len or use another position scheme"
            )
        return x + self.table(positions)


class SinusoidalParams(_Params):
    base: PositiveFloat = 10000.0


@register(
    "position",
    "sinusoidal",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="fixed sin/cos absolute positions added to token embeddings",
    params=SinusoidalParams,
    caps=Capabilities(position_mode="embed"),
)
class SinusoidalPosition(PositionScheme):
    """x_t + PE(t), PE(t)_{2i} = sin(t / base^{2i/d}), PE(t)_{2i+1} = cos(t / base^{2i/d}).

    Computed on the fly, so any length works. Paper: "Attention Is All You Need",
    Vaswani et al., 2017.
    """

    def __init__(self, dims: Dims, params: SinusoidalParams) -> None:
        super().__init__()
        self.d_model = dims.d_model
        self.base = params.base

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        i = torch.arange(0, self.d_model, 2, device=positions.device, dtype=torch.float32)
        angles = positions.float().unsqueeze(-1) / self.base ** (i / self.d_model)
        pe = torch.zeros(*positions.shape, self.d_model, device=positions.device)
        pe[..., 0::2] = angles.sin()
        pe[..., 1::2] = angles.cos()[..., : self.d_model // 2]
        return pe

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.table(positions).to(x.dtype)


class RopeParams(_Params):
    base: PositiveFloat = 10000.0


@register(
    "position",
    "rope",
    paper=Paper("RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021, "Su et al."),
    summary="rotary embeddings: rotate q/k channel pairs by position-dependent angles",
    params=RopeParams,
    caps=Capabilities(position_mode="rotary"),
)
class RotaryPosition(PositionScheme):
    """Rotates each (q, k) channel pair by angle t * base^(-2i/d_head), so q_m . k_n
    depends on positions only through m - n.

    Paper: "RoFormer: Enhanced Transformer with Rotary Position Embedding", Su et al.,
    2021. Requires an even head dimension.
    """

    def __init__(self, dims: Dims, params: RopeParams) -> None:
        super().__init__()
        self.d_head = dims.d_head
        self.base = params.base

    @staticmethod
    def check_dims(params: RopeParams, dims: Dims) -> str | None:
        if dims.d_head % 2:
            return f"rope needs an even head dimension, got d_model/n_heads={dims.d_head}"
        return None

    def rotate(self, q, k, q_pos, k_pos):  # noqa: ANN001, ANN201 - see base class
        cos_q, sin_q = rotary_angles(q_pos, self.d_head, self.base)
        if k_pos is q_pos:
            cos_k, sin_k = cos_q, sin_q
        else:
            cos_k, sin_k = rotary_angles(k_pos, self.d_head, self.base)
        return apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k)


@register(
    "position",
    "alibi",
    paper=Paper(
        "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",
        2022,
        "Press et al.",
    ),
    summary="ALiBi: a fixed per-head penalty linear in query-key distance",
    caps=Capabilities(position_mode="bias"),
)
class AlibiPosition(PositionScheme):
    """Adds -m_h * |i - j| to the score of query i and key j, with fixed geometric slopes m_h.

    Paper: "Train Short, Test Long: Attention with Linear Biases Enables Input Length
    Extrapolation", Press et al., 2022. In an encoder the distance is symmetric.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(dims.n_heads), persistent=False)

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance = (q_pos[:, None] - k_pos[None, :]).abs().float()
        return -self.slopes[:, None, None] * distance


class T5Params(_Params):
    n_buckets: PositiveInt = 32
    max_distance: PositiveInt = 128


@register(
    "position",
    "t5_bias",
    paper=Paper(
        "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
        2020,
        "Raffel et al.",
    ),
    summary="T5 relative bias: a learned scalar per head and log-spaced distance bucket",
    params=T5Params,
    caps=Capabilities(position_mode="bias"),
)
class T5RelativeBias(PositionScheme):
    """Adds b_h[bucket(j - i)] to the score of query i and key j; b is learned, shared
    by all layers. Buckets are exact for small distances and logarithmic up to
    ``max_distance``; causal models bucket only backward distances.

    Paper: "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer", Raffel et al., 2020.
    """

    def __init__(self, dims: Dims, params: T5Params) -> None:
        super().__init__()
        self.bidirectional = not dims.causal
        self.n_buckets = params.n_buckets
        self.max_distance = params.max_distance
        self.bias = nn.Embedding(params.n_buckets, dims.n_heads)

    @staticmethod
    def check_dims(params: T5Params, dims: Dims) -> str | None:
        if params.n_buckets < 4:
            return f"n_buckets={params.n_buckets} is too small (at least 4)"
        if params.max_distance <= params.n_buckets // (2 if dims.causal else 4):
            return f"max_distance={params.max_distance} must exceed the exact-bucket range"
        return None

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        relative = k_pos[None, :] - q_pos[:, None]
        buckets = t5_bucket(relative, self.bidirectional, self.n_buckets, self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)


__all__ = [
    "AlibiPosition",
    "LearnedPosition",
    "NoPosition",
    "RotaryPosition",
    "SinusoidalPosition",
    "T5RelativeBias",
]
