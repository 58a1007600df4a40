"""Trained and statistical baselines of ``forecast``, scored on the model's windows.

- ``dlinear`` (Zeng et al., 2023, "Are Transformers Effective for Time Series
  Forecasting?"): each variate's lookback ``x`` is split by a moving average into a
  trend ``t = avg_k(x)`` (kernel ``k``, stride 1, the series padded at both ends with
  ``(k - 1) // 2`` copies of its first and last value, as DLinear's ``moving_avg``) and a
  remainder ``s = x - t``; the forecast is ``W_s s + b_s + W_t t + b_t``, one linear
  layer each from lookback to horizon, shared by the variates (``individual=False``),
  weights initialised to ``1 / lookback`` as in the paper's code, trained with Adam
  (:func:`adam_step`, equal to ``torch.optim.Adam``) on
  the MSE of training windows for a fixed number of steps, deterministic by seed.
- ``arima`` and ``ets`` (statsmodels): one model per variate fit by maximum likelihood
  on the train span (normalised), then *applied* to each evaluation window's lookback
  alone — ``results.apply(lookback).forecast(horizon)``: the fitted parameters, the
  state filtered over the window (ARIMA: its stationary or diffuse initialisation;
  ETS: initial states concentrated out of the window) — so they see exactly what the
  model sees. Both are linear Gaussian state-space models, so that forecast is an
  affine function of the window: :func:`affine_forecaster` reads it off ``lookback + 1``
  applications to random windows and then forecasts every window with one matrix
  product (equal to applying each window, to rounding; tested).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

#: Adam's learning rate and batch size of ``dlinear``.
DLINEAR_LR, DLINEAR_BATCH = 0.005, 64


def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """DLinear's trend of ``x`` ``[B, L, C]`` along ``L``: the mean of ``kernel`` steps
    after padding each end with ``(kernel - 1) // 2`` copies of the end value."""
    pad = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return padded.unfold(1, kernel, 1).mean(dim=-1)


class DLinear(nn.Module):
    """DLinear with ``individual=False``: ``[B, lookback, C] -> [B, horizon, C]``."""

    def __init__(self, lookback: int, horizon: int, kernel: int = 25) -> None:
        super().__init__()
        self.kernel = kernel
        self.seasonal = nn.Linear(lookback, horizon)
        self.trend = nn.Linear(lookback, horizon)
        for layer in (self.seasonal, self.trend):
            nn.init.constant_(layer.weight, 1.0 / lookback)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seasonal, trend)`` of ``x`` ``[B, L, C]``."""
        trend = moving_average(x, self.kernel)
        return x - trend, trend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seasonal, trend = self.decompose(x)
        out = self.seasonal(seasonal.transpose(1, 2)) + self.trend(trend.transpose(1, 2))
        return out.transpose(1, 2)


def train_dlinear(
    windows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    n_windows: int,
    lookback: int,
    horizon: int,
    kernel: int,
    steps: int,
    seed: int,
) -> DLinear:
    """A :class:`DLinear` trained ``steps`` Adam steps on batches of training windows:
    ``windows(indices)`` gives ``(inputs [B, L, C], targets [B, H, C])`` of the training
    windows ``indices`` (``0 .. n_windows - 1``), drawn by a generator of ``seed``."""
    torch_rng = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=torch_rng)))
        model = DLinear(lookback, horizon, kernel).double()
    params = list(model.parameters())
    state = [(torch.zeros_like(w), torch.zeros_like(w)) for w in params]
    with torch.enable_grad():  # scoring (where it is first needed) runs under no_grad
        for step in range(1, steps + 1):
            x, y = windows(rng.integers(0, n_windows, size=DLINEAR_BATCH))
            loss = torch.mean((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for w, g, (m, v) in zip(params, grads, state):
                    adam_step(w, g, m, v, step)
    return model.eval().requires_grad_(False)


def adam_step(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int,
    lr: float = DLINEAR_LR,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam update (Kingma & Ba, 2015) of ``w`` in place with gradient ``g`` and
    moments ``m``, ``v`` (updated in place) at 1-based ``step``: what
    ``torch.optim.Adam`` computes, written out because constructing that imports
    ``torch._dynamo`` (seconds), which scoring a task should not pay."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    w.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def affine_forecaster(
    forecast: Callable[[np.ndarray], np.ndarray], lookback: int, seed: int = 0
) -> np.ndarray:
    """``A`` ``[lookback + 1, H]`` with ``forecast(w) = [w, 1] @ A`` for a ``forecast``
    that is affine in its window ``w`` ``[lookback]``: solved from ``lookback + 1``
    standard normal windows (and the constant)."""
    rng = np.random.default_rng(seed)
    basis = np.concatenate(
        [rng.normal(size=(lookback + 1, lookback)), np.ones((lookback + 1, 1))], 1
    )
    values = np.stack([np.asarray(forecast(w[:-1]), dtype=np.float64) for w in basis])
    return np.linalg.solve(basis, values)


def fit_arima(series: np.ndarray, order: tuple[int, int, int]) -> Any:
    """statsmodels' ``ARIMA(order)`` fit on ``series`` ``[N]`` (a constant mean when
    ``d = 0``), with its warnings silenced."""
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ARIMA(series, order=order, trend="c" if order[1] == 0 else "n").fit()


def fit_ets(series: np.ndarray, period: int) -> Any:
    """statsmodels' state-space exponential smoothing with an additive trend and, when
    ``period > 1``, an additive season of ``period``; initial states concentrated out
    (re-estimated on any window it is applied to)."""
    from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(
            series,
            trend=True,
            seasonal=period if period > 1 else None,
            initialization_method="concentrated",
        )
        return model.fit(disp=False)


def applied_forecast(results: Any, horizon: int) -> Callable[[np.ndarray], np.ndarray]:
    """``w -> results.apply(w).forecast(horizon)``: the fitted model on a new window."""

    def forecast(w: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(results.apply(w).forecast(horizon))

    return forecast
