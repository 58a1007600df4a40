"""What the objectives that drive the model themselves share (``masked_patches``,
``rtd``, ``vicreg``, ``self_distillation``).

Such an objective overrides :meth:`~anyformer.objectives.losses.Objective.training_loss`
(it runs the model on what it needs: visible patches, two views, a generator's samples),
owns modules of its own (:meth:`~anyformer.objectives.losses.Objective.module`, attached as
``model.objective_module``) and draws every random choice in
:meth:`~anyformer.objectives.losses.Objective.corrupt`, which stores it in
``batch.extras`` (a mask, sampling noise, augmentations): the Trainer seeds that
generator from ``(train.seed, step)``, so a resumed run redraws exactly the same, and
evaluation batches get a fixed draw per split and batch index.

Evaluation scores a batch with ``loss(outputs, batch)``; ``outputs`` are the model's
head on the plain inputs, which such an objective does not train (the MAE encoder's
classifier, the VICReg backbone's head). So :class:`DrivenObjective` keeps the model it
was attached to, and its ``loss`` is the objective's own loss on the (corrupted)
evaluation batch through that model, exactly what a training step would compute there,
without gradients. The task's own metrics in such a run are those of the untrained head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from anyformer.components.base import Context
from anyformer.errors import SpecError
from anyformer.model.depth.base import DepthSchedule
from anyformer.objectives.losses import OBJECTIVE_MODULE, Forward, Objective
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs


class DrivenObjective(Objective):
    """Base of objectives that compute their loss from the model themselves.

    Subclasses define :meth:`objective_loss` (``forward`` is ``None`` in evaluation) and
    :meth:`build_module`. The model is bound when the objective's module is built (the
    Trainer attaches it) and at every training step."""

    corrupts = True

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.model: nn.Module | None = None

    def module(self, model: nn.Module) -> nn.Module | None:
        self.model = model
        return self.build_module(model)

    def build_module(self, model: nn.Module) -> nn.Module | None:
        """The objective's own trainable modules for ``model`` (``None``: none)."""
        return None

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        self.model = model
        return self.objective_loss(model, batch, forward)

    def objective_loss(
        self, model: nn.Module, batch: Batch, forward: Forward | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The objective's loss on ``batch`` (corrupted by :meth:`corrupt`) through the
        bound model; ``outputs`` (the model's head on the plain inputs) are not read."""
        if self.model is None:
            raise RuntimeError(
                f"{type(self).__name__} computes its loss through the model it trains; "
                f"attach it first (objectives.losses.attach_objective(model, objective))"
            )
        return self.objective_loss(self.model, batch.to(outputs.device), None)


def own_module(model: nn.Module) -> nn.Module:
    """The objective's own module on ``model``: ``model.objective_module``, or its
    ``base_module`` when an objective wrapping this one (``self_distillation``) holds it."""
    module = getattr(model, OBJECTIVE_MODULE, None)
    if module is None:
        raise RuntimeError(
            "the objective's own modules are not attached to the model "
            "(objectives.losses.attach_objective(model, objective))"
        )
    inner = getattr(module, "base_module", None)
    return module if inner is None else inner


def final_hidden(
    model: nn.Module, run: Callable[[], Any], required: bool = True
) -> tuple[Any, torch.Tensor]:
    """``(run(), h)``: what ``run`` returns and the last hidden states ``[B, T, D]`` it
    computed, the output of the model's final norm (read by a forward hook, so every
    depth schedule and the data-parallel wrapper pass unchanged; the last call counts).
    A compiled forward may skip hooks added after compilation: ``h`` is then ``None``
    when not ``required`` (else an error)."""
    seen: list[torch.Tensor] = []
    handle = model.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        result = run()
    finally:
        handle.remove()
    if not seen:
        if not required:
            return result, None  # type: ignore[return-value]
        raise RuntimeError("the forward did not reach the model's final norm")
    return result, seen[-1]


def hidden_states(model: nn.Module, inputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The last hidden states ``[B, T, D]`` of ``model`` on ``inputs`` (with ``batch``'s
    padding mask and extras), after the final norm, before pooling and head."""
    return final_hidden(model, lambda: model(inputs, **model_inputs(batch)))[1]


def pool(h: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``h [B, T, D]`` over real tokens ``[B, D]``."""
    if padding_mask is None:
        return h.mean(dim=1)
    real = padding_mask.unsqueeze(-1).to(h.dtype)
    return (h * real).sum(1) / real.sum(1).clamp(min=1.0)


def plain_schedule_problem(model: nn.Module, name: str) -> str | None:
    """Why ``model``'s blocks cannot be run outside its forward (a depth schedule with a
    forward of its own: exits, loss windows, thoughts), or ``None``."""
    depth = model.depth
    if type(depth).forward is not DepthSchedule.forward:
        return (
            f"objective '{name}' runs the model's blocks on a shorter sequence itself, which "
            f"depth='{type(depth).__name__}' (a schedule with a forward of its own) does not "
            f"allow; use a depth schedule that only orders the blocks (stack, recursive)"
        )
    return None


def run_blocks(
    model: nn.Module,
    x: torch.Tensor,
    positions: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x [B, T, D]`` (embedded, positions already added for an ``embed`` scheme) through
    the model's blocks in its schedule's order and its final norm. ``positions`` ``[T]``
    or per row ``[B, T]`` are what rotary schemes and mixers see."""
    ctx = Context(positions, model.causal, model.position, padding_mask)
    depth = model.depth
    x = depth.run(model.blocks, depth.order(model.training), x, ctx)
    return model.norm(x)


def require(problem: str | None) -> None:
    """Raise :class:`SpecError` with ``problem`` when there is one."""
    if problem:
        raise SpecError(problem)


__all__ = [
    "DrivenObjective",
    "final_hidden",
    "hidden_states",
    "own_module",
    "plain_schedule_problem",
    "pool",
    "require",
    "run_blocks",
]
