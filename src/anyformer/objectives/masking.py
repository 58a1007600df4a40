"""BERT's masked language modelling (``mlm``).

"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
(Devlin et al., 2019): a bidirectional encoder reads the text with a share ``rate``
(15 %) of its tokens selected; of those, 80 % are replaced by a mask token, 10 % by a
random token and 10 % kept, and the model predicts the original token at the selected
positions only.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from anyformer.objectives.losses import Forward
from anyformer.objectives.tokens import (
    TokenObjective,
    masked_cross_entropy,
    plain_batch,
    real_positions,
)
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch


class MLMParams(BaseModel):
    """Parameters of ``mlm``.

    - ``rate``: the share of real tokens selected for prediction (each independently).
    - ``mask``, ``random``: of the selected tokens, the shares replaced by the mask token
      and by a uniformly random token id (``0 .. vocab_size - 1`` less the mask token);
      the rest (``1 - mask - random``) keep their token.
    - ``mask_token``: the mask token's id; ``None`` = the model's last id
      (``vocab_size - 1``), which the task must never emit (free in byte-level text; for
      other tasks set ``model.vocab_size`` one above the task's).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = Field(0.15, gt=0.0, le=1.0)
    mask: float = Field(0.8, ge=0.0, le=1.0)
    random: float = Field(0.1, ge=0.0, le=1.0)
    mask_token: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _split(self) -> MLMParams:
        if self.mask + self.random > 1.0:
            raise ValueError(
                f"mask={self.mask} + random={self.random} must be at most 1 (the rest keep "
                "their token)"
            )
        return self


def bert_corruption(
    inputs: torch.Tensor,
    real: torch.Tensor,
    params: MLMParams,
    mask_token: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(corrupted inputs, selected [B, T] bool)``: each real token selected with
    probability ``rate``; selected ones replaced by ``mask_token`` (share ``mask``), by a
    random id other than ``mask_token`` (share ``random``) or kept. Three uniform draws of
    ``inputs``' shape from ``generator``, in that order."""
    select = torch.rand(inputs.shape, generator=generator) < params.rate
    how = torch.rand(inputs.shape, generator=generator)
    random_ids = torch.randint(vocab_size - 1, inputs.shape, generator=generator)
    random_ids = random_ids + (random_ids >= mask_token).long()  # never the mask token
    select = select.to(inputs.device) & real
    how = how.to(inputs.device)
    out = inputs.clone()
    to_mask = select & (how < params.mask)
    to_random = select & (how >= params.mask) & (how < params.mask + params.random)
    out[to_mask] = mask_token
    out[to_random] = random_ids.to(inputs.device)[to_random]
    return out, select


@register(
    "objective",
    "mlm",
    paper=Paper(
        "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
        2019,
        "Devlin et al.",
    ),
    summary="masked language modelling: 15% of tokens selected, 80/10/10 mask/random/keep, "
    "the originals predicted there (encoder)",
    params=MLMParams,
    caps=Capabilities(),
)
class MLM(TokenObjective):
    """Predict the original token at the selected positions (cross-entropy, mean over
    them); :meth:`corrupt` selects and replaces (see :func:`bert_corruption`).

    The corrupted batch's ``inputs`` are the task's inputs with the replacements,
    ``targets`` the original inputs, ``loss_mask`` the selected positions (never padding);
    the task's metrics then score the model at the selected positions. Trains
    ``kind: encoder`` models (bidirectional, as BERT)."""

    params: MLMParams
    heads = ("lm", "token_classify")
    kinds = ("encoder",)
    corrupts = True

    def explicit_ids(self) -> dict[str, int]:
        p = self.params.mask_token
        return {} if p is None else {"mask_token": p}

    @property
    def mask_token(self) -> int:
        if self.params.mask_token is not None:
            return self.params.mask_token
        return self.top_ids(1)[0]

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        token = self.mask_token
        self.check_free(batch, [token], "mask_token")
        real = real_positions(batch)
        inputs, selected = bert_corruption(
            batch.inputs, real, self.params, token, self.vocab(), generator
        )
        return plain_batch(batch, inputs=inputs, targets=batch.inputs.clone(), loss_mask=selected)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        """The loss of :meth:`loss`, with the head run at the selected positions alone
        (``readout_mask``; BERT scores 15% of the tokens, so the output layer over the
        vocabulary need not see the other 85%); the same value as a full forward."""
        selected = batch.loss_mask
        sparse = replace(batch, extras={**batch.extras, "readout_mask": selected})
        targets = batch.targets[selected]
        total = sum(
            w * (F.cross_entropy(out.float(), targets) if len(targets) else out.sum() * 0.0)
            for w, out in forward(sparse)
        )
        return total  # type: ignore[return-value]
