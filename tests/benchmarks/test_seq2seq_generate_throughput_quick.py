"""Smoke test of benchmarks/seq2seq_generate_throughput.py: the weight copy of a T5-shaped
anyformer encoder-decoder into HF T5, and of a random HF BART into anyformer, is exact
(identical greedy outputs, equal logits) and quick mode fills its record with a row per
family. No timings are asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seq2seq_generate_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seq2seq_generate_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_checks_equality_and_fills_the_record(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    record = load_script().main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    results = record["results"]
    assert {r["peer"] for r in results.values()} == {"hf_t5", "hf_bart"}
    for result in results.values():
        assert result["max_logit_difference"] < 1e-4
        assert set(result["tokens_per_s"]) == {"anyformer", result["peer"]}
        assert all(v > 0 for v in result["tokens_per_s"].values())
        assert result["ratio_anyformer_vs_hf"] > 0
    assert not list(tmp_path.iterdir())  # quick mode writes nothing
