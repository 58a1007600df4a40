"""Metrics lines mirrored to TensorBoard (``train.tensorboard=true``).

Every number of a metrics line becomes a scalar at the line's step, tagged by its split
and name (``train/loss``, ``id/exact_match``, ``ood/baselines.chance.exact_match``);
nested values are flattened with dots. The event files go to ``<run>/tensorboard``.
The ``tensorboard`` package is optional: asking for it without the package installed is
refused with the command that installs it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from anyformer.errors import SpecError


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``record``, nested keys joined with dots (booleans and
    strings left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[name] = float(value)
    return out


class TensorBoardWriter:
    """Writes metrics lines as scalars with their wall-clock time."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SpecError(
                "train.tensorboard=true needs the tensorboard package "
                "(pip install tensorboard, or pip install 'anyformer[tensorboard]')"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """One metrics line: ``step``, ``time`` and ``split`` (default ``train``) label the
        scalars; every other number is one."""
        step = int(record.get("step", 0))
        split = str(record.get("split", "train"))
        when = record.get("time")
        skip = {"step", "time", "split"}
        values = flatten({k: v for k, v in record.items() if k not in skip})
        for name, value in values.items():
            self.writer.add_scalar(f"{split}/{name}", value, step, walltime=when)
        self.writer.flush()
