"""ViT patch embedding: non-overlapping ``p x p`` patches, each linearly projected."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt
from torch import nn

from anyformer.components.embedders._vision import (
    PrefixTokens,
    image_shape,
    patch_layout,
    patch_problem,
)
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register


class PatchesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    patch_size: PositiveInt = 4
    cls: bool = True
    registers: NonNegativeInt = 0
    cls_position: Literal["first", "last"] = "first"


@register(
    "embedder",
    "patches",
    paper=Paper(
        "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
        2021,
        "Dosovitskiy et al.",
    ),
    summary="ViT: non-overlapping p x p patches of a C-channel image, linearly projected; "
    "optional CLS and register tokens",
    params=PatchesParams,
    caps=Capabilities(input_kind="image", grid=True),
)
class PatchEmbedder(Embedder):
    """Cuts a ``[B, C, H, W]`` image into ``(H/p) x (W/p)`` non-overlapping ``p x p``
    patches and maps each flattened patch (channel-major, then row, then column: the
    order of ``F.unfold``) by one linear map ``W [d_model, C p p]`` plus bias, giving a
    row-major grid of tokens. A strided convolution computes exactly this.

    Optional learned prefix tokens: a CLS token (ViT) and ``registers`` register tokens
    (Darcet et al., "Vision Transformers Need Registers", 2024); ``cls_position="last"``
    puts the CLS token after the grid (iLLaMA's post-sequence class token for causal
    models). Paper: "An Image is Worth 16x16 Words", Dosovitskiy et al., 2021.
    """

    def __init__(self, spec: Any, params: PatchesParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        c, _, _ = image_shape(spec)  # type: ignore[misc]
        p = params.patch_size
        self.patch_size = p
        self.proj = nn.Conv2d(c, spec.d_model, kernel_size=p, stride=p)
        self.prefix = PrefixTokens(spec.d_model, params.cls, params.registers, params.cls_position)

    @classmethod
    def layout(cls, params: PatchesParams, spec: Any) -> TokenLayout:
        return patch_layout(params, spec)

    @classmethod
    def check(cls, params: PatchesParams, spec: Any) -> str | None:
        return patch_problem(spec, "patches", params.patch_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(inputs).flatten(2).transpose(1, 2)  # [B, H/p * W/p, D]
        return self.prefix(tokens)
