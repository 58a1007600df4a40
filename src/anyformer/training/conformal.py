"""Split-conformal intervals of a run's regression head, computed at every evaluation.

For a model whose head has a conformal score (:data:`anyformer.tasks.conformal.HEAD_KINDS`:
``regress`` and ``token_regress`` by absolute residual, ``gaussian`` and
``token_gaussian`` by residual over the predicted standard deviation, ``quantile`` and
``token_quantile`` by conformalised quantile regression), the trainer calibrates at
``train.conformal_level`` on a *calibration split* and reports, in each evaluated
split's metrics, ``conformal = {level, coverage, width, n_calibration}``: the empirical
coverage and mean width of the intervals on that split's counted targets
(:func:`anyformer.tasks.conformal.head_report`).

The calibration split is the training batches of the steps just past the last one,
``train.steps .. train.steps + k - 1`` with ``k = ceil(eval_size / batch_size)``: drawn
from the training distribution by the same generator, and never trained on. For a task
that generates every example afresh (``pose_lifting``, ``shapes``) these are new
examples, exchangeable with ``id``, so the ``id`` coverage is guaranteed to be at least
the level (up to sampling). For a task that samples a finite pool of rows with
replacement (``table``, ``digits``), those batches hold rows the model has seen, whose
residuals are smaller than on held-out rows: the intervals then under-cover, and the
reported ``id`` coverage says by how much. A run resumed with more steps calibrates on
batches past its new ``train.steps``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anyformer.tasks.base import Batch
from anyformer.tasks.conformal import HEAD_KINDS, calibrate, head_report, predictions


def conformal_head(model: Any) -> str | None:
    """The model's head when it has a conformal score (``model.spec.resolved_head``),
    else ``None``."""
    spec = getattr(model, "spec", None)
    head = getattr(spec, "resolved_head", None)
    return head if head in HEAD_KINDS else None


def calibration_steps(steps: int, eval_size: int, batch_size: int) -> range:
    """The training steps whose batches form the calibration split (see the module)."""
    return range(steps, steps + -(-eval_size // batch_size))


def counted(output: torch.Tensor, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs, targets)`` of the counted positions of a batch: outputs in the head's
    layout, one values axis after the target's shape (``[N, ..., values]``), targets
    ``[N, ...]`` (``N`` counted rows or tokens)."""
    targets = batch.targets.detach().cpu().double()
    out = output.detach().cpu().double().reshape(*targets.shape, -1)
    mask = batch.loss_mask.detach().cpu().bool()
    return out[mask].numpy(), targets[mask].numpy()


def stack(pairs: list[tuple[torch.Tensor, Batch]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`counted` outputs and targets of ``(outputs, batch)`` pairs, concatenated."""
    parts = [counted(o, b) for o, b in pairs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def intervals(
    head: str,
    calibration: list[tuple[torch.Tensor, Batch]],
    pairs: list[tuple[torch.Tensor, Batch]],
    level: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(true, point, lower, upper)`` of every counted target value of ``pairs``
    (flattened), with the split-conformal interval at ``level`` calibrated on
    ``calibration`` as :func:`report` does. The point prediction is the head's mean
    (``regress``, ``gaussian``) or the middle of its outermost quantiles (``quantile``)."""
    kind = HEAD_KINDS[head]
    outputs, y = stack(calibration)
    rule = calibrate(kind, y, *predictions(kind, outputs), level=level)
    outputs, y = stack(pairs)
    preds = predictions(kind, outputs)
    lower, upper = rule.interval(*preds)
    point = preds[0] if kind != "cqr" else (preds[0] + preds[1]) / 2
    return y.reshape(-1), point.reshape(-1), lower.reshape(-1), upper.reshape(-1)


def report(
    head: str,
    calibration: list[tuple[torch.Tensor, Batch]],
    splits: dict[str, list[tuple[torch.Tensor, Batch]]],
    level: float,
) -> dict[str, dict[str, float]]:
    """``{split: {level, coverage, width, n_calibration}}`` of intervals calibrated on
    ``calibration`` (``(outputs, batch)`` pairs) and tested on each split's pairs."""

    tests = {name: stack(pairs) for name, pairs in splits.items() if pairs}
    rep = head_report(head, stack(calibration), tests, level)
    return {
        name: {
            "level": rep["level"],
            "coverage": rep[name]["coverage"],
            "width": rep[name]["width"],
            "n_calibration": rep["n_calibration"],
        }
        for name in tests
    }
