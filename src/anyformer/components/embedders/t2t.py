"""T2T-ViT's Tokens-to-Token embedding: soft split -> small transformer -> re-fold, repeated."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch import nn

from anyformer.components.embedders._vision import (
    PrefixTokens,
    TokenLayer,
    conv_out,
    image_problem,
    image_shape,
)
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register


class T2TParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: list[PositiveInt] = [3, 3]
    stride: list[PositiveInt] = [2, 2]
    padding: list[NonNegativeInt] | None = None
    token_dim: PositiveInt = 32
    heads: PositiveInt = 1
    mlp_ratio: PositiveFloat = 1.0
    cls: bool = True
    registers: NonNegativeInt = 0
    cls_position: Literal["first", "last"] = "first"

    @model_validator(mode="after")
    def _lengths(self) -> T2TParams:
        n = len(self.kernel)
        if n == 0:
            raise ValueError("kernel must list at least one soft split")
        if len(self.stride) != n or (self.padding is not None and len(self.padding) != n):
            raise ValueError(
                f"kernel, stride and padding must list one value per soft split; got "
                f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}"
            )
        if self.token_dim % self.heads:
            raise ValueError(f"token_dim={self.token_dim} is not divisible by heads={self.heads}")
        return self

    @property
    def pads(self) -> list[int]:
        """The padding of each split: ``padding``, or ``kernel // 2`` when unset."""
        return [k // 2 for k in self.kernel] if self.padding is None else list(self.padding)

    def splits(self) -> list[tuple[int, int, int]]:
        return list(zip(self.kernel, self.stride, self.pads))


@register(
    "embedder",
    "t2t",
    paper=Paper(
        "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
        2021,
        "Yuan et al.",
    ),
    summary="T2T: overlapping soft splits (unfold), each followed by a small transformer "
    "layer and a re-fold into a grid; the last split is projected to d_model",
    params=T2TParams,
    caps=Capabilities(input_kind="image", grid=True),
)
class T2TEmbedder(Embedder):
    """Tokens-to-Token embedding (T2T-ViT). Soft split ``i`` unfolds the current
    ``[B, C_i, H_i, W_i]`` map into overlapping ``k_i x k_i`` windows with stride ``s_i``
    and padding ``p_i``: one token of ``C_i k_i^2`` values per window, so neighbouring
    tokens merge into one and the grid shrinks to ``H_{i+1} = (H_i + 2p_i - k_i)//s_i + 1``.
    After every split but the last, a small transformer layer (``token_dim`` wide,
    ``heads`` heads) models the tokens, which are then re-folded (reshaped back) into a
    ``[B, token_dim, H_{i+1}, W_{i+1}]`` map for the next split. The last split's tokens
    are projected linearly to ``d_model``: a row-major grid plus optional CLS/register
    tokens. The paper uses kernels 7, 3, 3 with strides 4, 2, 2 on 224-pixel images; the
    defaults (3, 3 with strides 2, 2) suit small ones.
    Paper: "Tokens-to-Token ViT", Yuan et al., 2021.
    """

    def __init__(self, spec: Any, params: T2TParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        c, h, w = image_shape(spec)  # type: ignore[misc]
        self.splits = params.splits()
        self.layers = nn.ModuleList()
        channels = c
        for kernel, _, _ in self.splits[:-1]:
            layer = TokenLayer(
                channels * kernel**2, params.token_dim, params.heads, params.mlp_ratio
            )
            self.layers.append(layer)
            channels = params.token_dim
        self.proj = nn.Linear(channels * self.splits[-1][0] ** 2, spec.d_model)
        self.prefix = PrefixTokens(spec.d_model, params.cls, params.registers, params.cls_position)

    @staticmethod
    def _grids(params: T2TParams, h: int, w: int) -> list[tuple[int, int]]:
        """The grid after each soft split."""
        out = []
        for kernel, stride, pad in params.splits():
            h, w = conv_out(h, kernel, stride, pad), conv_out(w, kernel, stride, pad)
            out.append((h, w))
        return out

    @classmethod
    def layout(cls, params: T2TParams, spec: Any) -> TokenLayout:
        shape = image_shape(spec)
        if shape is None:
            return TokenLayout(length=None)
        grid = cls._grids(params, shape[1], shape[2])[-1]
        before, after = PrefixTokens.counts(params.cls, params.registers, params.cls_position)
        return TokenLayout(before + grid[0] * grid[1] + after, grid, before)

    @classmethod
    def check(cls, params: T2TParams, spec: Any) -> str | None:
        problem = image_problem(spec, "t2t")
        if problem:
            return problem
        _, h, w = image_shape(spec)  # type: ignore[misc]
        for i, ((kernel, _, pad), grid) in enumerate(
            zip(params.splits(), cls._grids(params, h, w))
        ):
            if pad >= kernel:
                return f"embedder.padding[{i}]={pad} must be smaller than embedder.kernel[{i}]={kernel}"
            if min(grid) < 1:
                return (
                    f"model.input_shape={list(spec.input_shape)}: soft split {i} "
                    f"(embedder.kernel[{i}]={kernel}) leaves no tokens; use smaller kernels or "
                    f"strides, or fewer splits"
                )
        return None

    @staticmethod
    def soft_split(x: torch.Tensor, kernel: int, stride: int, pad: int) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, H' W', C k^2]``: one token per (overlapping) window."""
        return F.unfold(x, kernel, padding=pad, stride=stride).transpose(1, 2)

    @staticmethod
    def refold(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, H' W', D]`` (row major) -> ``[B, D, H', W']``."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        h, w = x.shape[-2:]
        for i, (kernel, stride, pad) in enumerate(self.splits):
            tokens = self.soft_split(x, kernel, stride, pad)
            h, w = conv_out(h, kernel, stride, pad), conv_out(w, kernel, stride, pad)
            if i == len(self.layers):
                return self.prefix(self.proj(tokens))
            x = self.refold(self.layers[i](tokens), (h, w))
        raise AssertionError("unreachable")
