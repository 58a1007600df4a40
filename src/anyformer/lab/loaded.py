"""A trained run read back from its folder: its resolved spec, its model and its task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anyformer.lab.generate import load_run_model
from anyformer.lab.run import task_for_run
from anyformer.model.transformer import Transformer
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Task


@dataclass(frozen=True)
class LoadedRun:
    """What :func:`load_run` returns: the run's folder, resolved spec, model and task."""

    dir: Path
    spec: ExperimentSpec
    model: Transformer
    task: Task


def load_run(run_dir: Path | str) -> LoadedRun:
    """Load a run folder: its ``spec.yaml``, the latest checkpoint's weights (the model
    in eval mode) and its task, seeded as it was trained (so ``task.eval_set`` gives
    the run's evaluation sets)."""
    spec, model = load_run_model(run_dir)
    return LoadedRun(Path(run_dir), spec, model, task_for_run(spec, run_dir))


__all__ = ["LoadedRun", "load_run"]
