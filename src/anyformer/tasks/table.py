"""Tabular prediction: scikit-learn's bundled tables or a user's CSV file (no downloads).

Sources: ``dataset`` = ``iris``, ``wine``, ``breast_cancer`` (classification) or
``diabetes`` (regression), or ``path`` = a CSV file with a header row and ``target`` =
the column to predict (read by :mod:`anyformer.tasks.csv_table`: column types inferred,
overridable, bad files refused with the line or column named).

A row becomes ``inputs`` float32 ``[n_columns]``, one cell per feature column: a
numerical column standardised with the training rows' mean and standard deviation
(missing values stay NaN), a categorical column as the index of its category among
those seen in training (``0 .. K-1``; missing or unseen = ``K``). ``model_io`` asks for
the ``features`` embedder (one token per column, FT-Transformer; Gorishniy et al., 2021)
with ``categories`` = ``K`` per column (0 for a numerical one). Classification targets
are class indices (the sorted distinct values of the target column); a regression
target is standardised with the training rows (so the metrics are in units of its
training standard deviation, and predicting the training mean scores an MSE near 1).

Splits (a covariate shift): the rows whose ``shift_column`` value lies above its
``ood_quantile`` quantile (over all rows) form ``ood``; the others are divided between
training and ``id`` by a permutation drawn from the seed (``id_fraction`` of them to
``id``). Rows with identical features always share a split, so no ``id`` or ``ood``
input occurs in training. Baselines, fitted on the training rows and scored on the
evaluation rows: a linear model (logistic regression or least squares, after mean
imputation, standardisation and one-hot categories), scikit-learn's
``HistGradientBoosting*`` and the majority class (or ``mean``, the training mean).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.errors import SpecError
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, rng_for
from anyformer.tasks.csv_table import RawTable, read_csv_table, sklearn_table
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows

FT_TRANSFORMER = Paper(
    "Revisiting Deep Learning Models for Tabular Data",
    2021,
    "Gorishniy, Rubachev, Khrulkov & Babenko",
)
BUNDLED = ("iris", "wine", "breast_cancer", "diabetes")


class TableParams(BaseModel):
    """Parameters of ``table``.

    - ``dataset``: a bundled table (``iris`` when neither it nor ``path`` is given).
    - ``path``, ``target``: a CSV file and the column to predict (both or neither).
    - ``kind``: ``auto`` (a non-numeric target, or one of at most 20 distinct integers,
      is classified; any other is regressed), ``classify`` or ``regress``.
    - ``categorical``, ``numerical``: CSV columns whose inferred type to override.
    - ``shift_column``: the numerical column of the covariate split (default: the
      first numerical feature column); ``ood_quantile``: rows above this quantile of it
      form ``ood``.
    - ``id_fraction``: the share of the other rows held out as ``id``.
    - ``max_rows``: the most data rows read from a CSV file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: Literal["iris", "wine", "breast_cancer", "diabetes"] | None = None
    path: str | None = None
    target: str | None = None
    kind: Literal["auto", "classify", "regress"] = "auto"
    categorical: list[str] = Field(default_factory=list)
    numerical: list[str] = Field(default_factory=list)
    shift_column: str | None = None
    ood_quantile: float = Field(0.8, gt=0.0, lt=1.0)
    id_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_rows: int = Field(100_000, ge=4, le=100_000)

    @model_validator(mode="after")
    def _source(self) -> TableParams:
        if self.path is not None and self.dataset is not None:
            raise ValueError(f"set dataset={self.dataset!r} or path={self.path!r}, not both")
        if (self.path is None) != (self.target is None):
            raise ValueError("path and target go together: target names the CSV column to predict")
        if self.path is None and (self.categorical or self.numerical):
            raise ValueError("categorical/numerical override the column types of a CSV (path)")
        both = set(self.categorical) & set(self.numerical)
        if both:
            raise ValueError(f"columns {sorted(both)} are in both categorical and numerical")
        return self


def _load(params: TableParams) -> RawTable:
    """The raw table of ``params`` (cached; a CSV file again when it changed)."""
    if params.path is None:
        name = params.dataset or "iris"
        table = _bundled(name)
        if params.kind not in ("auto", table.kind):
            raise SpecError(
                f"task.kind={params.kind!r} does not fit dataset {name!r}, whose target is "
                f"to {table.kind}; leave task.kind='auto'"
            )
        return table
    try:
        stat = os.stat(params.path)
        stamp: Any = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    key = (params.path, params.target, params.kind, tuple(params.categorical),
           tuple(params.numerical), params.max_rows)  # fmt: skip
    return _load_csv(key, stamp)


@functools.lru_cache(maxsize=4)
def _bundled(name: str) -> RawTable:
    return sklearn_table(name)


@functools.lru_cache(maxsize=8)
def _load_csv(key: tuple[Any, ...], _stamp: Any) -> RawTable:
    path, target, kind, categorical, numerical, max_rows = key
    return read_csv_table(path, target, kind, categorical, numerical, max_rows)


def _preprocess(table: RawTable) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [i for i, k in enumerate(table.categories) if k == 0]
    cat = [i for i, k in enumerate(table.categories) if k > 0]
    parts = []
    if num:
        parts.append(("num", make_pipeline(SimpleImputer(), StandardScaler()), num))
    if cat:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore"), cat))
    return ColumnTransformer(parts)


@register(
    "task",
    "table",
    paper=FT_TRANSFORMER,
    summary="bundled tables or a CSV (one token per column); ood: covariate split; "
    "linear and gradient-boosting baselines",
    params=TableParams,
    caps=Capabilities(),
)
class Table(SupervisedTask):
    """Predict a table's target column from the others (see the module docstring).

    Metrics: classification ``accuracy``; regression ``mse``, ``mae``, ``rmse``
    (standardised target); ``baselines.{linear,hgb,majority|mean}.<metric>``.
    """

    input_kind: ClassVar[str] = "table"
    params: TableParams

    def __init__(self, params: TableParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        raw = _load(params)
        self.raw = raw
        self.kind = raw.kind
        self.n_classes = len(raw.classes)
        self.headline = "accuracy" if raw.kind == "classify" else "rmse"
        self.higher_is_better = raw.kind == "classify"
        self.default_objective = "causal_lm" if raw.kind == "classify" else "mse"
        self.split_rows(seed)
        self.x = self.encode()
        self.y = self.encode_target()

    # ------------------------------------------------------------ splits
    def shift_index(self) -> int:
        """The column of the covariate split."""
        raw, name = self.raw, self.params.shift_column
        numerical = [i for i, k in enumerate(raw.categories) if k == 0]
        if name is None:
            if not numerical:
                raise SpecError(
                    "task.shift_column: the table has no numerical feature column to split "
                    "on; declare one with task.numerical"
                )
            return numerical[0]
        if name not in raw.columns:
            raise SpecError(
                f"task.shift_column={name!r} is not a feature column "
                f"(valid: {', '.join(raw.columns)})"
            )
        i = raw.columns.index(name)
        if i not in numerical:
            raise SpecError(f"task.shift_column={name!r} is categorical; choose a numerical column")
        return i

    def split_rows(self, seed: int) -> None:
        """Set ``train_rows``, ``id_rows`` and ``ood_rows`` (see the module docstring)."""
        raw = self.raw
        col = self.shift_index()
        self.shift_name = raw.columns[col]
        values = raw.numbers[:, col]
        cut = float(np.nanquantile(values, self.params.ood_quantile))
        ood = values > cut
        if not ood.any():
            raise SpecError(
                f"task.ood_quantile={self.params.ood_quantile}: no row of column "
                f"'{self.shift_name}' lies above its quantile ({cut}); choose another "
                "shift_column or a lower quantile"
            )
        _, group = np.unique(raw.keys, return_inverse=True)
        rest = np.unique(group[~ood])
        perm = rest[rng_for(seed, 98).permutation(len(rest))]
        n_id = max(1, round(self.params.id_fraction * len(rest)))
        id_groups = perm[:n_id]
        is_id = np.isin(group, id_groups) & ~ood
        self.ood_rows = np.flatnonzero(ood)
        self.id_rows = np.flatnonzero(is_id)
        self.train_rows = np.flatnonzero(~ood & ~is_id)
        if len(self.train_rows) < 2:
            raise SpecError(
                f"the table has {len(raw.keys)} rows, too few to train after holding out "
                "id and ood rows; lower task.id_fraction or raise task.ood_quantile"
            )
        self.shift_threshold = cut

    # ------------------------------------------------------------ encoding
    def encode(self) -> np.ndarray:
        """Standardised numbers (NaN kept) and category indices, float32 ``[N, cols]``."""
        raw, tr = self.raw, self.train_rows
        x = raw.numbers.astype(np.float64).copy()
        for i, k in enumerate(raw.categories):
            if k == 0:
                col = x[tr, i]
                mean = float(np.nanmean(col)) if np.isfinite(col).any() else 0.0
                std = float(np.nanstd(col)) if np.isfinite(col).any() else 1.0
                x[:, i] = (x[:, i] - mean) / (std if std > 0 else 1.0)
        return x.astype(np.float32)

    def encode_target(self) -> np.ndarray:
        y = self.raw.target
        if self.kind == "classify":
            return y.astype(np.int64)
        tr = y[self.train_rows]
        self.target_mean, self.target_std = float(tr.mean()), float(tr.std()) or 1.0
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def class_labels(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.raw.classes)

    def model_io(self) -> dict[str, Any]:
        cats = list(self.raw.categories)
        head = "classify" if self.kind == "classify" else "regress"
        return {
            "input_shape": [len(cats)],
            "embedder": {"name": "features", "categories": cats},
            "head": head,
            "n_outputs": self.n_classes if self.kind == "classify" else 1,
        }

    def max_seq_len(self) -> int:
        return len(self.raw.categories) + 1

    def info(self) -> dict[str, Any]:
        """The table's columns, types, kind and split sizes."""
        return {
            "columns": list(self.raw.columns),
            "categories": list(self.raw.categories),
            "target": self.raw.target_name,
            "kind": self.kind,
            "classes": list(self.raw.classes),
            "shift_column": self.shift_name,
            "shift_threshold": self.shift_threshold,
            "rows": {"train": len(self.train_rows), "id": len(self.id_rows),
                     "ood": len(self.ood_rows)},
        }  # fmt: skip

    # ------------------------------------------------------------ examples
    def train_examples(self, step: int, n: int) -> Examples:
        pick = take_rows(rng_for(self.seed, SPLIT_IDS["train"], step), len(self.train_rows), n)
        rows = self.train_rows[pick]
        return self.x[rows], self.y[rows]

    def eval_examples(self, split: str, size: int) -> Examples:
        pool = self.id_rows if split == "id" else self.ood_rows
        rows = pool[eval_order(self.seed, split, len(pool), size)]
        return self.x[rows], self.y[rows]

    def fit_examples(self) -> Examples:
        return self.x[self.train_rows], self.y[self.train_rows]

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        from sklearn.dummy import DummyRegressor
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.pipeline import make_pipeline

        cat_mask = [0 < k < 250 for k in self.raw.categories]
        hgb_args = dict(max_iter=100, early_stopping=False, random_state=0,
                        categorical_features=cat_mask if any(cat_mask) else None)  # fmt: skip
        if self.kind == "classify":
            return {
                "linear": lambda: make_pipeline(
                    _preprocess(self.raw), LogisticRegression(max_iter=500)
                ),
                "hgb": lambda: HistGradientBoostingClassifier(**hgb_args),
            }
        return {
            "linear": lambda: make_pipeline(_preprocess(self.raw), LinearRegression()),
            "hgb": lambda: HistGradientBoostingRegressor(**hgb_args),
            "mean": DummyRegressor,
        }
