"""What a training run costs: peak memory of one run, and speed measured fairly across variants.

**Peak memory.** :class:`PeakMemory` measures the memory a block of code (one training
run) adds at its peak:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what
  was allocated when the block began (tensors the caching allocator hands out; its
  reserved-but-free cache is not counted);
- CPU on Linux: the process's peak resident set (``VmHWM``) after resetting it through
  ``/proc/self/clear_refs``, minus the resident set when the block began. This counts
  everything the run touches (weights, optimizer state, activations, the allocator's
  retained pages), in this process only. ``resource.getrusage``'s ``ru_maxrss`` is not
  used: it is the peak of the whole process life, so every run after the largest would
  report the largest;
- elsewhere: unmeasured (``None``), with the reason in ``kind``.

**Speed.** Two identical runs on a shared machine can differ eightfold in wall time, so
timing variants one after another lets a slow spell land on one of them.
:func:`interleaved_speed` times every variant in rounds, one short slot per variant per
round, with the order rotated each round (every variant in every place equally often),
after a warm-up round, so drift during the measurement touches every variant alike.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set to its current size (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes`` (or ``None``) and
    ``peak.kind``, which says what was measured (see the module docstring)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.kind = "unmeasured"
        self._start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda peak allocated"
        elif _reset_peak_rss() and _status_kib("VmRSS") is not None:
            self._start = (_status_kib("VmRSS") or 0) * 1024
            self.kind = "cpu peak RSS increase"
        else:
            self.kind = "unmeasured (no CUDA, and /proc/self/clear_refs is not writable)"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start)
        elif self.kind.startswith("cpu"):
            peak = _status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak * 1024 - self._start)


def release_memory(device: torch.device | str) -> None:
    """Return freed memory before a measurement: collect garbage, empty the CUDA cache,
    and on glibc hand the heap's free pages back to the system (``malloc_trim``), so a
    previous measurement's freed memory does not hide the next one's growth."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


#: one training step of a variant: ``step(i)`` trains on batch ``i`` and returns
#: (real tokens trained on, training FLOPs of the step)
Stepper = Callable[[int], tuple[int, float]]


def interleaved_speed(
    steppers: dict[str, Stepper],
    rounds: int = 3,
    steps: int = 3,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Training speed of every variant, measured in interleaved rounds.

    A warm-up round first runs ``steps`` steps of every variant untimed (allocations,
    compilation); then each round times ``steps`` steps of each variant in turn, the
    order rotated by one each round (round r starts with variant r), for ``rounds``
    rounds rounded up to a multiple of the number of variants, so every variant takes
    every place in the order equally often. Every variant trains on the same batch
    indices ``0 .. steps-1`` in every round. A variant's ``tokens_per_s`` is its tokens
    over its timed seconds across all rounds: with every place taken equally often, a
    machine that slows down (or speeds up) steadily during the measurement adds the
    same time to every variant. Also returned per label: ``rounds_tokens_per_s`` (each
    round's, for the spread), ``flops_per_token`` (training FLOPs per real token over
    those batches) and ``flops_per_s``. ``sync`` (e.g. ``torch.cuda.synchronize``) runs
    before each clock read.
    """
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds={rounds} and steps={steps} must be >= 1")
    labels = list(steppers)
    n = len(labels)
    rounds = -(-rounds // n) * n
    per_round: dict[str, list[float]] = {k: [] for k in labels}
    timed: dict[str, list[float]] = {k: [0.0, 0.0] for k in labels}  # tokens, seconds
    work: dict[str, tuple[int, float]] = {}
    for label in labels:  # warm-up, untimed
        tokens = flops = 0.0
        for i in range(steps):
            t, f = steppers[label](i)
            tokens, flops = tokens + t, flops + f
        work[label] = (int(tokens), flops)
    if sync:
        sync()
    for r in range(rounds):
        order = labels[r % n :] + labels[: r % n]
        for label in order:
            if sync:
                sync()
            t0 = clock()
            tokens = 0
            for i in range(steps):
                tokens += steppers[label](i)[0]
            if sync:
                sync()
            seconds = max(clock() - t0, 1e-9)
            per_round[label].append(tokens / seconds)
            timed[label][0] += tokens
            timed[label][1] += seconds
    out = {}
    for label in labels:
        tokens, flops = work[label]
        speed = timed[label][0] / timed[label][1]
        fpt = flops / tokens if tokens else 0.0
        out[label] = {
            "tokens_per_s": speed,
            "rounds_tokens_per_s": per_round[label],
            "flops_per_token": fpt,
            "flops_per_s": fpt * speed,
        }
    return out


def trainer_stepper(trainer: Any) -> Stepper:
    """A :data:`Stepper` from a :class:`~anyformer.training.trainer.Trainer`: one
    ``train_step`` per call; FLOPs from the model's ``flops_per_token`` at the batch's length."""
    flops_fn = getattr(trainer.model, "flops_per_token", None)
    cache: dict[int, int] = {}

    def step(i: int) -> tuple[int, float]:
        trainer.train_step(i)
        tokens, length = trainer.last_tokens, trainer.last_seq_len
        if callable(flops_fn) and length not in cache:
            cache[length] = int(flops_fn(length))
        return tokens, float(cache.get(length, 0) * tokens)

    return step
