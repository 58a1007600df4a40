"""Behaviour of multi-query associative recall (mqar): data, answers, masks, splits, scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import recall
from anyformer.tasks.base import Batch


def make(seed: int = 0, **params: object) -> recall.MQAR:
    return recall.MQAR(recall.MQARParams(**params), seed)


def rows_of(batch: Batch) -> list[list[int]]:
    return torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1).tolist()


def parse(task: recall.MQAR, row: list[int], pairs: int) -> tuple[dict[int, int], list[int]]:
    """The key -> value table of a row and the positions of its queries (checked layout)."""
    first_value = task.first_value
    assert row[0] == recall.BOS and row[2 * pairs + 1] == recall.SEP
    keys, values = row[1 : 2 * pairs + 1 : 2], row[2 : 2 * pairs + 2 : 2]
    assert all(recall.FIRST_KEY <= k < first_value for k in keys)
    assert all(first_value <= v < task.vocab_size for v in values)
    assert len(set(keys)) == pairs  # keys distinct within a sequence
    queries = [
        t for t in range(2 * pairs + 2, len(row)) if recall.FIRST_KEY <= row[t] < first_value
    ]
    return dict(zip(keys, values)), queries


def test_registered() -> None:
    entry = registry.get("task", "mqar")
    assert entry.cls is recall.MQAR and entry.paper.year == 2023
    assert entry.paper.title.startswith("Zoology")
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == (
        "causal_lm",
        "accuracy",
        True,
    )
    task = make(n_keys=40, n_values=20, ood_max_pairs=30)
    assert task.model_io() == {"embed": "tokens", "vocab_size": 4 + 40 + 20}


def test_deterministic_by_seed_and_step() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    b.train_batch(50, 8)  # drawing other steps first changes nothing
    for step in range(3):
        x, y = a.train_batch(step, 16), b.train_batch(step, 16)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.loss_mask, y.loss_mask)
        assert x.group == y.group
    assert not torch.equal(a.train_batch(0, 16).inputs, c.train_batch(0, 16).inputs)
    assert not torch.equal(a.train_batch(0, 16).inputs, a.train_batch(1, 16).inputs)
    assert torch.equal(make(seed=3).eval_set("id", 64)[0].inputs, a.eval_set("id", 64)[0].inputs)


@pytest.mark.parametrize("seq_len", [None, 60])
def test_answers_are_the_paired_values_and_the_mask_is_exactly_on_them(seq_len) -> None:
    task = make(
        n_keys=24,
        n_values=8,
        min_pairs=3,
        max_pairs=6,
        ood_min_pairs=7,
        ood_max_pairs=20,
        n_queries=3,
        seq_len=seq_len,
    )
    seen_gap = False
    for batch in [task.train_batch(s, 32) for s in range(6)] + task.eval_set("ood", 64):
        pairs = batch.group
        assert batch.inputs.shape[1] == (seq_len or 2 * pairs + 2 * 3 + 1)
        for i, row in enumerate(rows_of(batch)):
            table, queries = parse(task, row, pairs)
            assert len(queries) == 3 and len({row[t] for t in queries}) == 3
            mask_at = batch.loss_mask[i].nonzero().flatten().tolist()
            assert mask_at == queries  # the loss counts exactly the answers to the queries
            for t in queries:
                assert batch.targets[i, t] == table[row[t]]  # the answer is the paired value
            others = set(range(2 * pairs + 2, len(row))) - set(queries) - {t + 1 for t in queries}
            assert all(row[t] == recall.FILL for t in others)
            seen_gap |= bool(others) and min(queries) > 2 * pairs + 2
    assert seen_gap == (seq_len is not None)


def test_splits_pair_counts_and_held_out_sequences() -> None:
    task = make(
        n_keys=8,
        n_values=2,
        min_pairs=2,
        max_pairs=3,
        ood_min_pairs=4,
        ood_max_pairs=5,
        n_queries=2,
        test_fraction=0.2,
    )
    id_set, ood_set = task.eval_set("id", 400), task.eval_set("ood", 100)
    assert {b.group for b in id_set} == {2, 3} and {b.group for b in ood_set} == {4, 5}
    held_out = {tuple(r) for b in id_set for r in rows_of(b)}
    assert len(held_out) == sum(b.inputs.shape[0] for b in id_set)  # no duplicates
    trained = {tuple(r) for s in range(200) for r in rows_of(task.train_batch(s, 32))}
    assert held_out and not held_out & trained  # a small space, yet disjoint
    assert {task.train_batch(s, 4).group for s in range(40)} == {2, 3}
    assert task.max_seq_len() == 2 * 5 + 2 * 2 + 1
    assert make(seq_len=99).max_seq_len() == 99


def perfect_logits(task: recall.MQAR, batch: Batch) -> torch.Tensor:
    return torch.nn.functional.one_hot(batch.targets, task.vocab_size).float()


def test_perfect_predictor_scores_one_and_errors_are_counted_per_query() -> None:
    task = make(min_pairs=4, max_pairs=6, ood_min_pairs=7, ood_max_pairs=8)
    batches = task.eval_set("id", 60)
    perfect = task.score([perfect_logits(task, b) for b in batches], batches)
    assert perfect["accuracy"] == 1.0 and perfect["exact_match"] == 1.0
    assert perfect["by_pairs"] == {"4": 1.0, "5": 1.0, "6": 1.0}
    assert perfect["curve"]["series"]["model"] == perfect["by_pairs"]
    rows = {str(k): sum(int(b.inputs.shape[0]) for b in batches if b.group == k) for k in (4, 5, 6)}
    assert perfect["curve"]["n"] == rows  # examples per point
    assert perfect["chance"] == 1 / 64
    # break the first query of every row of the 4-pair batch: 1 of its 4 queries is wrong
    outs = []
    for b in batches:
        pred = b.targets.clone()
        if b.group == 4:
            first = b.loss_mask.float().argmax(dim=1)
            pred[torch.arange(len(pred)), first] = recall.FILL
        outs.append(pred)
    wrong = task.score(outs, batches)
    assert wrong["by_pairs"]["4"] == 0.75 and wrong["exact_match_by_pairs"]["4"] == 0.0
    assert wrong["by_pairs"]["5"] == 1.0
    # wrong predictions off the loss mask do not count
    noisy = [torch.where(b.loss_mask, b.targets, torch.zeros_like(b.targets)) for b in batches]
    assert task.score(noisy, batches)["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_pairs": 5, "max_pairs": 4}, "max_pairs=4"),
        ({"max_pairs": 16, "ood_min_pairs": 16}, "ood_min_pairs=16"),
        ({"n_keys": 20, "ood_max_pairs": 32}, "ood_max_pairs=32"),
        ({"min_pairs": 2, "n_queries": 3}, "n_queries=3"),
        ({"seq_len": 70}, "seq_len=70"),
        ({"n_values": 1}, "n_values"),
    ],
)
def test_bad_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        recall.MQARParams(**params)
    entry = registry.get("task", "mqar")
    with pytest.raises(SpecError, match=field.split("=")[0]):
        entry.make_params(params)


def test_minimal_length_and_seq_len_bound_agree() -> None:
    p = recall.MQARParams(seq_len=2 * 32 + 2 * 4 + 1)
    task = recall.MQAR(p)
    batch = task.eval_set("ood", 16)[-1]
    assert batch.group == 32 and batch.inputs.shape[1] == p.seq_len
    assert np.all(batch.loss_mask.sum(1).numpy() == 4)
