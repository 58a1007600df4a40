"""Residual layouts: where the norms sit and how a block combines its mixer and FFN.

A layout is registered in the ``layout`` slot (a model picks one with
``model.norm_placement``) and is built as ``cls(dims, params, parts)``: ``parts`` makes
the block's norm, mixer and FFN (each call a fresh module), so a layout decides how many
of each it needs. ``forward(x, ctx)`` returns the block's output.

An FFN whose capabilities say ``empty`` (``ffn: none``) is skipped with its norm, so an
attention-only block has no unused parameters.

In an encoder–decoder's decoder, ``parts.cross()`` makes the block's cross-attention
(``model.cross_attention``; ``None`` in every other model). A layout with the capability
``cross`` puts it between the mixer and the FFN as a third sublayer in its own residual
form (the decoder block of "Attention Is All You Need", Vaswani et al., 2017);
validation refuses an encoder–decoder whose layout lacks the capability.
"""

from __future__ import annotations

from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.components.base import Context, dropout_or_identity
from anyformer.registry import Capabilities, Dims, NoParams, Paper, capabilities, register


class BlockParts(Protocol):
    """Factories for the pieces of one block (supplied by the model)."""

    def norm(self) -> nn.Module: ...
    def mixer(self) -> nn.Module: ...
    def ffn(self) -> nn.Module: ...
    def cross(self) -> nn.Module | None: ...


def _is_empty(ffn: nn.Module) -> bool:
    return capabilities(ffn).empty


def cross_part(parts: BlockParts) -> nn.Module | None:
    """The block's cross-attention, or ``None`` outside an encoder–decoder's decoder (and
    for a parts factory without ``cross``, e.g. a user's)."""
    make = getattr(parts, "cross", None)
    return make() if callable(make) else None


class Layout(nn.Module):
    """Base class: holds ``mixer`` and ``ffn`` and the residual dropout (a plain identity
    function when ``dropout = 0``, which saves a module call per branch when decoding
    token by token)."""

    def __init__(self, dims: Dims, parts: BlockParts) -> None:
        super().__init__()
        self.mixer = parts.mixer()
        self.ffn = parts.ffn()
        self.has_ffn = not _is_empty(self.ffn)
        self.drop = dropout_or_identity(dims.dropout)


@register(
    "layout",
    "pre",
    paper=Paper("On Layer Normalization in the Transformer Architecture", 2020, "Xiong et al."),
    summary="pre-norm: x + f(norm(x)) for the mixer, then for the FFN",
    params=NoParams,
    caps=Capabilities(complexity="O(1)", cross=True),
)
class PreNorm(Layout):
    """x = x + mixer(norm1(x)); [x = x + cross(norm_cross(x))]; x = x + ffn(norm2(x)).
    Needs a final norm after the stack. The bracketed step is an encoder–decoder's
    cross-attention."""

    def __init__(self, dims: Dims, params: NoParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.norm1 = parts.norm()
        self.norm2 = parts.norm() if self.has_ffn else None
        self.cross = cross_part(parts)
        self.norm_cross = parts.norm() if self.cross is not None else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.drop(self.mixer(self.norm1(x), ctx))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), ctx))
        if self.norm2 is not None:
            x = x + self.drop(self.ffn(self.norm2(x)))
        return x


@register(
    "layout",
    "post",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="post-norm: norm(x + f(x)) for the mixer, then for the FFN",
    params=NoParams,
    caps=Capabilities(final_norm=False, complexity="O(1)", cross=True),
)
class PostNorm(Layout):
    """x = norm1(x + mixer(x)); [x = norm_cross(x + cross(x))]; x = norm2(x + ffn(x)):
    the block of the original Transformer, the bracketed step in its decoder."""

    def __init__(self, dims: Dims, params: NoParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.norm1 = parts.norm()
        self.norm2 = parts.norm() if self.has_ffn else None
        self.cross = cross_part(parts)
        self.norm_cross = parts.norm() if self.cross is not None else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.mixer(x, ctx)))
        if self.cross is not None:
            x = self.norm_cross(x + self.drop(self.cross(x, ctx)))
        if self.norm2 is not None:
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x


@register(
    "layout",
    "sandwich_norm",
    paper=Paper(
        "CogView: Mastering Text-to-Image Generation via Transformers", 2021, "Ding et al."
    ),
    summary="sandwich norm: x + norm_out(f(norm_in(x))) for each branch",
    params=NoParams,
    caps=Capabilities(complexity="O(1)", cross=True),
)
class SandwichNorm(Layout):
    """x = x + norm1b(mixer(norm1a(x))); x = x + norm2b(ffn(norm2a(x))).

    The extra norm on each branch's output bounds what a branch adds to the residual
    stream ("CogView", Ding et al., 2021, Sandwich-LN).
    """

    def __init__(self, dims: Dims, params: NoParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.norm1a, self.norm1b = parts.norm(), parts.norm()
        self.norm2a = parts.norm() if self.has_ffn else None
        self.norm2b = parts.norm() if self.has_ffn else None
        self.cross = cross_part(parts)
        if self.cross is not None:  # an encoder-decoder's cross-attention, sandwiched too
            self.norm_cross_a, self.norm_cross_b = parts.norm(), parts.norm()

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.drop(self.norm1b(self.mixer(self.norm1a(x), ctx)))
        if self.cross is not None:
            x = x + self.drop(self.norm_cross_b(self.cross(self.norm_cross_a(x), ctx)))
        if self.norm2a is not None:
            x = x + self.drop(self.norm2b(self.ffn(self.norm2a(x))))
        return x


class SandwichParams(BaseModel):
    """``n_ffn``: FFN sublayers on each side of the single mixer (each with its own weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_ffn: int = Field(1, ge=1, le=8)


@register(
    "layout",
    "sandwich",
    paper=Paper(
        "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention",
        2023,
        "Liu et al.",
    ),
    summary="sandwich block: n FFNs, one mixer, n FFNs (pre-norm residual each)",
    params=SandwichParams,
    caps=Capabilities(complexity="O(1)"),
)
class Sandwich(Layout):
    """x = x + ffn_i(norm(x)) for i < n; x = x + mixer(norm(x)); then n more FFN steps.

    EfficientViT (Liu et al., 2023) spends fewer sublayers on memory-bound attention
    and more on FFNs: one mixer between ``n_ffn`` FFNs on each side. With ``ffn: none``
    it reduces to ``pre``.
    """

    def __init__(self, dims: Dims, params: SandwichParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.norm_mixer = parts.norm()
        n = 2 * params.n_ffn if self.has_ffn else 0
        self.n_before = params.n_ffn if self.has_ffn else 0
        self.extra_ffns = nn.ModuleList(parts.ffn() for _ in range(max(n - 1, 0)))
        self.ffn_norms = nn.ModuleList(parts.norm() for _ in range(n))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        steps = list(zip([self.ffn, *self.extra_ffns], self.ffn_norms))
        for ffn, norm in steps[: self.n_before]:
            x = x + self.drop(ffn(norm(x)))
        x = x + self.drop(self.mixer(self.norm_mixer(x), ctx))
        for ffn, norm in steps[self.n_before :]:
            x = x + self.drop(ffn(norm(x)))
        return x


class MacaronParams(BaseModel):
    """``ffn_weight``: the factor on each of the two FFN half-steps (1/2 in the paper)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ffn_weight: float = Field(0.5, gt=0.0)


@register(
    "layout",
    "macaron",
    paper=Paper(
        "Understanding and Improving Transformer From a Multi-Particle Dynamic System Point of View",
        2019,
        "Lu et al.",
    ),
    summary="half FFN, mixer, half FFN (pre-norm): the Strang splitting of one ODE step",
    params=MacaronParams,
    caps=Capabilities(complexity="O(1)", cross=True),
)
class Macaron(Layout):
    """x = x + ½ ffn1(n1(x)); x = x + mixer(n2(x)); x = x + ½ ffn2(n3(x)).

    Reading a block as one step of a convection–diffusion ODE, interleaving FFN
    (diffusion) half-steps around the attention (convection) step is Strang splitting,
    which is second-order accurate where the plain block is first-order (Lu et al., 2019).
    The two FFNs have their own weights. With ``ffn: none`` it reduces to ``pre``.
    """

    def __init__(self, dims: Dims, params: MacaronParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.weight = params.ffn_weight
        self.norm_mixer = parts.norm()
        if self.has_ffn:
            self.ffn2 = parts.ffn()
            self.norm_ffn1, self.norm_ffn2 = parts.norm(), parts.norm()
        self.cross = cross_part(parts)  # an encoder-decoder's: right after the mixer
        self.norm_cross = parts.norm() if self.cross is not None else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.has_ffn:
            x = x + self.weight * self.drop(self.ffn(self.norm_ffn1(x)))
        x = x + self.drop(self.mixer(self.norm_mixer(x), ctx))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), ctx))
        if self.has_ffn:
            x = x + self.weight * self.drop(self.ffn2(self.norm_ffn2(x)))
        return x


@register(
    "layout",
    "parallel",
    paper=Paper("PaLM: Scaling Language Modeling with Pathways", 2022, "Chowdhery et al."),
    summary="parallel block: x + mixer(norm(x)) + ffn(norm(x)), one shared norm",
    params=NoParams,
    caps=Capabilities(complexity="O(1)"),
)
class Parallel(Layout):
    """y = norm(x); x = x + mixer(y) + ffn(y) — the mixer and FFN read the same input,
    so their input projections can run side by side (PaLM, Chowdhery et al., 2022)."""

    def __init__(self, dims: Dims, params: NoParams, parts: BlockParts) -> None:
        super().__init__(dims, parts)
        self.norm = parts.norm()

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.norm(x)
        out = self.mixer(y, ctx)
        if self.has_ffn:
            out = out + self.ffn(y)
        return x + self.drop(out)
