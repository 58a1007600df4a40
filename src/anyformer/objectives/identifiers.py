"""CodeT5's identifier-aware pretraining objectives: ``identifier_tagging``,
``masked_identifier`` and their mixture with span corruption, ``identifier_aware``.

"CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code
Understanding and Generation" (Wang et al., 2021) adds two objectives to T5's span
corruption that use what the developer named:

- identifier tagging: the encoder says, for every token, whether it is part of an
  identifier (a binary label per token, cross-entropy over the real tokens);
- masked identifier prediction: every identifier of a function is replaced by a
  sentinel, one sentinel per distinct name (every occurrence of a name gets the same
  one), and the decoder writes ``sentinel_0 name_0 sentinel_1 name_1 ... sentinel_K``
  (names in order of first use; the last sentinel ends the target).

``identifier_aware`` is the paper's pretraining: each batch one of span corruption,
identifier tagging and masked identifier prediction, drawn with equal probability.

All read the identifier marks a code task puts in its batches (``code_lm``:
``extras["identifier"]``, ``extras["identifier_occurrence"]``,
``extras["identifier_name"]``, per input token); a batch without them is refused.
With a subword tokenizer a token that overlaps an identifier is part of it (a token
``" x"`` takes its space along), so the target writes the first occurrence's tokens.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.errors import SpecError
from anyformer.objectives.losses import OBJECTIVE_MODULE, Forward, Objective
from anyformer.objectives.spans import SpanCorruption, SpanParams, pad_rows
from anyformer.objectives.tokens import (
    TokenObjective,
    masked_cross_entropy,
    plain_batch,
    real_positions,
)
from anyformer.registry import Capabilities, NoParams, Paper, register
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch

CODET5 = Paper(
    "CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code "
    "Understanding and Generation",
    2021,
    "Wang et al.",
)
#: The batch extras the objectives read.
TAG, OCCURRENCE, NAME = "identifier", "identifier_occurrence", "identifier_name"


def _need(batch: Batch, keys: tuple[str, ...], objective: str) -> None:
    missing = [k for k in keys if k not in batch.extras]
    if missing:
        raise SpecError(
            f"objective '{objective}' reads the identifier marks extras[{missing[0]!r}], "
            "which this task's batches lack; use a task that marks identifiers (code_lm)"
        )


@register(
    "objective",
    "identifier_tagging",
    paper=CODET5,
    summary="CodeT5 identifier tagging: a binary is-identifier label per token "
    "(token_classify head, 2 outputs), cross-entropy over real tokens",
    params=NoParams,
    caps=Capabilities(),
)
class IdentifierTagging(Objective):
    """Cross-entropy of ``outputs [B, T, 2]`` against ``extras["identifier"]`` (1 at
    identifier tokens) over the real input tokens."""

    heads = ("token_classify",)
    n_outputs = 2
    kinds = ("encoder", "decoder", "prefix_lm")
    tasks: ClassVar[tuple[str, ...]] = ("code_lm",)

    @classmethod
    def contract_model(cls, task_vocab: int | None, task_len: int) -> dict[str, object]:
        return {"head": "token_classify", "n_outputs": 2}

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        _need(batch, (TAG,), "identifier_tagging")
        tags = batch.extras[TAG].long().to(outputs.device)
        return masked_cross_entropy(outputs, tags, real_positions(batch))


class MaskedIdentifierParams(BaseModel):
    """Parameters of ``masked_identifier``.

    - ``sentinels``: sentinel ids; a row masks its first ``sentinels - 1`` distinct
      names (the last sentinel ends the target), later names stay in the source.
    - ``first_sentinel``: the id of sentinel 0 (the others count down from it);
      ``None`` = the model's last id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    sentinels: int = Field(11, ge=2, le=10_000)
    first_sentinel: int | None = Field(None, ge=0)


def mask_identifiers(
    text: torch.Tensor, occurrence: torch.Tensor, name: torch.Tensor, sentinels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(source, target)`` of one row: in the source every occurrence of name ``k``
    (``k < len(sentinels) - 1``, in order of first use) is one ``sentinels[k]``; the
    target is ``sentinels[0]``, name 0's first occurrence, ``sentinels[1]``, ...,
    ``sentinels[K]`` (K masked names)."""
    budget = len(sentinels) - 1
    source: list[int] = []
    first_occurrence: dict[int, int] = {}  # name -> its first occurrence
    first: dict[int, list[int]] = {}  # name -> the tokens of its first occurrence
    last = 0
    for tok, occ, nm in zip(text.tolist(), occurrence.tolist(), name.tolist()):
        if occ and nm <= budget:
            if occ != last:  # a new occurrence starts: one sentinel for all its tokens
                source.append(sentinels[nm - 1])
            if first_occurrence.setdefault(nm, occ) == occ:
                first.setdefault(nm, []).append(tok)
            last = occ
            continue
        last = 0
        source.append(tok)
    target: list[int] = []
    for k, nm in enumerate(sorted(first)):
        target += [sentinels[k], *first[nm]]
    target.append(sentinels[len(first)])
    return torch.tensor(source, dtype=torch.long), torch.tensor(target, dtype=torch.long)


@register(
    "objective",
    "masked_identifier",
    paper=CODET5,
    summary="CodeT5 masked identifier prediction: every occurrence of a name replaced by "
    "its sentinel in the encoder's input; the decoder writes sentinel, name, ... "
    "(encoder_decoder)",
    params=MaskedIdentifierParams,
    caps=Capabilities(),
)
class MaskedIdentifier(TokenObjective):
    """The decoder's cross-entropy on the names (and their sentinels), mean over the
    target tokens; rows as :class:`~anyformer.objectives.spans.SpanCorruption` writes
    them (``extras['source']``, decoder ``inputs`` = target without its last token)."""

    params: MaskedIdentifierParams
    heads = ("lm",)
    kinds = ("encoder_decoder",)
    corrupts = True
    tasks: ClassVar[tuple[str, ...]] = ("code_lm",)

    @property
    def reserved_ids(self) -> int:  # type: ignore[override]
        return self.params.sentinels

    def explicit_ids(self) -> dict[str, int]:
        p = self.params.first_sentinel
        if p is None:
            return {}
        return {
            "first_sentinel": p,
            "first_sentinel (less sentinels - 1)": p - self.params.sentinels + 1,
        }

    def sentinel_ids(self) -> list[int]:
        first = self.params.first_sentinel
        if first is None:
            return self.top_ids(self.params.sentinels)
        return [first - k for k in range(self.params.sentinels)]

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        _need(batch, (OCCURRENCE, NAME), "masked_identifier")
        sentinels = self.sentinel_ids()
        self.check_free(batch, sentinels, "first_sentinel")
        real = real_positions(batch)
        sources, targets = [], []
        for i in range(batch.inputs.shape[0]):
            r = real[i]
            s, t = mask_identifiers(
                batch.inputs[i][r].cpu(),
                batch.extras[OCCURRENCE][i][r].cpu(),
                batch.extras[NAME][i][r].cpu(),
                sentinels,
            )
            sources.append(s)
            targets.append(t)
        source, source_mask = pad_rows(sources)
        full, ok = pad_rows(targets)
        device = batch.inputs.device
        out = plain_batch(
            batch,
            inputs=full[:, :-1].to(device),
            targets=full[:, 1:].to(device),
            loss_mask=ok[:, 1:].to(device),
            padding_mask=ok[:, 1:].to(device),
            extras={"source": source.to(device), "source_mask": source_mask.to(device)},
        )
        for key in (TAG, OCCURRENCE, NAME):  # they marked the uncorrupted row
            out.extras.pop(key, None)
        return out

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)


# --------------------------------------------------------------------------- the mixture
#: The objectives ``identifier_aware`` alternates, by name: T5's masked span prediction,
#: identifier tagging and masked identifier prediction.
IDENTIFIER_AWARE_TASKS = ("span", "tagging", "identifier")
#: The batch extra saying which of them a corrupted batch is for (its index, per row).
CHOSEN = "identifier_aware_task"


class IdentifierAwareParams(BaseModel):
    """Parameters of ``identifier_aware``.

    - ``tasks``: the objectives it alternates, each batch one of them drawn uniformly:
      ``span`` (T5 span corruption), ``tagging`` (identifier tagging from the encoder's
      output) and ``identifier`` (masked identifier prediction); ``[span]`` alone is
      ``span_corruption``.
    - ``noise_density``, ``mean_span_length``: of the span corruption.
    - ``sentinels``, ``first_sentinel``: the sentinel ids, shared by span corruption and
      masked identifier prediction (as CodeT5 shares T5's sentinels).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: tuple[Literal["span", "tagging", "identifier"], ...] = Field(
        IDENTIFIER_AWARE_TASKS, min_length=1
    )
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_span_length: float = Field(3.0, ge=1.0)
    sentinels: int = Field(11, ge=2, le=10_000)
    first_sentinel: int | None = Field(None, ge=0)


@register(
    "objective",
    "identifier_aware",
    paper=CODET5,
    summary="CodeT5 identifier-aware denoising: each batch one of span corruption, "
    "identifier tagging (encoder, own 2-way head) or masked identifier prediction, drawn "
    "uniformly (encoder_decoder)",
    params=IdentifierAwareParams,
    caps=Capabilities(),
)
class IdentifierAware(TokenObjective):
    """CodeT5's identifier-aware denoising pretraining (Section 3.2 of the paper): the
    encoder–decoder trains on span corruption, identifier tagging and masked identifier
    prediction, one of them per batch drawn with equal probability from the batch's
    corruption generator (so a resumed run draws the same).

    - ``span`` and ``identifier`` batches are :class:`~anyformer.objectives.spans.
      SpanCorruption`'s and :class:`MaskedIdentifier`'s, scored by the decoder's
      cross-entropy on the target (:meth:`loss`);
    - a ``tagging`` batch is the plain row as the encoder's source; the loss is the
      cross-entropy of a linear 2-way head over the encoder's output (the objective's own
      module, ``model.objective_module``: trained and checkpointed with the model, never
      copied by ``init_from``) against ``extras["identifier"]``, over the real tokens.

    Evaluation scores span corruption only (:meth:`evaluation_batches`), so its ``loss``
    is the held-out span-corruption loss, comparable with a ``span_corruption`` run's.
    """

    params: IdentifierAwareParams
    heads = ("lm",)
    kinds = ("encoder_decoder",)
    corrupts = True
    tasks: ClassVar[tuple[str, ...]] = ("code_lm",)

    def __init__(self, params: IdentifierAwareParams) -> None:
        super().__init__(params)
        p = params
        self.span = SpanCorruption(
            SpanParams(noise_density=p.noise_density, mean_span_length=p.mean_span_length,
                       sentinels=p.sentinels, first_sentinel=p.first_sentinel)
        )  # fmt: skip
        self.identifier = MaskedIdentifier(
            MaskedIdentifierParams(sentinels=p.sentinels, first_sentinel=p.first_sentinel)
        )

    @property
    def reserved_ids(self) -> int:  # type: ignore[override]
        return self.params.sentinels

    def explicit_ids(self) -> dict[str, int]:
        return self.span.explicit_ids()

    def for_model(self, model: ModelSpec) -> Objective:
        super().for_model(model)
        self.span.for_model(model)
        self.identifier.for_model(model)
        return self

    def module(self, model: nn.Module) -> nn.Module | None:
        if "tagging" not in self.params.tasks:
            return None
        return nn.Linear(model.spec.d_model, 2)

    def choose(self, generator: torch.Generator) -> str:
        """The objective of one batch: uniform over ``tasks`` (no draw for one task)."""
        tasks = self.params.tasks
        if len(tasks) == 1:
            return tasks[0]
        return tasks[int(torch.randint(len(tasks), (1,), generator=generator))]

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        chosen = self.choose(generator)
        if chosen == "span":
            out = self.span.corrupt(batch, generator)
        elif chosen == "identifier":
            out = self.identifier.corrupt(batch, generator)
        else:
            _need(batch, (TAG,), "identifier_aware")
            real = real_positions(batch)
            out = plain_batch(
                batch,
                loss_mask=real,
                extras={"source": batch.inputs, "source_mask": real},
            )
        index = IDENTIFIER_AWARE_TASKS.index(chosen)
        out.extras[CHOSEN] = torch.full((out.inputs.shape[0],), index, dtype=torch.long)
        return out

    def evaluation_batches(self, batches: list[Batch], split: str) -> list[Batch]:
        return self.span.evaluation_batches(batches, split)

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        chosen = batch.extras.get(CHOSEN)
        if chosen is None or IDENTIFIER_AWARE_TASKS[int(chosen[0])] != "tagging":
            return super().training_loss(model, batch, step, forward)
        tagger = getattr(model, OBJECTIVE_MODULE, None)
        if tagger is None:
            raise RuntimeError(
                "identifier_aware's tagging head is not attached to the model "
                "(objectives.losses.attach_objective(model, objective))"
            )
        source, mask = batch.extras["source"], batch.extras["source_mask"].bool()
        logits = tagger(model.encode(source, mask))
        return masked_cross_entropy(logits, batch.extras[TAG].long(), mask)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)
