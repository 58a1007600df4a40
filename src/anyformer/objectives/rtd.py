"""ELECTRA's replaced token detection: a small generator trained as a masked language
model fills the masked positions with its samples, and the model, the discriminator,
says for every token whether it was replaced."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from anyformer.model.transformer import build_model
from anyformer.objectives.driven import DrivenObjective, own_module
from anyformer.objectives.losses import Forward
from anyformer.registry import Capabilities, Paper, register
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch

ELECTRA = Paper(
    "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators",
    2020,
    "Clark et al.",
)
#: Extras of a corrupted batch: the masked positions and the uniform draws that pick the
#: generator's sample at each (inverse-CDF sampling, so the vocabulary need not be known).
MASK, UNIFORM, ORIGINAL = "rtd_mask", "rtd_uniform", "rtd_original"


class RTDParams(BaseModel):
    """- ``mask_rate``: share of each row's real tokens masked (at least one per row).
    - ``generator_width``: the generator's width as a share of the model's (its heads
      scaled alike, head size kept; ELECTRA's best: 1/4 to 1/2).
    - ``generator_layers``: its depth (default: the model's).
    - ``disc_weight``: lambda in ``mlm + lambda disc`` (ELECTRA: 50).
    - ``temperature``: of the generator's sampling distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0)
    generator_width: float = Field(0.25, gt=0.0, le=1.0)
    generator_layers: PositiveInt | None = None
    disc_weight: float = Field(50.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)


def choose_masked(real: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """``[B, T]`` bool: per row the ``max(1, round(rate n))`` real tokens of highest noise."""
    noise = torch.rand(real.shape, generator=g).masked_fill(~real, -1.0)
    k = (real.sum(1).float() * rate).round().clamp(min=1).long()
    rank = noise.argsort(1, descending=True).argsort(1)
    return (rank < k[:, None]) & real


def sample(logits: torch.Tensor, uniform: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per position from ``softmax(logits / temperature)`` ``[..., V]`` by the
    inverse CDF at ``uniform`` ``[...]`` (no gradient)."""
    with torch.no_grad():
        cdf = (logits.float() / temperature).softmax(-1).cumsum(-1)
        ids = torch.searchsorted(cdf, uniform.unsqueeze(-1).to(cdf.dtype)).squeeze(-1)
        return ids.clamp(max=logits.shape[-1] - 1)


@register(
    "objective",
    "rtd",
    paper=ELECTRA,
    summary="ELECTRA: a small MLM generator fills 15% masked tokens with samples, the "
    "model (per-token head) detects replaced tokens; mlm + 50 x detection",
    params=RTDParams,
    caps=Capabilities(),
)
class RTD(DrivenObjective):
    """Replaced token detection (Clark et al., 2020, "ELECTRA").

    :meth:`corrupt` chooses ``mask_rate`` of each row's real tokens and a uniform draw per
    token. The generator (the objective's module: a Transformer encoder of the model's
    spec, ``generator_width`` as wide, with one more token id, its ``[MASK]``) reads the
    row with ``[MASK]`` at the chosen positions and is trained by cross-entropy on them
    (``mlm``); its samples (drawn without gradient, so the discriminator's loss never
    reaches it) replace those tokens. The model reads the result and predicts per token
    whether it was replaced (``token_classify`` with 2 outputs, cross-entropy; or
    ``token_regress`` with 1, a logistic loss); a sample equal to the original token
    counts as original, as in the paper. Loss: ``mlm + disc_weight * disc`` (disc averaged
    over real tokens). Generator and discriminator share no weights here (ELECTRA ties
    their token embeddings).

    The batch's ``targets`` become 0 ("original") at every real token, what the model
    should say about the uncorrupted inputs the task's scoring runs it on; the task's
    metrics are that, and ``loss`` is the objective's own on the evaluation batches."""

    kinds = ("encoder",)
    embedders: ClassVar[tuple[str, ...] | None] = ("tokens",)
    heads = ("token_classify", "token_regress")
    n_outputs: ClassVar[int | dict[str, int] | None] = {"token_classify": 2, "token_regress": 1}
    model_io: ClassVar[dict[str, Any] | None] = {"head": "token_classify", "n_outputs": 2}
    params: RTDParams

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch.inputs
        real = batch.padding_mask
        if real is None:
            real = torch.ones(ids.shape, dtype=torch.bool)
        mask = choose_masked(real, self.params.mask_rate, generator)
        uniform = torch.rand(ids.shape, generator=generator)
        extras = {k: v for k, v in batch.extras.items() if k != "score_mask"}
        extras.update({MASK: mask, UNIFORM: uniform})
        return Batch(
            ids, torch.zeros_like(ids), real.clone(), batch.padding_mask, batch.group, extras
        )

    def build_module(self, model: nn.Module) -> nn.Module:
        spec: ModelSpec = model.spec
        p = self.params
        heads = max(1, round(spec.n_heads * p.generator_width))
        data = spec.model_dump(mode="json")
        layers = p.generator_layers or spec.n_layers
        data.update(
            d_model=heads * (spec.d_model // spec.n_heads),
            n_heads=heads,
            n_layers=layers,
            vocab_size=spec.vocab_size + 1,  # + [MASK]
            head="lm",
            n_outputs=None,
            tie_embeddings=True,
            depth="stack",
        )
        if layers != spec.n_layers:
            data.pop("layers", None)
        return build_model(data)

    def parts(
        self, model: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mlm loss, discriminator inputs, replaced [B, T], real [B, T])``."""
        ids = batch.inputs
        mask, uniform = batch.extras[MASK], batch.extras[UNIFORM]
        real = batch.loss_mask
        generator = own_module(model)
        vocab = int(model.spec.vocab_size)
        masked = torch.where(mask, torch.full_like(ids, vocab), ids)
        logits = generator(masked, batch.padding_mask)[..., :vocab]  # never predict [MASK]
        mlm = F.cross_entropy(logits[mask].float(), ids[mask])
        sampled = sample(logits, uniform, self.params.temperature)
        corrupted = torch.where(mask, sampled, ids)
        return mlm, corrupted, (corrupted != ids) & real, real

    def detection_loss(
        self, out: torch.Tensor, replaced: torch.Tensor, real: torch.Tensor
    ) -> torch.Tensor:
        """The discriminator's loss over real tokens: cross-entropy of 2 outputs, or the
        logistic loss of 1."""
        if out.shape[-1] == 2:
            return F.cross_entropy(out[real].float(), replaced[real].long())
        return F.binary_cross_entropy_with_logits(out[..., 0][real].float(), replaced[real].float())

    def objective_loss(
        self, model: nn.Module, batch: Batch, forward: Forward | None
    ) -> torch.Tensor:
        mlm, corrupted, replaced, real = self.parts(model, batch)
        disc_batch = Batch(
            corrupted, replaced.long(), real, batch.padding_mask, batch.group, batch.extras
        )
        if forward is None:
            pairs = [(1.0, model(corrupted, batch.padding_mask))]
        else:
            pairs = forward(disc_batch)
        disc = sum(w * self.detection_loss(out, replaced, real) for w, out in pairs)
        return mlm + self.params.disc_weight * disc  # type: ignore[return-value]


__all__ = ["RTD", "RTDParams", "choose_masked", "sample"]
