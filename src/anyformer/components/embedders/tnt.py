"""TNT's pixel-level inner transformer inside each patch, feeding the patch tokens."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from anyformer.components.embedders._vision import (
    PrefixTokens,
    TokenLayer,
    image_shape,
    patch_layout,
    patch_problem,
)
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register


class TNTParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    patch_size: PositiveInt = 4
    word_size: PositiveInt = 1
    inner_dim: PositiveInt = 16
    inner_layers: NonNegativeInt = 1
    inner_heads: PositiveInt = 1
    mlp_ratio: PositiveFloat = 2.0
    cls: bool = True
    registers: NonNegativeInt = 0
    cls_position: Literal["first", "last"] = "first"


@register(
    "embedder",
    "tnt",
    paper=Paper("Transformer in Transformer", 2021, "Han et al."),
    summary="TNT: an inner transformer over the pixels ('visual words') of each patch, "
    "flattened and projected into the patch ('visual sentence') token",
    params=TNTParams,
    caps=Capabilities(input_kind="image", grid=True),
)
class TNTEmbedder(Embedder):
    """Transformer-in-Transformer embedding. The ``[B, C, H, W]`` image is cut into
    ``p x p`` patches ("visual sentences") and each patch into ``(p/w)^2`` words of
    ``w x w`` pixels (``word_size=1``: every pixel is a word, the pixel-level inner
    tokens). Each word's ``C w^2`` values are mapped linearly to ``inner_dim`` and get a
    learned word-position vector; ``inner_layers`` small transformer layers run on the
    words of each patch separately (attention never crosses patches); the patch token is
    ``LN(W LN(flatten(words)))``, the words' features flattened in raster order and
    projected to ``d_model``, as TNT's inner-to-outer projection. TNT interleaves inner
    and outer blocks at every depth; as an embedder the inner transformer runs once,
    before the outer (main) blocks. Optional CLS/register tokens.
    Paper: "Transformer in Transformer", Han et al., 2021.
    """

    def __init__(self, spec: Any, params: TNTParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        c, _, _ = image_shape(spec)  # type: ignore[misc]
        self.patch_size, self.word_size = params.patch_size, params.word_size
        n_words = (params.patch_size // params.word_size) ** 2
        self.word_embed = nn.Linear(c * params.word_size**2, params.inner_dim)
        self.word_pos = nn.Parameter(torch.randn(1, n_words, params.inner_dim) * 0.02)
        self.inner = nn.Sequential(
            *(
                TokenLayer(params.inner_dim, params.inner_dim, params.inner_heads, params.mlp_ratio)
                for _ in range(params.inner_layers)
            )
        )
        self.norm_in = nn.LayerNorm(n_words * params.inner_dim)
        self.proj = nn.Linear(n_words * params.inner_dim, spec.d_model)
        self.norm_out = nn.LayerNorm(spec.d_model)
        self.prefix = PrefixTokens(spec.d_model, params.cls, params.registers, params.cls_position)

    @classmethod
    def layout(cls, params: TNTParams, spec: Any) -> TokenLayout:
        return patch_layout(params, spec)

    @classmethod
    def check(cls, params: TNTParams, spec: Any) -> str | None:
        problem = patch_problem(spec, "tnt", params.patch_size)
        if problem:
            return problem
        p = params.patch_size
        if p % params.word_size:
            return (
                f"embedder.word_size={params.word_size} does not divide "
                f"embedder.patch_size={p} (each patch must split into whole words)"
            )
        if params.inner_dim % params.inner_heads:
            return (
                f"embedder.inner_dim={params.inner_dim} is not divisible by "
                f"embedder.inner_heads={params.inner_heads}"
            )
        return None

    def words(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B N, n_words, C w^2]``: the words of every patch, patches
        and the words inside a patch in raster order, a word's values channel-major."""
        b, c, h, w = inputs.shape
        p, s = self.patch_size, self.word_size
        k = p // s
        x = inputs.reshape(b, c, h // p, k, s, w // p, k, s)
        # -> [B, H/p, W/p, k (word row), k (word col), C, s, s]
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
        return x.reshape(b * (h // p) * (w // p), k * k, c * s * s)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b = inputs.shape[0]
        words = self.inner(self.word_embed(self.words(inputs)) + self.word_pos)
        sentences = words.reshape(b, -1, words.shape[1] * words.shape[2])
        return self.prefix(self.norm_out(self.proj(self.norm_in(sentences))))
