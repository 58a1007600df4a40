"""Smoke test of benchmarks/onnx_inference.py: quick mode exports a tiny model, checks it
against eager and fills the record with both timings and their ratio (no timed
assertions; nothing is written)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_inference.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("onnx_inference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_checks_parity_and_fills_the_record(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    record = load_script().main(["--quick", "--out", str(tmp_path)])
    (result,) = record["results"].values()
    assert result["max_abs_difference_checked_shapes"] < 1e-4
    assert set(result["ms_per_forward"]) == {"eager", "onnxruntime"}
    assert all(v > 0 for v in result["ms_per_forward"].values())
    assert result["ratio_eager_over_onnxruntime"] > 0
    assert "onnxruntime" in record["versions"]
    assert not list(tmp_path.iterdir())  # quick mode writes nothing
