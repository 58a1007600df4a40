"""Smoke test of benchmarks/train_throughput.py: every contender trains, parameter counts
of the reference-matched peers agree, and the linear floor bounds anyformer's speed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_linear_floor_runs_every_product_of_the_model() -> None:
    script = load_script()
    cfg = dict(layers=2, d=32, heads=4, seq=8, batch=2, vocab=64)
    model = script.anyformer_model(cfg)
    step = script.linear_floor_step(model, cfg)
    calls: list[tuple[int, ...]] = []
    original = torch.nn.functional.linear

    def spy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(tuple(w.shape))
        return original(x, w, b)

    torch.nn.functional.linear = spy  # type: ignore[assignment]
    try:
        step()
    finally:
        torch.nn.functional.linear = original  # type: ignore[assignment]
    shapes = sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear))
    assert sorted(calls) == shapes  # one forward product per linear layer, the head included


def test_quick_run_reports_ratios_and_the_floor() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    record = load_script().main(["--quick", "--threads", "1"])
    speeds = record["tokens_per_s"]
    assert set(speeds) == {
        "anyformer", "hf_gpt2", "x_transformers", "x_transformers_flash_tied", "linear_floor"
    }  # fmt: skip
    assert all(v > 0 for v in speeds.values())
    assert record["fastest_peer"] in ("hf_gpt2", "x_transformers", "x_transformers_flash_tied")
    assert record["params"]["anyformer"] == record["params"]["hf_gpt2"]
    assert record["ratio_floor_vs_fastest_peer"] > 0
