"""What a task's own plot shows, as data (numpy arrays, no drawing).

A task says what to plot of a trained model's outputs on an evaluation split through
:meth:`anyformer.tasks.base.Task.plot_data`, returning one of these records; the lab
draws them (:mod:`anyformer.lab.plots`) and tests read the numbers the figure is drawn
from. Four kinds:

- :class:`Confusion`: counts of (true class, predicted class) pairs — classification;
- :class:`Scatter`: predicted against true values, optionally with a split-conformal
  interval per point (its ``lower``/``upper`` bounds and ``level``) — regression;
- :class:`ImageGrid`: rows of images side by side (input, output, target, a baseline)
  — dense outputs such as super-resolution;
- :class:`BoxesOnImages`: images with their true and predicted boxes — ``shapes``
  boxes (objects written as coordinate tokens).

Registers nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """``counts[i, j]``: examples of true class ``i`` predicted as class ``j`` on
    ``split``; ``labels`` names the classes."""

    split: str
    counts: np.ndarray
    labels: tuple[str, ...]

    kind = "confusion"

    @property
    def examples(self) -> int:
        return int(self.counts.sum())

    @property
    def accuracy(self) -> float:
        """The fraction on the diagonal (what the task reports as ``accuracy``)."""
        return float(np.trace(self.counts) / max(self.examples, 1))


def confusion(split: str, true: np.ndarray, pred: np.ndarray, n_classes: int,
              labels: tuple[str, ...] | None = None) -> Confusion:  # fmt: skip
    """The :class:`Confusion` of class indices ``true`` and ``pred`` (``[N]`` each)."""
    true, pred = np.asarray(true, np.int64).reshape(-1), np.asarray(pred, np.int64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"{true.shape[0]} true classes but {pred.shape[0]} predictions")
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    names = labels if labels is not None else tuple(str(i) for i in range(n_classes))
    return Confusion(split, counts, names)


@dataclass(frozen=True)
class Scatter:
    """Predicted (``pred``) against true (``true``) values on ``split``, flattened over
    every target value; with ``lower``/``upper`` the split-conformal interval of each
    point at ``level``. ``quantity`` names what is plotted (axis labels)."""

    split: str
    true: np.ndarray
    pred: np.ndarray
    quantity: str = "value"
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    level: float | None = None

    kind = "scatter"

    @property
    def coverage(self) -> float | None:
        """The fraction of true values inside their interval (``None`` without intervals)."""
        if self.lower is None or self.upper is None:
            return None
        inside = (self.true >= self.lower) & (self.true <= self.upper)
        return float(inside.mean()) if inside.size else None


@dataclass(frozen=True)
class ImageGrid:
    """``images[c][r]``: an ``[H, W, C]`` image in ``[0, 1]`` (``C`` is 1 or 3) for
    column ``c`` (``columns[c]``: input, output, target, ...) and row ``r`` (an
    example); each column is one array ``[rows, H, W, C]`` (columns may differ in size:
    a low-resolution input beside its upsampled output). ``split`` names the examples'
    split."""

    split: str
    columns: tuple[str, ...]
    images: tuple[np.ndarray, ...]

    kind = "images"


@dataclass(frozen=True)
class BoxesOnImages:
    """``images[r]``: an ``[H, W, C]`` image in ``[0, 1]`` of example ``r`` of ``split``;
    ``true[r]`` and ``pred[r]``: its true and predicted boxes, ``[k, 4]`` arrays of pixel
    bounds ``x0 y0 x1 y1`` (ends exclusive; the counts may differ); ``decoding`` says how
    the predictions were read from the model (``teacher-forced`` argmax or ``greedy``)."""

    split: str
    images: np.ndarray
    true: tuple[np.ndarray, ...]
    pred: tuple[np.ndarray, ...]
    decoding: str = "teacher-forced"

    kind = "boxes"


#: What :meth:`~anyformer.tasks.base.Task.plot_data` may return.
PlotData = Confusion | Scatter | ImageGrid | BoxesOnImages


def to_hwc(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, H, W, C]`` clipped to ``[0, 1]`` (for an :class:`ImageGrid`)."""
    return np.clip(np.asarray(images, dtype=np.float64).transpose(0, 2, 3, 1), 0.0, 1.0)
