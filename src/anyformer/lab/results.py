"""Numbers of finished runs: mean and 95% Student-t interval over seeds, flattened metric
dicts, and the training loss read back from a run's ``metrics.jsonl``. (Imports nothing
else of the lab, so every lab module may use it.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[min(n - 1, len(_T975)) - 1] if n - 1 <= len(_T975) else 1.96
    return mean, t * sd / math.sqrt(n)


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested metrics dict, keyed by dotted paths
    (``baselines.least_squares.mse``, ``by_length.12``)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def read_losses(run_dir: Path) -> dict[int, float]:
    """Training loss by step from a run's ``metrics.jsonl`` (evaluation lines and
    unreadable lines, such as a torn last line, are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out: dict[int, float] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or "split" in record:
            continue
        loss, step = record.get("loss"), record.get("step")
        if isinstance(loss, (int, float)) and isinstance(step, int) and math.isfinite(loss):
            out[step] = float(loss)
    return out


def training_losses(run_dirs: list[Path]) -> dict[int, tuple[float, float]]:
    """Mean training loss over runs (seeds) and its 95% interval, by step."""
    by_step: dict[int, list[float]] = {}
    for d in run_dirs:
        for step, loss in read_losses(d).items():
            by_step.setdefault(step, []).append(loss)
    return {step: mean_interval(v) for step, v in sorted(by_step.items())}
