"""Split-conformal intervals in runs: every evaluation of a model with a regression head
reports ``conformal.{level, coverage, width, n_calibration}`` per split, calibrated on
the training batches past ``train.steps``; the CLI table and report.md show them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import anyformer
from anyformer.errors import SpecError
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.conformal import absolute
from anyformer.training.conformal import calibration_steps, counted, report

POSE = {
    "name": "conformal-pose",
    "model": {
        "kind": "encoder",
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 4,
        "position": "learned",
        "max_len": 16,
    },  # fmt: skip
    "task": {"name": "pose_lifting"},
    "train": {
        "steps": 150,
        "batch_size": 32,
        "lr": 3e-3,
        "warmup_steps": 20,
        "eval_every": 150,
        "checkpoint_every": 150,
        "eval_size": 256,
        "threads": 1,
        "progress": False,
    },  # fmt: skip
}


def with_train(data: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {**data, "train": {**data["train"], **train}}


def test_pose_lifting_id_coverage_is_near_the_level_and_reported(tmp_path: Path) -> None:
    run = anyformer.train(ExperimentSpec.from_dict(POSE), out=str(tmp_path))
    id_, ood = run.metrics["id"]["conformal"], run.metrics["ood"]["conformal"]
    # calibration: the 8 training batches past step 150, 32 poses x 16 joints x 3 coordinates
    assert id_["n_calibration"] == ood["n_calibration"] == 8 * 32 * 16 * 3 == 12288
    assert id_["level"] == 0.9
    # id: 256 fresh poses (12,288 coordinates, correlated within a pose)
    assert abs(id_["coverage"] - 0.9) <= 0.05, id_
    assert id_["width"] > 0 and id_["width"] == pytest.approx(ood["width"])  # one q for all
    lines = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]
    logged = {x["split"]: x["conformal"] for x in lines if "split" in x}
    assert logged["id"] == id_
    text = (run.dir / "report.md").read_text()
    assert "conformal.coverage" in text and "conformal.width" in text
    assert f"| id | {run.metrics['id']['mpjpe']:.4g} | {id_['coverage']:.4g} |" in text
    assert "level 0.9, calibrated on 12288 targets" in text


def test_the_intervals_are_those_of_head_report_on_the_calibration_batches() -> None:
    """The trainer's numbers equal conformal.absolute calibrated by hand on the outputs
    for the batches of steps train.steps .. train.steps + k - 1."""
    from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
    from anyformer.training.trainer import Trainer

    spec = resolve(ExperimentSpec.from_dict(with_train(POSE, steps=5, eval_size=40,
                                                       conformal_level=0.8)))  # fmt: skip
    task = build_task(spec)
    trainer = Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train)
    metrics = trainer.fit().final
    assert list(calibration_steps(5, 40, 32)) == [5, 6]
    model = trainer.model.eval()
    with torch.no_grad():
        cal = [task.train_batch(s, 32) for s in (5, 6)]
        mu = torch.cat([model(b.inputs) for b in cal]).numpy()
        y = torch.cat([b.targets for b in cal]).numpy()
        rule = absolute(mu, y, 0.8)
        test = task.eval_set("id", 40)
        got = rule.evaluate(
            torch.cat([b.targets for b in test]).numpy(),
            torch.cat([model(b.inputs) for b in test]).numpy(),
        )
    assert metrics["id"]["conformal"]["level"] == 0.8
    assert metrics["id"]["conformal"]["coverage"] == pytest.approx(got["coverage"])
    assert metrics["id"]["conformal"]["width"] == pytest.approx(got["width"], rel=1e-5)


def test_counted_keeps_only_the_loss_mask_positions_of_per_token_outputs() -> None:
    out = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # token_gaussian
    targets = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    o, y = counted(out, Batch(inputs=torch.zeros(2, 3), targets=targets, loss_mask=mask))
    assert o.shape == (3, 2) and y.shape == (3,)
    np.testing.assert_array_equal(o[:, 0], [0, 4, 10])
    pooled = torch.tensor([[1.0], [2.0]])  # regress, one target per row
    o, y = counted(pooled, Batch(torch.zeros(2, 1), torch.tensor([1.5, 2.5]),
                                 torch.ones(2, dtype=torch.bool)))  # fmt: skip
    assert o.shape == (2, 1)
    rep = report("regress", [(pooled, Batch(torch.zeros(2, 1), torch.tensor([1.5, 2.5]),
                                            torch.ones(2, dtype=torch.bool)))],
                 {"id": [(pooled, Batch(torch.zeros(2, 1), torch.tensor([1.0, 3.0]),
                                        torch.ones(2, dtype=torch.bool)))]}, 0.5)  # fmt: skip
    # scores |y - mu| = 0.5, 0.5; rank ceil(3 * 0.5) = 2 -> q = 0.5; id residuals 0, 1
    assert rep["id"] == {"level": 0.5, "coverage": 0.5, "width": 1.0, "n_calibration": 2}


def test_classification_runs_report_no_intervals() -> None:
    from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
    from anyformer.training.trainer import Trainer

    spec = resolve(ExperimentSpec.from_dict({
        "name": "c", "task": {"name": "table", "dataset": "iris"},
        "model": {"kind": "encoder", "embedder": "features", "position": "none",
                  "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8, "pool": "first"},
        "train": {"steps": 2, "eval_size": 16, "threads": 1, "progress": False},
    }))  # fmt: skip
    task = build_task(spec)
    final = Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train).fit()
    assert "conformal" not in final.final["id"]


def test_the_level_counts_in_the_hash_only_when_it_differs_from_the_default() -> None:
    base = ExperimentSpec.from_dict(POSE)
    assert ExperimentSpec.from_dict(with_train(POSE, conformal_level=0.9)).hash == base.hash
    assert ExperimentSpec.from_dict(with_train(POSE, conformal_level=0.8)).hash != base.hash


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5])
def test_a_level_outside_zero_one_is_refused(level: float) -> None:
    with pytest.raises(SpecError, match="conformal_level"):
        ExperimentSpec.from_dict(with_train(POSE, conformal_level=level))
