"""Connectionist Temporal Classification (Graves et al., 2006) over per-token class scores."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.registry import Capabilities, Paper, register
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch


class CTCParams(BaseModel):
    """``blank``: the class id of the blank (0, the ``dtmf`` task's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    blank: int = Field(0, ge=0)


@register(
    "objective",
    "ctc",
    paper=Paper(
        "Connectionist Temporal Classification: Labelling Unsegmented Sequence Data with "
        "Recurrent Neural Networks",
        2006,
        "Graves, Fernandez, Gomez & Schmidhuber",
    ),
    summary="CTC: -log p(labels | frames) summed over every alignment with blanks, per label",
    params=CTCParams,
    caps=Capabilities(),
)
class CTC(Objective):
    """The CTC loss of per-token class scores ``outputs [B, T, C]`` (class ``blank`` and
    the labels) against label sequences ``targets [B, L]`` whose real labels
    ``loss_mask`` marks (a prefix of each row): ``-log sum over alignments`` computed by
    ``torch.nn.functional.ctc_loss``, summed over rows and divided by the number of
    labels (so the Trainer's per-label weighting of evaluation batches averages it).
    Every token after the model's prefix tokens (CLS, registers: read from the model's
    token layout by :meth:`for_model`) is a frame; real frames are those of
    ``padding_mask`` when the batch has one. Rows that no alignment fits (more labels
    than frames allow) get zero loss (``zero_infinity``)."""

    heads: ClassVar[tuple[str, ...] | None] = ("token_classify",)

    def __init__(self, params: CTCParams) -> None:
        super().__init__(params)
        self.n_prefix = 0

    def for_model(self, model: ModelSpec) -> CTC:
        layout = model.token_layout
        self.n_prefix = int(getattr(layout, "n_prefix", 0) or 0)
        n_outputs = model.n_outputs
        if n_outputs is not None and self.params.blank >= n_outputs:
            raise SpecError(
                f"objective ctc: blank={self.params.blank} is not a class of the head's "
                f"model.n_outputs={n_outputs}; use a blank id below {n_outputs}"
            )
        return self

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        frames = outputs[:, self.n_prefix :].float()
        log_probs = frames.log_softmax(-1).transpose(0, 1)  # [T, B, C]
        if batch.padding_mask is not None:
            input_lengths = batch.padding_mask[:, self.n_prefix :].sum(1)
        else:
            input_lengths = torch.full((frames.shape[0],), frames.shape[1], dtype=torch.long)
        target_lengths = batch.loss_mask.sum(1)
        total = F.ctc_loss(
            log_probs, batch.targets, input_lengths.cpu(), target_lengths.cpu(),
            blank=self.params.blank, reduction="sum", zero_infinity=True,
        )  # fmt: skip
        return total / target_lengths.sum().clamp_min(1)
