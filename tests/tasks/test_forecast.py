"""The forecasting protocol of ``forecast``: chronological split, scaler fit on train
only, every test window once, metrics by hand, deterministic data and baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anyformer.errors import SpecError
from anyformer.tasks.forecast import Forecast, ForecastParams, var_forecast


def task(**kw) -> Forecast:  # noqa: ANN003
    return Forecast(ForecastParams(**{"length": 400, "lookback": 12, "horizon": 3, **kw}))


def test_scaler_is_fit_on_the_train_span_only() -> None:
    t = task()
    mean, std = t.scaler
    np.testing.assert_allclose(mean, t.raw[: t.n_train].mean(0))
    np.testing.assert_allclose(std, t.raw[: t.n_train].std(0))
    # changing the test span's data leaves the scaler unchanged
    other = task()
    other._generated[0][t.test_start :] += 100.0
    np.testing.assert_allclose(other.scaler[0], mean)
    np.testing.assert_allclose(other.scaler[1], std)
    assert t.n_train == 280 and t.test_start == 320


def test_windows_cover_the_test_span_once_per_position() -> None:
    t = task()
    batches = t.make_eval_set("id", 1)
    starts = torch.cat([b.extras["start"] for b in batches]).numpy()
    n = t.raw.shape[0]
    np.testing.assert_array_equal(starts, np.arange(t.test_start - 12, n - 12 - 3 + 1))
    covered = np.zeros(n, int)
    for s in starts:  # the first target step of each window, one per test position
        covered[s + 12] += 1
    assert covered[t.test_start : n - 3 + 1].tolist() == [1] * (n - 3 + 1 - t.test_start)
    # every test step is some window's target; no window's target leaves the span
    assert starts.min() + 12 == t.test_start and starts.max() + 15 == n
    x = torch.cat([b.inputs for b in batches]).numpy()
    np.testing.assert_allclose(x[0], t.scaled[t.test_start - 12 : t.test_start], rtol=1e-6)
    # training windows stay in the train span
    tr = t.train_batch(0, 64).extras["start"].numpy()
    assert tr.min() >= 0 and tr.max() + 15 <= t.n_train


def test_mse_and_mae_equal_a_hand_computation() -> None:
    t = task(variates=2)
    batches = t.make_eval_set("id", 1)
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(b.targets.shape, generator=g) for b in batches]
    m = t.score(outs, batches)
    err = torch.cat(outs).double() - torch.cat([b.targets for b in batches]).double()
    assert m["mse"] == pytest.approx(float((err**2).mean()))
    assert m["mae"] == pytest.approx(float(err.abs().mean()))
    assert m["mse_by_step"]["2"] == pytest.approx(float((err[:, 1] ** 2).mean()))
    assert m["windows"] == err.shape[0]
    last = torch.cat([b.inputs[:, -1:] for b in batches]).double()
    tg = torch.cat([b.targets for b in batches]).double()
    assert m["baselines"]["last_value"]["mse"] == pytest.approx(float(((last - tg) ** 2).mean()))


def test_baselines_are_computed_and_the_optimal_one_is_best_on_var() -> None:
    t = task(length=3000, variates=3)
    batches = t.make_eval_set("id", 1)
    m = t.score([torch.zeros(b.targets.shape) for b in batches], batches)
    base = {k: v["mse"] for k, v in m["baselines"].items()}
    assert set(base) == {"last_value", "linear", "dlinear", "optimal"}
    assert base["optimal"] < base["linear"] < base["last_value"]
    s = task(data="seasonal", length=2000, lookback=48)
    sb = s.make_eval_set("id", 1)
    sm = s.score([torch.zeros(b.targets.shape) for b in sb], sb)["baselines"]
    assert {"seasonal_naive", "optimal"} <= set(sm)
    assert sm["optimal"]["mse"] < sm["seasonal_naive"]["mse"] < sm["last_value"]["mse"]


def test_var_forecast_is_the_noise_free_recursion() -> None:
    a = np.array([[[0.5, 0.1], [0.0, 0.3]], [[0.2, 0.0], [0.1, 0.1]]])
    hist = np.array([[1.0, 2.0], [3.0, -1.0]])
    f = var_forecast(a, hist, 2)
    one = a[0] @ hist[1] + a[1] @ hist[0]
    np.testing.assert_allclose(f[0], one)
    np.testing.assert_allclose(f[1], a[0] @ one + a[1] @ hist[1])


def test_deterministic_and_ood_is_the_shifted_test_span() -> None:
    a, b = task(), task()
    assert torch.equal(a.train_batch(3, 8).inputs, b.train_batch(3, 8).inputs)
    assert not torch.equal(a.train_batch(3, 8).inputs, a.train_batch(4, 8).inputs)
    idb, oodb = a.make_eval_set("id", 1)[0], a.make_eval_set("ood", 1)[0]
    torch.testing.assert_close(oodb.inputs, 2.0 * idb.inputs + 2.0)


def test_bundled_data_and_refusals() -> None:
    t = Forecast(ForecastParams(data="macrodata", lookback=8, horizon=2))
    assert t.raw.shape == (202, 6) and t.model_io()["input_shape"] == [8, 6]
    with pytest.raises(SpecError, match="lookback"):
        Forecast(ForecastParams(data="nile", lookback=90, horizon=4))
