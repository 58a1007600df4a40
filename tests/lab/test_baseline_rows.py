"""The CLI results table and report.md show each split's baselines (their headline
metric) beside the model; ``compare`` takes the headline from the task instance (table
and shapes choose it from their parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyformer.cli import main
from anyformer.lab import compare as cmp
from anyformer.lab.report import baseline_rows
from anyformer.spec import ExperimentSpec

TABLE = [
    "model.kind=encoder", "model.embedder=features", "model.position=none",
    "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.max_len=16",
    "model.pool=first", "task.dataset=iris", "train.steps=3", "train.eval_size=32",
    "train.eval_every=3", "train.checkpoint_every=3", "train.threads=1",
]  # fmt: skip


def spec_file(tmp_path: Path, task: str = "table") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: tab\ntask: {task}\n")
    return path


def test_baseline_rows_hold_the_headline_of_each_baseline_with_one() -> None:
    metrics = {
        "accuracy": 0.5,
        "baselines": {
            "logreg": {"accuracy": 0.9},
            "majority": {"accuracy": 0.1},
            "odd": {"mse": 1.0},
        },  # fmt: skip
    }
    assert baseline_rows(metrics, "id", "accuracy") == [
        ("id · logreg baseline", {"accuracy": 0.9}),
        ("id · majority baseline", {"accuracy": 0.1}),
    ]
    assert baseline_rows({"accuracy": 0.5}, "id", "accuracy") == []


def test_run_table_and_report_show_each_splits_baselines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["run", str(spec_file(tmp_path)), *TABLE, "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0
    (folder,) = (tmp_path / "runs").iterdir()
    final = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    metrics = {x["split"]: x for x in final if "split" in x}
    for split in ("id", "ood"):
        for name, m in metrics[split]["baselines"].items():
            assert f"{name} baseline" in out
            line = f"| {split} · {name} baseline | {m['accuracy']:.4g} |"
            assert line in (folder / "report.md").read_text()
    lines = out.splitlines()
    ood = next(i for i, x in enumerate(lines) if "out-of-distribution" in x)
    assert "majority baseline" in lines[ood + 1] or "linear baseline" in lines[ood + 1]


def test_compare_reads_the_headline_of_the_task_instance(tmp_path: Path) -> None:
    """diabetes is a regression table: its headline is rmse, lower is better (the task
    class says accuracy)."""
    base = ExperimentSpec.from_dict({
        "name": "cmp-diabetes", "task": {"name": "table", "dataset": "diabetes"},
        "model": {"kind": "encoder", "embedder": "features", "position": "none",
                  "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16, "pool": "first"},
        "train": {"steps": 2, "eval_size": 16, "eval_every": 2, "checkpoint_every": 2,
                  "threads": 1},
    })  # fmt: skip
    result = cmp.compare(base, [("model.n_layers", ["1", "2"])], tmp_path, timing=None)
    assert result.headline == "rmse" and result.higher_is_better is False
    assert result.summary["n_layers=1"]["id"]["rmse"]["n"] == 1


def test_vision_quickstart_prints_its_table_beside_the_baselines_and_writes_plots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    small = ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
             "train.eval_size=32", "train.threads=1"]  # fmt: skip
    code = main(["run", "vision_quickstart", *small, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "in-distribution (id)" in out and "out-of-distribution (ood)" in out
    for name in ("logreg", "svc", "majority"):
        assert out.count(f"{name} baseline") == 2  # under id and under ood
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("vision_quickstart-")
    assert (folder / "plots" / "loss.png").exists()
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert spec.task.name == "digits" and spec.model.embedder_ref.name == "patches"
