"""Every metrics line carries its wall-clock time; ``train.tensorboard`` mirrors the lines
as TensorBoard scalars (issue: metrics viewable in the de facto viewer)."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path
from typing import Any

import pytest

from anyformer.errors import SpecError
from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.spec import ExperimentSpec, spec_hash
from anyformer.training.tensorboard import flatten
from anyformer.training.trainer import Trainer


def tiny(**train: Any) -> ExperimentSpec:
    data = {
        "name": "tb",
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 32},
        "task": {"name": "copy", "min_len": 2, "max_len": 4, "ood_min_len": 5, "ood_max_len": 6},
        "train": {
            "steps": 6, "batch_size": 4, "eval_every": 3, "eval_size": 4, "checkpoint_every": 6,
            "log_every": 1, "progress": False, "warmup_steps": 2, **train,
        },
    }  # fmt: skip
    return resolve(ExperimentSpec.from_dict(data))


def fit(spec: ExperimentSpec, folder: Path) -> list[dict[str, Any]]:
    task = build_task(spec)
    Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, folder).fit()
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_every_metrics_line_has_a_wall_clock_time(tmp_path: Path) -> None:
    before = time.time()
    lines = fit(tiny(), tmp_path)
    assert lines and all(before - 1 <= line["time"] <= time.time() + 1 for line in lines)
    times = [line["time"] for line in lines]
    assert times == sorted(times)


def test_tensorboard_holds_every_number_of_every_line(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    lines = fit(tiny(tensorboard=True), tmp_path)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for line in lines:
        split = line.get("split", "train")
        rest = {k: v for k, v in line.items() if k not in ("step", "time", "split")}
        for name, value in flatten(rest).items():
            tag = f"{split}/{name}"
            assert tag in tags, tag
            events = {e.step: e for e in acc.Scalars(tag)}
            assert events[line["step"]].value == pytest.approx(value, rel=1e-6)
            assert events[line["step"]].wall_time == pytest.approx(line["time"], abs=1e-3)
    assert "train/loss" in tags and "id/exact_match" in tags


def test_the_flag_changes_no_result_and_no_run_folder_name() -> None:
    assert spec_hash(tiny(tensorboard=True)) == spec_hash(tiny())


def test_without_the_package_the_flag_is_refused_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SpecError, match=r"train.tensorboard=true needs the tensorboard package"):
        fit(tiny(tensorboard=True), tmp_path)


def test_flatten_keeps_finite_numbers_with_dotted_names() -> None:
    record = {"a": 1, "b": {"c": 2.5, "d": float("nan"), "e": "x"}, "f": True}
    assert flatten(record) == {"a": 1.0, "b.c": 2.5}
