"""T5's span corruption (``span_corruption``) and the prefix LM objective (``prefix_lm``).

"Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
(Raffel et al., 2020): an encoder–decoder reads the text with random spans dropped,
each span replaced by one sentinel token, and the decoder writes the dropped spans,
each after its sentinel (noise density 15 %, mean span length 3). The same paper's
prefix LM objective splits the text at a random point: the prefix is read
bidirectionally, the continuation predicted (here in one stack, ``kind: prefix_lm``, as
in "What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot
Generalization?", Wang et al., 2022).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.objectives.tokens import (
    TokenObjective,
    masked_cross_entropy,
    plain_batch,
    real_positions,
)
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch

T5 = Paper(
    "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
    2020,
    "Raffel et al.",
)


def row_texts(batch: Batch) -> list[torch.Tensor]:
    """The text of each row, as the model would read it: the real tokens of
    ``extras['source']`` when the batch has one (encoder–decoder rows; the decoder side is
    left out), else of ``inputs``."""
    if "source" in batch.extras:
        source = batch.extras["source"]
        mask = batch.extras.get("source_mask")
        real = mask.bool() if mask is not None else torch.ones_like(source, dtype=torch.bool)
        return [source[i][real[i]] for i in range(source.shape[0])]
    real = real_positions(batch)
    return [batch.inputs[i][real[i]] for i in range(batch.inputs.shape[0])]


def pad_rows(rows: list[torch.Tensor], fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, max len], real [B, max len])``: ``rows`` padded at the end with ``fill``."""
    t = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), t), fill, dtype=torch.long)
    real = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r.cpu()
        real[i, : len(r)] = True
    return ids, real


# --------------------------------------------------------------------------- span corruption
def span_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` of a row of ``length`` tokens, as T5 counts them:
    ``round(length * density)`` noise tokens (at least 1, at most ``length - 1``) in
    ``max(1, round(noise / mean_span))`` spans (no more than the noise tokens, nor the
    non-noise tokens, since every span is preceded by kept text)."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = max(1, round(noise / mean_span))
    return noise, min(spans, noise, length - noise)


def random_segmentation(items: int, segments: int, generator: torch.Generator) -> torch.Tensor:
    """``segments`` positive lengths summing to ``items``, uniform over such partitions
    (``segments - 1`` distinct cut points among the ``items - 1`` gaps)."""
    cuts = torch.randperm(items - 1, generator=generator)[: segments - 1].sort().values + 1
    edges = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([items])])
    return edges.diff()


def noise_spans(
    length: int, density: float, mean_span: float, generator: torch.Generator
) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the noise spans of a row of ``length`` tokens (T5's
    ``random_spans_noise_mask``): kept and noise spans alternate, starting with kept
    text, ending with noise; span lengths are random partitions of the counts
    (:func:`span_counts`)."""
    noise, spans = span_counts(length, density, mean_span)
    noise_lengths = random_segmentation(noise, spans, generator).tolist()
    kept_lengths = random_segmentation(length - noise, spans, generator).tolist()
    out, at = [], 0
    for kept, span in zip(kept_lengths, noise_lengths):
        at += kept
        out.append((at, at + span))
        at += span
    return out


def corrupt_row(
    text: torch.Tensor, spans: list[tuple[int, int]], sentinels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(source, target)`` of one row: the source is ``text`` with span ``k`` replaced by
    ``sentinels[k]``; the target is ``sentinels[0] span_0 sentinels[1] span_1 ...
    sentinels[n]`` (the sentinel after the last span ends it, as T5's targets)."""
    source, target, at = [], [], 0
    for k, (start, end) in enumerate(spans):
        source += [text[at:start], text.new_tensor([sentinels[k]])]
        target += [text.new_tensor([sentinels[k]]), text[start:end]]
        at = end
    source.append(text[at:])
    target.append(text.new_tensor([sentinels[len(spans)]]))
    return torch.cat(source), torch.cat(target)


def restore_row(source: torch.Tensor, target: torch.Tensor, sentinels: list[int]) -> torch.Tensor:
    """The original text of a corrupted row: each sentinel of ``source`` replaced by the
    tokens that follow the same sentinel in ``target`` up to the next sentinel (the
    inverse of :func:`corrupt_row`)."""
    marks = set(sentinels)
    spans: dict[int, list[int]] = {}
    current: int | None = None
    for tok in target.tolist():
        if tok in marks:
            current = tok
            spans.setdefault(tok, [])
        elif current is not None:
            spans[current].append(tok)
    out: list[int] = []
    for tok in source.tolist():
        out += spans.get(tok, []) if tok in marks else [tok]
    return torch.tensor(out, dtype=source.dtype)


class SpanParams(BaseModel):
    """Parameters of ``span_corruption``.

    - ``noise_density``: the share of each row's tokens dropped into spans.
    - ``mean_span_length``: the mean length of a dropped span (the span count is
      ``round(noise tokens / mean_span_length)`` per row).
    - ``sentinels``: how many sentinel ids there are; a row of ``n`` spans uses ``n + 1``
      (the last ends the target). The default 11 are the ids 245-255 of a byte vocabulary
      of 256, which UTF-8 text never holds.
    - ``first_sentinel``: the id of sentinel 0 (the others count down from it, as T5's
      ``<extra_id_k>`` do); ``None`` = the model's last id ``vocab_size - 1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_span_length: float = Field(3.0, ge=1.0)
    sentinels: int = Field(11, ge=2, le=10_000)
    first_sentinel: int | None = Field(None, ge=0)


@register(
    "objective",
    "span_corruption",
    paper=T5,
    summary="T5 span corruption: 15% of tokens in spans of mean length 3, each replaced "
    "by a sentinel in the encoder's input; the decoder writes sentinel, span, ... "
    "(encoder_decoder)",
    params=SpanParams,
    caps=Capabilities(),
)
class SpanCorruption(TokenObjective):
    """The decoder's cross-entropy on the spans (and their sentinels), mean over the
    target tokens.

    :meth:`corrupt` turns each row's text (:func:`row_texts`) into an encoder–decoder
    row: ``extras['source']`` = the text with each noise span replaced by its sentinel
    (``extras['source_mask']`` True at real tokens), decoder ``inputs`` =
    ``sentinel_0 span_0 sentinel_1 ... span_{n-1}`` (sentinel 0 is the decoder's start
    token), ``targets`` = ``span_0 sentinel_1 span_1 ... sentinel_n`` (the final
    sentinel is the end token), ``loss_mask`` = the real target tokens; rows are
    ragged and padded at the end with 0. :func:`restore_row` inverts it."""

    params: SpanParams
    heads = ("lm",)
    kinds = ("encoder_decoder",)
    corrupts = True

    @property
    def reserved_ids(self) -> int:  # type: ignore[override]
        return self.params.sentinels

    def explicit_ids(self) -> dict[str, int]:
        p = self.params.first_sentinel
        if p is None:
            return {}
        # the last sentinel, first_sentinel - sentinels + 1, must be an id too
        return {
            "first_sentinel": p,
            "first_sentinel (less sentinels - 1)": p - self.params.sentinels + 1,
        }

    def sentinel_ids(self) -> list[int]:
        """Sentinel ``k``'s id at index ``k``."""
        first = self.params.first_sentinel
        if first is None:
            return self.top_ids(self.params.sentinels)
        return [first - k for k in range(self.params.sentinels)]

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        p = self.params
        sentinels = self.sentinel_ids()
        self.check_free(batch, sentinels, "first_sentinel")
        sources, targets = [], []
        for text in row_texts(batch):
            if len(text) < 2:
                raise ValueError(
                    f"span_corruption needs rows of at least 2 tokens, got {len(text)}"
                )
            spans = noise_spans(len(text), p.noise_density, p.mean_span_length, generator)
            if len(spans) + 1 > len(sentinels):
                raise SpecError(
                    f"a row of {len(text)} tokens has {len(spans)} noise spans and needs "
                    f"{len(spans) + 1} sentinels, but objective.sentinels={p.sentinels}; raise "
                    "objective.sentinels (and model.vocab_size) or mean_span_length, or use "
                    "shorter rows"
                )
            source, target = corrupt_row(text.cpu(), spans, sentinels)
            sources.append(source)
            targets.append(target)
        source, source_mask = pad_rows(sources)
        full, real = pad_rows(targets)
        device = batch.inputs.device
        return plain_batch(
            batch,
            inputs=full[:, :-1].to(device),
            targets=full[:, 1:].to(device),
            loss_mask=real[:, 1:].to(device),
            padding_mask=real[:, 1:].to(device),  # input t is real when target t is
            extras={"source": source.to(device), "source_mask": source_mask.to(device)},
        )

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)


# --------------------------------------------------------------------------- prefix LM
class PrefixLMParams(BaseModel):
    """Parameters of ``prefix_lm``.

    - ``min_prefix``: the shortest prefix drawn (tokens); the split point of a row of
      ``n`` real tokens is uniform over ``min_prefix .. n`` (at most ``n``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_prefix: int = Field(1, ge=1)


@register(
    "objective",
    "prefix_lm",
    paper=T5,
    summary="prefix LM: each row split at a random point, the prefix read bidirectionally, "
    "next-token loss on the continuation only (prefix_lm)",
    params=PrefixLMParams,
    caps=Capabilities(),
)
class PrefixLM(Objective):
    """Next-token cross-entropy on the continuation of a randomly split row.

    :meth:`corrupt` draws a split point ``p`` per row (uniform over ``min_prefix .. n``
    for ``n`` real tokens), sets ``extras['prefix_len'] = p`` (inputs ``0 .. p-1``
    attend to each other both ways) and keeps in ``loss_mask`` only the positions
    ``t >= p - 1`` (their targets, the tokens ``p ..``, lie after the prefix; the first
    is predicted at the prefix's last position), intersected with the task's own
    ``loss_mask``. Rows must be next-token rows (a decoder task). A batch that already
    has ``prefix_len`` (a sequence task in ``prefix_lm`` form: the prompt is the prefix)
    is kept as the task wrote it."""

    params: PrefixLMParams
    heads = ("lm",)
    kinds = ("prefix_lm",)
    corrupts = True

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if "prefix_len" in batch.extras:
            return batch
        real = real_positions(batch)
        n = real.sum(dim=1).cpu()
        low = torch.clamp(torch.full_like(n, self.params.min_prefix), max=n.clamp(min=1))
        u = torch.rand(n.shape, generator=generator)
        prefix = torch.minimum(low + (u * (n - low + 1)).long(), n).to(batch.inputs.device)
        t = torch.arange(batch.inputs.shape[1], device=batch.inputs.device)
        keep = batch.loss_mask & real & (t[None, :] >= prefix[:, None] - 1)
        return plain_batch(batch, loss_mask=keep, extras={"prefix_len": prefix})

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.loss_mask)


__all__ = [
    "PrefixLM",
    "SpanCorruption",
    "corrupt_row",
    "noise_spans",
    "restore_row",
    "span_counts",
]
