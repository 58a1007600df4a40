"""More channel mixers: polycom (polynomial composition activations) and none."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt
from torch import nn

from anyformer.components.ffn import hidden_size
from anyformer.registry import Capabilities, Dims, NoParams, Paper, register


class PolyComParams(BaseModel):
    """Parameters of the ``polycom`` FFN.

    - ``kind``: ``polyrelu`` (sum_i a_i relu(x)^i) or ``polynorm`` (sum_i a_i norm(x^i)).
    - ``order``: r, the highest power (the paper uses 3).
    - ``mult``: hidden width as a multiple of d_model.
    - ``eps``: added under the square root of PolyNorm's RMS normalisation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["polyrelu", "polynorm"] = "polyrelu"
    order: PositiveInt = 3
    mult: PositiveFloat = 4.0
    eps: PositiveFloat = 1e-6


def poly_relu(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``sum_{i=0}^{r} coef[i] * relu(x)^i`` with ``r = len(coef) - 1``."""
    r = F.relu(x)
    out = coef[0] + coef[1] * r
    power = r
    for a in coef[2:]:
        power = power * r
        out = out + a * power
    return out


def poly_norm(x: torch.Tensor, coef: torch.Tensor, eps: float) -> torch.Tensor:
    """``sum_{i=1}^{r} coef[i] * norm(x^i) + coef[0]``, norm(u) = u / sqrt(mean(u^2) + eps)
    over the last (hidden) dimension."""
    out = coef[0] + torch.zeros_like(x)
    power = torch.ones_like(x)
    for a in coef[1:]:
        power = power * x
        out = out + a * power * torch.rsqrt(power.pow(2).mean(-1, keepdim=True) + eps)
    return out


@register(
    "ffn",
    "polycom",
    paper=Paper(
        "Polynomial Composition Activations: Unleashing the Dynamics of Large Language Models",
        2025,
        "Zhuo et al.",
    ),
    summary="MLP whose activation is a learned polynomial composed with relu (PolyReLU) "
    "or with RMS normalisation of powers (PolyNorm)",
    params=PolyComParams,
    caps=Capabilities(complexity="O(n)"),
)
class PolyCom(nn.Module):
    """W2 rho(W1 x + b1) + b2 with a polynomial composition activation rho of order r:

    - PolyReLU: ``rho(x) = sum_{i=0}^{r} a_i relu(x)^i``;
    - PolyNorm: ``rho(x) = sum_{i=1}^{r} a_i norm(x^i) + a_0``, with ``norm`` the RMS
      normalisation over the hidden channels (no gain).

    The r + 1 coefficients are learned scalars per layer, initialised as the authors
    do: ``a_0 = 0`` and ``a_i = 1/r`` for i >= 1.

    Paper: "Polynomial Composition Activations: Unleashing the Dynamics of Large Language
    Models", Zhuo et al., 2025 (ICLR; arXiv 2024). Not supported: gated (GLU) variants.
    """

    def __init__(self, dims: Dims, params: PolyComParams) -> None:
        super().__init__()
        hidden = hidden_size(dims.d_model, params.mult)
        self.kind = params.kind
        self.eps = params.eps
        self.up = nn.Linear(dims.d_model, hidden, bias=dims.bias)
        self.down = nn.Linear(hidden, dims.d_model, bias=dims.bias)
        self.down.residual_projection = True
        coef = torch.full((params.order + 1,), 1.0 / params.order)
        coef[0] = 0.0
        self.coef = nn.Parameter(coef)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "polyrelu":
            return poly_relu(x, self.coef)
        return poly_norm(x, self.coef, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(x)))


@register(
    "ffn",
    "none",
    paper=Paper("Reducing the Transformer Architecture to a Minimum", 2024, "Bermeitinger et al."),
    summary="no channel mixer: the FFN branch adds nothing (attention-only blocks)",
    params=NoParams,
    caps=Capabilities(empty=True, complexity="O(1)"),
)
class NoFFN(nn.Module):
    """Returns zeros, so the block's FFN residual branch is the identity: x + 0.

    Use it for attention-only Transformers, whose attention alone supplies the
    nonlinearity ("Reducing the Transformer Architecture to a Minimum", Bermeitinger et
    al., 2024, drop the MLPs entirely). Its capabilities mark it ``empty``, so residual layouts
    skip the branch and its norm: no unused parameters.
    """

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def flops_per_token(self, seq_len: int) -> int:
        return 0
