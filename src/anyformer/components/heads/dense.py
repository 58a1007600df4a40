"""Dense head: per-patch outputs re-folded into an image (super-resolution,
segmentation, depth), as the pixel-shuffle upsampler of Shi et al. (2016) applied to
the grid of patch tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.components.heads.base import Head
from anyformer.registry import Capabilities, Paper, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


class DenseParams(BaseModel):
    """- ``scale``: the output image is ``scale`` times the input's size per side (2 for
      x2 super-resolution; 1 for segmentation or depth).
    - ``out_channels``: channels of the output image; unset: ``model.n_outputs`` when the
      task sets it, else the input's channel count. Set beside a different
      ``model.n_outputs`` it is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: int = Field(1, ge=1)
    out_channels: int | None = Field(None, ge=1)


def _channels(params: DenseParams, spec: ModelSpec) -> int | str:
    """The output channel count, or why the spec and parameters disagree."""
    n = getattr(spec, "n_outputs", None)
    if params.out_channels is not None and n is not None and n != params.out_channels:
        return (
            f"head 'dense' out_channels={params.out_channels} differs from "
            f"model.n_outputs={n}; set one of them, or both alike"
        )
    if params.out_channels is not None:
        return params.out_channels
    return n if n is not None else int(spec.input_shape[0])


@register(
    "head",
    "dense",
    paper=Paper(
        "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel "
        "Convolutional Neural Network",
        2016,
        "Shi et al.",
    ),
    summary="per-patch linear outputs re-folded (pixel shuffle) into an image "
    "[B, out_channels, scale*H, scale*W]",
    params=DenseParams,
    caps=Capabilities(pooled=True, grid=True, complexity="O(n)"),
)
class DenseHead(Head):
    """Image outputs from a grid of patch tokens.

    With the embedder's grid ``(gh, gw)`` over an input ``[C, H, W]`` (``model.
    input_shape``), each grid token covers a ``(H / gh) x (W / gw)`` patch; a linear map
    sends it to ``out_channels * bh * bw`` values with ``bh = scale * H / gh`` (``bw``
    alike), which are laid out as the token's ``bh x bw`` block of the output (channel,
    row, column order, so for square blocks this is exactly ``F.pixel_shuffle``). Tokens
    before the grid (``dims.n_prefix``: CLS, registers) and after it (a CLS placed last)
    are dropped. Output ``[B, out_channels, scale*H, scale*W]``:
    one image per example (``pooled`` in the registry's sense: packed rows are refused)."""

    pooled = True

    def __init__(self, spec: ModelSpec, params: DenseParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        dims = spec.dims()
        self.grid: tuple[int, int] = tuple(dims.grid)  # type: ignore[assignment]
        self.n_prefix = dims.n_prefix
        _, h, w = spec.input_shape
        self.block = (params.scale * h // self.grid[0], params.scale * w // self.grid[1])
        self.out_channels = int(_channels(params, spec))
        self.proj = nn.Linear(spec.d_model, self.out_channels * self.block[0] * self.block[1])

    @classmethod
    def check(cls, params: DenseParams, spec: ModelSpec) -> str | None:
        shape = getattr(spec, "input_shape", None)
        if shape is None or len(shape) != 3:
            return (
                f"head 'dense' needs images: model.input_shape=[C, H, W], got "
                f"{None if shape is None else list(shape)}"
            )
        grid = spec.dims().grid
        if grid is None:
            return (
                "head 'dense' needs tokens on a 2-D grid; the embedder gives a 1-D sequence "
                "(use an image embedder such as 'patches')"
            )
        for axis, size, cells in (("height", shape[1], grid[0]), ("width", shape[2], grid[1])):
            if (params.scale * size) % cells:
                return (
                    f"head 'dense' scale={params.scale}: the output {axis} "
                    f"{params.scale * size} does not split into the grid's {cells} "
                    "patches; choose a patch size that divides the image"
                )
        channels = _channels(params, spec)
        return channels if isinstance(channels, str) else None

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        gh, gw = self.grid
        bh, bw = self.block
        tokens = x[:, self.n_prefix : self.n_prefix + gh * gw]
        if tokens.shape[1] != gh * gw:
            raise ValueError(
                f"head 'dense' expects {self.n_prefix} prefix tokens and a {gh}x{gw} grid "
                f"(at least {self.n_prefix + gh * gw} tokens), got {x.shape[1]}"
            )
        y = self.proj(tokens).view(x.shape[0], gh, gw, self.out_channels, bh, bw)
        return y.permute(0, 3, 1, 4, 2, 5).reshape(x.shape[0], self.out_channels, gh * bh, gw * bw)
