"""Masked diffusion language modelling (``masked_diffusion``).

"Simple and Effective Masked Diffusion Language Models" (Sahoo et al., 2024, MDLM; the
same continuous-time ELBO as Shi et al.'s MD4, "Simplified and Generalized Masked
Diffusion for Discrete Data", 2024): at time ``t ~ U(0, 1)`` each token of a row is
replaced by a mask token with probability ``1 - alpha_t``; a bidirectional model
predicts the originals, and the negative ELBO is

    E_t [ w(t) * sum over masked positions of -log p(x_l | z_t) ] / L,
    w(t) = -alpha_t' / (1 - alpha_t),

per token of a row of ``L`` real tokens. With the linear schedule ``alpha_t = 1 - t``
(MDLM's log-linear noise ``sigma(t) = -log(1 - t)``) the weight is ``1 / t``; with the
cosine schedule ``alpha_t = cos(pi t / 2)`` it is ``(pi / 2) sin(pi t / 2) / (1 - cos(pi
t / 2))``. The model never predicts the mask token (MDLM's SUBS parameterisation: its
logit is set to ``-inf``). A model that predicts the unigram distribution at every
masked position scores the unigram entropy in expectation (``E_t[w(t) (1 - alpha_t)] =
1``), the trivial baseline. Sampling: :func:`anyformer.decoding.diffusion.unmask_sample`.
EDLM's energy-based correction ("Energy-Based Diffusion Language Models for Text
Generation", Xu et al., 2025) is not built.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from anyformer.objectives.tokens import TokenObjective, plain_batch, real_positions
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch

#: Batch extras of a diffusion-corrupted batch: each row's time ``t`` and ELBO weight.
TIME, WEIGHT = "diffusion_t", "diffusion_weight"


class DiffusionParams(BaseModel):
    """Parameters of ``masked_diffusion``.

    - ``schedule``: ``linear`` (``alpha_t = 1 - t``, weight ``1/t``) or ``cosine``
      (``alpha_t = cos(pi t / 2)``).
    - ``eps``: the smallest time drawn (``t`` is uniform on ``[eps, 1]``), bounding the
      weight.
    - ``stratified``: draw the batch's times as one uniform shifted by ``i / B`` per
      row (MDLM's low-discrepancy sampler; lower variance), else independently.
    - ``mask_token``: the mask token's id; ``None`` = the model's last id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    schedule: Literal["linear", "cosine"] = "linear"
    eps: float = Field(1e-3, gt=0.0, lt=1.0)
    stratified: bool = True
    mask_token: int | None = Field(None, ge=0)


def mask_probability(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """``1 - alpha_t``: the probability that a token is masked at time ``t``."""
    if schedule == "linear":
        return t
    return 1.0 - torch.cos(math.pi / 2 * t)


def elbo_weight(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """``w(t) = -alpha_t' / (1 - alpha_t)``: ``1/t`` (linear) or
    ``(pi/2) sin(pi t/2) / (1 - cos(pi t/2))`` (cosine)."""
    if schedule == "linear":
        return 1.0 / t
    half = math.pi / 2 * t
    return (math.pi / 2) * torch.sin(half) / (1.0 - torch.cos(half))


@register(
    "objective",
    "masked_diffusion",
    paper=Paper("Simple and Effective Masked Diffusion Language Models", 2024, "Sahoo et al."),
    summary="MDLM: mask each token with probability t ~ U(0,1), ELBO-weighted (1/t) "
    "cross-entropy on the masked tokens (encoder; sampler decoding.unmask_sample)",
    params=DiffusionParams,
    caps=Capabilities(),
)
class MaskedDiffusion(TokenObjective):
    """The negative ELBO per token (module docstring): each row's ``w(t)``-weighted sum
    of cross-entropies at its masked positions over its real tokens, mean over rows.

    :meth:`corrupt` draws one ``t`` per row, masks each real token with probability
    ``1 - alpha_t``, and returns ``inputs`` with the mask token there, ``targets`` = the
    original inputs, ``loss_mask`` = the masked positions, ``extras['diffusion_t']`` and
    ``extras['diffusion_weight']`` ``[B]``. Trains ``kind: encoder`` models."""

    params: DiffusionParams
    heads = ("lm",)
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

    def draw_times(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """``t`` per row on ``[eps, 1]``: stratified or independent uniforms."""
        if self.params.stratified:
            u = (torch.rand(1, generator=generator) + torch.arange(rows) / rows) % 1.0
        else:
            u = torch.rand(rows, generator=generator)
        return self.params.eps + (1.0 - self.params.eps) * u

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        token = self.mask_token
        self.check_free(batch, [token], "mask_token")
        real = real_positions(batch)
        t = self.draw_times(real.shape[0], generator)
        p = mask_probability(t, self.params.schedule)
        masked = (torch.rand(real.shape, generator=generator) < p[:, None]).to(real.device) & real
        inputs = batch.inputs.masked_fill(masked, token)
        device = batch.inputs.device
        return plain_batch(
            batch,
            inputs=inputs,
            targets=batch.inputs.clone(),
            loss_mask=masked,
            extras={TIME: t.to(device), WEIGHT: elbo_weight(t, self.params.schedule).to(device)},
        )

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        token = self.mask_token
        logits = outputs.float().clone()
        logits[..., token] = float("-inf")  # SUBS: the mask is never the answer
        mask = batch.loss_mask
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1])[mask.reshape(-1)],
            batch.targets.reshape(-1)[mask.reshape(-1)],
            reduction="none",
        )
        per_token = torch.zeros(mask.shape, dtype=ce.dtype, device=ce.device)
        per_token[mask] = ce
        weight = batch.extras[WEIGHT].to(ce.device, ce.dtype)
        length = real_positions(batch).sum(dim=1).clamp(min=1)
        return (weight * per_token.sum(dim=1) / length).mean()
