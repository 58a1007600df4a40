"""Positional schemes over a 2-D token grid: sincos_2d, learned_2d, rope_2d.

They read the grid ``(H, W)`` and the number of prefix tokens from ``dims`` at build
time (the embedder's layout). Positions still arrive as flat token indices: index
``i`` with ``n_prefix <= i < n_prefix + H W`` is grid cell ``(r, c) = divmod(i -
n_prefix, W)``; prefix tokens (CLS, registers) and tokens after the grid (a
post-sequence CLS) are off the grid. A model without a grid is refused by
``check_dims``, naming the reason.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.components.base import PositionScheme
from anyformer.nn import apply_rotary
from anyformer.registry import Capabilities, Dims, Paper, register


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def needs_grid(name: str, dims: Dims) -> str | None:
    """The refusal of a 2-D scheme in a model whose embedder makes no grid."""
    if dims.grid is None:
        return (
            f"{name} needs a 2-D token grid, but the model's embedder lays its tokens out in "
            f"1-D; use an image embedder (patches, conv_stem, t2t, tnt) or a 1-D scheme"
        )
    return None


class GridIndex(nn.Module):
    """Maps flat token indices to grid cells for a ``(H, W)`` grid after ``n_prefix``
    prefix tokens."""

    def __init__(self, dims: Dims) -> None:
        super().__init__()
        if dims.grid is None:
            raise ValueError(needs_grid("a 2-D position scheme", dims))
        self.height, self.width = dims.grid
        self.n_prefix = dims.n_prefix

    def cells(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(row, col, on_grid)`` for flat indices of any shape; off-grid tokens get
        row = col = 0 and ``on_grid`` False."""
        i = positions.long() - self.n_prefix
        on = (i >= 0) & (i < self.height * self.width)
        i = torch.where(on, i, torch.zeros_like(i))
        return i // self.width, i % self.width, on


class SinCos2DParams(_Params):
    base: PositiveFloat = 10000.0


@register(
    "position",
    "sincos_2d",
    paper=Paper("Masked Autoencoders Are Scalable Vision Learners", 2022, "He et al."),
    summary="fixed 2-D sin/cos: half the channels encode the row, half the column; "
    "prefix tokens get none",
    params=SinCos2DParams,
    caps=Capabilities(position_mode="embed", grid=True),
)
class SinCos2DPosition(PositionScheme):
    """x + PE(r, c) with ``PE = [sin(r w), cos(r w), sin(c w), cos(c w)]``, each block
    ``d/4`` wide, ``w_i = base^(-i / (d/4))`` for ``i = 0 .. d/4-1``: the 1-D sinusoidal
    encoding of the row in the first half of the channels and of the column in the
    second half (the fixed 2-D embedding of MAE and later ViTs). Tokens off the grid
    (CLS, registers) get nothing added. Needs ``d_model`` divisible by 4.
    Paper: "Masked Autoencoders Are Scalable Vision Learners", He et al., 2022.
    """

    def __init__(self, dims: Dims, params: SinCos2DParams) -> None:
        super().__init__()
        self.grid = GridIndex(dims)
        quarter = dims.d_model // 4
        omega = params.base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
        self.register_buffer("omega", omega, persistent=False)

    @staticmethod
    def check_dims(params: SinCos2DParams, dims: Dims) -> str | None:
        if dims.d_model % 4:
            return f"sincos_2d needs d_model divisible by 4, got d_model={dims.d_model}"
        return needs_grid("sincos_2d", dims)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """``PE`` for flat indices of any shape: ``[..., d_model]`` (zero off the grid)."""
        r, c, on = self.grid.cells(positions)
        ar = r.float().unsqueeze(-1) * self.omega
        ac = c.float().unsqueeze(-1) * self.omega
        pe = torch.cat([ar.sin(), ar.cos(), ac.sin(), ac.cos()], dim=-1)
        return pe * on.unsqueeze(-1)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.table(positions).to(x.dtype)


class Learned2DParams(_Params):
    table: Literal["axial", "full"] = "axial"
    prefix: bool = True


@register(
    "position",
    "learned_2d",
    paper=Paper(
        "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
        2021,
        "Dosovitskiy et al.",
    ),
    summary="learned 2-D positions: a row table plus a column table (axial) or one "
    "vector per grid cell (full); a learned vector per prefix token",
    params=Learned2DParams,
    caps=Capabilities(position_mode="embed", grid=True),
)
class Learned2DPosition(PositionScheme):
    """x + P(r, c) with a trained position: ``table="axial"`` learns a row table
    ``R [H, d]`` and a column table ``C [W, d]`` and adds ``R[r] + C[c]`` (ViT's "2-D"
    variant); ``table="full"`` learns one vector per grid cell ``[H W, d]``. With
    ``prefix`` each prefix token (CLS, registers) gets its own learned vector too (as
    ViT's CLS position); tokens after the grid get nothing.
    Paper: "An Image is Worth 16x16 Words", Dosovitskiy et al., 2021 (appendix D.4
    compares 1-D, 2-D and relative position embeddings).
    """

    def __init__(self, dims: Dims, params: Learned2DParams) -> None:
        super().__init__()
        self.grid = GridIndex(dims)
        h, w = self.grid.height, self.grid.width
        d = dims.d_model
        self.axial = params.table == "axial"
        if self.axial:
            self.rows = nn.Parameter(torch.randn(h, d) * 0.02)
            self.cols = nn.Parameter(torch.randn(w, d) * 0.02)
        else:
            self.cells = nn.Parameter(torch.randn(h * w, d) * 0.02)
        self.n_prefix = dims.n_prefix if params.prefix else 0
        self.prefix = nn.Parameter(torch.randn(self.n_prefix, d) * 0.02) if self.n_prefix else None

    @staticmethod
    def check_dims(params: Learned2DParams, dims: Dims) -> str | None:
        return needs_grid("learned_2d", dims)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        r, c, on = self.grid.cells(positions)
        pe = self.rows[r] + self.cols[c] if self.axial else self.cells[r * self.grid.width + c]
        pe = pe * on.unsqueeze(-1)
        if self.prefix is not None:
            p = positions.long()
            is_prefix = (p >= 0) & (p < self.n_prefix)
            pe = pe + self.prefix[p.clamp(0, self.n_prefix - 1)] * is_prefix.unsqueeze(-1)
        return pe

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.table(positions).to(x.dtype)


class Rope2DParams(_Params):
    base: PositiveFloat = 100.0


@register(
    "position",
    "rope_2d",
    paper=Paper("Rotary Position Embedding for Vision Transformer", 2024, "Heo et al."),
    summary="axial 2-D RoPE: half the rotary pairs turn with the row, half with the "
    "column; prefix tokens unrotated (iLLaMA's position scheme)",
    params=Rope2DParams,
    caps=Capabilities(position_mode="rotary", grid=True),
)
class Rope2DPosition(PositionScheme):
    """Axial rotary embedding over a grid: of the ``d_head / 2`` rotated channel pairs,
    pair ``i < d_head/4`` turns by ``r * theta_i`` and pair ``d_head/4 + i`` by
    ``c * theta_i``, ``theta_i = base^(-i / (d_head/4))``; so the score of a query at
    ``(r1, c1)`` and a key at ``(r2, c2)`` depends on their positions only through
    ``(r1 - r2, c1 - c2)``. Tokens off the grid (CLS, registers, a post-sequence CLS)
    are not rotated. ``base`` 100 follows RoPE-Axial for ViTs (grids are short). Needs
    ``d_head`` divisible by 4. iLLaMA ("Adapting LLaMA Decoder to Vision Transformer",
    Wang et al., 2024) uses 2-D RoPE in its LLaMA-style blocks.
    Paper: "Rotary Position Embedding for Vision Transformer", Heo et al., 2024.
    """

    def __init__(self, dims: Dims, params: Rope2DParams) -> None:
        super().__init__()
        self.grid = GridIndex(dims)
        quarter = dims.d_head // 4
        theta = params.base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
        self.register_buffer("theta", theta, persistent=False)

    @staticmethod
    def check_dims(params: Rope2DParams, dims: Dims) -> str | None:
        if dims.d_head % 4:
            return (
                f"rope_2d needs a head dimension divisible by 4, got d_model/n_heads={dims.d_head}"
            )
        return needs_grid("rope_2d", dims)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles, ``[..., d_head/2]`` (angle 0 off the grid)."""
        r, c, on = self.grid.cells(positions)
        a = torch.cat(
            [r.float().unsqueeze(-1) * self.theta, c.float().unsqueeze(-1) * self.theta], -1
        )
        a = a * on.unsqueeze(-1)
        return a.cos(), a.sin()

    def rotate(self, q, k, q_pos, k_pos):  # noqa: ANN001, ANN201 - see base class
        cos_q, sin_q = self.angles(q_pos)
        cos_k, sin_k = (cos_q, sin_q) if k_pos is q_pos else self.angles(k_pos)
        return apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k)


__all__ = ["Learned2DPosition", "Rope2DPosition", "SinCos2DPosition"]
