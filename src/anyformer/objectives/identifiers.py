"""CodeT5's identifier-aware pretraining objectives: ``identifier_tagging`` and
``masked_identifier``.

"CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code
Understanding and Generation" (Wang et al., 2021) adds two objectives to T5's span
corruption that use what the developer named:

- identifier tagging: the encoder says, for every token, whether it is part of an
  identifier (a binary label per token, cross-entropy over the real tokens);
- masked identifier prediction: every identifier of a function is replaced by a
  sentinel, one sentinel per distinct name (every occurrence of a name gets the same
  one), and the decoder writes ``sentinel_0 name_0 sentinel_1 name_1 ... sentinel_K``
  (names in order of first use; the last sentinel ends the target).

Both read the identifier marks a code task puts in its batches (``code_lm``:
``extras["identifier"]``, ``extras["identifier_occurrence"]``,
``extras["identifier_name"]``, per input token); a batch without them is refused.
With a subword tokenizer a token that overlaps an identifier is part of it (a token
``" x"`` takes its space along), so the target writes the first occurrence's tokens.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.objectives.spans import pad_rows
from anyformer.objectives.tokens import (
    TokenObjective,
    masked_cross_entropy,
    plain_batch,
    real_positions,
)
from anyformer.registry import Capabilities, NoParams, Paper, register
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
