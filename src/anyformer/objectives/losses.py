"""Built-in objectives: causal language modelling and mean squared error.

An objective is registered in the ``objective`` slot and built as ``cls(params)``;
calling it on ``(outputs, batch)`` returns the mean loss over the positions the batch
counts (``batch.loss_mask``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.registry import Capabilities, Paper, register
from anyformer.spec import ModelSpec
from anyformer.tasks.base import SPLIT_IDS, Batch, torch_generator

#: Stream ids of the generators that corrupt batches (:meth:`Objective.corrupt`): training
#: batch ``step`` uses ``(train.seed, CORRUPT_TRAIN, step)``, evaluation batch ``i`` of a
#: split ``(CORRUPT_EVAL, split id, i)``, the same for every run so evaluation sets stay fixed.
CORRUPT_TRAIN, CORRUPT_EVAL = 0xC0, 0xC1
#: The attribute under which an objective's own modules (:meth:`Objective.module`) hang on
#: the model: its parameters are trained and checkpointed with the model's, and
#: ``init_from`` never copies them.
OBJECTIVE_MODULE = "objective_module"

#: What a training step's forward returns: ``[(loss weight, outputs), ...]``.
Forward = Callable[[Batch], list[tuple[float, torch.Tensor]]]


class Objective:
    """Base class: ``loss(outputs, batch)`` is the mean loss over counted positions.

    A subclass declares what it reads, and spec validation checks it against the head
    the task decides (:func:`anyformer.spec.objective_problem`): ``heads``, the head
    kinds whose outputs it understands, and ``n_outputs``, the outputs per target it
    needs (``None``: any; a dict gives it per head, heads it leaves out take any).
    :meth:`for_head` then fits it to the head's parameters when the run is built."""

    heads: ClassVar[tuple[str, ...] | None] = None
    n_outputs: ClassVar[int | dict[str, int] | None] = None
    #: The model kinds (``ModelSpec.kind``) it can train; ``None``: any.
    kinds: ClassVar[tuple[str, ...] | None] = None
    #: The embedders (registry names) whose tokens it can train on; ``None``: any.
    embedders: ClassVar[tuple[str, ...] | None] = None
    #: Model fields it decides instead of the task (``lab.run.resolve`` applies them where
    #: the user left the field unset): e.g. ``rtd``'s discriminator head.
    model_io: ClassVar[dict[str, Any] | None] = None
    #: Whether :meth:`corrupt` rewrites batches (then evaluation scores corrupted batches).
    corrupts: ClassVar[bool] = False
    #: Tasks whose batches carry what it reads (the contract checks it on the first), for
    #: an objective that reads a task's own extras; ``None``: any task of its head.
    tasks: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    @classmethod
    def contract_model(cls, task_vocab: int | None, task_len: int) -> dict[str, Any]:
        """Model fields the contract checks' toy model needs to be trained by this
        objective with its default parameters, on a task of vocabulary ``task_vocab``
        and longest row ``task_len`` (besides ``kind``, the first of :attr:`kinds`):
        e.g. a larger vocabulary for reserved ids. None by default."""
        return {}

    def for_head(self, head: str, params: Any = None) -> Objective:
        """This objective fitted to the model's head (``head`` its registry name,
        ``params`` its parameters): itself unless it reads something from the head (e.g.
        ``pinball`` reads the quantile levels); raises :class:`~anyformer.errors.SpecError`
        naming both when they cannot go together. Call it once, when the run is built."""
        return self

    def for_model(self, model: ModelSpec) -> Objective:
        """This objective fitted to the model it trains (``model`` the resolved model
        spec: its vocabulary for reserved token ids, its position scheme, its lengths):
        itself by default; raises :class:`~anyformer.errors.SpecError` naming the model
        field when they cannot go together. Called once, when the run is built, after
        :meth:`for_head`."""
        return self

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss(outputs, batch)

    # ------------------------------------------------------------ pretraining hooks
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """``batch`` as the model should see it (masked tokens, corrupted spans, withheld
        positions), its ``targets``/``loss_mask`` saying what is predicted. Draws only
        from ``generator`` (seeded per training step, or per evaluation batch), so a
        resumed run sees the same corruption. The default changes nothing."""
        return batch

    def evaluation_batches(self, batches: list[Batch], split: str) -> list[Batch]:
        """The evaluation set ``batches`` of ``split`` as scored: each corrupted with its
        own fixed generator (``(CORRUPT_EVAL, split, index)``), or unchanged when the
        objective does not corrupt."""
        if not self.corrupts:
            return batches
        split_id = SPLIT_IDS.get(split, len(SPLIT_IDS))
        return [
            self.corrupt(b, torch_generator(CORRUPT_EVAL, split_id, i))
            for i, b in enumerate(batches)
        ]

    def module(self, model: nn.Module) -> nn.Module | None:
        """Trainable modules the objective owns besides the model (a generator, a decoder,
        a projector), built for ``model``; ``None`` (the default) when it has none. The
        Trainer attaches them as ``model.objective_module`` (:func:`attach_objective`)."""
        return None

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        """The loss of one training step on the (already corrupted) ``batch``. ``forward``
        runs the model as the Trainer would (its data-parallel wrapper, under autocast)
        and returns the weighted outputs; ``model`` is the plain model, with
        ``model.objective_module`` when :meth:`module` gave one. The default is the
        weighted sum of :meth:`loss` over the outputs; objectives that drive the model
        themselves (two views, a generator, an asymmetric encoder) override it."""
        return sum(w * self.loss(out, batch) for w, out in forward(batch))  # type: ignore[return-value]

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

    heads = ("regress", "token_regress", "dense", "forecast")

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        pred = outputs[..., 0] if outputs.dim() == batch.targets.dim() + 1 else outputs
        if pred.shape != batch.targets.shape:
            raise ValueError(
                f"mse needs outputs shaped like the targets {tuple(batch.targets.shape)} "
                f"(or with one more axis whose channel 0 is read), got {tuple(outputs.shape)}"
            )
        mask = batch.loss_mask
        return F.mse_loss(pred[mask].float(), batch.targets[mask].float())


def attach_objective(model: nn.Module, objective: Objective) -> None:
    """Attach ``objective``'s own modules (:meth:`Objective.module`) to ``model`` as
    ``model.objective_module`` (once: a model that has them keeps them)."""
    if getattr(model, OBJECTIVE_MODULE, None) is not None:
        return
    extra = objective.module(model)
    if extra is not None:
        model.add_module(OBJECTIVE_MODULE, extra)


def build_objective(name: str, params: BaseModel) -> Objective:
    """The objective registered as ``name`` with validated ``params``."""
    from anyformer import registry

    return registry.get("objective", name).build(params)
