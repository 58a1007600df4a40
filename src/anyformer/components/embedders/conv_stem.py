"""CvT's convolutional token embedding: an overlapping strided convolution, then LayerNorm."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt
from torch import nn

from anyformer.components.embedders._vision import (
    PrefixTokens,
    conv_out,
    image_problem,
    image_shape,
)
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register


class ConvStemParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: PositiveInt = 3
    stride: PositiveInt = 2
    padding: NonNegativeInt | None = None
    norm: bool = True
    cls: bool = False
    registers: NonNegativeInt = 0
    cls_position: Literal["first", "last"] = "first"

    @property
    def pad(self) -> int:
        """The padding used: ``padding``, or ``kernel // 2`` when unset."""
        return self.kernel // 2 if self.padding is None else self.padding


@register(
    "embedder",
    "conv_stem",
    paper=Paper("CvT: Introducing Convolutions to Vision Transformers", 2021, "Wu et al."),
    summary="CvT convolutional token embedding: overlapping k x k convolution with stride s, "
    "then LayerNorm",
    params=ConvStemParams,
    caps=Capabilities(input_kind="image", grid=True),
)
class ConvStemEmbedder(Embedder):
    """Convolutional token embedding of CvT: ``Conv2d(C, d_model, kernel, stride,
    padding)`` over the ``[B, C, H, W]`` image (windows overlap when ``stride < kernel``,
    so neighbouring tokens share pixels), flattened to a row-major grid of
    ``H' x W'`` tokens, ``H' = (H + 2 padding - kernel) // stride + 1``, then LayerNorm
    over each token (``norm=false`` drops it). CvT uses kernel 7, stride 4, padding 2 on
    ImageNet; the defaults (3, 2, 1) suit small images. Optional CLS/register tokens as in
    :class:`~anyformer.components.embedders.patches.PatchEmbedder`.
    Paper: "CvT: Introducing Convolutions to Vision Transformers", Wu et al., 2021.
    """

    def __init__(self, spec: Any, params: ConvStemParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        c, _, _ = image_shape(spec)  # type: ignore[misc]
        self.conv = nn.Conv2d(c, spec.d_model, params.kernel, params.stride, params.pad)
        self.norm = nn.LayerNorm(spec.d_model) if params.norm else nn.Identity()
        self.prefix = PrefixTokens(spec.d_model, params.cls, params.registers, params.cls_position)

    @classmethod
    def layout(cls, params: ConvStemParams, spec: Any) -> TokenLayout:
        shape = image_shape(spec)
        if shape is None:
            return TokenLayout(length=None)
        _, h, w = shape
        grid = tuple(conv_out(s, params.kernel, params.stride, params.pad) for s in (h, w))
        before, after = PrefixTokens.counts(params.cls, params.registers, params.cls_position)
        return TokenLayout(before + grid[0] * grid[1] + after, grid, before)  # type: ignore[arg-type]

    @classmethod
    def check(cls, params: ConvStemParams, spec: Any) -> str | None:
        problem = image_problem(spec, "conv_stem")
        if problem:
            return problem
        _, h, w = image_shape(spec)  # type: ignore[misc]
        if params.pad >= params.kernel:
            return (
                f"embedder.padding={params.pad} must be smaller than embedder.kernel="
                f"{params.kernel} (a window would read only padding)"
            )
        if min(h, w) + 2 * params.pad < params.kernel:
            return (
                f"model.input_shape={list(spec.input_shape)}: an image of {h}x{w} padded by "
                f"embedder.padding={params.pad} is smaller than embedder.kernel="
                f"{params.kernel}; use a smaller kernel or more padding"
            )
        return None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(inputs).flatten(2).transpose(1, 2)
        return self.prefix(self.norm(tokens))
