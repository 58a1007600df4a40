"""MatFormer: an FFN that nests smaller FFNs (prefixes of its hidden units)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator
from torch import nn

from anyformer.components.ffn import ACTIVATIONS, hidden_size
from anyformer.registry import Capabilities, Dims, Paper, register

MATFORMER = Paper(
    "MatFormer: Nested Transformer for Elastic Inference", 2023, "Devvrit, Kudugunta et al."
)


class MatFormerParams(BaseModel):
    """Parameters of the ``matformer`` FFN.

    - ``activation``, ``mult``: as ``mlp``; the full hidden size is ``H = round(mult d)``.
    - ``widths``: the nested granularities, increasing fractions of ``H`` ending at 1;
      granularity ``w`` uses the first ``round(w H)`` hidden units.
    - ``active``: the fraction this layer runs with by default (Mix'n'Match: set it per
      layer with ``model.layers.<i>.ffn``; at run time :func:`anyformer.model.elastic.set_widths`
      changes it). A value between two trained granularities runs but was never trained.
    - ``train``: how training uses the granularities: ``sum`` (one forward per
      granularity each step, the sum of their losses) or ``sample`` (one granularity per
      step, drawn from a generator seeded by the step). Every MatFormer layer of a model
      must agree on ``widths`` and ``train``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    mult: PositiveFloat = 4.0
    widths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    active: float = Field(1.0, gt=0.0, le=1.0)
    train: Literal["sum", "sample"] = "sum"

    @field_validator("widths")
    @classmethod
    def _nested(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("widths=() must name at least one granularity, e.g. [0.5, 1.0]")
        if any(b <= a for a, b in zip(v, v[1:])) or v[0] <= 0:
            raise ValueError(f"widths={list(v)} must be positive and strictly increasing")
        if v[-1] != 1.0:
            raise ValueError(f"widths={list(v)} must end with 1.0 (the full FFN)")
        return v


def units(fraction: float, hidden: int) -> int:
    """Hidden units of granularity ``fraction`` of an FFN with ``hidden`` units."""
    return max(1, min(hidden, round(fraction * hidden)))


@register(
    "ffn",
    "matformer",
    paper=MATFORMER,
    summary="nested FFN: granularities use the first m hidden units, trained jointly; "
    "Mix'n'Match widths per layer and extraction of smaller models",
    params=MatFormerParams,
    caps=Capabilities(complexity="O(n)"),
)
class MatFormerFFN(nn.Module):
    """``W2[:, :m] act(W1[:m] x + b1[:m]) + b2`` with ``m`` the active hidden units.

    The granularities are nested prefixes of one MLP's hidden units, so the smallest is
    contained in every larger one. Training several granularities jointly (see
    ``train``) makes each prefix a good FFN on its own; a model can then run with any
    per-layer choice (Mix'n'Match), and :func:`anyformer.model.elastic.extract` cuts out
    a standalone ``mlp`` model whose outputs are identical.

    Paper: "MatFormer: Nested Transformer for Elastic Inference", Devvrit, Kudugunta et
    al., 2023. Not supported: gated (GLU) FFNs and nesting of attention heads.
    """

    def __init__(self, dims: Dims, params: MatFormerParams) -> None:
        super().__init__()
        self.hidden = hidden_size(dims.d_model, params.mult)
        self.up = nn.Linear(dims.d_model, self.hidden, bias=dims.bias)
        self.down = nn.Linear(self.hidden, dims.d_model, bias=dims.bias)
        self.down.residual_projection = True
        self.act = ACTIVATIONS[params.activation]
        self.params = params
        self.widths = params.widths
        self.active_units = units(params.active, self.hidden)

    @staticmethod
    def check_dims(params: MatFormerParams, dims: Dims) -> str | None:
        hidden = hidden_size(dims.d_model, params.mult)
        sizes = [units(w, hidden) for w in params.widths]
        if len(set(sizes)) != len(sizes):
            return (
                f"widths={list(params.widths)} give hidden sizes {sizes} of H={hidden}, "
                f"some equal; use fewer or larger widths, or a larger mult"
            )
        return None

    def nested_units(self) -> list[int]:
        """Hidden units of every granularity, smallest first."""
        return [units(w, self.hidden) for w in self.widths]

    def set_width(self, fraction: float) -> None:
        """Run with the first ``round(fraction * H)`` hidden units from now on."""
        if not 0 < fraction <= 1:
            raise ValueError(f"width={fraction} must be in (0, 1]")
        self.active_units = units(fraction, self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.active_units
        up_b = self.up.bias[:m] if self.up.bias is not None else None
        h = self.act(F.linear(x, self.up.weight[:m], up_b))
        return F.linear(h, self.down.weight[:, :m], self.down.bias)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token at the active width."""
        return 4 * self.up.in_features * self.active_units
