"""What a training run does around its steps: the append-only metrics log and its atomic
trim on resume, SIGTERM handled like Ctrl-C, and the progress bar."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anyformer.errors import RunFolderError
from anyformer.spec import TrainSpec, write_text_atomic

log = logging.getLogger("anyformer.training.trainer")  # the name the messages had


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send) as an interruption: the run saves and stops."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``), so
    it saves a checkpoint and stops exactly like Ctrl-C. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def trim_metrics(path: Path, step: int) -> None:
    """Make ``metrics.jsonl`` hold only the lines of steps ``<= step`` (the checkpoint the
    run continues from; 0 when it starts over), rewritten atomically (temporary file and
    rename) and only when something goes. A torn line (a kill mid-write) or any other
    unreadable line is dropped with a warning, never an error."""
    if path.is_symlink():  # appending would write wherever it points
        raise RunFolderError(f"{path} is a link (to {path.resolve()}), not this run's log")
    if not path.is_file():
        return
    raw = path.read_bytes()
    kept, torn, later = [], [], 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            at = record["step"]
            if isinstance(at, bool) or not isinstance(at, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            torn.append(number)
            continue
        if at <= step:
            kept.append(line.decode("utf-8"))
        else:
            later += 1
    if torn:
        where = "the last line" if torn == [len(lines) - (not lines[-1])] else f"lines {torn[:5]}"
        log.warning(
            "%s: %s could not be read (cut off by a kill during a write?) and %s dropped",
            path,
            where,
            "was" if len(torn) == 1 else "were",
        )
    if torn or later:
        write_text_atomic(path, "".join(line + "\n" for line in kept))


class _Progress:
    """A rich progress bar showing loss, tokens/s and time left."""

    def __init__(self, train: TrainSpec, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=train.steps, completed=start, loss="-", speed="-"
        )
        self.start, self.t0 = start, time.perf_counter()
        self.progress.start()

    def update(self, step: int, loss: float, tokens: int) -> None:
        rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", speed=f"{rate:,.0f}")

    def close(self) -> None:
        self.progress.stop()
