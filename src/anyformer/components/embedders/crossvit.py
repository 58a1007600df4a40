"""CrossViT's dual-branch patch embedding: the same image cut at two patch sizes, each
branch with its own CLS token, laid out as one sequence of two branches."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator
from torch import nn

from anyformer.components.embedders._vision import image_shape, patch_problem
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register

CROSSVIT = Paper(
    "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
    2021,
    "Chen, Fan & Panda",
)


class CrossViTParams(BaseModel):
    """``small_patch``: the patch size of the small-patch (fine) branch; ``large_patch``:
    that of the large-patch (coarse) branch. Both must tile the image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    small_patch: PositiveInt = 2
    large_patch: PositiveInt = 4

    @model_validator(mode="after")
    def _order(self) -> CrossViTParams:
        if self.small_patch >= self.large_patch:
            raise ValueError(
                f"small_patch={self.small_patch} must be smaller than "
                f"large_patch={self.large_patch} (the two branches' patch sizes)"
            )
        return self


@register(
    "embedder",
    "crossvit",
    paper=CROSSVIT,
    summary="CrossViT: two branches of patch tokens (small and large patches), each with "
    "its own CLS token, as [CLS_s, small..., CLS_l, large...]; mix with cross_branch",
    params=CrossViTParams,
    caps=Capabilities(input_kind="image", branches=True),
)
class CrossViTEmbedder(Embedder):
    """Embeds a ``[B, C, H, W]`` image twice, as in CrossViT (Chen et al., 2021): the
    small-patch branch cuts it into ``small_patch`` patches, the large-patch branch into
    ``large_patch`` patches, each patch linearly projected (a strided convolution, as
    ViT's ``patches``), and each branch gets its own learned CLS token. The tokens are
    laid out as one sequence ``[CLS_s, small patches (row-major)..., CLS_l, large
    patches...]``; :meth:`layout` states the two branch lengths (``branches``), which
    the ``cross_branch`` mixer reads to keep the branches apart except through their CLS
    tokens, and ``model.pool=branches`` pools the two CLS tokens.

    Deviation from the paper: both branches have the model's one width ``d_model`` (the
    paper's large branch is wider, with projections between the widths at the fusion).
    Positions: ``position=learned`` gives each token of each branch its own learned
    embedding, as the paper's per-branch position embeddings; the 2-D schemes need one
    grid and are refused (the layout has two)."""

    def __init__(self, spec: Any, params: CrossViTParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        c, _, _ = image_shape(spec)  # type: ignore[misc]
        d = spec.d_model
        self.small = nn.Conv2d(c, d, kernel_size=params.small_patch, stride=params.small_patch)
        self.large = nn.Conv2d(c, d, kernel_size=params.large_patch, stride=params.large_patch)
        self.cls_small = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cls_large = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    @classmethod
    def layout(cls, params: CrossViTParams, spec: Any) -> TokenLayout:
        shape = image_shape(spec)
        if shape is None:
            return TokenLayout(length=None)
        _, h, w = shape
        lengths = tuple(1 + (h // p) * (w // p) for p in (params.small_patch, params.large_patch))
        return TokenLayout(sum(lengths), None, 0, lengths)

    @classmethod
    def check(cls, params: CrossViTParams, spec: Any) -> str | None:
        return patch_problem(spec, "crossvit", params.small_patch, "small_patch") or (
            patch_problem(spec, "crossvit", params.large_patch, "large_patch")
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b = inputs.shape[0]
        small = self.small(inputs).flatten(2).transpose(1, 2)
        large = self.large(inputs).flatten(2).transpose(1, 2)
        cls_s, cls_l = self.cls_small.expand(b, -1, -1), self.cls_large.expand(b, -1, -1)
        return torch.cat((cls_s, small, cls_l, large), dim=1)
