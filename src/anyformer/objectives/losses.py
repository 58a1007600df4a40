"""Built-in objectives: causal language modelling and mean squared error.

An objective is registered in the ``objective`` slot and built as ``cls(params)``;
calling it on ``(outputs, batch)`` returns the mean loss over the positions the batch
counts (``batch.loss_mask``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch


class Objective:
    """Base class: ``loss(outputs, batch)`` is the mean loss over counted positions.

    A subclass declares what it reads, and spec validation checks it against the head
    the task decides (:func:`anyformer.spec.objective_problem`): ``heads``, the head
    kinds whose outputs it understands, and ``n_outputs``, the outputs per target it
    needs (``None``: any; a dict gives it per head, heads it leaves out take any).
    :meth:`for_head` then fits it to the head's parameters when the run is built."""

    heads: ClassVar[tuple[str, ...] | None] = None
    n_outputs: ClassVar[int | dict[str, int] | None] = None

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def for_head(self, head: str, params: Any = None) -> Objective:
        """This objective fitted to the model's head (``head`` its registry name,
        ``params`` its parameters): itself unless it reads something from the head (e.g.
        ``pinball`` reads the quantile levels); raises :class:`~anyformer.errors.SpecError`
        naming both when they cannot go together. Call it once, when the run is built."""
        return self

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss(outputs, batch)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


class CausalLMParams(BaseModel):
    """``answer_only``: count only positions the task marks (the answer and its end
    token); ``False`` counts every real position (the prompt too).
    ``label_smoothing``: as in ``torch.nn.functional.cross_entropy``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    answer_only: bool = True
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def _counted(batch: Batch, answer_only: bool) -> torch.Tensor:
    if answer_only:
        return batch.loss_mask
    if batch.padding_mask is not None:
        return batch.padding_mask
    return torch.ones_like(batch.loss_mask)


@register(
    "objective",
    "causal_lm",
    paper=Paper(
        "Improving Language Understanding by Generative Pre-Training", 2018, "Radford et al."
    ),
    summary="next-token cross-entropy, on answer tokens only by default",
    params=CausalLMParams,
    caps=Capabilities(),
)
class CausalLM(Objective):
    """Cross-entropy of the next token, averaged over counted positions.

    Targets are already shifted by the task (``targets[t]`` is the token after
    ``inputs[t]``). With ``answer_only`` the prompt is context, not a target.
    """

    heads = ("lm", "classify", "token_classify")

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        mask = _counted(batch, self.params.answer_only).reshape(-1)
        logits = outputs.reshape(-1, outputs.shape[-1])[mask]
        targets = batch.targets.reshape(-1)[mask]
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.params.label_smoothing)


class MSEParams(BaseModel):
    """No parameters: the squared error of output channel 0 against the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@register(
    "objective",
    "mse",
    paper=None,
    summary="mean squared error of a real-valued per-token or pooled output",
    params=MSEParams,
    caps=Capabilities(),
)
class MSE(Objective):
    """mean((outputs - targets)^2) over counted positions.

    Outputs shaped like the targets (``[B, T]``, ``[B, k]``, images ``[B, C, H, W]`` of a
    ``dense`` head, with ``loss_mask [B]`` choosing examples), or with one more axis of
    which channel 0 is read (``[B, T, 1]``; the mean of a ``gaussian`` head's
    ``[..., 2]``). Other shapes are refused rather than broadcast."""

    heads = ("regress", "token_regress", "dense")

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        pred = outputs[..., 0] if outputs.dim() == batch.targets.dim() + 1 else outputs
        if pred.shape != batch.targets.shape:
            raise ValueError(
                f"mse needs outputs shaped like the targets {tuple(batch.targets.shape)} "
                f"(or with one more axis whose channel 0 is read), got {tuple(outputs.shape)}"
            )
        mask = batch.loss_mask
        return F.mse_loss(pred[mask].float(), batch.targets[mask].float())


def build_objective(name: str, params: BaseModel) -> Objective:
    """The objective registered as ``name`` with validated ``params``."""
    from anyformer import registry

    return registry.get("objective", name).build(params)
