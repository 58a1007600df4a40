"""Knowledge distillation from a frozen teacher: logits (Hinton et al.) and MiniLM's
self-attention distributions and relations (Wang et al., v1 and v2).

The objective holds the teacher in its module (``model.objective_module.teacher``), so
the Trainer, checkpoints and resume work unchanged; ``anyformer distill`` (in
:mod:`anyformer.compress.distill`) writes the teacher's trained weights into the
student run's first checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.components.attention.common import recording
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model, mixer_name, mixers
from anyformer.objectives.losses import Forward, Objective
from anyformer.registry import Capabilities, Paper, register
from anyformer.spec import ModelSpec
from anyformer.spec_refs import ObjectiveRef
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs

HINTON = Paper("Distilling the Knowledge in a Neural Network", 2015, "Hinton et al.")
MINILM = Paper(
    "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
    "Pre-Trained Transformers",
    2020,
    "Wang et al.",
)
MINILM_V2 = Paper(
    "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing "
    "Pretrained Transformers",
    2021,
    "Wang et al.",
)

#: Relations each ``relations`` setting distils: ``(left, right)`` of
#: ``softmax(left right^T / sqrt(d_r))``; ``qk`` is the attention distribution itself.
RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "none": (),
    "minilm": (("q", "k"), ("v", "v")),
    "minilm_v2": (("q", "q"), ("k", "k"), ("v", "v")),
}


class DistillParams(BaseModel):
    """- ``base``: the task's objective (the hard-label loss; evaluation scores it alone).
    - ``alpha``: weight of the logit term; ``loss = (1 - alpha) base + alpha T^2
      KL(teacher_T || student_T) + beta sum(relation KLs)``.
    - ``temperature``: ``T`` of the softened distributions.
    - ``relations``: ``none`` (logit distillation only), ``minilm`` (the attention
      distribution ``softmax(QK^T/sqrt(d))`` and the value relation ``softmax(VV^T/sqrt(d))``),
      ``minilm_v2`` (q-q, k-k and v-v relations).
    - ``beta``: weight of the relation terms.
    - ``relation_heads``: relation heads q/k/v are split into (``None``: the gcd of both
      models' head counts, i.e. per attention head when they agree).
    - ``teacher_layer``, ``student_layer``: the blocks compared (``-1``: the last).
    - ``teacher``: the teacher run's folder. When a run starts, the lab fills
      ``teacher_model`` from its spec and loads its trained weights into the frozen
      teacher (:func:`anyformer.lab.run.start_teacher`); checkpoints keep them after.
    - ``teacher_model``: the teacher's model spec (``None`` without ``teacher``: the
      student's own architecture, untrained, as the contract checks use)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: ObjectiveRef = Field(default_factory=lambda: ObjectiveRef(name="causal_lm"))
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    relations: Literal["none", "minilm", "minilm_v2"] = "minilm"
    beta: float = Field(1.0, ge=0.0)
    relation_heads: int | None = Field(None, gt=0, le=4096)
    teacher_layer: int = -1
    student_layer: int = -1
    teacher_model: ModelSpec | None = None
    teacher: str | None = Field(None, max_length=4096)


class FrozenTeacher(nn.Module):
    """The teacher: never trained (no gradients, always in evaluation mode); its weights
    live in the student's checkpoints under ``objective_module.teacher.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)


class DistillModules(nn.Module):
    """The objective's module: the teacher and the base objective's own module."""

    def __init__(self, teacher: FrozenTeacher, base_module: nn.Module | None) -> None:
        super().__init__()
        self.teacher = teacher
        self.base_module = base_module


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, averaged over the rows of
    ``[N, C]`` logits (Hinton et al., 2015: the ``T^2`` keeps gradients comparable
    across temperatures)."""
    t = temperature
    s = (student.float() / t).log_softmax(-1)
    q = (teacher.float() / t).log_softmax(-1)
    return F.kl_div(s, q, log_target=True, reduction="batchmean") * t * t


def allowed_keys(bias: torch.Tensor | None, causal: bool, t: int, device: Any) -> torch.Tensor:
    """Boolean ``[B or 1, 1, T, T]``: where a query may attend, read from the recorded
    score bias (masked entries are very negative) and the causal flag."""
    if bias is not None:
        ok = bias[:, :1] > torch.finfo(bias.dtype).min / 4
    else:
        ok = torch.ones(1, 1, t, t, dtype=torch.bool, device=device)
    if causal:
        ok = ok & torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return ok


def relation_log_probs(
    left: torch.Tensor,
    right: torch.Tensor,
    heads: int,
    allowed: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log softmax(L_r R_r^T / sqrt(d_r) + bias)`` per relation head ``[B, heads, T, T]``.

    ``left``/``right`` ``[B, H, T, d_head]`` are concatenated over heads (``[B, T, H
    d_head]``) and split into ``heads`` relation heads of ``d_r = H d_head / heads``
    (MiniLMv2); with ``heads = H`` these are the attention heads themselves. ``bias``
    (the model's own score bias, only with ``heads = H``) makes ``qk`` exactly the
    attention distribution the model computed."""
    b, h, t, d = left.shape
    if (h * d) % heads:
        raise ValueError(f"{h * d} channels do not split into {heads} relation heads")

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(b, t, heads, -1).transpose(1, 2).float()

    lft, rgt = split(left), split(right)
    scores = lft @ rgt.transpose(-1, -2) / math.sqrt(lft.shape[-1])
    if bias is not None:
        scores = scores + bias.float()
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min / 2)
    return scores.log_softmax(-1)


def relation_kl(
    teacher: torch.Tensor, student: torch.Tensor, rows: torch.Tensor | None
) -> torch.Tensor:
    """``KL(teacher || student)`` of ``[B, R, T, T]`` log-probabilities per query row,
    averaged over relation heads and the real query rows (``rows [B, T]``, or all)."""
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # [B, R, T]
    if rows is None:
        return kl.mean()
    weight = rows[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)


class Recorded:
    """The last ``(q, k, v, bias, causal)`` a recording attention passed on."""

    def __init__(self) -> None:
        self.value: tuple[Any, ...] | None = None

    def __call__(self, q: Any, k: Any, v: Any, bias: Any, causal: bool) -> None:
        self.value = (q, k, v, bias, causal)


def chosen_attention(model: nn.Module, layer: int, who: str) -> nn.Module:
    """The self-attention of block ``layer`` of ``model`` (negative counts from the end);
    refused by name unless it is a softmax attention that records q/k/v."""
    found = mixers(model.blocks)
    if not -len(found) <= layer < len(found):
        raise SpecError(
            f"objective.{who}_layer={layer} is out of range: the {who} has {len(found)} blocks"
        )
    mixer = found[layer]
    if not hasattr(mixer, "record"):
        raise SpecError(
            f"objective 'distill' with relations: the {who}'s block {layer} uses "
            f"attention='{mixer_name(mixer)}', which forms no softmax attention map; "
            f"attention distillation needs attention='softmax' (or set objective.relations=none)"
        )
    return mixer


@register(
    "objective",
    "distill",
    paper=MINILM,
    summary="knowledge distillation from a frozen teacher: (1-alpha) task loss + alpha T^2 KL "
    "of logits (Hinton et al. 2015) + beta KL of the last layer's self-attention distributions "
    "and value relations (MiniLM), or q-q/k-k/v-v relations over relation heads (MiniLMv2)",
    params=DistillParams,
    caps=Capabilities(),
)
class Distill(Objective):
    """Distillation of a teacher into a student of any shape.

    ``loss = (1 - alpha) base + alpha T^2 KL(p_T^teacher || p_T^student) + beta sum_rel
    KL(R^teacher || R^student)``: the logit term is Hinton et al.'s ("Distilling the
    Knowledge in a Neural Network", 2015) over the positions the base counts; the relation
    terms are MiniLM's (Wang et al., 2020): the self-attention distributions
    ``softmax(QK^T/sqrt(d))`` and value relations ``softmax(VV^T/sqrt(d))`` of one block
    (the last by default) of teacher and student, compared query row by query row; with
    ``relations: minilm_v2`` (Wang et al., 2021) the q-q, k-k and v-v relations. When
    the head counts differ, q/k/v are concatenated over heads and split into
    ``relation_heads`` relation heads (MiniLMv2's rule, which lets any head count and
    width be distilled); with equal head counts the relation heads are the attention
    heads and the ``qk`` relation is the attention the model computed (position bias and
    masks included). q/k/v come from the attention itself (:func:`recording`), so only
    softmax attention can be distilled this way; other mixers are refused by name.
    Evaluation scores the base objective alone, so the student's metrics compare with
    the teacher's."""

    params: DistillParams

    def __init__(self, params: DistillParams) -> None:
        super().__init__(params)
        if params.base.name == "distill":
            raise SpecError("objective 'distill' cannot take itself as base")
        self.base: Objective = params.base.entry.build(params.base.config)
        self.corrupts = self.base.corrupts  # type: ignore[misc]
        if type(self.base).training_loss is not Objective.training_loss:
            raise SpecError(
                f"objective 'distill': its base '{params.base.name}' drives the model itself; "
                f"distillation needs a base scored on the model's outputs (e.g. causal_lm, mse)"
            )

    def for_head(self, head: str, params: Any = None) -> Objective:
        self.base = self.base.for_head(head, params)
        return self

    def for_model(self, model: ModelSpec) -> Objective:
        fit = getattr(self.base, "for_model", None)
        if fit is not None:
            self.base = fit(model)
        return self

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.base.corrupt(batch, generator)

    def module(self, model: nn.Module) -> nn.Module:
        spec = self.params.teacher_model or model.spec
        teacher = FrozenTeacher(build_model(spec))
        if self.params.relations != "none":
            chosen_attention(teacher.model, self.params.teacher_layer, "teacher")
            chosen_attention(model, self.params.student_layer, "student")
            self.relation_heads(teacher.model, model)
        return DistillModules(teacher, self.base.module(model))

    def relation_heads(self, teacher: nn.Module, student: nn.Module) -> int:
        """The relation heads: the parameter, or the gcd of both head counts; checked to
        divide both models' attention widths."""
        t_mix = chosen_attention(teacher, self.params.teacher_layer, "teacher")
        s_mix = chosen_attention(student, self.params.student_layer, "student")
        r = self.params.relation_heads or math.gcd(t_mix.n_heads, s_mix.n_heads)
        for who, mix in (("teacher", t_mix), ("student", s_mix)):
            width = mix.n_heads * mix.d_head
            if width % r:
                raise SpecError(
                    f"objective.relation_heads={r} does not divide the {who}'s attention "
                    f"width {width} ({mix.n_heads} heads x {mix.d_head}); choose a divisor of "
                    f"both widths"
                )
        return r

    def teacher(self, model: nn.Module) -> nn.Module:
        modules = getattr(model, "objective_module", None)
        if not isinstance(modules, DistillModules):
            raise RuntimeError(
                "distill needs its teacher attached as model.objective_module "
                "(objectives.losses.attach_objective)"
            )
        return modules.teacher.model

    @contextmanager
    def _recording(self, model: nn.Module, layer: int, who: str) -> Iterator[Recorded]:
        seen = Recorded()
        with ExitStack() as stack:
            if self.params.relations != "none":
                stack.enter_context(recording(chosen_attention(model, layer, who), seen))
            yield seen

    def relation_loss(
        self, teacher: Recorded, student: Recorded, heads: int, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Sum over the chosen relations of ``KL(teacher || student)`` per relation head."""
        tq, tk, tv, tbias, tcausal = teacher.value  # type: ignore[misc]
        sq, sk, sv, sbias, scausal = student.value  # type: ignore[misc]
        t = tq.shape[2]
        t_allowed = allowed_keys(tbias, tcausal, t, tq.device)
        s_allowed = allowed_keys(sbias, scausal, t, sq.device)
        parts = {"q": (tq, sq), "k": (tk, sk), "v": (tv, sv)}
        total = torch.zeros((), device=sq.device)
        for left, right in RELATIONS[self.params.relations]:
            exact = (left, right) == ("q", "k")
            tb = tbias if exact and tq.shape[1] == heads else None
            sb = sbias if exact and sq.shape[1] == heads else None
            with torch.no_grad():
                tl = relation_log_probs(parts[left][0], parts[right][0], heads, t_allowed, tb)
            sl = relation_log_probs(parts[left][1], parts[right][1], heads, s_allowed, sb)
            total = total + relation_kl(tl, sl, rows)
        return total

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        p = self.params
        teacher = self.teacher(model)
        with self._recording(model, p.student_layer, "student") as s_seen:
            pairs = forward(batch)
        with torch.no_grad(), self._recording(teacher, p.teacher_layer, "teacher") as t_seen:
            t_out = teacher(batch.inputs, **model_inputs(batch))
        loss = torch.zeros((), device=t_out.device)
        for weight, out in pairs:
            part = self.base.loss(out, batch) * (1.0 - p.alpha)
            if p.alpha > 0:
                part = part + p.alpha * self.logit_loss(out, t_out, batch)
            loss = loss + weight * part
        if p.relations != "none" and p.beta > 0:
            heads = self.relation_heads(teacher, model)
            rows = batch.padding_mask
            loss = loss + p.beta * self.relation_loss(t_seen, s_seen, heads, rows)
        return loss

    def logit_loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch) -> Any:
        """The logit term over the positions the task counts (``loss_mask``), or every row
        of a pooled output; for a real-valued base (``mse``) the squared distance of the
        outputs, since a softmax over regression outputs means nothing."""
        s, q = student, teacher
        if self.params.base.name == "mse":
            return F.mse_loss(s.float(), q.float())
        if s.dim() > 2 and batch.loss_mask.shape == s.shape[:-1]:
            s, q = s[batch.loss_mask], q[batch.loss_mask]
        return logit_kl(
            s.reshape(-1, s.shape[-1]), q.reshape(-1, q.shape[-1]), self.params.temperature
        )

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.base.loss(outputs, batch)


__all__ = [
    "Distill",
    "DistillParams",
    "FrozenTeacher",
    "allowed_keys",
    "logit_kl",
    "relation_kl",
    "relation_log_probs",
]
