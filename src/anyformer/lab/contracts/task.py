"""Contract checks of the ``task`` slot, kept light (the task tests go deeper): batches
depend only on the seed and the step, every split has a fixed evaluation set within
the declared length, and scoring a toy model gives finite metrics and baselines."""

from __future__ import annotations

import math
from typing import Any

import torch

from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.registry import Entry
from anyformer.tasks.base import Batch, Task

SLOT = "task"
ROWS, EVAL = 4, 8


def _task(entry: Entry, seed: int = 0) -> Task:
    return entry.build(entry.make_params(), seed=seed)


def _same(a: Batch, b: Batch) -> bool:
    pairs = [(a.inputs, b.inputs), (a.targets, b.targets), (a.loss_mask, b.loss_mask)]
    if (a.padding_mask is None) != (b.padding_mask is None):
        return False
    if a.padding_mask is not None:
        pairs.append((a.padding_mask, b.padding_mask))  # type: ignore[arg-type]
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


def toy_setup(task_name: str, objective: str | None = None) -> tuple[Any, Task, Any, Any]:
    """``(spec, task, model, objective)`` of a resolved toy experiment on ``task_name``
    (1 block, d_model 16), the objective the task's default unless named."""
    from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
    from anyformer.spec import ExperimentSpec

    data: dict[str, Any] = {
        "name": "contract-check",
        "task": task_name,
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
        "train": {"progress": False, "device": "cpu"},
    }
    if objective is not None:
        data["objective"] = objective
    spec = resolve(ExperimentSpec.from_dict(data))
    task = build_task(spec)
    return spec, task, prepare_model(spec), build_objective(spec, task)


def non_finite(metrics: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the NaN or infinite numbers in a nested metrics dict."""
    bad = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            bad += non_finite(value, f"{prefix}{key}.")
    elif isinstance(metrics, (list, tuple)):
        for i, value in enumerate(metrics):
            bad += non_finite(value, f"{prefix}{i}.")
    elif isinstance(metrics, float) and not math.isfinite(metrics):
        bad.append(prefix.rstrip("."))
    return bad


@contract_check(SLOT, "deterministic")
def deterministic(entry: Entry) -> None:
    """training batches depend only on (seed, step): not on call order or the instance"""
    first, second = _task(entry), _task(entry)
    late = first.train_batch(3, ROWS)
    first.train_batch(0, ROWS)
    second.train_batch(7, ROWS)
    if not _same(late, second.train_batch(3, ROWS)):
        raise CheckFailure("the batch of step 3 depends on what was drawn before it")
    if not _same(late, first.train_batch(3, ROWS)):
        raise CheckFailure("the batch of step 3 differs when drawn again")
    if _same(late, first.train_batch(4, ROWS)):
        raise CheckFailure("steps 3 and 4 draw the same batch")
    if _same(late, _task(entry, seed=1).train_batch(3, ROWS)):
        raise CheckFailure("seeds 0 and 1 draw the same batch at step 3")


@contract_check(SLOT, "eval_sets")
def eval_sets(entry: Entry) -> None:
    """every split has a fixed, non-empty evaluation set no longer than max_seq_len()"""
    first, second = _task(entry), _task(entry)
    longest = first.max_seq_len()
    if first.train_batch(0, ROWS).inputs.shape[1] > longest:
        raise CheckFailure(f"a training batch is longer than max_seq_len()={longest}")
    for split in first.splits:
        batches = first.make_eval_set(split, EVAL)
        if not batches:
            raise CheckFailure(f"split '{split}' has an empty evaluation set")
        again = second.make_eval_set(split, EVAL)
        if len(again) != len(batches) or not all(map(_same, batches, again)):
            raise CheckFailure(f"split '{split}' is not the same set in two instances")
        over = max(b.inputs.shape[1] for b in batches)
        if over > longest:
            raise CheckFailure(f"split '{split}' has rows of {over} > max_seq_len()={longest}")


@contract_check(SLOT, "scores")
def scores(entry: Entry) -> None:
    """a toy model's metrics, baselines and loss on every split are finite"""
    _, task, model, objective = toy_setup(entry.name)
    model.eval()

    def predict(batch: Batch) -> torch.Tensor:
        return model(batch.inputs, padding_mask=batch.padding_mask)

    for split in task.splits:
        metrics = task.evaluate(predict, split, EVAL, objective)
        if not metrics:
            raise CheckFailure(f"split '{split}' scored no metric")
        bad = non_finite(metrics)
        if bad:
            raise CheckFailure(f"split '{split}': non-finite {', '.join(bad[:5])}")
        headline = getattr(task, "headline", None)
        if not headline:
            raise CheckFailure("it names no headline metric (class attribute headline)")
        if headline not in metrics:
            raise CheckFailure(f"split '{split}' lacks the headline metric '{headline}'")
