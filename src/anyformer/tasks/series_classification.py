"""Time-series classification on the UCR/UEA archive's sets (``series_classification``).

Data: the ``.ts`` files sktime's wheel ships (``dataset``: ArrowHead, GunPoint,
ItalyPowerDemand, BasicMotions, JapaneseVowels; found with
``importlib.util.find_spec('sktime')``, sktime is never imported), or a user's own pair
``path=DIR/NAME`` -> ``DIR/NAME_TRAIN.ts`` and ``DIR/NAME_TEST.ts``, read by
:mod:`anyformer.tasks.ts_format` (nothing evaluated, bad lines refused naming file and
line). The archive's official split is kept: training batches draw TRAIN's cases with
replacement, ``id`` is the TEST set (no validation part: nothing here is tuned on TEST).

Inputs ``[B, T, variates]`` for the series embedders (``points``, ``patches_1d``,
``variates``) and the pooled ``classify`` head:

- each variate is standardised by the mean and standard deviation of TRAIN's observed
  values (one affine map per variate, so for a univariate set Euclidean distances keep
  their order and 1-NN is the archive's);
- missing values (``?``) inside a series are filled by linear interpolation over time
  from the observed steps of that variate (the nearest observed value at the ends; 0
  when a variate has none);
- unequal lengths (JapaneseVowels: 7 to 29 steps): every series is padded with zeros
  after its end to ``T``, the longest series of TRAIN and TEST, and one more variate is
  appended, the **length indicator** (1 at the series' own steps, 0 in the padding), so
  that every embedder sees where a series ends (a key-padding mask would fit ``points``
  only: the other embedders' tokens are not time steps). Equal-length sets get no
  indicator.

``ood`` (the TEST cases, transformed once per seed): ``noise`` adds Gaussian noise of
standard deviation ``ood_noise`` (in standardised units) to every real value; ``shift``
delays every series by ``round(ood_shift * length)`` steps within its own length (the
first value repeated in front, the end cut off).

Baselines on the same examples: ``nn1``, the 1-nearest-neighbour classifier with
Euclidean distance over TRAIN (the archive's reference; on ragged sets over the
zero-padded standardised values without the indicator; ties go to the first training
case), and ``majority`` (TRAIN's most common class). On GunPoint ``nn1`` scores the
archive's published 0.913 (error 0.087).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, rng_for
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows
from anyformer.tasks.ts_format import TsData, bundled_prefix, read_split

UCR = Paper("The UCR Time Series Archive", 2019, "Dau et al.")


class SeriesClassificationParams(BaseModel):
    """Parameters of ``series_classification`` (see the module docstring): a bundled
    ``dataset`` or a user's ``path`` (``DIR/NAME``, overrides ``dataset``), and the
    ``ood`` transform (``noise`` of ``ood_noise`` standard deviations, or a ``shift`` of
    ``ood_shift`` of each series' length)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: Literal["ArrowHead", "GunPoint", "ItalyPowerDemand", "BasicMotions",
                     "JapaneseVowels"] = "GunPoint"  # fmt: skip
    path: str | None = None
    ood: Literal["noise", "shift"] = "noise"
    ood_noise: float = Field(0.5, gt=0.0, le=10.0)
    ood_shift: float = Field(0.1, gt=0.0, lt=1.0)


def fill_missing(x: np.ndarray) -> np.ndarray:
    """``x [L, C]`` with each variate's NaNs linearly interpolated over time (the nearest
    observed value beyond the ends; 0 when the variate has no observed value)."""
    out = x.copy()
    steps = np.arange(x.shape[0])
    for c in range(x.shape[1]):
        seen = ~np.isnan(x[:, c])
        if seen.all():
            continue
        out[:, c] = np.interp(steps, steps[seen], x[seen, c]) if seen.any() else 0.0
    return out


def pad_series(series: list[np.ndarray], length: int, indicator: bool) -> np.ndarray:
    """``[N, length, C (+1)]`` float32: each ``[L_i, C]`` series followed by zeros, with
    the length indicator (1 at the first ``L_i`` steps) appended when ``indicator``."""
    c = series[0].shape[1]
    out = np.zeros((len(series), length, c + int(indicator)), dtype=np.float32)
    for i, s in enumerate(series):
        out[i, : s.shape[0], :c] = s
        if indicator:
            out[i, : s.shape[0], c] = 1.0
    return out


def delay(x: np.ndarray, steps: int) -> np.ndarray:
    """``x [L, C]`` delayed by ``steps``: the first value repeated ``steps`` times in front,
    the last ``steps`` values cut."""
    if steps <= 0:
        return x.copy()
    steps = min(steps, x.shape[0])
    return np.concatenate([np.repeat(x[:1], steps, 0), x[: x.shape[0] - steps]])


class OneNearestNeighbour:
    """1-NN with Euclidean distance (ties: the first training row), ``fit``/``predict``
    on flat feature rows."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> OneNearestNeighbour:
        self.x, self.y = np.asarray(x, dtype=np.float64), np.asarray(y)
        self.sq = (self.x**2).sum(1)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        d = self.sq[None, :] - 2.0 * x @ self.x.T  # |a-b|^2 minus |a|^2 (same per row)
        return self.y[d.argmin(1)]


@functools.lru_cache(maxsize=8)
def _load(prefix: str, field: str) -> tuple[TsData, TsData]:
    return read_split(Path(prefix), field)


@register(
    "task",
    "series_classification",
    paper=UCR,
    summary="classify UCR/UEA series (sktime's bundled ArrowHead, GunPoint, ItalyPowerDemand, "
    "BasicMotions, JapaneseVowels, or your .ts files) on the official split; ood: noise or "
    "time shift; 1-NN Euclidean and majority",
    params=SeriesClassificationParams,
    caps=Capabilities(),
)
class SeriesClassification(SupervisedTask):
    """Classify a series of a UCR/UEA set (see the module docstring). Metrics:
    ``accuracy`` and ``baselines.{nn1,majority}.accuracy``."""

    input_kind: ClassVar[str] = "series"
    params: SeriesClassificationParams

    def __init__(self, params: SeriesClassificationParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        if p.path is not None:
            prefix, field = str(Path(p.path).expanduser()), "path"
        else:
            prefix, field = str(bundled_prefix(p.dataset)), "dataset"
        train, test = _load(prefix, field)
        self.name = Path(prefix).name
        self.classes = train.classes
        index = {c: i for i, c in enumerate(self.classes)}
        self.n_classes = len(self.classes)
        self.variates = train.dimensions
        lengths = np.concatenate([train.lengths, test.lengths])
        self.length = int(lengths.max())
        self.ragged = bool(lengths.min() != lengths.max())
        observed = np.concatenate([s for s in train.series])
        mean = np.nanmean(observed, 0)
        std = np.nanstd(observed, 0)
        self.mean = np.where(np.isnan(mean), 0.0, mean)
        self.std = np.where(np.isnan(std) | (std == 0), 1.0, std)
        self.train_series = [fill_missing((s - self.mean) / self.std) for s in train.series]
        self.test_series = [fill_missing((s - self.mean) / self.std) for s in test.series]
        self.x_train = pad_series(self.train_series, self.length, self.ragged)
        self.y_train = np.array([index[c] for c in train.labels], dtype=np.int64)
        self.x_test = pad_series(self.test_series, self.length, self.ragged)
        self.y_test = np.array([index[c] for c in test.labels], dtype=np.int64)
        self.x_ood = self._ood()

    def _ood(self) -> np.ndarray:
        p = self.params
        rng = rng_for(self.seed, SPLIT_IDS["ood"], 1)
        if p.ood == "noise":
            moved = [s + rng.normal(0.0, p.ood_noise, s.shape) for s in self.test_series]
        else:
            moved = [delay(s, round(p.ood_shift * s.shape[0])) for s in self.test_series]
        return pad_series(moved, self.length, self.ragged)

    @property
    def input_variates(self) -> int:
        """Variates of the inputs: the data's, plus the length indicator when ragged."""
        return self.variates + int(self.ragged)

    def class_labels(self) -> tuple[str, ...]:
        return self.classes

    def model_io(self) -> dict[str, Any]:
        return {"input_shape": [self.length, self.input_variates], "embedder": "points",
                "head": "classify", "n_outputs": self.n_classes}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.length  # ``points``: one token per step, the longest tokenization

    def train_examples(self, step: int, n: int) -> Examples:
        rows = take_rows(rng_for(self.seed, SPLIT_IDS["train"], step), len(self.y_train), n)
        return self.x_train[rows], self.y_train[rows]

    def eval_examples(self, split: str, size: int) -> Examples:
        x = self.x_test if split == "id" else self.x_ood
        order = eval_order(self.seed, split, len(self.y_test), size)
        return x[order], self.y_test[order]

    def fit_examples(self) -> Examples:
        return self.x_train, self.y_train

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The series' values without the length indicator, flat (what ``nn1`` compares)."""
        x = np.asarray(inputs)[..., : self.variates]
        return x.reshape(x.shape[0], -1).astype(np.float64)

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        return {"nn1": OneNearestNeighbour}
