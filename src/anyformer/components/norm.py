"""Normalisation layers: layernorm and rmsnorm.

Where a norm sits (``pre``: before each sublayer, inside the residual branch;
``post``: after the residual addition) is the model's ``norm_placement``, not a
property of the norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.registry import Capabilities, Dims, Paper, register


class LayerNormParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    eps: PositiveFloat = 1e-5
    bias: bool = True


@register(
    "norm",
    "layernorm",
    paper=Paper("Layer Normalization", 2016, "Ba et al."),
    summary="subtract the mean, divide by the standard deviation, then scale and shift",
    params=LayerNormParams,
    caps=Capabilities(complexity="O(n)"),
)
class LayerNorm(nn.Module):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * g + b over the channel dimension.

    Paper: "Layer Normalization", Ba, Kiros and Hinton, 2016.
    """

    def __init__(self, dims: Dims, params: LayerNormParams) -> None:
        super().__init__()
        self.eps = params.eps
        self.weight = nn.Parameter(torch.ones(dims.d_model))
        self.bias = nn.Parameter(torch.zeros(dims.d_model)) if params.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the op itself, without F.layer_norm's Python wrapper (a decoding step runs this
        # with cold caches, where each Python call costs several times its usual price)
        weight = self.weight
        return torch.layer_norm(x, weight.shape, weight, self.bias, self.eps)


class RMSNormParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    eps: PositiveFloat = 1e-6


@register(
    "norm",
    "rmsnorm",
    paper=Paper("Root Mean Square Layer Normalization", 2019, "Zhang & Sennrich"),
    summary="divide by the root mean square of the channels, then scale (no centring)",
    params=RMSNormParams,
    caps=Capabilities(complexity="O(n)"),
)
class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g.

    Paper: "Root Mean Square Layer Normalization", Zhang and Sennrich, 2019.
    """

    def __init__(self, dims: Dims, params: RMSNormParams) -> None:
        super().__init__()
        self.eps = params.eps
        self.weight = nn.Parameter(torch.ones(dims.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
