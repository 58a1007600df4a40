"""Smoke test of benchmarks/mlm_throughput.py: both masked LMs train on the same corrupted
batch, BERT's corruption has its documented statistics, the parameter counts of the full
shapes agree within 3%, and the record says where it ran (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytestmark = pytest.mark.peers

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mlm_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_trains_both_and_records_the_machine() -> None:
    pytest.importorskip("transformers")
    record = load_script().main(["--quick", "--no-save"])
    (result,) = record["shapes"].values()
    assert result["tokens_per_s"]["anyformer"] > 0 and result["tokens_per_s"]["bert"] > 0
    assert record["versions"]["torch"].startswith("2.")
    assert "transformers" in record["versions"]


def test_full_shapes_match_bert_within_three_percent_and_corruption_is_berts() -> None:
    pytest.importorskip("transformers")
    m = load_script()
    for shape in m.SHAPES.values():
        ours, bert = m.n_params(m.anyformer_mlm(shape)), m.n_params(m.bert_mlm(shape))
        assert abs(ours - bert) / bert <= 0.03
    shape = {**m.QUICK_SHAPES["v64_d32_L2_T16"], "batch": 64, "seq": 256}
    inputs, targets, chosen = m.corrupted_batch(shape)
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    masked = (inputs == shape["vocab"] - 1) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert torch.equal(inputs[~chosen], targets[~chosen])  # unchosen tokens are untouched
