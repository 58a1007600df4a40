"""Multi-query associative recall (MQAR): look values up by key in the context.

A sequence holds ``P`` key-value pairs followed by ``Q`` queries; each query is one of
the sequence's keys and the model must answer with the value it was paired with::

    BOS k_1 v_1 k_2 v_2 ... k_P v_P SEP [FILL ...] q_1 a_1 [FILL ...] q_2 a_2 ... q_Q a_Q [FILL ...]

Vocabulary: ``PAD=0, BOS=1, SEP=2, FILL=3``, then ``n_keys`` key tokens (key ``i`` is token
``FIRST_KEY + i``), then ``n_values`` value tokens (value ``j`` is ``first_value + j``),
so keys and values never share a token. Keys are distinct within a sequence (drawn
without replacement), values are uniform and may repeat, and the ``Q`` queries are
distinct keys of the sequence (without replacement), so an earlier answer never
reveals a later one.

The model reads ``seq[:-1]`` and is trained to emit ``seq[1:]``; ``loss_mask`` is True
exactly at the query positions, whose target is the answer (the value token that
follows the query). Everything else (pairs, separator, filler) is context only.

Length: with ``seq_len`` unset every sequence is as short as it can be (the queries
follow the separator back to back; model input length ``2P + 2Q + 1``). With
``seq_len = T`` every sequence of every split has model input length ``T``: the query
region after ``SEP`` is cut into two-token slots, the ``Q`` query/answer pairs take
``Q`` slots chosen uniformly (in order) and the rest hold ``FILL`` tokens, so queries
sit at random distances from their pairs, as in Zoology's MQAR.

Splits (the same machinery as :mod:`anyformer.tasks.sequence`):

- training: ``min_pairs..max_pairs`` pairs; each step draws ONE pair count for its whole
  batch (no padding). The data depend only on ``(seed, step)``.
- ``id``: the same pair counts, held-out sequences: a 64-bit hash of the whole token
  row decides membership (member iff ``hash % 10000 < test_fraction * 10000``);
  training rejects members, the ``id`` set takes only members, and duplicates are
  dropped, so no ``id`` sequence is ever trained on.
- ``ood``: more pairs, ``ood_min_pairs..ood_max_pairs`` (disjoint by pair count).

Metrics (teacher-forced argmax at the query positions): ``accuracy`` (the headline,
over all queries), ``exact_match`` (sequences with every query right), ``by_pairs``
(accuracy per pair count), ``exact_match_by_pairs``, ``baselines`` (``chance``: guessing
a value, ``majority``: always the set's most common value; each with ``accuracy``,
``exact_match`` and ``by_pairs``, see :mod:`anyformer.tasks.baselines`), ``chance``
(``1 / n_values``, the same as ``baselines.chance.accuracy``, kept for earlier results)
and a ``curve`` of accuracy against the number of pairs, with the baselines beside it.

Paper: Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré, "Zoology: Measuring
and Improving Recall in Efficient Language Models" (2023). Not implemented: the paper's
power-law distribution of query gaps (gaps here are uniform over slot choices) and
keys/values drawn from one shared vocabulary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import (
    SPLIT_IDS,
    Batch,
    Task,
    at_least,
    eval_set_by_size,
    rng_for,
    split_range,
)
from anyformer.tasks.baselines import class_baselines, majority_answer, with_baseline_series
from anyformer.tasks.sequence import is_test_member, unique_rows

PAD, BOS, SEP, FILL = 0, 1, 2, 3
#: Token id of key 0.
FIRST_KEY = 4
#: Evaluation sets are cut into batches of at most this many rows.
EVAL_BATCH_ROWS = 512
#: Rejection sampling gives up after this many rounds (only reachable in tiny spaces).
MAX_ROUNDS = 1000
#: The parameters bounding the pair counts: ``(min, max, ood_min, ood_max)``.
PAIR_FIELDS = ("min_pairs", "max_pairs", "ood_min_pairs", "ood_max_pairs")

ZOOLOGY = Paper(
    "Zoology: Measuring and Improving Recall in Efficient Language Models",
    2023,
    "Arora et al.",
)


class MQARParams(BaseModel):
    """Parameters of multi-query associative recall.

    - ``n_keys``: size of the key vocabulary (keys are distinct within a sequence, so it
      must be at least ``ood_max_pairs``).
    - ``n_values``: size of the value vocabulary (>= 2).
    - ``min_pairs``, ``max_pairs``: key-value pairs per training and ``id`` sequence
      (inclusive range).
    - ``ood_min_pairs``, ``ood_max_pairs``: pairs per ``ood`` sequence, all more than
      ``max_pairs``.
    - ``n_queries``: queries per sequence, distinct keys of the sequence, so at most
      ``min_pairs``.
    - ``seq_len``: model input length of every sequence of every split (``None``: as
      short as possible, ``2 * pairs + 2 * n_queries + 1``); must fit ``ood_max_pairs``.
    - ``test_fraction``: share of sequences held out for the ``id`` split, in (0, 0.5].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_keys: int = Field(64, ge=1)
    n_values: int = Field(64, ge=2)
    min_pairs: int = Field(4, ge=1)
    max_pairs: int = Field(16, ge=1)
    ood_min_pairs: int = Field(17, ge=1)
    ood_max_pairs: int = Field(32, ge=1)
    n_queries: int = Field(4, ge=1)
    seq_len: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)

    # ood_max_pairs has its own validator (it is also bounded by n_keys)
    _max_pairs_order = field_validator("max_pairs")(at_least("min_pairs"))
    _ood_pairs_order = field_validator("ood_min_pairs")(
        at_least(
            "max_pairs",
            strict=True,
            why="OOD sequences hold more pairs than every training sequence",
        )
    )

    @field_validator("ood_max_pairs")
    @classmethod
    def _ood_max(cls, v: int, info: ValidationInfo) -> int:
        lo, keys = info.data.get("ood_min_pairs"), info.data.get("n_keys")
        if lo is not None and v < lo:
            raise ValueError(f"ood_max_pairs={v} must be >= ood_min_pairs={lo}")
        if keys is not None and v > keys:
            raise ValueError(
                f"ood_max_pairs={v} must be <= n_keys={keys} (keys are distinct within a "
                f"sequence); raise n_keys or lower ood_max_pairs"
            )
        return v

    @field_validator("n_queries")
    @classmethod
    def _queries(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_pairs")
        if lo is not None and v > lo:
            raise ValueError(
                f"n_queries={v} must be <= min_pairs={lo} (queries are distinct keys of "
                f"the sequence)"
            )
        return v

    @field_validator("seq_len")
    @classmethod
    def _fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        pairs, queries = info.data.get("ood_max_pairs"), info.data.get("n_queries")
        if v is None or pairs is None or queries is None:
            return v
        need = minimal_len(pairs, queries)
        if v < need:
            raise ValueError(
                f"seq_len={v} is too short for ood_max_pairs={pairs} pairs and "
                f"n_queries={queries} queries; it must be >= {need} (2 * pairs + "
                f"2 * queries + 1)"
            )
        return v


def minimal_len(pairs: int, queries: int) -> int:
    """Model input length of a sequence with no filler: ``BOS + 2P + SEP + 2Q - 1``."""
    return 2 * pairs + 2 * queries + 1


@register(
    "task",
    "mqar",
    paper=ZOOLOGY,
    summary="multi-query associative recall: answer queries with the values paired to "
    "their keys in context; train on few pairs, test on more",
    params=MQARParams,
    caps=Capabilities(),
)
class MQAR(Task):
    """Multi-query associative recall; see the module docstring for layout and splits.

    Paper: Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language
    Models" (2023).
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "causal_lm"
    headline: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    disjoint_splits: ClassVar[bool] = True

    params: MQARParams

    # ------------------------------------------------------------ interface
    @property
    def first_value(self) -> int:
        """Token id of value 0."""
        return FIRST_KEY + self.params.n_keys

    @property
    def vocab_size(self) -> int:
        return self.first_value + self.params.n_values

    def model_io(self) -> dict[str, Any]:
        return {"embed": "tokens", "vocab_size": self.vocab_size}

    def pair_counts(self, split: str) -> range:
        """The pair counts of a split (``train`` and ``id`` share theirs)."""
        return split_range(self.params, split, PAIR_FIELDS)

    def split_sizes(self, split: str) -> range | None:
        return self.pair_counts(split)

    def input_len(self, pairs: int) -> int:
        """Model input length of a sequence with ``pairs`` pairs."""
        p = self.params
        return p.seq_len if p.seq_len is not None else minimal_len(pairs, p.n_queries)

    def max_seq_len(self) -> int:
        return max(self.input_len(n) for s in ("id", "ood") for n in self.pair_counts(s))

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        counts = self.pair_counts("train")
        pairs = int(counts[rng.integers(len(counts))])
        rows = self._draw(pairs, batch_size, rng, member=False, unique=False)
        return self.make_batch(rows, pairs)

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        member = True if split == "id" else None
        return eval_set_by_size(
            self.seed, split, size, self.pair_counts(split),
            lambda pairs, n, rng: self._draw(pairs, n, rng, member=member, unique=True),
            self.make_batch, EVAL_BATCH_ROWS,
            f"split '{split}' has no held-out sequences (test_fraction="
            f"{self.params.test_fraction} of a tiny sequence space); use more keys, "
            f"values or pairs, or a larger test_fraction",
        )  # fmt: skip

    # ------------------------------------------------------------ data
    def sample_rows(self, pairs: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` full token rows ``[n, input_len + 1]`` with ``pairs`` pairs (see layout)."""
        p = self.params
        q = p.n_queries
        keys = np.argsort(rng.random((n, p.n_keys)), axis=1)[:, :pairs]
        values = rng.integers(p.n_values, size=(n, pairs))
        asked = np.argsort(rng.random((n, pairs)), axis=1)[:, :q]
        width = self.input_len(pairs) + 1
        rows = np.full((n, width), FILL, dtype=np.int64)
        rows[:, 0] = BOS
        rows[:, 1 : 2 * pairs + 1 : 2] = FIRST_KEY + keys
        rows[:, 2 : 2 * pairs + 2 : 2] = self.first_value + values
        rows[:, 2 * pairs + 1] = SEP
        start = 2 * pairs + 2
        slots = (width - start) // 2
        if slots == q:
            chosen = np.broadcast_to(np.arange(q), (n, q))
        else:
            chosen = np.sort(np.argsort(rng.random((n, slots)), axis=1)[:, :q], axis=1)
        at = start + 2 * chosen  # [n, q] positions of the query keys
        idx = np.arange(n)[:, None]
        rows[idx, at] = FIRST_KEY + np.take_along_axis(keys, asked, axis=1)
        rows[idx, at + 1] = self.first_value + np.take_along_axis(values, asked, axis=1)
        return rows

    def make_batch(self, rows: np.ndarray, pairs: int) -> Batch:
        """The batch of full token rows ``[N, T + 1]`` with ``pairs`` pairs."""
        seq = torch.from_numpy(rows.astype(np.int64))
        inputs = seq[:, :-1].contiguous()
        # a query is a key token after SEP; its target (the next token) is the answer
        after_sep = torch.arange(inputs.shape[1]) > 2 * pairs + 1
        is_key = (inputs >= FIRST_KEY) & (inputs < self.first_value)
        return Batch(
            inputs=inputs,
            targets=seq[:, 1:].contiguous(),
            loss_mask=is_key & after_sep,
            padding_mask=None,
            group=pairs,
        )

    def _draw(
        self,
        pairs: int,
        n: int,
        rng: np.random.Generator,
        member: bool | None,
        unique: bool,
    ) -> np.ndarray:
        """``n`` rows (fewer only in a tiny space); ``member`` as in the algorithmic tasks:
        True keeps held-out rows only, False training rows only, None any."""
        if member is None and not unique:
            return self.sample_rows(pairs, n, rng)
        share = self.params.test_fraction if member else 1 - self.params.test_fraction
        ask = int(n / share * 1.2) + 8 if member is not None else n
        kept: list[np.ndarray] = []
        have = 0
        for _ in range(MAX_ROUNDS):
            cand = self.sample_rows(pairs, ask, rng)
            if member is not None:
                cand = cand[is_test_member(cand, self.params.test_fraction) == member]
            kept.append(cand)
            have += cand.shape[0]
            if unique:
                merged = unique_rows(np.concatenate(kept))
                kept, have = [merged], merged.shape[0]
            if have >= n:
                break
        rows = np.concatenate(kept)[:n]
        if rows.shape[0] == 0:
            raise ValueError(
                f"no {'held-out' if member else 'training'} sequences with {pairs} pairs "
                f"(test_fraction={self.params.test_fraction} of a tiny space); use more keys "
                f"or values"
            )
        return rows

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Query accuracy and per-sequence exact match, overall and per pair count.

        ``outputs`` are logits ``[B, T, V]`` (or predicted ids ``[B, T]``).
        """
        counts: dict[int, list[int]] = {}  # pairs -> [queries right, queries, rows right, rows]
        for out, batch in zip(outputs, batches):
            pred = out.argmax(-1) if out.dim() == 3 else out
            mask = batch.loss_mask
            right = (pred.to(batch.targets.device) == batch.targets) & mask
            exact = (right | ~mask).all(dim=1)
            key = int(batch.group) if batch.group is not None else -1
            c = counts.setdefault(key, [0, 0, 0, 0])
            c[0] += int(right.sum())
            c[1] += int(mask.sum())
            c[2] += int(exact.sum())
            c[3] += int(exact.numel())
        total = [sum(c[i] for c in counts.values()) for i in range(4)]
        by_pairs = {str(k): counts[k][0] / counts[k][1] for k in sorted(counts) if counts[k][1]}
        exact_by = {str(k): counts[k][2] / counts[k][3] for k in sorted(counts) if counts[k][3]}
        curve = {"x": "pairs", "y": "accuracy", "series": {"model": dict(by_pairs)},
                 "n": {str(k): counts[k][3] for k in sorted(counts) if counts[k][1]}}  # fmt: skip
        metrics: dict[str, Any] = {
            "accuracy": total[0] / max(total[1], 1),
            "exact_match": total[2] / max(total[3], 1),
            "by_pairs": by_pairs,
            "exact_match_by_pairs": exact_by,
            "chance": 1.0 / self.params.n_values,
        }
        if batches:
            metrics["baselines"] = self.trivial_baselines(batches)
            curve = with_baseline_series(curve, metrics["baselines"], "by_pairs")
        metrics["curve"] = curve
        return metrics

    # ------------------------------------------------------------ baselines
    def answers(self, batch: Batch) -> torch.Tensor:
        """``[N, n_queries]``: the value token each query of a row asks for, in order."""
        return batch.targets[batch.loss_mask].view(batch.targets.shape[0], -1)

    def trivial_baselines(self, batches: list[Batch]) -> dict[str, dict[str, Any]]:
        """``chance`` and ``majority`` (:mod:`anyformer.tasks.baselines`) on the queries
        of ``batches``: ``accuracy``, ``exact_match`` and ``by_pairs`` (accuracy)."""
        labels = torch.cat([self.answers(b) for b in batches])
        groups = torch.cat([torch.full((b.inputs.shape[0],), int(b.group)) for b in batches])
        return class_baselines(
            labels, self.params.n_values, groups, by="by_pairs", headline="accuracy"
        )

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        """Predicted ids ``[B, T]`` of the baseline ``majority``: the targets with every
        answer replaced by the set's most common value (scored, its numbers)."""
        if name != "majority":
            raise ValueError(f"MQAR has no deterministic baseline '{name}'")
        value = majority_answer(torch.cat([self.answers(b) for b in batches]))
        return [torch.where(b.loss_mask, torch.tensor(value), b.targets) for b in batches]
