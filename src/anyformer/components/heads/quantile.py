"""Quantile heads: one predicted quantile per level per target (Koenker & Bassett's
regression quantiles), pooled (``quantile``) or per token (``token_quantile``), trained with the ``pinball`` objective and calibrated by
conformalised quantile regression (:func:`anyformer.tasks.conformal.cqr`).

Outputs follow the layout of :mod:`anyformer.components.heads.gaussian`: the targets'
shape followed by ``len(levels)`` values, in the order of ``levels``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anyformer.components.heads.gaussian import ValuesHead
from anyformer.registry import Capabilities, Paper, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


def check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """``levels`` when strictly increasing and inside (0, 1); else ``ValueError`` saying why."""
    if not levels:
        raise ValueError("levels must name at least one level, e.g. [0.1, 0.5, 0.9]")
    bad = [q for q in levels if not 0.0 < q < 1.0]
    if bad:
        raise ValueError(f"levels {list(levels)} must lie strictly between 0 and 1 (not {bad})")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(
            f"levels {list(levels)} must be strictly increasing, e.g. {sorted(set(levels))}"
        )
    return tuple(float(q) for q in levels)


class QuantileParams(BaseModel):
    """- ``levels``: the quantile levels, strictly increasing, in (0, 1).
    - ``monotone``: predict the lowest quantile and non-negative (softplus) gaps to the
      next ones, so the quantiles never cross; ``False``: one free value per level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: tuple[float, ...] = Field((0.1, 0.5, 0.9))
    monotone: bool = True

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return check_levels(v)


KOENKER = Paper("Regression Quantiles", 1978, "Koenker & Bassett")


@register(
    "head",
    "quantile",
    paper=KOENKER,
    summary="one quantile per level per target [B, (n_outputs,) len(levels)] of each row, "
    "pooled by model.pool; non-crossing by default",
    params=QuantileParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class QuantileHead(ValuesHead):
    """Quantiles ``q_1 <= ... <= q_L`` at ``levels``: with ``monotone``,
    ``q_1 = a_1`` and ``q_j = q_{j-1} + softplus(a_j)`` from the linear map's values
    ``a``; otherwise ``q_j = a_j``."""

    def __init__(self, spec: ModelSpec, params: QuantileParams) -> None:
        super().__init__(spec, params, len(params.levels))
        self.levels = params.levels
        self.monotone = params.monotone

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.raw(x, padding_mask)
        if self.monotone and self.values > 1:
            gaps = F.softplus(a[..., 1:])
            a = torch.cat([a[..., :1], a[..., :1] + gaps.cumsum(-1)], dim=-1)
        return self.shape_out(a)


@register(
    "head",
    "token_quantile",
    paper=KOENKER,
    summary="one quantile per level per target per token [B, T, (n_outputs,) len(levels)]",
    params=QuantileParams,
    caps=Capabilities(complexity="O(n)"),
)
class TokenQuantileHead(QuantileHead):
    """``quantile`` per token."""

    pooled = False
