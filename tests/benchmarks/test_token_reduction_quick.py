"""Smoke test of benchmarks/token_reduction.py: the quick run trains a tiny pixel-token
ViT, scores and times it at every keep ratio with both methods (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "token_reduction.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_reduction", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains a tiny ViT and evaluates it six times (about 25 s of CPU)
def test_quick_run_scores_and_times_every_keep_ratio() -> None:
    record = load_script().main(["--quick", "--no-save"])
    v = record["variants"]
    assert record["tokens"] == 65
    assert set(v) == {"keep=1", "prune@0.75", "prune@0.5", "prune@0.25", "merge@0.75",
                      "merge@0.5"}  # fmt: skip
    # ceil(keep * 65) tokens after the reduction, the unreduced model keeps all 65
    assert [v[k]["tokens_after"] for k in ("keep=1", "prune@0.75", "prune@0.5",
                                           "prune@0.25")] == [65, 49, 33, 17]  # fmt: skip
    assert v["merge@0.5"]["tokens_after"] == 33
    assert "merge@0.25" in record["refused"]  # merging at most halves the tokens
    assert v["keep=1"]["speedup_vs_keep1"] == 1.0
    assert all(q["seconds_per_pass"] > 0 and 0 <= q["id"] <= 1 for q in v.values())
    assert record["versions"]["torch"].startswith("2.")
