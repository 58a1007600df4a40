"""Smoke test of benchmarks/mixer_scaling.py: the pipeline runs and fills its table.

Timings are not asserted (DESIGN.md: no timed assertions in unit tests); only that every
measured cell holds a positive time and memory figure, refusals are marked as skipped
with a reason, and the JSON and PNG are written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mixer_scaling.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mixer_scaling", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_run_fills_the_table(tmp_path: Path, capsys) -> None:
    script = load_script()
    record = script.main(
        [
            "--quick",
            "--mixers",
            "softmax,linear",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    mixers = record["mixers"]
    assert list(mixers) == ["softmax", "linear"]
    for label in ("softmax", "linear"):
        cells = mixers[label]["cells"]
        assert set(cells) == {"256", "512"}
        for cell in cells.values():
            assert cell["skipped"] is None
            assert cell["seconds"] > 0 and cell["peak_mb"] > 0
            assert len(cell["runs"]) == 1
        # more tokens need more activation memory (a deterministic quantity, not a timing)
        assert cells["512"]["peak_mb"] > cells["256"]["peak_mb"]
    assert "forward + backward time" in printed and "peak memory" in printed
    # targets need 1k-16k cells, so they are "not measured" rather than invented
    assert record["targets"]["linear_vs_softmax_speedup_16k"] is None
    json_file = next(tmp_path.glob("mixer_scaling-*-quick.json"))
    saved = json.loads(json_file.read_text())
    assert saved["torch"] and saved["machine"]["threads"] == 1 and "load_average" in saved
    assert next(tmp_path.glob("mixer_scaling-*-quick.png")).stat().st_size > 1000


def test_refused_lengths_are_skipped_with_a_reason(capsys) -> None:
    script = load_script()
    record = script.main(
        ["--lengths", "16,300", "--mixers", "tensor_3way", "--repeats", "1", "--no-save"]
    )
    cells = record["mixers"]["tensor_3way"]["cells"]
    assert cells["16"]["skipped"] is None and cells["16"]["seconds"] > 0
    assert cells["300"]["seconds"] is None
    assert "at most 256 tokens" in cells["300"]["skipped"]
    assert "tensor_3way @ 300: skipped: " in capsys.readouterr().out


def test_extrapolation_skips_cells_over_the_memory_cap() -> None:
    script = load_script()
    # quadratic memory: 1 MB at 256 and 4 MB at 512 tokens predicts 64 MB at 2048
    assert abs(script.extrapolate([(256, 1.0), (512, 4.0)], 2048) - 64.0) < 1e-9
    # memory never predicted to shrink: the exponent is at least 1
    assert script.extrapolate([(256, 2.0), (512, 1.0)], 1024) == 2.0
    cells = script.run_variant(
        script.Variant.parse("softmax:impl=reference"),
        [64, 128, 4096],
        repeats=1,
        device=script.torch.device("cpu"),
        max_seconds=60.0,
        max_memory_gb=0.01,
    )
    assert cells[128].seconds is not None
    assert "cap 0.01 GB" in cells[4096].skipped
