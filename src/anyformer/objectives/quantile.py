"""The pinball (quantile) loss of a ``quantile`` head (Koenker & Bassett, 1978)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from anyformer.components.heads.quantile import check_levels
from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch


class PinballParams(BaseModel):
    """``levels``: the quantile level of each output value, strictly increasing in (0, 1);
    unset: the levels of the model's ``quantile`` head (read when the run is built, see
    :meth:`Pinball.for_head`). Set, they must equal the head's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    levels: tuple[float, ...] | None = None

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if v is None else check_levels(v)


@register(
    "objective",
    "pinball",
    paper=Paper("Regression Quantiles", 1978, "Koenker & Bassett"),
    summary="pinball (quantile) loss at the quantile head's levels",
    params=PinballParams,
    caps=Capabilities(),
)
class Pinball(Objective):
    """``mean over counted targets and levels of max(tau (y - q), (tau - 1)(y - q))``.

    ``outputs`` are the targets' shape followed by one value per level (the ``quantile``
    head's layout); its minimiser in ``q_tau`` is the ``tau``-quantile of ``y`` given the
    input. Levels come from :class:`PinballParams`."""

    params: PinballParams
    #: The heads it serves, for the contract checks (outputs built through one of them).
    heads = ("quantile", "token_quantile")

    def for_head(self, head: str, params: Any = None) -> Objective:
        levels = getattr(params, "levels", None)
        if levels is None:
            raise SpecError(
                f"objective 'pinball' needs a head with quantile levels (head 'quantile'), "
                f"got head '{head}'"
            )
        levels = tuple(float(q) for q in levels)
        if self.params.levels is None:
            return type(self)(PinballParams(levels=levels))
        if self.params.levels != levels:
            raise SpecError(
                f"objective 'pinball' levels={list(self.params.levels)} differ from head "
                f"'{head}' levels={list(levels)}; set them alike or leave objective.levels "
                "unset to use the head's"
            )
        return self

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        levels = self.params.levels
        if levels is None:
            raise ValueError(
                "objective 'pinball' has no levels: set objective.levels, or build it for "
                "the model's quantile head (Objective.for_head)"
            )
        if outputs.dim() != batch.targets.dim() + 1 or outputs.shape[-1] != len(levels):
            raise ValueError(
                f"pinball at levels {list(levels)} needs outputs [..., {len(levels)}] beside "
                f"targets {tuple(batch.targets.shape)}, got {tuple(outputs.shape)}"
            )
        mask = batch.loss_mask
        q = outputs[mask].float()
        y = batch.targets[mask].float().unsqueeze(-1)
        tau = torch.tensor(levels, dtype=q.dtype, device=q.device)
        diff = y - q
        return torch.maximum(tau * diff, (tau - 1) * diff).mean()
