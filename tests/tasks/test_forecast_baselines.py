"""``forecast``'s trained and statistical baselines: DLinear's decomposition by hand and
its edge over the last value on a seasonal series; ARIMA recovering an AR(1) and
forecasting by the hand formula; the affine read-off equal to statsmodels' ``apply``;
and the longer-horizon ``ood`` split rolled out autoregressively."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anyformer.tasks.base import Batch
from anyformer.tasks.forecast import Forecast, ForecastParams
from anyformer.tasks.forecast_baselines import (
    DLinear,
    affine_forecaster,
    applied_forecast,
    fit_arima,
    moving_average,
)


def test_dlinear_decomposition_is_a_hand_moving_average_with_edge_padding() -> None:
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    k = 5
    hand = torch.empty_like(x)
    for t in range(7):
        # the window t-2 .. t+2, positions outside 0..6 replaced by the end values
        idx = [min(max(j, 0), 6) for j in range(t - 2, t + 3)]
        hand[:, t] = x[:, idx].mean(dim=1)
    torch.testing.assert_close(moving_average(x, k), hand)
    model = DLinear(7, 2, kernel=k).double()
    seasonal, trend = model.decompose(x)
    torch.testing.assert_close(trend, hand)
    torch.testing.assert_close(seasonal + trend, x)
    # one linear layer each, shared by the variates
    with torch.no_grad():
        out = model(x)
        c = 1
        by_hand = model.seasonal(seasonal[:, :, c]) + model.trend(trend[:, :, c])
    torch.testing.assert_close(out[:, :, c], by_hand)


def test_dlinear_is_trained_deterministically_and_beats_the_last_value_on_a_seasonal_series() -> (
    None
):
    kw = {"data": "seasonal", "length": 800, "lookback": 48, "horizon": 12, "variates": 1}
    task = Forecast(ForecastParams(**kw, dlinear_steps=80))
    batches = task.make_eval_set("id", 1)
    m = task.score([torch.zeros(b.targets.shape) for b in batches], batches)["baselines"]
    assert m["dlinear"]["mse"] < 0.25 * m["last_value"]["mse"]
    assert m["dlinear"]["mse"] < m["seasonal_naive"]["mse"]
    again = Forecast(ForecastParams(**kw, dlinear_steps=80))
    for a, b in zip(task.dlinear.parameters(), again.dlinear.parameters()):
        assert torch.equal(a, b)


def ar1(phi: float, mean: float, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + rng.normal()
    return mean + x


@pytest.mark.slow  # statsmodels' ARIMA import and fit take seconds on a loaded machine
def test_arima_recovers_an_ar1_and_forecasts_by_the_hand_formula() -> None:
    pytest.importorskip("statsmodels")
    y = ar1(0.7, 1.5, 3000)
    res = fit_arima(y, (1, 0, 0))
    const, phi = float(res.params[0]), float(res.params[1])
    assert phi == pytest.approx(0.7, abs=0.04) and const == pytest.approx(1.5, abs=0.2)
    window = y[-16:]
    f = applied_forecast(res, 3)
    # the fitted model applied to the window: mean + phi^h (last - mean)
    hand = const + phi ** np.arange(1, 4) * (window[-1] - const)
    np.testing.assert_allclose(f(window), hand, rtol=1e-8)
    # the affine read-off is the same forecaster
    a = affine_forecaster(f, 16)
    for w in (window, y[100:116], np.zeros(16)):
        np.testing.assert_allclose(np.append(w, 1.0) @ a, f(w), rtol=1e-6, atol=1e-9)


@pytest.mark.slow  # statsmodels' fits take seconds
def test_arima_and_ets_baselines_equal_statsmodels_apply_on_the_test_windows() -> None:
    pytest.importorskip("statsmodels")
    task = Forecast(
        ForecastParams(
            data="seasonal",
            length=600,
            lookback=30,
            horizon=4,
            variates=1,
            period=6,
            baselines=["arima", "ets"],
        )  # fmt: skip
    )
    batch = task.make_eval_set("id", 1)[0]
    out = task.baseline_predictions(batch, "id")
    from anyformer.tasks.forecast_baselines import fit_ets

    train = task.scaled[: task.n_train, 0]
    for name, res in (("arima", fit_arima(train, (2, 0, 0))), ("ets", fit_ets(train, 6))):
        f = applied_forecast(res, 4)
        for i in (0, 17, len(batch.inputs) - 1):
            np.testing.assert_allclose(out[name][i, :, 0], f(batch.inputs[i, :, 0].double().numpy()),
                                       rtol=1e-5, atol=1e-7)  # fmt: skip
    m = task.score([torch.zeros(batch.targets.shape)], [batch])["baselines"]
    assert m["ets"]["mse"] < m["last_value"]["mse"]


def test_the_longer_horizon_is_rolled_out_autoregressively() -> None:
    kw = {"length": 400, "lookback": 12, "horizon": 3, "variates": 2, "dlinear_steps": 20}
    task = Forecast(ForecastParams(**kw, ood="horizon", ood_horizon=7))
    ood = task.make_eval_set("ood", 1)
    assert ood[0].targets.shape[1:] == (7, 2)
    n = task.raw.shape[0]
    starts = torch.cat([b.extras["start"] for b in ood]).numpy()
    np.testing.assert_array_equal(starts, np.arange(task.test_start - 12, n - 12 - 7 + 1))
    # unshifted: the id windows' inputs, fewer of them
    id_inputs = task.make_eval_set("id", 1)[0].inputs
    torch.testing.assert_close(ood[0].inputs, id_inputs[: len(ood[0].inputs)])
    calls: list[torch.Tensor] = []

    def predict(b: Batch) -> torch.Tensor:  # a fixed-horizon "model": the mean of its input
        calls.append(b.inputs)
        return b.inputs.mean(dim=1, keepdim=True).expand(-1, 3, -1).clone()

    metrics = task.evaluate(predict, "ood", 1)
    assert len(calls) == 3 * len(ood) and all(c.shape[1] == 12 for c in calls)
    x = ood[0].inputs.double()
    hand = []
    for _ in range(3):
        step = x[:, -12:].mean(dim=1, keepdim=True).expand(-1, 3, -1)
        hand.append(step)
        x = torch.cat([x, step], dim=1)
    pred = torch.cat(hand, dim=1)[:, :7]
    mse = float(((pred - ood[0].targets.double()) ** 2).mean())
    assert len(ood) == 1 and metrics["mse"] == pytest.approx(mse, rel=1e-5)
    assert set(metrics["mse_by_step"]) == {str(h) for h in range(1, 8)}
    # the baselines forecast the 7 steps too; the optimal one is best
    base = {k: v["mse"] for k, v in metrics["baselines"].items()}
    assert base["optimal"] < min(base["linear"], base["dlinear"], base["last_value"])


def test_ood_horizon_must_exceed_the_horizon() -> None:
    with pytest.raises(ValueError, match="ood_horizon=3 must exceed horizon=3"):
        ForecastParams(horizon=3, ood="horizon", ood_horizon=3)
    with pytest.raises(ValueError, match="ood_horizon is for ood='horizon'"):
        ForecastParams(ood_horizon=8)
    assert ForecastParams(horizon=5, ood="horizon").long_horizon == 10


@pytest.mark.slow  # constructing torch.optim.Adam imports torch._dynamo (seconds)
def test_dlinears_adam_step_equals_torch_optim_adam() -> None:
    from anyformer.tasks.forecast_baselines import adam_step

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(5)]
    ref = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.005)
    mine, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for step, grad in enumerate(grads, 1):
        ref.grad = grad.clone()
        opt.step()
        adam_step(mine, grad, m, v, step)
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-12, atol=1e-12)
