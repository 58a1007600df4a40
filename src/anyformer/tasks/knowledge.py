"""Knowledge tasks: facts about a random world, and facts inferred from them.

The world (random lookup tables, a knowledge graph, attribute values) is fixed by the
task's seed. Every fact is a short prompt of 2 or 3 tokens and a one-token answer,
written ``BOS prompt SEP answer EOS`` as in :mod:`anyformer.tasks.sequence`; the loss
and the scores cover the answer and ``EOS``. The training set is a fixed, finite set of
facts (batches sample it uniformly, by ``(seed, step)``); the ``id`` and ``ood`` sets are
facts never trained on, drawn without replacement (a set holds at most all of them).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.sequence import EVAL_BATCH_ROWS, FIRST_SYMBOL, PAD, FormParams, SequenceTask

COVERAGE = Paper(
    "The Coverage Principle: A Framework for Understanding Compositional Generalization",
    2025,
    "Chang et al.",
)
GROKKED = Paper(
    "Grokked Transformers are Implicit Reasoners: A Mechanistic Journey to the Edge of "
    "Generalization",
    2024,
    "Wang et al.",
)
#: The random stream the world (tables, graph, attributes, held-out choices) comes from.
WORLD_STREAM = 7


class FactTask(SequenceTask):
    """Shared machinery of tasks over a finite world of facts.

    A subclass builds raw fact rows ``[t0, t1, t2, answer]`` (``t2 = PAD`` for 2-token
    prompts) in :meth:`build` as three pools, ``train``, ``id`` and ``ood``; this class
    samples, batches and scores them (the lengths and hash splits of
    :class:`SequenceTask` do not apply: the splits are explicit sets).
    """

    enumerate_prompts: ClassVar[bool] = False

    def __init__(self, params: BaseModel, seed: int = 0) -> None:
        Task.__init__(self, params, seed)  # the pools replace SequenceTask's sampling
        self.pools = self.build(rng_for(seed, WORLD_STREAM))
        for name in ("train", *self.splits):
            if self.pools[name].shape[0] == 0:
                raise ValueError(f"these parameters leave the '{name}' set empty")

    def build(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Raw fact rows of the ``train``, ``id`` and ``ood`` sets."""
        raise NotImplementedError

    def answer_classes(self) -> int | None:
        """Entities (the answer of a lookup or composition); a subclass with other
        answers overrides this."""
        return self.params.n_entities  # type: ignore[attr-defined]

    def lengths(self, split: str) -> range:
        raise NotImplementedError(f"{type(self).__name__} has explicit fact sets, not lengths")

    def split_sizes(self, split: str) -> range | None:
        return None

    def widths(self, length: int) -> tuple[int, int]:
        return 3, 1  # 3 prompt tokens (the last may be PAD), one answer token

    def all_lengths(self) -> list[int]:
        return [0]  # one size: every fact fits the widths above

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return raw[:, :3], raw[:, 3:4]

    def train_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` training rows, uniform over the training set."""
        pool = self.pools["train"]
        return pool[rng.integers(pool.shape[0], size=n)]

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        return self.fact_batch(self.train_rows(rng, batch_size))

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        pool = self.pools[split]
        rng = rng_for(self.seed, SPLIT_IDS[split])
        pick = np.sort(rng.choice(pool.shape[0], size=min(size, pool.shape[0]), replace=False))
        rows = pool[pick]
        return [
            self.fact_batch(rows[start : start + EVAL_BATCH_ROWS])
            for start in range(0, rows.shape[0], EVAL_BATCH_ROWS)
        ]

    def fact_batch(self, raw: np.ndarray) -> Batch:
        prompt, answer = self.render(raw, 0)
        return self.batch_from_tokens(prompt, answer, None)

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Teacher-forced exact match (answer and ``EOS`` right), token accuracy (the
        answer token) and the ``chance`` and ``majority`` baselines on the same facts."""
        rows = right_rows = tokens_right = tokens_total = 0
        for out, batch in zip(outputs, batches):
            exact, right, total = self.row_exact(out, batch)
            right_rows += int(exact.sum())
            rows += int(exact.numel())
            tokens_right += right
            tokens_total += total
        metrics: dict[str, Any] = {
            "exact_match": right_rows / max(rows, 1),
            "token_accuracy": tokens_right / max(tokens_total, 1),
        }
        baselines = self.trivial_baselines(batches)
        if baselines is not None:
            metrics["baselines"] = baselines
        return metrics


def _facts(*columns: np.ndarray) -> np.ndarray:
    """Stack equal-length columns into raw fact rows ``[N, 4]``."""
    return np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)


def _split(rows: np.ndarray, n_first: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A random split of ``rows`` into ``n_first`` rows and the rest."""
    order = rng.permutation(rows.shape[0])
    return rows[np.sort(order[:n_first])], rows[np.sort(order[n_first:])]


# --------------------------------------------------------------------------- two hop
class TwoHopParams(FormParams):
    """Composition of random lookup tables.

    - ``n_entities``: values the tables map between (>= 2).
    - ``n_functions``: random tables ``f: entity -> entity`` (>= 2).
    - ``held_out_pairs``: share of the ordered function pairs ``(f, g)`` whose
      compositions are never trained (the ``ood`` split), in (0, 1); at least one pair
      is held out and at least one is seen.
    - ``test_fraction``: share of the seen pairs' compositions held out for ``id``, in
      (0, 0.5].
    - ``two_hop_fraction``: share of training rows that are compositions (the rest are
      one-hop facts ``x f -> f(x)``, all of which are trained), in (0, 1].
    - ``form``: the row layout (see :class:`~anyformer.tasks.sequence.FormParams`).
    """

    n_entities: int = Field(32, ge=2)
    n_functions: int = Field(6, ge=2)
    held_out_pairs: float = Field(0.25, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)
    two_hop_fraction: float = Field(0.5, gt=0.0, le=1.0)


@register(
    "task",
    "two_hop",
    paper=COVERAGE,
    summary="x f g -> g(f(x)) over random tables; OOD = never-composed function pairs",
    params=TwoHopParams,
    caps=Capabilities(),
)
class TwoHop(FactTask):
    """Prompt ``x f g``, answer ``g(f(x))``, for random tables ``f, g``; training also
    shows every one-hop fact ``x f -> f(x)``.

    The ordered pairs ``(f, g)`` are split at random into seen and held-out pairs.
    Training compositions use seen pairs only; ``id`` holds the other compositions of
    seen pairs (new ``x`` for a known combination), ``ood`` every composition of a
    held-out pair (a combination never composed in training, though both of its
    one-hop tables are). Tokens: entities ``FIRST_SYMBOL + x``, then functions.
    Paper: Chang et al., "The Coverage Principle: A Framework for Understanding
    Compositional Generalization" (2025), whose two-hop task composes random tables
    (there with two-argument tables; here one-argument ones, chained by name).
    """

    params: TwoHopParams  # type: ignore[assignment]

    @property
    def alphabet(self) -> int:
        return self.params.n_entities + self.params.n_functions

    def build(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = self.params
        n, r = p.n_entities, p.n_functions
        self.tables = rng.integers(n, size=(r, n))
        ent = FIRST_SYMBOL + np.arange(n)
        fun = FIRST_SYMBOL + n + np.arange(r)
        x, f = np.meshgrid(np.arange(n), np.arange(r), indexing="ij")
        x, f = x.ravel(), f.ravel()
        self.one_hop = _facts(ent[x], fun[f], np.full(x.size, PAD), ent[self.tables[f, x]])
        pairs = np.array([(a, b) for a in range(r) for b in range(r)])
        n_held = min(max(1, round(p.held_out_pairs * len(pairs))), len(pairs) - 1)
        held, seen = _split(pairs, n_held, rng)
        self.held_pairs = {tuple(q) for q in held.tolist()}

        def compositions(which: np.ndarray) -> np.ndarray:
            xs = np.repeat(np.arange(n), len(which))
            fs, gs = np.tile(which[:, 0], n), np.tile(which[:, 1], n)
            answer = self.tables[gs, self.tables[fs, xs]]
            return _facts(ent[xs], fun[fs], fun[gs], ent[answer])

        seen_rows = compositions(seen)
        n_test = max(1, round(p.test_fraction * seen_rows.shape[0]))
        test, trained = _split(seen_rows, n_test, rng)
        self.two_hop = trained
        return {
            "train": np.concatenate([self.one_hop, trained]),
            "id": test,
            "ood": compositions(held),
        }

    def train_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        two = rng.random(n) < self.params.two_hop_fraction
        one_rows = self.one_hop[rng.integers(self.one_hop.shape[0], size=n)]
        two_rows = self.two_hop[rng.integers(self.two_hop.shape[0], size=n)]
        return np.where(two[:, None], two_rows, one_rows)


# --------------------------------------------------------------------------- kg reasoning
class KGReasoningParams(FormParams):
    """Implicit reasoning over a random knowledge graph.

    - ``reasoning``: ``composition`` (atomic facts ``h r -> t``; inferred
      ``h r1 r2 -> t`` through the bridge ``b = r1(h)``) or ``comparison`` (atomic facts
      ``e a -> v``, an attribute value; inferred ``e1 a e2 -> <|=|>``).
    - ``n_entities``: entities (>= 4), of which a share ``ood_fraction`` (in (0, 0.5],
      at least 2 entities) are OOD entities.
    - ``n_relations``: relations (composition) or attributes (comparison) (>= 1).
    - ``n_values``: attribute values (comparison) (>= 2).
    - ``inferred_ratio``: inferred training facts per atomic fact (the paper's ratio
      phi), > 0; the ID inferred facts not trained form the ``id`` set, so it must leave
      some.
    - ``form``: the row layout (see :class:`~anyformer.tasks.sequence.FormParams`).
    """

    reasoning: Literal["composition", "comparison"] = "composition"
    n_entities: int = Field(100, ge=4)
    ood_fraction: float = Field(0.1, gt=0.0, le=0.5)
    n_relations: int = Field(8, ge=1)
    n_values: int = Field(10, ge=2)
    inferred_ratio: float = Field(3.6, gt=0.0)

    @field_validator("ood_fraction")
    @classmethod
    def _two_ood(cls, v: float, info: ValidationInfo) -> float:
        n = info.data.get("n_entities")
        if n is not None and round(v * n) < 2:
            raise ValueError(f"ood_fraction={v} leaves fewer than 2 of n_entities={n} OOD")
        return v


@register(
    "task",
    "kg_reasoning",
    paper=GROKKED,
    summary="atomic facts + inferred composition/comparison facts; OOD entities never inferred",
    params=KGReasoningParams,
    caps=Capabilities(),
)
class KGReasoning(FactTask):
    """Atomic facts about random entities and facts inferred from them (grokking setup).

    Entities are split at random into ID and OOD entities (``ood_fraction``). Every
    atomic fact, of both kinds of entity, is trained. Inferred facts:

    - ``composition``: each entity has every relation, ``r(h)`` uniform among entities
      of the same kind (ID heads map to ID entities, OOD to OOD), so the two sub-graphs
      are closed; inferred fact ``h r1 r2 -> r2(r1(h))``.
    - ``comparison``: each entity has a uniform value per attribute; inferred fact
      ``e1 a e2 -> <`` / ``=`` / ``>`` comparing the values of ``e1`` and ``e2 != e1``,
      both of the same kind.

    Training holds ``inferred_ratio`` x (number of atomic facts) ID inferred facts, at
    random; ``id`` = the other ID inferred facts, ``ood`` = inferred facts among OOD
    entities (their atomic facts are trained, no inference about them ever is).
    Tokens: entities, relations/attributes, values (comparison) and ``<``, ``=``, ``>``
    (comparison). Not supported: entities with only some relations, as in the paper.
    Paper: Wang et al., "Grokked Transformers are Implicit Reasoners: A Mechanistic
    Journey to the Edge of Generalization" (2024).
    """

    params: KGReasoningParams  # type: ignore[assignment]

    @property
    def alphabet(self) -> int:
        p = self.params
        if p.reasoning == "composition":
            return p.n_entities + p.n_relations
        return p.n_entities + p.n_relations + p.n_values + 3

    @property
    def less_token(self) -> int:
        """``<``; ``=`` and ``>`` follow it (comparison only)."""
        p = self.params
        return FIRST_SYMBOL + p.n_entities + p.n_relations + p.n_values

    def answer_classes(self) -> int | None:
        """Entities (``composition``) or the three comparisons ``<``, ``=``, ``>``
        (the ``id`` and ``ood`` sets hold inferred facts only)."""
        return self.params.n_entities if self.params.reasoning == "composition" else 3

    def build(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = self.params
        n, r = p.n_entities, p.n_relations
        n_ood = round(p.ood_fraction * n)
        perm = rng.permutation(n)
        self.ood_entities = np.sort(perm[:n_ood])
        self.id_entities = np.sort(perm[n_ood:])
        ent = FIRST_SYMBOL + np.arange(n)
        rel = FIRST_SYMBOL + n + np.arange(r)
        if p.reasoning == "composition":
            self.tails = np.zeros((n, r), dtype=np.int64)
            for group in (self.id_entities, self.ood_entities):
                self.tails[group] = group[rng.integers(group.size, size=(group.size, r))]
            h, a = (m.ravel() for m in np.meshgrid(np.arange(n), np.arange(r), indexing="ij"))
            atomic = _facts(ent[h], rel[a], np.full(h.size, PAD), ent[self.tails[h, a]])

            def inferred(heads: np.ndarray) -> np.ndarray:
                hs, r1, r2 = (
                    m.ravel() for m in np.meshgrid(heads, np.arange(r), np.arange(r), indexing="ij")
                )
                t = self.tails[self.tails[hs, r1], r2]
                return _facts(ent[hs], rel[r1], rel[r2], ent[t])
        else:
            self.values = rng.integers(p.n_values, size=(n, r))
            val = FIRST_SYMBOL + n + r + np.arange(p.n_values)
            e, a = (m.ravel() for m in np.meshgrid(np.arange(n), np.arange(r), indexing="ij"))
            atomic = _facts(ent[e], rel[a], np.full(e.size, PAD), val[self.values[e, a]])

            def inferred(group: np.ndarray) -> np.ndarray:
                e1, a, e2 = (
                    m.ravel() for m in np.meshgrid(group, np.arange(r), group, indexing="ij")
                )
                keep = e1 != e2
                e1, a, e2 = e1[keep], a[keep], e2[keep]
                sign = np.sign(self.values[e1, a] - self.values[e2, a]) + 1  # 0 <, 1 =, 2 >
                return _facts(ent[e1], rel[a], ent[e2], self.less_token + sign)

        id_inferred = inferred(self.id_entities)
        n_train = round(p.inferred_ratio * atomic.shape[0])
        if n_train >= id_inferred.shape[0]:
            raise ValueError(
                f"inferred_ratio={p.inferred_ratio} asks for {n_train} inferred training facts "
                f"but the ID entities have only {id_inferred.shape[0]}; lower inferred_ratio "
                f"or raise n_entities so that some are left for the 'id' split"
            )
        trained, test = _split(id_inferred, n_train, rng)
        self.atomic = atomic
        return {
            "train": np.concatenate([atomic, trained]),
            "id": test,
            "ood": inferred(self.ood_entities),
        }
