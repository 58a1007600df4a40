"""Smoke test of benchmarks/prune_speed.py: a tiny parent is trained and pruned three
ways, each model is timed in inference and training, the pruned models are smaller and
the magnitude-pruned one is not, and the record says where it ran (no timed
assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_speed.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains and prunes four runs (about 10 s on a loaded machine)
def test_quick_run_prunes_times_and_records() -> None:
    record = load_script().main(["--quick", "--no-save"])
    p = record["params"]
    assert p["pruned"] < p["parent"] and p["pruned_recovered"] == p["pruned"]
    assert p["magnitude"] == p["parent"] and record["sparsity"]["magnitude"] > 0.3
    for mode in ("inference", "training"):
        assert all(v > 0 for v in record["speed"][mode]["tokens_per_s"].values())
        assert "ratio_pruned_vs_parent" in record["speed"][mode]
    assert set(record["quality"]["parent"]) == {"id", "ood"}
    assert record["versions"]["torch"].startswith("2.")
