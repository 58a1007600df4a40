"""Smoke test of benchmarks/generate_throughput.py: the weight copy into HF GPT-2 is exact
(identical greedy outputs and logits) and quick mode fills its record. No timings are
asserted (DESIGN.md: no timed assertions in unit tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_checks_equality_and_fills_the_record(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    record = load_script().main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    (result,) = record["results"].values()
    assert result["max_logit_difference"] < 1e-4
    for key in ("tokens_per_s", "tokens_per_cpu_s"):
        assert set(result[key]) == {"anyformer", "hf_gpt2", "handwritten", "weight_floor"}
        assert all(v > 0 for v in result[key].values())
    assert result["ratio_floor_vs_hf"] > 0
    assert set(result["overhead_ms_per_token"]) == {"anyformer", "hf_gpt2", "handwritten"}
    assert result["anyformer_share_of_handwritten"] > 0
    assert record["versions"]["torch"] and record["machine"]["loadavg"]
    assert not list(tmp_path.iterdir())  # quick mode writes nothing


def test_ragged_quick_run_matches_hf_row_by_row(tmp_path: Path) -> None:
    """``--ragged``: prompts of different lengths, anyformer's padding mask against HF's
    left padding; the run asserts every row's new tokens equal before timing."""
    pytest.importorskip("transformers")
    argv = ["--quick", "--ragged", "--threads", "1", "--out", str(tmp_path)]
    record = load_script().main(argv)
    assert record["benchmark"] == "generate_ragged"
    (result,) = record["results"].values()
    assert len(set(result["prompt_lengths"])) > 1
    assert set(result["tokens_per_s"]) == {"anyformer", "hf_gpt2", "weight_floor"}
    assert result["ratio_anyformer_vs_hf"] > 0
    assert not list(tmp_path.iterdir())
