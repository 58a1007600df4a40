"""Multivariate forecasting with the community's protocol (``forecast``).

A series ``[N, variates]`` (generated, or one of statsmodels' bundled datasets) is split
chronologically into train / validation / test spans of 70% / 10% / 20% of its steps
(the Time-Series-Library borders); a scaler (mean and standard deviation per variate) is
fit on the train span only and applied to the whole series, and every metric is on that
normalised scale. A window is ``lookback`` steps of input and the next ``horizon`` steps
as target.

- training batches: windows whose input and target lie in the train span, drawn
  uniformly by ``(seed, step)``;
- ``id``: **every** window whose target lies in the test span (its lookback may reach
  back into the validation span, as in the Time-Series-Library), one per start position,
  in order, without dropping a last partial batch; the ``size`` asked for is ignored;
- ``ood`` (``ood='shift'``, the default): the same windows after a level and variance
  shift of that later period: on the normalised scale every value ``v`` of input and
  target becomes ``ood_scale * v + ood_shift`` (RevIN's motivating case: the scaler
  fit on train no longer fits);
- ``ood`` (``ood='horizon'``): a longer horizon, unshifted: every window whose
  ``ood_horizon`` target steps (default ``2 * horizon``) lie in the test span. The
  model's head has a fixed horizon, so the model forecasts it **autoregressively**
  (:meth:`Forecast.evaluate`): it forecasts ``horizon`` steps, appends them to its
  input, drops as many of the oldest and forecasts again until ``ood_horizon`` steps
  are out; ``linear`` and ``dlinear`` are rolled the same way, while the naive
  forecasts, ``arima``, ``ets`` and ``optimal`` forecast any horizon directly. Its
  inputs are the ``id`` windows' own, so the task then does not declare ``id`` and
  ``ood`` disjoint (``disjoint_splits``).

The validation span is held out and unused (no early stopping).

Batch: ``inputs`` ``[B, lookback, variates]``, ``targets`` ``[B, horizon, variates]``,
``loss_mask`` ``[B]`` all True, ``extras["start"]`` the window's first step and
``extras["split"]`` its split's id (which the ``optimal`` baseline reads). Metrics: ``mse`` (headline), ``mae``, and per horizon step
``mse_by_step``/``mae_by_step`` (keys ``1 .. horizon``); baselines on the same windows:
``last_value`` (the last input value repeated), ``seasonal_naive`` (the value one
``period`` earlier; not reported when ``period`` exceeds the lookback or is 1),
``linear`` (DLinear-style but closed form, not trained: one least-squares map with
intercept from a variate's lookback to its horizon, shared by the variates, fit on
every training window; a small ridge of 1e-6 keeps it defined), for generated data
``optimal`` (the conditional mean under the generating process: the noise-free VAR
recursion from the last ``order`` values; trend + seasonality for ``seasonal``), and
those listed in ``baselines`` (:mod:`anyformer.tasks.forecast_baselines`): ``dlinear``
(a trained DLinear, ``dlinear_steps`` Adam steps, moving-average kernel
``dlinear_kernel``; on by default), ``arima`` (statsmodels' ARIMA(``arima_order``) per
variate) and ``ets`` (additive trend, additive season of ``period`` when it is > 1 and
``lookback >= period + 3``), both fit on the train span and applied to each window's
lookback; ``arima``/``ets`` are off by default (statsmodels' fits take seconds per
variate).

Data (``data``): ``var`` (a stable VAR(``order``) of ``variates`` series, unit
innovations, random coefficients fixed by ``data_seed``), ``seasonal`` (per variate a
linear trend, two harmonics of ``period`` and Gaussian noise of std ``noise``),
statsmodels' ``sunspots``, ``co2``, ``elnino``, ``macrodata``, ``nile``, sktime's
``airline``, ``lynx``, ``shampoo``, ``uschange``, ``longley``, and ``csv``: the columns
``columns`` of the user's CSV file ``path``, in the time order of column ``time``, with
missing values interpolated or refused (``missing``), as
:mod:`anyformer.tasks.forecast_data` describes.

Papers: the protocol of Informer (Zhou et al., 2021) and the Time-Series-Library; the
linear baseline of "Are Transformers Effective for Time Series Forecasting?" (Zeng et
al., 2023).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.errors import SpecError
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks import forecast_baselines as fb
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.forecast_data import (
    SKTIME,
    STATSMODELS,
    load_sktime,
    load_statsmodels,
    read_series_csv,
)

DLINEAR = Paper("Are Transformers Effective for Time Series Forecasting?", 2023, "Zeng et al.")
#: Fractions of the steps in the train and validation spans (the test span is the rest).
TRAIN_FRACTION, VAL_FRACTION = 0.7, 0.1
EVAL_BATCH_ROWS = 256
#: Each bundled dataset's season length (1: none).
PERIODS = {**STATSMODELS, **{name: period for name, (_, period) in SKTIME.items()}}
GENERATED = ("var", "seasonal")
Data = Literal[
    "var", "seasonal", "sunspots", "co2", "elnino", "macrodata", "nile",
    "airline", "lynx", "shampoo", "uschange", "longley", "csv",
]  # fmt: skip
#: Trained DLinear baselines by (train span digest, lookback, horizon, kernel, steps,
#: seed), the oldest dropped past 8: tasks built again on the same data reuse them.
_DLINEAR_CACHE: dict[tuple[Any, ...], fb.DLinear] = {}
#: The longest lookback ``arima``/``ets`` are read off for (``lookback + 1`` fits).
MAX_STAT_LOOKBACK = 512


class ForecastParams(BaseModel):
    """Parameters of ``forecast`` (see the module docstring). ``length``, ``variates``,
    ``order``, ``noise`` and ``data_seed`` concern generated data only; ``period``
    (``None``: 24 for ``seasonal``, 1 for ``var``, the dataset's own season otherwise)
    is the seasonal-naive baseline's lag and the generated season."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: Data = "var"
    lookback: int = Field(48, ge=1, le=4096)
    horizon: int = Field(12, ge=1, le=1024)
    length: int = Field(2000, ge=50, le=100000)
    variates: int = Field(4, ge=1, le=64)
    order: int = Field(2, ge=1, le=8)
    period: int | None = Field(None, ge=1, le=1000)
    noise: float = Field(0.3, ge=0.0, le=10.0)
    data_seed: int = Field(0, ge=0, le=100000)
    ood_shift: float = Field(2.0, ge=-100.0, le=100.0)
    ood_scale: float = Field(2.0, gt=0.0, le=100.0)
    ood: Literal["shift", "horizon"] = "shift"
    ood_horizon: int | None = Field(None, ge=2, le=2048)
    path: str | None = None
    columns: list[str] | None = None
    time: str | None = None
    missing: Literal["interpolate", "refuse"] = "interpolate"
    baselines: list[Literal["dlinear", "arima", "ets"]] = Field(default_factory=lambda: ["dlinear"])
    dlinear_kernel: int = Field(25, ge=1, le=1001)
    dlinear_steps: int = Field(200, ge=1, le=10000)
    arima_order: tuple[int, int, int] = (2, 0, 0)

    @model_validator(mode="after")
    def _consistent(self) -> ForecastParams:
        csv_only = {"columns": self.columns, "time": self.time}
        if self.data == "csv" and self.path is None:
            raise ValueError("data='csv' reads the file named by path: set task.path=FILE")
        if self.data != "csv":
            for name, value in {"path": self.path, **csv_only}.items():
                if value is not None:
                    raise ValueError(f"{name}={value!r} is for data='csv' (data={self.data!r})")
        if self.columns is not None and not self.columns:
            raise ValueError("columns=[] names no column; leave it unset for every column")
        if self.dlinear_kernel % 2 == 0:
            raise ValueError(f"dlinear_kernel={self.dlinear_kernel} must be odd (DLinear's)")
        p, d, q = self.arima_order
        if not (0 <= p <= 5 and 0 <= d <= 2 and 0 <= q <= 5):
            raise ValueError(f"arima_order={self.arima_order}: p and q in 0..5, d in 0..2")
        if self.ood_horizon is not None:
            if self.ood != "horizon":
                raise ValueError("ood_horizon is for ood='horizon'")
            if self.ood_horizon <= self.horizon:
                raise ValueError(
                    f"ood_horizon={self.ood_horizon} must exceed horizon={self.horizon}"
                )
        return self

    @property
    def long_horizon(self) -> int:
        """The ``ood`` horizon: ``ood_horizon`` (``2 * horizon`` by default) when
        ``ood='horizon'``, else ``horizon``."""
        if self.ood != "horizon":
            return self.horizon
        return self.ood_horizon or 2 * self.horizon


def var_coefficients(rng: np.random.Generator, c: int, p: int) -> np.ndarray:
    """``[p, c, c]`` coefficients of a stable VAR(p): drawn N(0, 1/(c p)), then scaled
    until the companion matrix's spectral radius is at most 0.9."""
    a = rng.normal(0.0, 1.0 / np.sqrt(c * p), size=(p, c, c))
    companion = np.zeros((c * p, c * p))
    companion[c:, :-c] = np.eye(c * (p - 1))
    while True:
        companion[:c] = np.concatenate(list(a), axis=1)
        radius = float(np.abs(np.linalg.eigvals(companion)).max())
        if radius <= 0.9:
            return a
        a = a * (0.89 / radius) ** (1.0 / p) if p > 1 else a * 0.89 / radius


def var_forecast(a: np.ndarray, history: np.ndarray, horizon: int) -> np.ndarray:
    """The conditional mean ``[horizon, c]`` of a zero-mean VAR with coefficients ``a``
    ``[p, c, c]`` given its last ``p`` values ``history`` ``[p, c]`` (oldest first)."""
    p = a.shape[0]
    values = list(history[-p:])
    out = []
    for _ in range(horizon):
        nxt = sum(a[i] @ values[-1 - i] for i in range(p))
        values.append(nxt)
        out.append(nxt)
    return np.stack(out)


def load_bundled(name: str) -> np.ndarray:
    """A bundled dataset (statsmodels' or sktime's) as ``[N, variates]`` float64."""
    return load_sktime(name) if name in SKTIME else load_statsmodels(name)


@register(
    "task",
    "forecast",
    paper=DLINEAR,
    summary="forecast horizon steps of a multivariate series from lookback steps (VAR, seasonal, "
    "statsmodels' and sktime's datasets, a CSV file); chronological split, scaler fit on train, "
    "every test window; ood: level and variance shift, or a longer horizon rolled out; last "
    "value, seasonal naive, least-squares linear, trained DLinear, ARIMA, ETS, optimal",
    params=ForecastParams,
    caps=Capabilities(),
)
class Forecast(Task):
    """See the module docstring."""

    headline: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False
    default_objective: ClassVar[str] = "mse"
    input_kind: ClassVar[str] = "series"
    #: training windows lie in the train span, evaluation windows' targets in the test span
    disjoint_splits: ClassVar[bool] = True
    params: ForecastParams

    def __init__(self, params: ForecastParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._stat_maps: dict[tuple[str, int], list[np.ndarray]] = {}
        p = params
        # a longer horizon scores the id windows' inputs again (only their targets are
        # longer), so id and ood are not disjoint then; training windows never are
        self.disjoint_splits = p.ood != "horizon"
        n = self.raw.shape[0]
        self.n_train = int(TRAIN_FRACTION * n)
        self.test_start = self.n_train + int(VAL_FRACTION * n)
        self.train_starts = np.arange(0, self.n_train - p.lookback - p.horizon + 1)
        self.test_starts = np.arange(self.test_start - p.lookback, n - p.lookback - p.horizon + 1)
        #: the ``ood`` windows: the test windows, or those of the longer horizon
        self.ood_starts = np.arange(
            self.test_start - p.lookback, n - p.lookback - p.long_horizon + 1
        )
        source = f"data='{p.data}'" + (f" (task.path={p.path!r})" if p.data == "csv" else "")
        fit = min(len(self.train_starts), len(self.test_starts), len(self.ood_starts))
        if fit < 1 or self.test_starts[0] < 0:
            longer = f" (ood_horizon {p.long_horizon})" if p.ood == "horizon" else ""
            raise SpecError(
                f"task.lookback={p.lookback} + task.horizon={p.horizon}{longer} do not fit "
                f"{source} of {n} steps (train span {self.n_train} steps, test span "
                f"{n - self.test_start}, with lookback + horizon needed in each); use a shorter "
                "lookback or horizon, or a longer series"
            )
        if {"arima", "ets"} & set(p.baselines) and p.lookback > MAX_STAT_LOOKBACK:
            raise SpecError(
                f"task.baselines={p.baselines}: arima/ets are read off lookback + 1 windows, "
                f"at most task.lookback={MAX_STAT_LOOKBACK} (got {p.lookback}); drop them"
            )

    # ------------------------------------------------------------ data
    @property
    def period(self) -> int:
        p = self.params
        if p.period is not None:
            return p.period
        return {"seasonal": 24, "var": 1, "csv": 1}.get(p.data) or PERIODS[p.data]

    @cached_property
    def _generated(self) -> tuple[np.ndarray, dict[str, Any]]:
        p = self.params
        rng = rng_for(p.data_seed, 7)
        if p.data == "var":
            a = var_coefficients(rng, p.variates, p.order)
            burn = 200
            x = np.zeros((p.length + burn, p.variates))
            eps = rng.normal(size=x.shape)
            for t in range(p.order, x.shape[0]):
                x[t] = sum(a[i] @ x[t - 1 - i] for i in range(p.order)) + eps[t]
            return x[burn:], {"a": a}
        if p.data == "seasonal":
            t = np.arange(p.length, dtype=np.float64)[:, None]
            trend = rng.uniform(-2.0, 2.0, size=p.variates)
            amp = rng.uniform(0.5, 1.5, size=(2, p.variates))
            phase = rng.uniform(0.0, 2 * np.pi, size=(2, p.variates))
            w = 2 * np.pi * t / self.period
            mean = (
                trend * t / p.length
                + amp[0] * np.sin(w + phase[0])
                + 0.5 * amp[1] * np.sin(2 * w + phase[1])
            )
            return mean + p.noise * rng.normal(size=mean.shape), {"mean": mean}
        if p.data == "csv":
            return read_series_csv(p.path or "", p.columns, p.time, p.missing), {}
        return load_bundled(p.data), {}

    @property
    def raw(self) -> np.ndarray:
        """The series ``[N, variates]`` before scaling."""
        return self._generated[0]

    @cached_property
    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` per variate of the train span only (std 0 read as 1)."""
        train = self.raw[: self.n_train]
        std = train.std(axis=0)
        return train.mean(axis=0), np.where(std > 0, std, 1.0)

    @cached_property
    def scaled(self) -> np.ndarray:
        mean, std = self.scaler
        return (self.raw - mean) / std

    # ------------------------------------------------------------ batches
    def model_io(self) -> dict[str, Any]:
        return {
            "embedder": "points",
            "input_shape": [self.params.lookback, self.raw.shape[1]],
            "head": "forecast",
            "n_outputs": self.params.horizon,
        }

    def max_seq_len(self) -> int:
        return self.params.lookback

    def windows(self, starts: np.ndarray, split: str) -> Batch:
        """The windows starting at ``starts``; ``ood`` ones shifted or with the longer
        horizon (module docstring)."""
        p, z = self.params, self.scaled
        horizon = p.long_horizon if split == "ood" else p.horizon
        idx = starts[:, None] + np.arange(p.lookback + horizon)[None]
        w = z[idx]
        if split == "ood" and p.ood == "shift":
            w = p.ood_scale * w + p.ood_shift
        x, y = w[:, : p.lookback], w[:, p.lookback :]
        return Batch(
            inputs=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            targets=torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)),
            loss_mask=torch.ones(len(starts), dtype=torch.bool),
            extras={
                "start": torch.from_numpy(starts.astype(np.int64)),
                "split": torch.full((len(starts),), SPLIT_IDS[split], dtype=torch.long),
            },
        )

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        return self.windows(rng.choice(self.train_starts, size=batch_size), "train")

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        """Every test window, in order (``size`` is ignored: the protocol scores all)."""
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (valid: {', '.join(self.splits)})")
        s = self.ood_starts if split == "ood" else self.test_starts
        return [self.windows(s[i : i + EVAL_BATCH_ROWS], split)
                for i in range(0, len(s), EVAL_BATCH_ROWS)]  # fmt: skip

    @torch.no_grad()
    def evaluate(
        self,
        predict: Callable[[Batch], torch.Tensor],
        split: str,
        size: int,
        loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """:meth:`Task.evaluate`; with ``ood='horizon'`` the ``ood`` split is forecast
        autoregressively by :meth:`rollout` (the head's horizon is fixed)."""
        if split == "ood" and self.params.ood == "horizon":
            predict = self.rollout(predict)
        return super().evaluate(predict, split, size, loss_fn)

    def rollout(self, predict: Callable[[Batch], torch.Tensor]) -> Callable[[Batch], torch.Tensor]:
        """``predict`` extended to a batch's whole target length: forecast ``horizon``
        steps, append them to the input, keep its last ``lookback`` steps, repeat; the
        steps past the target are dropped."""
        p = self.params

        def rolled(batch: Batch) -> torch.Tensor:
            x = batch.inputs
            rows, want = x.shape[0], batch.targets.shape[1]
            parts: list[torch.Tensor] = []
            while sum(part.shape[1] for part in parts) < want:
                step = Batch(
                    inputs=x,
                    targets=torch.zeros(rows, p.horizon, x.shape[2]),
                    loss_mask=batch.loss_mask,
                    extras=batch.extras,
                )
                out = predict(step).float().cpu().reshape(rows, p.horizon, x.shape[2])
                parts.append(out)
                x = torch.cat([x, out.to(x.dtype)], dim=1)[:, -p.lookback :]
            return torch.cat(parts, dim=1)[:, :want]

        return rolled

    # ------------------------------------------------------------ baselines
    @cached_property
    def linear_map(self) -> np.ndarray:
        """``[lookback + 1, horizon]``: least squares from a variate's lookback (and 1) to
        its horizon over every training window and variate."""
        b = self.windows(self.train_starts, "train")
        x = b.inputs.double().numpy().transpose(0, 2, 1).reshape(-1, self.params.lookback)
        y = b.targets.double().numpy().transpose(0, 2, 1).reshape(-1, self.params.horizon)
        x1 = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        gram = x1.T @ x1 + 1e-6 * np.eye(x1.shape[1])
        return np.linalg.solve(gram, x1.T @ y)

    @cached_property
    def dlinear(self) -> fb.DLinear:
        """DLinear (:mod:`anyformer.tasks.forecast_baselines`) trained on the training
        windows, deterministic by the task's seed (kept for tasks of the same data,
        settings and seed: :data:`_DLINEAR_CACHE`)."""
        p = self.params
        digest = hashlib.sha256(np.ascontiguousarray(self.scaled[: self.n_train]).tobytes())
        key = (digest.hexdigest(), p.lookback, p.horizon, p.dlinear_kernel, p.dlinear_steps,
               self.seed)  # fmt: skip
        if key in _DLINEAR_CACHE:
            return _DLINEAR_CACHE[key]

        def windows(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            b = self.windows(self.train_starts[i], "train")
            return b.inputs.double().numpy(), b.targets.double().numpy()

        if len(_DLINEAR_CACHE) >= 8:
            _DLINEAR_CACHE.pop(next(iter(_DLINEAR_CACHE)))
        _DLINEAR_CACHE[key] = fb.train_dlinear(
            windows, len(self.train_starts), p.lookback, p.horizon, p.dlinear_kernel,
            p.dlinear_steps, int(rng_for(self.seed, 13).integers(2**31)),
        )  # fmt: skip
        return _DLINEAR_CACHE[key]

    def statistical_maps(self, name: str, horizon: int) -> list[np.ndarray]:
        """Per variate, ``A`` ``[lookback + 1, horizon]`` with ``[window, 1] @ A`` the
        forecast of ``name`` (``arima``/``ets``) fit on the train span and applied to the
        window (:func:`~anyformer.tasks.forecast_baselines.affine_forecaster`)."""
        key = (name, horizon)
        if key not in self._stat_maps:
            p, train = self.params, self.scaled[: self.n_train]
            maps = []
            for c in range(train.shape[1]):
                if name == "arima":
                    res = fb.fit_arima(train[:, c], p.arima_order)
                else:
                    seasonal = self.period > 1 and p.lookback >= self.period + 3
                    res = fb.fit_ets(train[:, c], self.period if seasonal else 1)
                forecast = fb.applied_forecast(res, horizon)
                maps.append(fb.affine_forecaster(forecast, p.lookback, seed=c))
            self._stat_maps[key] = maps
        return self._stat_maps[key]

    def _roll(
        self, one: Callable[[np.ndarray], np.ndarray], x: np.ndarray, want: int
    ) -> np.ndarray:
        """A fixed-horizon forecaster ``one`` (``[B, lookback, C] -> [B, horizon, C]``)
        rolled out to ``want`` steps as :meth:`rollout` rolls the model."""
        parts, done = [], 0
        while done < want:
            out = one(x)
            parts.append(out)
            done += out.shape[1]
            x = np.concatenate([x, out], axis=1)[:, -self.params.lookback :]
        return np.concatenate(parts, axis=1)[:, :want]

    def baseline_predictions(self, batch: Batch, split: str) -> dict[str, np.ndarray]:
        """``{name: [B, horizon, variates]}`` of every baseline on the batch's windows
        (the ``ood`` horizon for ``ood`` windows)."""
        p = self.params
        x = batch.inputs.double().numpy()
        horizon = int(batch.targets.shape[1])
        out = {"last_value": np.repeat(x[:, -1:], horizon, axis=1)}
        m = self.period
        if 1 < m <= p.lookback:
            h = np.arange(horizon)
            out["seasonal_naive"] = x[:, p.lookback - m + (h % m)]

        def linear(w: np.ndarray) -> np.ndarray:
            wt = w.transpose(0, 2, 1)
            ones = np.ones((*wt.shape[:2], 1))
            return (np.concatenate([wt, ones], axis=2) @ self.linear_map).transpose(0, 2, 1)

        out["linear"] = self._roll(linear, x, horizon)
        if "dlinear" in p.baselines:
            model = self.dlinear

            def dlinear(w: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return model(torch.from_numpy(w)).numpy()

            out["dlinear"] = self._roll(dlinear, x, horizon)
        x1 = np.concatenate([x, np.ones((x.shape[0], 1, x.shape[2]))], axis=1)
        for name in ("arima", "ets"):
            if name in p.baselines:
                maps = self.statistical_maps(name, horizon)
                out[name] = np.stack([x1[:, :, c] @ a for c, a in enumerate(maps)], axis=2)
        if p.data in GENERATED:
            out["optimal"] = self.optimal(batch.extras["start"].numpy(), split)
        return out

    def optimal(self, starts: np.ndarray, split: str) -> np.ndarray:
        """The conditional mean of each window's target under the generating process, on
        the normalised (and, for ``ood``, shifted) scale."""
        p = self.params
        raw, info = self._generated
        h = p.long_horizon if split == "ood" else p.horizon
        if p.data == "var":
            pred = np.stack([
                var_forecast(info["a"], raw[s + p.lookback - p.order : s + p.lookback], h)
                for s in starts
            ])  # fmt: skip
        else:
            idx = starts[:, None] + p.lookback + np.arange(h)[None]
            pred = info["mean"][idx]
        mean, std = self.scaler
        pred = (pred - mean) / std
        shifted = split == "ood" and p.ood == "shift"
        return p.ood_scale * pred + p.ood_shift if shifted else pred

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``mse``, ``mae`` (over every window, step and variate), ``mse_by_step`` and
        ``mae_by_step`` (per horizon step), ``windows``, and the same for each baseline
        under ``baselines.<name>``."""
        targets = np.concatenate([b.targets.double().numpy() for b in batches])
        pred = np.concatenate(
            [o.double().numpy().reshape(b.targets.shape) for o, b in zip(outputs, batches)]
        )
        metrics = forecast_metrics(pred, targets)
        metrics["windows"] = int(targets.shape[0])
        base: dict[str, list[np.ndarray]] = {}
        for b in batches:
            split = "ood" if int(b.extras["split"][0]) == SPLIT_IDS["ood"] else "id"
            for name, v in self.baseline_predictions(b, split).items():
                base.setdefault(name, []).append(v)
        metrics["baselines"] = {
            name: forecast_metrics(np.concatenate(v), targets) for name, v in base.items()
        }
        return metrics


def forecast_metrics(pred: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """``mse``, ``mae`` and per horizon step (1-based keys) of ``[B, H, C]`` arrays."""
    err = pred - targets
    return {
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "mse_by_step": {str(h + 1): float(v) for h, v in enumerate(np.mean(err**2, axis=(0, 2)))},
        "mae_by_step": {str(h + 1): float(v) for h, v in enumerate(np.abs(err).mean(axis=(0, 2)))},
    }
