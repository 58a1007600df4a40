"""MP3's position prediction (``position_prediction``).

"Position Prediction as an Effective Pretraining Strategy" (Zhai et al., 2022): the
Transformer reads its tokens with no position information and classifies, for every
token, its position among all possible positions, from content alone; a share of the
context tokens is also removed from the attention's keys and values (the paper's
masking ratio), so the task cannot be solved by matching every neighbour.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.objectives.tokens import masked_cross_entropy, plain_batch, real_positions
from anyformer.registry import Capabilities, Paper, register
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch


class PositionParams(BaseModel):
    """Parameters of ``position_prediction``.

    - ``mask_ratio``: the share of each row's real tokens hidden from attention as keys
      and values (they are still queries, and their positions are still predicted);
      at least one token per row stays visible. 0 hides none.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mask_ratio: float = Field(0.0, ge=0.0, lt=1.0)


@register(
    "objective",
    "position_prediction",
    paper=Paper("Position Prediction as an Effective Pretraining Strategy", 2022, "Zhai et al."),
    summary="MP3: predict each token's position index with positions withheld "
    "(model.position none, a token_classify head over max_len positions; encoder)",
    params=PositionParams,
    caps=Capabilities(),
)
class PositionPrediction(Objective):
    """Cross-entropy of each real token's position index ``0 .. T-1`` (a classifier over
    ``model.n_outputs >= model.max_len`` positions: ``head: token_classify``), mean over
    the real tokens.

    Positions are withheld by the model itself: it must be built with
    ``position: none`` (:meth:`for_model` refuses any other scheme, which would give the
    answer away), so an encoder of softmax attention is permutation-equivariant and the
    order can only be read from content. Mixers that see order by construction (a
    convolution, a recurrence) make the task trivial: use attention. :meth:`corrupt` sets
    ``targets`` to the position indices and, with ``mask_ratio``, hides a random share of
    the tokens as keys (``padding_mask`` False there; every real token stays scored)."""

    params: PositionParams
    heads = ("token_classify",)
    kinds = ("encoder",)
    corrupts = True
    #: the objective decides the head, not the task (a classifier over positions, also on
    #: a task whose own head is another: digits' ``classify``); ``n_outputs`` is the user's
    model_io: ClassVar[dict[str, Any] | None] = {"head": "token_classify", "n_outputs": None}

    @classmethod
    def contract_model(cls, task_vocab: int | None, task_len: int) -> dict[str, Any]:
        """No positions, and a classifier over the task's longest row."""
        return {
            "position": "none",
            "head": "token_classify",
            "n_outputs": task_len,
            "max_len": task_len,
        }

    def for_model(self, model: ModelSpec) -> Objective:
        if model.position.name != "none":
            raise SpecError(
                f"objective 'position_prediction' withholds positions, but "
                f"model.position='{model.position.name}' gives them to the model; set "
                "model.position=none"
            )
        if model.n_outputs is None or model.n_outputs < model.max_len:
            raise SpecError(
                f"objective 'position_prediction' classifies each token's position among "
                f"model.max_len={model.max_len}, but model.n_outputs={model.n_outputs}; set "
                f"model.n_outputs={model.max_len} (head: token_classify)"
            )
        self.tokens = model.token_layout.length
        return self

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if batch.inputs.dim() == 2:
            real = real_positions(batch)
        else:  # images or vectors: the model's tokens (patches, CLS), none padding
            n = getattr(self, "tokens", None)
            if n is None:
                raise SpecError(
                    "objective 'position_prediction' on non-token inputs needs the model's "
                    "token count: fit it to the model first (Objective.for_model)"
                )
            real = torch.ones(batch.inputs.shape[0], n, dtype=torch.bool)
            real = real.to(batch.inputs.device)
        b, t = real.shape
        positions = torch.arange(t, device=real.device).expand(b, t).clone()
        visible = real
        if self.params.mask_ratio > 0:
            hide = torch.rand((b, t), generator=generator).to(real.device) < self.params.mask_ratio
            visible = real & ~hide
            # every row keeps one visible key: its first real token if all were hidden
            empty = ~visible.any(dim=1)
            first = real.long().argmax(dim=1)
            visible[empty, first[empty]] = True
        return plain_batch(batch, targets=positions, loss_mask=real.clone(), padding_mask=visible)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)
