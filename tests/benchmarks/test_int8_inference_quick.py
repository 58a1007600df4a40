"""Smoke test of benchmarks/int8_inference.py: the quick run quantizes a tiny model,
compares it with its parent and records the machine (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_inference.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("int8_inference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 10 s: torchao's import and two evaluations
def test_quick_run_compares_int8_with_float_and_records_the_machine() -> None:
    record = load_script().main(["--quick", "--no-save"])
    assert set(record["comparison"]) == {"id", "ood"}
    assert record["size_on_disk"]["ratio"] > 2.0
    speed = record["speed"]["seconds_per_pass"]
    assert speed["float32"] > 0 and speed["anyformer_int8"] > 0
    assert record["versions"]["torch"].startswith("2.")
