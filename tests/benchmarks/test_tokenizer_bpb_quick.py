"""Smoke test of benchmarks/tokenizer_bpb.py: a quick run records, per tokenizer, bits
per byte on the same scored bytes, tokens per byte (1 for bytes, below 1 for subwords),
the unigram baseline under the same tokenizer, and the machine (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tokenizer_bpb.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokenizer_bpb", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_scores_every_tokenizer_on_the_same_bytes(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))
    from code_library import write_library

    root = write_library(tmp_path / "lib", modules=12, per_module=6)
    record = load_script().main(["--quick", "--root", str(root), "--no-save"])
    assert record["quick"] is True and record["machine"]["threads"] == 1
    assert {"python", "torch", "tokenizers"} <= set(record["versions"])
    assert set(record["summary"]) == {"bytes-256", "bpe-300", "unigram-300"}
    assert record["same_scored_bytes"] is True
    bytes_row = record["summary"]["bytes-256"]
    assert bytes_row["id"]["tokens_per_byte"] == pytest.approx(1.0)
    assert bytes_row["id_bpb_vs_bytes"] == pytest.approx(1.0)
    for name in ("bpe-300", "unigram-300"):
        row = record["summary"][name]
        assert 0.0 < row["id"]["tokens_per_byte"] < 1.0
        assert row["id_bpb_vs_bytes"] == pytest.approx(
            row["id"]["bits_per_byte"] / bytes_row["id"]["bits_per_byte"]
        )
    for run in record["runs"]:
        assert run["id"]["bits_per_byte"] > 0 and run["id"]["unigram_bits_per_byte"] > 0
        assert run["params"] > 0 and run["wall_s"] > 0
