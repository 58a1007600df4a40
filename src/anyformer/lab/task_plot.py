"""A run's task-specific figure, written at the end of the run beside ``curve.png``.

The trained model predicts each evaluated split's fixed examples (``id``, ``ood``) once
more; the task turns the outputs into plot data
(:meth:`anyformer.tasks.base.Task.plot_data`: a confusion matrix, predicted-vs-true
points, an image grid or boxes on images); for a regression head with a conformal score the points get
their split-conformal interval at ``train.conformal_level``, calibrated as the trainer
does on the training batches just past ``train.steps``
(:func:`anyformer.training.conformal.intervals`); :func:`anyformer.lab.plots.plot_task`
draws them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anyformer.tasks.base import Batch, Task
from anyformer.tasks.packing import model_inputs
from anyformer.training.conformal import calibration_steps, conformal_head, intervals

if TYPE_CHECKING:
    from anyformer.lab.run import Run


def task_plot_data(run: Run, model: nn.Module) -> list[Any]:
    """The task's plot data of each evaluated ``id``/``ood`` split (empty when the task
    has no plot of its own)."""
    task, train = run.task, run.spec.train
    if type(task).plot_data is Task.plot_data:  # no plot of its own: predict nothing
        return []
    splits = [s for s in task.splits if s in run.metrics]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def predict(batch: Batch) -> torch.Tensor:
        b = batch.to(device)
        return model(b.inputs, **model_inputs(b)).float().cpu()

    panels: list[Any] = []
    try:
        with torch.no_grad():
            head = conformal_head(model)
            calibration = None
            for split in splits:
                batches = task.eval_set(split, train.eval_size)
                outputs = [predict(b) for b in batches]
                data = task.plot_data(split, outputs, batches)
                if data is None:
                    return []
                if data.kind == "scatter" and head is not None:
                    if calibration is None:
                        calibration = [
                            (predict(b), b)
                            for b in (
                                task.train_batch(step, train.batch_size)
                                for step in calibration_steps(
                                    train.steps, train.eval_size, train.batch_size
                                )
                            )
                        ]
                    pairs = list(zip(outputs, batches))
                    true, point, lower, upper = intervals(
                        head, calibration, pairs, train.conformal_level
                    )
                    data = dataclasses.replace(data, true=true, pred=point, lower=lower,
                                               upper=upper, level=train.conformal_level)  # fmt: skip
                panels.append(data)
    finally:
        model.train(was_training)
    return panels


def write_task_plot(run: Run, model: nn.Module) -> Path | None:
    """Draw :func:`task_plot_data` into the run's ``plots/`` folder (``confusion.png``,
    ``predicted_vs_true.png``, ``images.png`` or ``boxes.png``); ``None`` when the task has no plot."""
    from anyformer.lab.plots import plot_task

    spec = run.spec
    title = f"{spec.name}: {spec.task.name}"
    return plot_task(task_plot_data(run, model), run.dir / "plots", title)
