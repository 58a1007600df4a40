"""Smoke test of benchmarks/vit_throughput.py: both ViTs train, their parameter counts
agree, the linear floor covers every matrix product of a step, and the record says where
it ran (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.peers

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vit_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vit_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def needs_timm() -> None:
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's ops failing to load
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc})")


def test_linear_floor_covers_every_product_of_a_step() -> None:
    script = load_script()
    shape = script.QUICK_SHAPES["digits8_p2_d32"]
    model = script.anyformer_vit(shape)
    products = script.linear_products(model, shape)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(products) == len(linears) + 1  # + the patch projection (a strided conv)
    b, tokens = shape["batch"], 1 + (shape["size"] // shape["patch"]) ** 2
    assert products[0] == (b * (tokens - 1), shape["patch"] ** 2, shape["d"])
    assert products[-1] == (b, shape["d"], 10)  # the head reads one pooled row per image
    calls: list[tuple[int, ...]] = []
    original = torch.nn.functional.linear

    def spy(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((x.shape[0], *w.shape))
        return original(x, w, bias)

    step = script.linear_floor_stepper(model, shape)
    torch.nn.functional.linear = spy  # type: ignore[assignment]
    try:
        step(0)
    finally:
        torch.nn.functional.linear = original  # type: ignore[assignment]
    assert sorted(calls) == sorted((r, o, i) for r, i, o in products)


def test_quick_run_records_ratios_floor_and_machine() -> None:
    needs_timm()
    record = load_script().main(["--quick", "--threads", "1"])
    assert record["machine"]["threads"] == 1
    assert {"torch", "timm"} <= set(record["versions"])
    assert record["rounds"] % 3 == 0 and record["steps"] >= 1
    for result in record["shapes"].values():
        assert set(result["images_per_s"]) == {"anyformer", "timm", "linear_floor"}
        assert all(v > 0 for v in result["images_per_s"].values())
        assert result["params"]["anyformer"] == result["params"]["timm"]
        assert result["param_gap"] == 0.0
        lo, hi = result["ratio_spread"]
        assert lo <= result["ratio_anyformer_vs_timm"] <= hi
        assert len(result["rounds_images_per_s"]["timm"]) == record["rounds"]
        assert result["ratio_floor_vs_timm"] > 0
