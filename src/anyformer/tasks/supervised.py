"""Shared machinery of the supervised example tasks (images, tables, estimation).

A :class:`SupervisedTask` holds examples as arrays: an input per example (an image
``[C, H, W]``, a row of a table ``[n_columns]``, a set of joint tokens ``[T, D]``) and a
target (a class index, a vector of real values or a dense map). Subclasses say how to
draw the training examples of a step, the fixed examples of an evaluation split and the
examples the non-neural baselines are fitted on; this module turns them into batches
and scores model outputs beside the baselines on the same evaluation examples.

Baselines are scikit-learn estimators (or any object with ``fit``/``predict``) fitted
once per task instance on :meth:`SupervisedTask.fit_examples` (features from
:meth:`SupervisedTask.features`) and reported as ``baselines.<name>.<metric>``; a
classification task also reports ``majority`` (always the most common training class),
which the contract replays as a model (:meth:`SupervisedTask.baseline_outputs`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.plot_data import ImageGrid, PlotData, Scatter, confusion, to_hwc

#: Examples per evaluation batch.
EVAL_BATCH_ROWS = 256
#: The PSNR reported for an exact reconstruction (instead of infinity).
PSNR_CAP = 100.0

Examples = tuple[np.ndarray, np.ndarray]


def single_thread() -> Any:
    """A context in which BLAS and OpenMP use one thread (the small baseline fits run
    several times faster than contending for busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def take_rows(rng: np.random.Generator, n_rows: int, count: int) -> np.ndarray:
    """``count`` row indices of ``0 .. n_rows - 1`` drawn with replacement."""
    return rng.integers(0, n_rows, size=count)


def eval_order(seed: int, split: str, n_rows: int, size: int) -> np.ndarray:
    """The first ``min(size, n_rows)`` indices of a permutation of ``n_rows`` rows fixed by
    ``(seed, split)`` (the examples an evaluation set of ``size`` holds)."""
    if size < 1:
        raise ValueError(f"eval size={size} must be >= 1")
    perm = rng_for(seed, SPLIT_IDS[split], 0).permutation(n_rows)
    return perm[: min(size, n_rows)]


def psnr(pred: torch.Tensor, target: torch.Tensor, cap: float = PSNR_CAP) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in ``[0, 1]``, one per example: ``10
    log10(1 / MSE)`` over all channels and pixels of the example, ``pred`` clamped to
    ``[0, 1]`` first; an exact reconstruction scores ``cap``."""
    err = (pred.double().clamp(0, 1) - target.double()) ** 2
    mse = err.reshape(err.shape[0], -1).mean(1)
    out = 10 * torch.log10(1.0 / mse.clamp_min(1e-300))
    return torch.where(mse > 0, out.clamp(max=cap), torch.full_like(out, cap))


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``mse``, ``mae`` and ``rmse`` over every entry (float64)."""
    diff = pred.astype(np.float64).reshape(target.shape) - target.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {"mse": mse, "mae": float(np.mean(np.abs(diff))), "rmse": math.sqrt(mse)}


class SupervisedTask(Task):
    """A task of independent examples with a target each (see the module docstring).

    Subclasses set ``kind`` (``classify`` or ``regress``), ``n_classes`` when they
    classify, and implement :meth:`train_examples`, :meth:`eval_examples`,
    :meth:`fit_examples` and :meth:`baseline_estimators`. A regression task with its own
    metric overrides :meth:`regression_scores`.
    """

    default_objective: ClassVar[str] = "causal_lm"  # cross-entropy of [B, classes] logits
    #: The headline metric and its direction; a task whose kind depends on its parameters
    #: (``table``, ``shapes``) sets them per instance (these are the classification ones).
    headline: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    disjoint_splits: ClassVar[bool] = True
    input_kind: ClassVar[str] = "image"
    #: What a regression target is, for the axes of the predicted-vs-true plot.
    quantity: ClassVar[str] = "target"
    kind: str = "classify"
    n_classes: int = 0

    def __init__(self, params: Any, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._fitted: dict[str, Any] | None = None
        self._majority: int | None = None

    # ------------------------------------------------------------ hooks
    def train_examples(self, step: int, n: int) -> Examples:
        """The ``n`` training examples of ``step`` (inputs, targets); only ``(seed, step)``
        decides them."""
        raise NotImplementedError

    def eval_examples(self, split: str, size: int) -> Examples:
        """About ``size`` fixed examples of ``split`` (``id`` or ``ood``)."""
        raise NotImplementedError

    def fit_examples(self) -> Examples:
        """The training-distribution examples the baselines are fitted on."""
        raise NotImplementedError

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        """``{name: factory}`` of the fitted baselines (``majority`` is added for
        classification)."""
        return {}

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The flat feature rows the baselines read (default: every value of an example)."""
        return inputs.reshape(inputs.shape[0], -1).astype(np.float64)

    # ------------------------------------------------------------ batches
    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        """``inputs`` float32 ``[B, ...]``, ``targets`` long ``[B]`` (classify) or float32,
        ``loss_mask`` bool ``[B]``."""
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.kind == "classify":
            targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        else:
            targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        mask = torch.ones(inputs.shape[0], dtype=torch.bool)
        return Batch(inputs=inputs, targets=targets, loss_mask=mask)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self.to_batch(*self.train_examples(step, batch_size))

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (valid: {', '.join(self.splits)})")
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        x, y = self.eval_examples(split, size)
        return [
            self.to_batch(x[i : i + EVAL_BATCH_ROWS], y[i : i + EVAL_BATCH_ROWS])
            for i in range(0, x.shape[0], EVAL_BATCH_ROWS)
        ]

    # ------------------------------------------------------------ baselines
    def fitted_baselines(self) -> dict[str, Any]:
        """The baselines fitted on :meth:`fit_examples`, once per instance."""
        if self._fitted is None:
            x, y = self.fit_examples()
            feats = self.features(x)
            fitted = {}
            with warnings.catch_warnings(), single_thread():
                warnings.simplefilter("ignore")  # convergence warnings of capped max_iter
                for name, make in self.baseline_estimators().items():
                    fitted[name] = make().fit(feats, y if y.ndim == 1 else y.reshape(len(y), -1))
            if self.kind == "classify":
                counts = np.bincount(y.astype(np.int64), minlength=self.n_classes)
                self._majority = int(counts.argmax())
            self._fitted = fitted
        return self._fitted

    def baseline_predictions(self, batch: Batch) -> dict[str, np.ndarray]:
        """``{name: predictions}`` of every baseline on the batch's examples: class indices
        ``[B]`` (classify) or values shaped like the targets (regress)."""
        fitted = self.fitted_baselines()
        feats = self.features(batch.inputs.double().numpy())
        out = {}
        for name, est in fitted.items():
            with single_thread():
                pred = np.asarray(est.predict(feats))
            out[name] = pred if self.kind == "classify" else pred.reshape(batch.targets.shape)
        if self.kind == "classify":
            out["majority"] = np.full(batch.targets.shape[0], self._majority)
        return out

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        """A baseline's answers written as model outputs (one-hot logits ``[B, n_classes]``
        when classifying, else the predicted values)."""
        outs = []
        for batch in batches:
            pred = torch.from_numpy(np.asarray(self.baseline_predictions(batch)[name]))
            if self.kind == "classify":
                outs.append(torch.nn.functional.one_hot(pred.long(), self.n_classes).float())
            else:
                outs.append(pred.float())
        return outs

    # ------------------------------------------------------------ plots
    def class_labels(self) -> tuple[str, ...]:
        """The names of the classes (a confusion matrix's axes): their indices by default."""
        return tuple(str(i) for i in range(self.n_classes))

    def plot_data(
        self, split: str, outputs: list[torch.Tensor], batches: list[Batch]
    ) -> PlotData | None:
        """Classification: the confusion matrix of the argmax of the logits. Image
        targets (a dense head): input, output and target of the first examples side by
        side. Other regression: predicted against true values, every target value a point
        (the lab adds the conformal interval of a regression head)."""
        targets = torch.cat([b.targets for b in batches])
        if self.kind == "classify":
            pred = torch.cat([o.reshape(o.shape[0], -1).argmax(-1).cpu() for o in outputs])
            return confusion(split, targets.numpy(), pred.numpy(), self.n_classes,
                             self.class_labels())  # fmt: skip
        out = torch.cat([o.detach().float().cpu() for o in outputs])
        if targets.dim() == 4:  # images [B, C, H, W]
            return self.image_grid(split, out, batches)
        if out.numel() != targets.numel():  # e.g. a distribution head: the lab reads it
            out = torch.full_like(targets, float("nan"), dtype=torch.float32)
        return Scatter(split, targets.double().numpy().reshape(-1),
                       out.double().numpy().reshape(-1), self.quantity)  # fmt: skip

    def image_grid(
        self, split: str, outputs: torch.Tensor, batches: list[Batch], rows: int = 4
    ) -> ImageGrid:
        """Input, output and target of the first ``rows`` examples."""
        inputs = torch.cat([b.inputs for b in batches])[:rows]
        targets = torch.cat([b.targets for b in batches])[:rows]
        columns = {"input": inputs, "output": outputs[:rows], "target": targets}
        return ImageGrid(split, tuple(columns), tuple(to_hwc(v.numpy()) for v in columns.values()))

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Classification: ``accuracy`` (argmax of the ``[B, n_classes]`` logits).
        Regression: :meth:`regression_scores`. Both with ``baselines.<name>.<metric>``
        on the same examples."""
        if self.kind == "classify":
            return self._classification_scores(outputs, batches)
        targets = torch.cat([b.targets for b in batches]).double().numpy()
        pred = torch.cat([o.reshape(b.targets.shape) for o, b in zip(outputs, batches)])
        metrics = self.regression_scores(pred.double().numpy(), targets, batches)
        base: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            for name, p in self.baseline_predictions(batch).items():
                base.setdefault(name, []).append(p)
        metrics["baselines"] = {
            name: {
                k: v
                for k, v in self.regression_scores(np.concatenate(ps), targets, batches).items()
                if not isinstance(v, dict)
            }
            for name, ps in base.items()
        }
        return metrics

    def regression_scores(
        self, pred: np.ndarray, targets: np.ndarray, batches: list[Batch]
    ) -> dict[str, Any]:
        """``mse``, ``mae``, ``rmse`` of ``pred`` (shaped like ``targets``)."""
        return regression_metrics(pred, targets)

    def _classification_scores(
        self, outputs: list[torch.Tensor], batches: list[Batch]
    ) -> dict[str, Any]:
        if outputs and outputs[0].dim() == 3 and batches[0].targets.dim() == 2:
            # an objective rewrote the targets per token (MP3's positions): the accuracy
            # of its targets at the scored tokens; the class baselines do not apply
            right = sum(
                int(((o.argmax(-1) == b.targets) & b.loss_mask.bool()).sum())
                for o, b in zip(outputs, batches)
            )
            count = sum(int(b.loss_mask.sum()) for b in batches)
            return {"accuracy": right / max(count, 1), "examples": count, "baselines": {}}
        labels = torch.cat([b.targets for b in batches]).numpy()
        pred = torch.cat([o.reshape(o.shape[0], -1).argmax(-1) for o in outputs]).numpy()
        base: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            for name, p in self.baseline_predictions(batch).items():
                base.setdefault(name, []).append(p)
        return {
            "accuracy": float(np.mean(pred == labels)),
            "examples": int(labels.shape[0]),
            "baselines": {
                name: {"accuracy": float(np.mean(np.concatenate(ps) == labels))}
                for name, ps in base.items()
            },
        }
