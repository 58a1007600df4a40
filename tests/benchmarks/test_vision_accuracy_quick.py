"""Smoke test of benchmarks/vision_accuracy.py: the record of a quick run holds the
machine, versions, per-seed accuracies with their baselines and wall times, and the gate
(no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vision_accuracy.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vision_accuracy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_records_seeds_baselines_and_machine() -> None:
    record = load_script().main(["--quick", "--threads", "1"])
    assert record["experiment"] == "vision_quickstart" and record["quick"] is True
    assert record["machine"]["threads"] == 1 and record["machine"]["cpus"] >= 1
    assert {"python", "torch", "scikit-learn"} <= set(record["versions"])
    assert record["seeds"] == len(record["runs"]) == 1
    (run,) = record["runs"]
    assert run["seed"] == 0 and run["steps"] == 20 and run["wall_s"] > 0
    for split in ("id", "ood"):
        assert 0.0 <= run["accuracy"][split] <= 1.0
        assert set(run["baselines"][split]) == {"logreg", "svc", "majority"}
        assert record["mean_accuracy"][split] == run["accuracy"][split]
    # the baselines are fitted on the same images at every seed: logreg is far above chance
    assert record["mean_baselines"]["id"]["logreg"] > 0.9
    assert record["gate"] == {"accuracy": 0.97, "budget_s": 180.0}
    assert record["passed"] is (run["accuracy"]["id"] >= 0.97 and run["wall_s"] <= 180.0)
