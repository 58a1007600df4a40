"""``train.eval_splits``: which splits are evaluated, including a sample of the training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.training.trainer import Trainer

SPEC = {
    "name": "splits",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16},
    "task": {"name": "copy", "min_len": 2, "max_len": 3, "ood_min_len": 4, "ood_max_len": 5},
    "train": {"steps": 4, "batch_size": 4, "eval_size": 10, "eval_every": 2,
              "checkpoint_every": 4, "warmup_steps": 0, "log_every": 2, "threads": 1,
              "progress": False, "eval_splits": ["id", "train"]},
}  # fmt: skip


def trainer(spec: ExperimentSpec, run_dir: Path | None = None) -> Trainer:
    spec = resolve(spec)
    task = build_task(spec)
    return Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, run_dir)


def test_the_train_split_scores_the_first_training_batches(tmp_path: Path) -> None:
    t = trainer(ExperimentSpec.from_dict(SPEC), tmp_path)
    result = t.fit()
    assert set(result.final) == {"id", "train"}  # ood not asked for
    # by hand: ceil(10 / 4) = 3 training batches of steps 0, 1, 2, exactly as trained
    batches = [t.task.train_batch(i, 4) for i in range(3)]
    t.model.eval()
    with torch.no_grad():
        outs = [t.model(b.inputs, padding_mask=b.padding_mask) for b in batches]
        want = t.task.score(outs, batches)
        n = [int(b.loss_mask.sum()) for b in batches]
        loss = sum(float(t.objective(o, b)) * k for o, b, k in zip(outs, batches, n)) / sum(n)
    got = result.final["train"]
    assert got["exact_match"] == want["exact_match"]
    assert got["token_accuracy"] == want["token_accuracy"]
    assert got["loss"] == pytest.approx(loss, rel=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r.get("split") == "train"] == [2, 4]
    assert not any(r.get("split") == "ood" for r in lines)


def test_default_is_the_tasks_splits() -> None:
    data = json.loads(json.dumps(SPEC))
    del data["train"]["eval_splits"]
    assert trainer(ExperimentSpec.from_dict(data)).eval_splits == ("id", "ood")


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        (["id", "test"], "train.eval_splits: 'test' is not a split of task 'Copy' "
                         "(valid: id, ood, train)"),
        (["id", "id"], "names a split twice"),
        ([], "train.eval_splits is empty"),
    ],
)  # fmt: skip
def test_bad_splits_are_refused_with_the_valid_ones(splits: list[str], message: str) -> None:
    data = json.loads(json.dumps(SPEC))
    data["train"]["eval_splits"] = splits
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer(ExperimentSpec.from_dict(data))


def test_the_cli_refuses_a_bad_split_before_making_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps(SPEC))
    code = main(["run", str(spec), "train.eval_splits=[id,holdout]", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "'holdout' is not a split of task 'copy' (valid: id, ood, train)" in " ".join(
        capsys.readouterr().err.split()
    )
    assert not (tmp_path / "r").exists()


def test_a_finished_run_can_be_resumed_to_follow_the_train_split(tmp_path: Path) -> None:
    from anyformer.lab.run import resume_run, run_experiment

    data = json.loads(json.dumps(SPEC))
    del data["train"]["eval_splits"]
    run = run_experiment(ExperimentSpec.from_dict(data), out=tmp_path)
    assert set(run.metrics) == {"id", "ood"}
    more = resume_run(run.dir, ["train.steps=6", "train.eval_splits=[id,train]"])
    assert set(more.metrics) == {"id", "train"} and more.result.step == 6
