"""Smoke test of benchmarks/patchtst_throughput.py: the plain PyTorch PatchTST has every
parameter of anyformer's (names mapped one to one), computes the same forecast once they
are copied, and the quick run records ratios and the machine (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "patchtst_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("patchtst_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reference_computes_anyformers_forecast_with_copied_weights() -> None:
    script = load_script()
    shape = {**script.QUICK_SHAPES["tiny_l48_p8_d16"], "layers": 2}
    torch.manual_seed(0)
    ours, ref = script.anyformer_patchtst(shape), script.PatchTSTReference(shape)
    with torch.no_grad():  # move RevIN's affine off the identity so its inverse is exercised
        ours.embed.revin.gamma.uniform_(0.5, 2.0)
        ours.embed.revin.beta.normal_()
    script.copy_weights(ours, ref)
    assert script.n_params(ours) == script.n_params(ref)
    x, _ = script.data(shape)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about 4 s on a loaded 2-core machine
def test_quick_run_records_ratio_losses_and_machine() -> None:
    record = load_script().main(["--quick", "--threads", "1"])
    assert record["machine"]["threads"] == 1 and "torch" in record["versions"]
    assert record["rounds"] % 2 == 0 and record["steps"] >= 1
    for result in record["shapes"].values():
        assert result["params"]["anyformer"] == result["params"]["reference"]
        losses = result["loss_copied_weights"]
        assert abs(losses["anyformer"] - losses["reference"]) <= 1e-5 * losses["reference"]
        assert all(v > 0 for v in result["windows_per_s"].values())
        lo, hi = result["ratio_spread"]
        assert lo <= result["ratio_anyformer_vs_reference"] <= hi
