"""Contract checks of the ``task`` slot: the task contract of :mod:`anyformer.tasks.contract`
(deterministic batches, fixed evaluation sets, declared lengths, held-out splits,
baselines on the same prompts), one check each, run with the task's default parameters;
and a toy model's metrics, baselines and loss on every split are finite."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from anyformer import registry
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.registry import Entry
from anyformer.tasks.base import Batch, Task
from anyformer.tasks.contract import CHECKS as TASK_CHECKS
from anyformer.tasks.contract import CheckResult, check_task
from anyformer.tasks.packing import model_inputs

SLOT = "task"
EVAL = 8


def toy_setup(
    task_name: str,
    objective: str | None = None,
    model: dict[str, Any] | None = None,
    task_params: dict[str, Any] | None = None,
) -> tuple[Any, Task, Any, Any]:
    """``(spec, task, model, objective)`` of a resolved toy experiment on ``task_name``
    (with ``task_params``; 1 block, d_model 16, and the fields in ``model``), the
    objective the task's default unless named."""
    from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
    from anyformer.spec import ExperimentSpec

    data: dict[str, Any] = {
        "name": "contract-check",
        "task": {"name": task_name, **(task_params or {})},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, **(model or {})},
        "train": {"progress": False, "device": "cpu"},
    }
    if objective is not None:
        data["objective"] = objective
    if "kind" not in data["model"]:  # a task that needs a model kind (code_search: encoder)
        entry = registry.get("task", task_name)
        kind = entry.cls(entry.make_params(task_params or {}), 0).model_io().get("kind")
        if kind is not None:
            data["model"]["kind"] = kind
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


@functools.lru_cache(maxsize=2)
def _task_contract(entry: Entry) -> dict[str, CheckResult]:
    """The task contract's results on ``entry`` with its default parameters, computed once
    for the consecutive checks of one task."""
    return {r.name: r for r in check_task(entry.cls, entry.make_params())}


def _wrap(name: str) -> None:
    def run(entry: Entry) -> None:
        result = _task_contract(entry)[name]
        if result.skipped:
            raise NotApplicable(result.reason)
        if not result.passed:
            raise CheckFailure(result.reason)

    run.__doc__ = _DOCS.get(name, name)
    contract_check(SLOT, name)(run)


#: One line per check of :mod:`anyformer.tasks.contract` (its docstring says more).
_DOCS = {
    "train_deterministic": "a training batch depends only on (seed, step)",
    "train_varies": "another step or another seed gives another batch",
    "eval_fixed": "evaluation sets are the same in every instance",
    "fits_max_seq_len": "no batch is longer than max_seq_len()",
    "declared_sizes": "batch groups are the split's declared sizes; ood sizes exceed training",
    "held_out": "no evaluation row occurs in training, none in both id and ood",
    "baselines_ignore_model": "reported baselines do not depend on the model's outputs",
    "baselines_same_prompts": "a baseline replayed as the model scores what the task reports",
}
for _name in TASK_CHECKS:
    _wrap(_name)


@contract_check(SLOT, "scores")
def scores(entry: Entry) -> None:
    """a toy model's metrics, baselines and loss on every split are finite"""
    _, task, model, objective = toy_setup(entry.name)
    model.eval()

    def predict(batch: Batch) -> torch.Tensor:
        return model(batch.inputs, **model_inputs(batch))

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
