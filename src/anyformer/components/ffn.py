"""Feed-forward channel mixers: mlp (gelu/gelu_tanh/relu/silu) and glu (swiglu/geglu)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.registry import Capabilities, Dims, Paper, register


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
    (Hendrycks and Gimpel, 2016), the ``gelu_new`` of GPT-2 and BERT's original code."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "relu": F.relu, "silu": F.silu}


def hidden_size(d_model: int, mult: float) -> int:
    """Hidden width ``round(mult * d_model)``, at least 1."""
    return max(1, round(mult * d_model))


class MLPParams(BaseModel):
    """``activation``: ``gelu`` (exact, erf), ``gelu_tanh`` (its tanh approximation,
    GPT-2's ``gelu_new``), ``relu`` or ``silu``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    mult: PositiveFloat = 4.0


@register(
    "ffn",
    "mlp",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="two linear maps with a pointwise activation (gelu, gelu_tanh, relu or silu) between",
    params=MLPParams,
    caps=Capabilities(complexity="O(n)"),
)
class MLP(nn.Module):
    """W2 act(W1 x + b1) + b2 with hidden width ``mult * d_model``.

    Paper: "Attention Is All You Need", Vaswani et al., 2017 (ReLU); GELU and its tanh
    approximation from "Gaussian Error Linear Units", Hendrycks and Gimpel, 2016.
    """

    def __init__(self, dims: Dims, params: MLPParams) -> None:
        super().__init__()
        hidden = hidden_size(dims.d_model, params.mult)
        self.up = nn.Linear(dims.d_model, hidden, bias=dims.bias)
        self.down = nn.Linear(hidden, dims.d_model, bias=dims.bias)
        self.down.residual_projection = True
        self.act = ACTIVATIONS[params.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class GLUParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    variant: Literal["swiglu", "geglu"] = "swiglu"
    mult: PositiveFloat = 8.0 / 3.0


@register(
    "ffn",
    "glu",
    paper=Paper("GLU Variants Improve Transformer", 2020, "Shazeer"),
    summary="gated linear unit: W2 (act(W x) * V x) with swish (swiglu) or gelu (geglu) gate",
    params=GLUParams,
    caps=Capabilities(complexity="O(n)"),
)
class GLU(nn.Module):
    """W2 (act(W x) ⊙ V x) with act = swish (SwiGLU) or GELU (GeGLU).

    The default ``mult = 8/3`` keeps the parameter count of a 4x MLP (three matrices
    instead of two). Paper: "GLU Variants Improve Transformer", Shazeer, 2020.
    """

    def __init__(self, dims: Dims, params: GLUParams) -> None:
        super().__init__()
        self.hidden = hidden_size(dims.d_model, params.mult)
        self.gate_up = nn.Linear(dims.d_model, 2 * self.hidden, bias=dims.bias)
        self.down = nn.Linear(self.hidden, dims.d_model, bias=dims.bias)
        self.down.residual_projection = True
        self.act = F.silu if params.variant == "swiglu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(self.act(gate) * up)
