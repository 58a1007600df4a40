"""Smoke test of benchmarks/gps_throughput.py: both GPS layers run forward and backward on
the same graphs, anyformer's gps mixer equals PyG's GPSConv with copied weights, and the
record says where it ran (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch_geometric")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gps_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gps_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_records_ratio_equivalence_and_machine() -> None:
    record = load_script().main(["--quick", "--threads", "1"])
    assert record["machine"]["threads"] == 1
    assert {"torch", "torch_geometric"} <= set(record["versions"])
    assert set(record["nodes_per_s"]) == {"anyformer", "pyg"}
    assert all(v > 0 for v in record["nodes_per_s"].values())
    lo, hi = record["ratio_spread"]
    assert lo <= record["ratio_anyformer_vs_pyg"] <= hi
    assert record["max_abs_diff_vs_gpsconv"] < 1e-5
    # the same products: the layers' parameter counts differ by GPSConv's third BatchNorm
    assert record["params"]["pyg"] - record["params"]["anyformer"] == 2 * record["config"]["d"]


def test_dense_inputs_hold_the_same_graphs_as_pygs_batch() -> None:
    script = load_script()
    graphs = script.random_graphs(5, 4, 9, 0.3, 8, seed=1)
    dense = script.dense_inputs(graphs)
    for b, g in enumerate(graphs):
        n = g.num_nodes
        assert int(dense["mask"][b].sum()) == n
        src, dst = g.edge_index
        assert dense["adjacency"][b, dst, src].all()
        assert int(dense["adjacency"][b].sum()) == g.edge_index.shape[1]
        assert (dense["edges"][b, dst, src] == g.edge_attr).all()
