"""The supervised example tasks with their default objective: a registered objective
that is 0 (or nearly) on exact outputs and larger on wrong ones, for every output
layout (class logits, a value, joint tokens, a dense image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.tasks.base import Task
from anyformer.tasks.supervised import eval_order

CASES = [
    ("digits", {}),
    ("mnist1d", {}),
    ("shapes", {"size": 8, "max_objects": 2, "ood_min_objects": 3, "ood_max_objects": 3}),
    ("shapes", {"size": 8, "max_objects": 2, "ood_min_objects": 3, "ood_max_objects": 3,
                "output": "count", "count_as": "regress"}),
    ("super_resolution", {}),
    ("pose_lifting", {"frames": 2}),
    ("table", {}),
    ("table", {"dataset": "diabetes"}),
    ("image_folder", {"size": 8}),
]  # fmt: skip


def exact_outputs(task: Task, targets: torch.Tensor) -> torch.Tensor:
    io = task.model_io()
    if io["head"] == "classify":
        return 50.0 * torch.nn.functional.one_hot(targets, io["n_outputs"]).float()
    if io["head"] == "regress":
        return targets[:, None].float()
    return targets.float()


@pytest.mark.parametrize(
    ("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_the_default_objective_scores_exact_outputs_best(
    name: str, params: dict[str, Any], image_tree: Path
) -> None:
    if name == "image_folder":
        params = {**params, "path": str(image_tree)}
    entry = registry.get("task", name)
    task = entry.build(entry.make_params(params), 0)
    objective = registry.get("objective", task.default_objective).build()
    batch = task.train_batch(0, 8)
    exact = exact_outputs(task, batch.targets)
    assert float(objective.loss(exact, batch)) < 1e-6
    if task.model_io()["head"] == "classify":
        wrong = exact_outputs(task, (batch.targets + 1) % task.model_io()["n_outputs"])
    else:
        wrong = exact + 0.5
    assert float(objective.loss(wrong, batch)) > 0.2


def test_evaluation_orders_are_fixed_by_seed_and_split() -> None:
    a = eval_order(0, "id", 100, 30)
    assert np.array_equal(a, eval_order(0, "id", 100, 30)) and len(set(a.tolist())) == 30
    assert not np.array_equal(a, eval_order(1, "id", 100, 30))
    assert not np.array_equal(a, eval_order(0, "ood", 100, 30))
    assert np.array_equal(eval_order(0, "id", 100, 10), a[:10])  # a smaller set is a prefix
    assert sorted(eval_order(0, "id", 5, 30).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="eval size=0 must be >= 1"):
        eval_order(0, "id", 5, 0)


@pytest.mark.parametrize(
    ("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_parameters_survive_being_written_out_in_full(
    name: str, params: dict[str, Any], image_tree: Path
) -> None:
    """A resolved spec writes every parameter out, defaults included: they must validate
    again (a parameter that applies only in another mode is compared with its default)."""
    if name == "image_folder":
        params = {**params, "path": str(image_tree)}
    entry = registry.get("task", name)
    made = entry.make_params(params)
    assert entry.make_params(made.model_dump()) == made


@pytest.mark.parametrize(
    ("task", "input_dim", "head", "n_outputs", "objective"),
    [({"name": "mnist1d"}, 1, "classify", 10, "causal_lm"),
     ({"name": "pose_lifting", "frames": 2}, 2, "token_regress", 3, "mse")],
)  # fmt: skip
def test_vector_tasks_resolve_into_a_model_spec(
    task: dict[str, Any], input_dim: int, head: str, n_outputs: int, objective: str
) -> None:
    from anyformer.lab.run import resolve
    from anyformer.spec import ExperimentSpec

    model = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 64}
    spec = resolve(ExperimentSpec.from_dict({"name": "t", "model": model, "task": task}))
    assert spec.model.embed == "vectors" and spec.model.head.name == head
    assert (spec.model.input_dim, spec.model.n_outputs) == (input_dim, n_outputs)
    assert spec.objective.name == objective
