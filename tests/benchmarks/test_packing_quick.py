"""Smoke test of benchmarks/packing.py: the batch is skewed (padding >= 50%), packing
uses fewer rows, packed and padded losses agree, and quick mode fills its record. No
timings are asserted (DESIGN.md: no timed assertions in unit tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "packing.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("packing_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_packs_a_skewed_batch(tmp_path: Path) -> None:
    record = load_script().main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert record["padding_ratio"] >= 0.5
    assert set(record["results"]) == {"decoder", "encoder"}
    for res in record["results"].values():
        assert res["rows"]["packed"][0] < res["rows"]["padded"][0]
        first = res["first_loss"]
        assert abs(first["packed"] - first["padded"]) < 1e-4
        assert all(v > 0 for v in res["real_tokens_per_s"].values())
    assert not list(tmp_path.iterdir())  # quick mode writes nothing
