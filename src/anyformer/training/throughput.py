"""Throughput accounting: tokens/s, achieved FLOP/s and model FLOPs utilisation (MFU).

Achieved FLOP/s is the model's own estimate of training FLOPs per token
(``model.flops_per_token(seq_len)``: 3x the forward matrix products, DESIGN.md's
accounting) times tokens/s. Recomputation by activation checkpointing is not counted
(it is *model* FLOPs utilisation, as in the PaLM paper). MFU divides by the peak dense
FLOP/s of the devices used, taken from :data:`PEAKS` for the precision the matrix
products run in (fp32 uses the TF32 peak when PyTorch lets matmuls use TF32). Unknown
devices and CPUs have no peak, so MFU is omitted for them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

T = 1e12
# Peak dense (no sparsity) tensor-core FLOP/s per GPU, from NVIDIA's data sheets:
# (pattern matched against torch.cuda.get_device_name(), lower-cased; first match wins)
# -> {precision: FLOP/s}. fp16/bf16 are with fp32 accumulation.
PEAKS: list[tuple[str, dict[str, float]]] = [
    (
        r"gh200|h200(?!.*nvl)|h800|h100(?!.*(pcie|nvl))",
        dict(bf16=989.4 * T, fp16=989.4 * T, tf32=494.7 * T, fp32=66.9 * T),
    ),
    (r"h[12]00.*nvl", dict(bf16=835.5 * T, fp16=835.5 * T, tf32=417.5 * T, fp32=60.0 * T)),
    (r"h100.*pcie", dict(bf16=756.5 * T, fp16=756.5 * T, tf32=378.0 * T, fp32=51.2 * T)),
    (r"b200", dict(bf16=2250.0 * T, fp16=2250.0 * T, tf32=1100.0 * T)),
    (r"a100", dict(bf16=312.0 * T, fp16=312.0 * T, tf32=156.0 * T, fp32=19.5 * T)),
    (r"a10g", dict(bf16=70.0 * T, fp16=70.0 * T, tf32=35.0 * T, fp32=31.2 * T)),
    (r"\ba10\b", dict(bf16=125.0 * T, fp16=125.0 * T, tf32=62.5 * T, fp32=31.2 * T)),
    (r"l40s", dict(bf16=362.05 * T, fp16=362.05 * T, tf32=183.0 * T, fp32=91.6 * T)),
    (r"\bl40\b", dict(bf16=181.0 * T, fp16=181.0 * T, tf32=90.5 * T, fp32=90.5 * T)),
    (r"\bl4\b", dict(bf16=121.0 * T, fp16=121.0 * T, tf32=60.0 * T, fp32=30.3 * T)),
    (r"v100.*pcie", dict(fp16=112.0 * T, fp32=14.0 * T)),
    (r"v100", dict(fp16=125.0 * T, fp32=15.7 * T)),
    (r"\bt4\b", dict(fp16=65.0 * T, fp32=8.1 * T)),
    (r"rtx a6000", dict(bf16=154.8 * T, fp16=154.8 * T, tf32=77.4 * T, fp32=38.7 * T)),
    (r"rtx 4090", dict(bf16=165.2 * T, fp16=165.2 * T, tf32=82.6 * T, fp32=82.6 * T)),
    (r"rtx 3090", dict(bf16=71.0 * T, fp16=71.0 * T, tf32=35.6 * T, fp32=35.6 * T)),
]


def peak_for_name(name: str, precision: str) -> float | None:
    """Peak dense FLOP/s of the GPU called ``name`` at ``precision`` (fp32, tf32, bf16, fp16)."""
    lowered = name.lower()
    for pattern, peaks in PEAKS:
        if re.search(pattern, lowered):
            return peaks.get(precision)
    return None


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of ``device`` for matmuls at ``precision``; ``None`` if unknown (CPU)."""
    if device.type != "cuda":
        return None
    if precision == "fp32" and torch.get_float32_matmul_precision() != "highest":
        precision = "tf32"
    return peak_for_name(torch.cuda.get_device_name(device), precision)


class Throughput:
    """Counts tokens and FLOPs between reports; time spent inside :meth:`paused` is excluded.

    ``tokens`` are global (all ranks together); ``mfu`` divides by the peak of all
    ``world_size`` devices.
    """

    def __init__(
        self,
        flops_per_token: Callable[[int], int] | None,
        peak: float | None,
        world_size: int = 1,
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.world_size = world_size
        self._fpt: dict[int, int] = {}
        self.total_tokens = 0
        self.total_seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self.tokens = 0
        self.flops = 0.0
        self.start = time.perf_counter()
        self.excluded = 0.0

    def add(self, tokens: int, seq_len: int) -> None:
        """Account one step of ``tokens`` tokens in rows of ``seq_len``."""
        self.tokens += tokens
        if self.flops_per_token is not None:
            if seq_len not in self._fpt:
                self._fpt[seq_len] = int(self.flops_per_token(seq_len))
            self.flops += self._fpt[seq_len] * tokens

    def paused(self) -> _Pause:
        """A context whose time is not counted (evaluation, checkpoints)."""
        return _Pause(self)

    def report(self) -> dict[str, float]:
        """tokens_per_s, flops_per_s and mfu (where known) since the last report; resets."""
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        out: dict[str, float] = {"tokens_per_s": self.tokens / seconds}
        if self.flops_per_token is not None:
            out["flops_per_s"] = self.flops / seconds
            if self.peak:
                out["mfu"] = out["flops_per_s"] / (self.peak * self.world_size)
        self.total_tokens += self.tokens
        self.total_seconds += seconds
        self._reset()
        return out

    @property
    def mean_tokens_per_s(self) -> float:
        """Tokens/s over every reported interval so far."""
        return self.total_tokens / self.total_seconds if self.total_seconds else 0.0


class _Pause:
    def __init__(self, meter: Throughput) -> None:
        self.meter = meter

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.meter.excluded += time.perf_counter() - self.t0


def benchmark_environment(threads: int, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a benchmark record says about where it ran: ``date`` (UTC), ``machine``
    (platform, processor, CPU count, torch threads, load average at this call, and the
    GPU when CUDA is available) and ``versions`` (python, torch and each of ``packages``
    that is installed)."""
    import contextlib
    import datetime as dt
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "loadavg": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        machine |= {"gpu": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count(),
                    "cuda": torch.version.cuda}  # fmt: skip
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in packages:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "machine": machine, "versions": versions}


def save_benchmark(record: dict[str, Any], folder: Path | str, stem: str) -> Path:
    """Write ``record`` as ``<folder>/<stem>-<date>.json`` (atomically; the date from the
    record's ``date``, else today) and return the path."""
    import datetime as dt
    import json

    from anyformer.spec import write_text_atomic

    day = str(record.get("date", dt.date.today().isoformat()))[:10]
    path = Path(folder) / f"{stem}-{day}.json"
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return path
