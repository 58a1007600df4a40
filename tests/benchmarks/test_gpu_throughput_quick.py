"""Smoke test of benchmarks/gpu_throughput.py on CPU: without CUDA it refuses with a clear
message unless asked for the tiny ``--quick`` run, which goes through the Trainer's step and
reports tokens/s (timings themselves are not asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cpu_refuses_the_full_run_and_quick_mode_reports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    monkeypatch.setattr(sys, "argv", ["gpu_throughput.py"])
    assert script.main() == 2
    assert "no CUDA device" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["gpu_throughput.py", "--quick"])
    assert script.main() == 0
    out = capsys.readouterr().out
    assert "tokens/s:" in out and "MFU: n/a" in out
