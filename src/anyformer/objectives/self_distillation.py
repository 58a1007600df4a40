"""Self-distillation for further pre-training: the model's own earlier weights as teacher."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.errors import SpecError
from anyformer.objectives.driven import final_hidden
from anyformer.objectives.losses import Forward, Objective
from anyformer.registry import Capabilities, Paper, register
from anyformer.spec_refs import ObjectiveRef
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs

SELF_DISTILLATION = Paper(
    "Self-Distillation for Further Pre-training of Transformers", 2022, "Lee et al."
)


class SelfDistillationParams(BaseModel):
    """- ``base``: the objective trained alongside (a name or ``{name, params...}``;
      its corruption, if any, is used too).
    - ``alpha``: weight of the distillation term (0: exactly the base objective).
    - ``target``: ``hidden`` (mean squared distance of the last hidden states, after the
      final norm, over real tokens: the paper's) or ``logits`` (KL divergence of the
      student's output distribution from the teacher's, at ``temperature``, over the
      positions the base objective counts).
    - ``teacher``: ``initial`` (a frozen copy of the weights the run starts from) or
      ``ema`` (an exponential moving average of the student, ``ema_decay``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: ObjectiveRef = Field(default_factory=lambda: ObjectiveRef(name="causal_lm"))
    alpha: float = Field(1.0, ge=0.0)
    target: Literal["hidden", "logits"] = "hidden"
    teacher: Literal["initial", "ema"] = "initial"
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    temperature: float = Field(1.0, gt=0.0)


class Teacher(nn.Module):
    """A copy of the model that is never trained: its parameters do not require gradients
    (the optimizer skips them), it always runs in evaluation mode, and it lives in the
    model's state dict under ``objective_module.teacher.model``, so checkpoints hold it and a
    resumed run continues from the same teacher."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def follow(self, student: nn.Module, decay: float) -> None:
        """EMA step: ``teacher = decay teacher + (1 - decay) student`` (buffers copied)."""
        mine = dict(self.model.named_parameters())
        for name, p in student.named_parameters():
            if name in mine:
                mine[name].lerp_(p.detach().to(mine[name].dtype), 1.0 - decay)
        theirs = dict(student.named_buffers())
        for name, b in self.model.named_buffers():
            if name in theirs:
                b.copy_(theirs[name])


class Distilled(nn.Module):
    """The objective's module: the :class:`Teacher` and the base objective's own module
    (``base_module``, ``None`` when it has none), which the base finds through
    :func:`~anyformer.objectives.driven.own_module`."""

    def __init__(self, teacher: Teacher, base_module: nn.Module | None) -> None:
        super().__init__()
        self.teacher = teacher
        self.base_module = base_module


@register(
    "objective",
    "self_distillation",
    paper=SELF_DISTILLATION,
    summary="further pre-training regularised by the model's own earlier weights: base "
    "objective + alpha x MSE of hidden states (or KL of outputs) to a frozen (or EMA) teacher",
    params=SelfDistillationParams,
    caps=Capabilities(),
)
class SelfDistillation(Objective):
    """``loss = base + alpha * d(student, teacher)`` (Lee et al., "Self-Distillation for
    Further Pre-training of Transformers", 2022: the student trains with the masked
    auto-encoding objective while its hidden representations are kept close to a teacher's).

    The teacher (:class:`Teacher`, in the objective's module) is a copy of the model made
    when the run is built, that is, the weights the run starts from (those ``init_from``
    loads); with ``teacher: ema`` it then follows the student by an exponential moving
    average, updated before every training step. In the paper the teacher is the model
    after further pre-training and the student restarts from the initial weights; here a
    run distils from its own starting point (a further-pre-trained parent loaded with
    ``init_from`` is then the teacher and the student's starting point at once).

    ``d`` is the mean squared distance of the last hidden states over real tokens
    (``target: hidden``), or the KL divergence ``KL(teacher || student)`` of the output
    distributions at ``temperature`` (times ``temperature^2``) over the positions the base
    counts (``target: logits``). With ``alpha = 0`` the teacher is not run and the loss is
    exactly the base objective's. The base may be any objective, one that drives the model
    too (``masked_patches``: the paper's setting; its decoder is kept beside the teacher);
    the distance is then taken on the plain inputs, one more forward of the student.
    Evaluation scores ``base.loss + alpha d`` on the base's evaluation batches."""

    params: SelfDistillationParams

    def __init__(self, params: SelfDistillationParams) -> None:
        super().__init__(params)
        base = params.base
        if base.name == "self_distillation":
            raise SpecError("objective 'self_distillation' cannot take itself as base")
        self.base: Objective = base.entry.build(base.config)
        self.corrupts = self.base.corrupts  # type: ignore[misc]
        self.model: nn.Module | None = None

    def for_head(self, head: str, params: Any = None) -> Objective:
        heads = getattr(self.base, "heads", None)
        if heads is not None and head not in heads:
            raise SpecError(
                f"objective 'self_distillation': its base '{self.params.base.name}' reads "
                f"the outputs of head {' or '.join(heads)}, but this model has head='{head}'; "
                f"set objective.base to an objective for head='{head}'"
            )
        self.base = self.base.for_head(head, params)
        return self

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.base.corrupt(batch, generator)

    def module(self, model: nn.Module) -> nn.Module:
        spec = model.spec
        kinds = getattr(self.base, "kinds", None)
        embedders = getattr(self.base, "embedders", None)
        if kinds is not None and spec.kind not in kinds:
            raise SpecError(
                f"objective 'self_distillation': its base '{self.params.base.name}' trains "
                f"model.kind {' or '.join(kinds)}, but this model has kind='{spec.kind}'"
            )
        if embedders is not None and spec.embedder_ref.name not in embedders:
            raise SpecError(
                f"objective 'self_distillation': its base '{self.params.base.name}' trains on "
                f"embedder {' or '.join(embedders)}, but this model has "
                f"embedder='{spec.embedder_ref.name}'"
            )
        self.model = model
        teacher = Teacher(model)  # copied before the base's modules exist
        return Distilled(teacher, self.base.module(model))

    def teacher(self, model: nn.Module) -> Teacher:
        teacher = getattr(getattr(model, "objective_module", None), "teacher", None)
        if not isinstance(teacher, Teacher):
            raise RuntimeError(
                "self_distillation needs its teacher attached as model.objective_module "
                "(objectives.losses.attach_objective)"
            )
        return teacher

    def distance(
        self,
        model: nn.Module,
        batch: Batch,
        student_hidden: torch.Tensor | None,
        student_out: torch.Tensor | None,
    ) -> torch.Tensor:
        """``d(student, teacher)`` on ``batch`` from the student's hidden states or outputs."""
        teacher = self.teacher(model).model
        with torch.no_grad():
            out, hidden = final_hidden(
                teacher, lambda: teacher(batch.inputs, **model_inputs(batch))
            )
        if self.params.target == "hidden":
            real = batch.padding_mask
            diff = (student_hidden.float() - hidden.float()).pow(2).mean(-1)  # type: ignore[union-attr]
            if real is None or diff.shape != real.shape:
                return diff.mean()
            return diff[real].mean()
        t = self.params.temperature
        s, q = student_out.float() / t, out.float() / t  # type: ignore[union-attr]
        if s.dim() > 2 and batch.loss_mask.shape == s.shape[:-1]:
            s, q = s[batch.loss_mask], q[batch.loss_mask]
        s, q = s.reshape(-1, s.shape[-1]), q.reshape(-1, q.shape[-1])
        kl = F.kl_div(s.log_softmax(-1), q.log_softmax(-1), log_target=True, reduction="batchmean")
        return kl * t * t

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        self.model = model
        p = self.params
        if p.teacher == "ema":
            self.teacher(model).follow(_student(model), p.ema_decay)
        if p.alpha == 0:
            return self.base.training_loss(model, batch, step, forward)
        if type(self.base).training_loss is not Objective.training_loss:
            # a base that drives the model (MAE, rtd) runs it on other inputs: the student's
            # representation of the batch itself is one more forward
            loss = self.base.training_loss(model, batch, step, forward)
            out, hidden = final_hidden(model, lambda: model(batch.inputs, **model_inputs(batch)))
            return loss + p.alpha * self.distance(model, batch, hidden, out)
        outputs: list[torch.Tensor] = []

        def recorded(b: Batch) -> list[tuple[float, torch.Tensor]]:
            pairs = forward(b)
            outputs.extend(out for _, out in pairs)
            return pairs

        loss, hidden = final_hidden(
            model, lambda: self.base.training_loss(model, batch, step, recorded), required=False
        )
        student_out = outputs[-1] if outputs else None
        if hidden is None and p.target == "hidden":  # a compiled forward skipped the hook
            _, hidden = final_hidden(model, lambda: model(batch.inputs, **model_inputs(batch)))
        return loss + p.alpha * self.distance(model, batch, hidden, student_out)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        base = self.base.loss(outputs, batch)
        if self.params.alpha == 0 or self.model is None:
            return base
        model = self.model
        hidden = None
        if self.params.target == "hidden":
            _, hidden = final_hidden(model, lambda: model(batch.inputs, **model_inputs(batch)))
        return base + self.params.alpha * self.distance(model, batch, hidden, outputs)


def _student(model: nn.Module) -> nn.Module:
    """The model without its objective module (the part the teacher copies)."""
    return _WithoutObjective(model)


class _WithoutObjective:
    """``named_parameters``/``named_buffers`` of a model, leaving out ``objective_module``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def named_parameters(self) -> Any:
        return (
            (n, p)
            for n, p in self.model.named_parameters()
            if not n.startswith("objective_module.")
        )

    def named_buffers(self) -> Any:
        return (
            (n, b) for n, b in self.model.named_buffers() if not n.startswith("objective_module.")
        )


__all__ = ["SelfDistillation", "SelfDistillationParams", "Teacher"]
