"""What the image embedders share: reading ``spec.input_shape``, the prefix (CLS,
register) tokens they prepend, and a small pre-norm transformer layer for the
embedders that run attention inside the embedding (T2T, TNT)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.embedders.base import TokenLayout


def image_shape(spec: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` from ``spec.input_shape``, or ``None`` when it is not an image shape."""
    shape = getattr(spec, "input_shape", None)
    if shape is None or len(shape) != 3 or any(int(s) < 1 for s in shape):
        return None
    c, h, w = (int(s) for s in shape)
    return c, h, w


def image_problem(spec: Any, name: str) -> str | None:
    """Why ``spec`` does not describe images an embedder can read (``None`` when it does)."""
    shape = getattr(spec, "input_shape", None)
    if image_shape(spec) is None:
        return (
            f"embedder '{name}' reads images, but model.input_shape={_show(shape)}; "
            f"it needs [channels, height, width] (an image task sets it)"
        )
    return None


def patch_problem(spec: Any, name: str, patch_size: int, field: str = "patch_size") -> str | None:
    """Why ``spec`` is not an image that non-overlapping ``patch_size`` patches tile
    (``None`` when it is), listing the patch sizes that would; ``field`` names the
    embedder parameter that holds the size."""
    problem = image_problem(spec, name)
    if problem:
        return problem
    _, h, w = image_shape(spec)  # type: ignore[misc]
    p = patch_size
    if h % p or w % p:
        return (
            f"model.input_shape={list(spec.input_shape)}: an image of {h}x{w} is not "
            f"divisible into patches of embedder.{field}={p}; use a patch size "
            f"that divides both sides ("
            f"{', '.join(str(d) for d in range(1, h + 1) if h % d == 0 and w % d == 0)})"
        )
    return None


def patch_layout(params: Any, spec: Any) -> TokenLayout:
    """The :class:`TokenLayout` of non-overlapping ``params.patch_size`` patches with the
    prefix (and post-sequence) tokens ``params`` asks for; 1-D of unknown length when
    ``spec`` has no image shape yet."""
    shape = image_shape(spec)
    if shape is None:
        return TokenLayout(length=None)
    grid = (shape[1] // params.patch_size, shape[2] // params.patch_size)
    before, after = PrefixTokens.counts(params.cls, params.registers, params.cls_position)
    return TokenLayout(before + grid[0] * grid[1] + after, grid, before)


def _show(shape: Any) -> str:
    return "None" if shape is None else str(list(shape))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution/unfold along one axis (0 or less: none fits)."""
    return (size + 2 * padding - kernel) // stride + 1


class PrefixTokens(nn.Module):
    """Learned CLS and register tokens around the grid tokens.

    ``registers`` learned register tokens (Darcet et al., "Vision Transformers Need
    Registers", 2024) and, when ``cls``, a learned CLS token (Dosovitskiy et al., ViT,
    2021) are prepended as ``[CLS, reg_1, ..., reg_R, grid...]``; with
    ``cls_position="last"`` the CLS token follows the grid instead (iLLaMA's
    post-sequence class token, Wang et al. 2024, which a causal model needs to see the
    whole image). The layout counts the prepended tokens as ``n_prefix``."""

    def __init__(
        self, d_model: int, cls: bool, registers: int, cls_position: Literal["first", "last"]
    ) -> None:
        super().__init__()
        self.cls_first = cls and cls_position == "first"
        self.cls_last = cls and cls_position == "last"
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if cls else None
        self.registers = (
            nn.Parameter(torch.randn(1, registers, d_model) * 0.02) if registers else None
        )

    @staticmethod
    def counts(cls: bool, registers: int, cls_position: str) -> tuple[int, int]:
        """``(n_prefix, n_suffix)``: tokens before and after the grid."""
        first = int(cls and cls_position == "first")
        return first + registers, int(cls) - first

    def forward(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        b = grid_tokens.shape[0]
        parts = []
        if self.cls_first:
            parts.append(self.cls.expand(b, -1, -1))  # type: ignore[union-attr]
        if self.registers is not None:
            parts.append(self.registers.expand(b, -1, -1))
        parts.append(grid_tokens)
        if self.cls_last:
            parts.append(self.cls.expand(b, -1, -1))  # type: ignore[union-attr]
        return torch.cat(parts, dim=1) if len(parts) > 1 else grid_tokens


class TokenLayer(nn.Module):
    """One small pre-norm transformer layer over ``[N, L, in_dim]`` -> ``[N, L, out_dim]``:
    multi-head self-attention (all tokens see each other), then a GELU MLP.

    When ``out_dim`` differs from ``in_dim`` the value projection maps to ``out_dim`` and
    the attention's residual is the values (as T2T-ViT's token transformer does: the
    input cannot be added to an output of another width)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"width {out_dim} is not divisible by {heads} heads")
        self.heads, self.out_dim, self.same = heads, out_dim, in_dim == out_dim
        self.norm1 = nn.LayerNorm(in_dim)
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        hidden = max(1, round(out_dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(out_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = (
            t.view(n, length, self.heads, -1).transpose(1, 2)
            for t in self.qkv(self.norm1(x)).chunk(3, dim=-1)
        )
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, -1)
        residual = x if self.same else v.transpose(1, 2).reshape(n, length, -1)
        y = residual + self.proj(att)
        return y + self.mlp(self.norm2(y))
