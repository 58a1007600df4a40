"""Split-conformal intervals: the finite-sample threshold, each score's interval, and
coverage on fresh points within 3% of the level for a known-correct predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from anyformer.tasks import conformal


def test_threshold_is_the_ceil_n_plus_1_level_th_smallest_score() -> None:
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 11.0))  # 1..10 shuffled
    assert conformal.score_quantile(scores, 0.9) == 10.0  # ceil(11 * 0.9) = 10
    assert conformal.score_quantile(scores, 0.8) == 9.0  # ceil(8.8) = 9
    assert conformal.score_quantile(scores, 0.5) == 6.0  # ceil(5.5) = 6
    assert conformal.score_quantile(scores, 0.95) == np.inf  # ceil(10.45) = 11 > n
    assert conformal.score_quantile(np.arange(1.0, 10.0), 0.9) == 9.0  # ceil(10 * 0.9) = 9
    # (99 + 1) * 0.55 is 55.00000000000001 in floating point: the rank is still 55
    assert conformal.rank(99, 0.55) == 55
    assert conformal.score_quantile(np.arange(1.0, 100.0), 0.55) == 55.0


def test_each_score_gives_its_interval_on_a_tiny_example() -> None:
    y = np.array([0.0, 1.0, 2.0, 3.0])
    mu = np.array([0.5, 1.0, 1.0, 3.5])  # |residuals| 0.5, 0, 1, 0.5
    cal = conformal.absolute(mu, y, level=0.6)  # ceil(5 * 0.6) = 3rd smallest = 0.5
    assert (cal.kind, cal.q, cal.n) == ("absolute", 0.5, 4)
    lo, hi = cal.interval(np.array([10.0]))
    assert (lo[0], hi[0]) == (9.5, 10.5)
    sigma = np.array([0.5, 1.0, 0.25, 2.0])  # normalised: 1, 0, 4, 0.25
    cal = conformal.normalized(mu, sigma, y, level=0.6)
    assert cal.q == 1.0
    lo, hi = cal.interval(np.array([0.0, 0.0]), np.array([1.0, 3.0]))
    np.testing.assert_allclose(lo, [-1.0, -3.0])
    np.testing.assert_allclose(hi, [1.0, 3.0])
    q_lo, q_hi = np.array([-1.0, 0.5, 1.5, 3.5]), np.array([1.0, 0.8, 2.5, 4.0])
    cal = conformal.cqr(q_lo, q_hi, y, level=0.6)  # max(lo - y, y - hi): -1, 0.2, -0.5, 0.5
    assert cal.q == pytest.approx(0.2)
    metrics = cal.evaluate(y, q_lo, q_hi)
    assert metrics["coverage"] == 0.75  # y=3 lies below 3.5 - 0.2
    assert metrics["width"] == pytest.approx(np.mean(q_hi - q_lo) + 0.4)
    tight = conformal.cqr(q_lo - 10, q_hi + 10, y, level=0.6)  # too wide quantiles shrink
    assert tight.q < 0


def _data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic regression: y = sin(3x) + (0.2 + x^2) eps, x ~ U(-1, 1)."""
    x = rng.uniform(-1, 1, n)
    sigma = 0.2 + x**2
    return np.sin(3 * x), sigma, np.sin(3 * x) + sigma * rng.standard_normal(n)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("kind", ["absolute", "normalized", "cqr"])
def test_coverage_on_fresh_points_is_within_3_percent_of_the_level(kind: str, level: float) -> None:
    rng = np.random.default_rng(int(level * 100))
    mu, sigma, y = _data(1000, rng)
    mu_t, sigma_t, y_t = _data(20_000, rng)
    if kind == "absolute":
        cal = conformal.absolute(mu, y, level)
        preds = (mu_t,)
    elif kind == "normalized":
        cal = conformal.normalized(mu, sigma, y, level)
        preds = (mu_t, sigma_t)
    else:  # the true quantiles at (1 - level) / 2 and (1 + level) / 2
        z = norm.ppf(0.5 + level / 2)
        cal = conformal.cqr(mu - z * sigma, mu + z * sigma, y, level)
        preds = (mu_t - z * sigma_t, mu_t + z * sigma_t)
    metrics = cal.evaluate(y_t, *preds)
    assert abs(metrics["coverage"] - level) < 0.03, metrics
    if kind != "absolute":  # the adaptive scores are near the width of the true interval
        ideal = 2 * norm.ppf(0.5 + level / 2) * sigma_t.mean()
        assert metrics["width"] == pytest.approx(ideal, rel=0.1)


@pytest.mark.parametrize("shrink", [0.5, 2.0])
def test_cqr_repairs_miscalibrated_quantiles(shrink: float) -> None:
    rng = np.random.default_rng(2)
    mu, sigma, y = _data(1000, rng)
    mu_t, sigma_t, y_t = _data(20_000, rng)
    z = shrink * norm.ppf(0.95)  # quantiles too narrow (0.5) or too wide (2.0) for 90%
    raw = np.mean(np.abs(y_t - mu_t) <= z * sigma_t)
    assert abs(raw - 0.9) > 0.09
    cal = conformal.cqr(mu - z * sigma, mu + z * sigma, y, 0.9)
    assert (cal.q > 0) == (shrink < 1)
    assert abs(cal.evaluate(y_t, mu_t - z * sigma_t, mu_t + z * sigma_t)["coverage"] - 0.9) < 0.03


def test_adaptive_intervals_are_narrower_than_absolute_ones_at_the_same_coverage() -> None:
    rng = np.random.default_rng(1)
    mu, sigma, y = _data(2000, rng)
    mu_t, sigma_t, y_t = _data(20_000, rng)
    plain = conformal.absolute(mu, y, 0.9).evaluate(y_t, mu_t)
    adaptive = conformal.normalized(mu, sigma, y, 0.9).evaluate(y_t, mu_t, sigma_t)
    assert adaptive["width"] < 0.9 * plain["width"]


def test_predictions_read_head_outputs() -> None:
    out = torch.tensor([[1.0, np.log(4.0)], [0.0, 0.0]])  # gaussian (mean, log-variance)
    mu, sigma = conformal.predictions("normalized", out)
    np.testing.assert_allclose(mu, [1.0, 0.0])
    np.testing.assert_allclose(sigma, [2.0, 1.0])
    lo, hi = conformal.predictions("cqr", torch.tensor([[0.0, 1.0, 3.0]]))
    assert (lo[0], hi[0]) == (0.0, 3.0)
    (point,) = conformal.predictions("absolute", torch.tensor([[2.0], [3.0]]))
    np.testing.assert_allclose(point, [2.0, 3.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: conformal.absolute([0.0], [0.0], 1.0), r"level=1.0 must lie strictly between"),
        (lambda: conformal.absolute([0.0, 1.0], [0.0], 0.9), r"differ in shape"),
        (lambda: conformal.normalized([0.0], [0.0], [1.0], 0.9), "sigma > 0"),
        (lambda: conformal.absolute([], [], 0.9), "at least one calibration point"),
        (lambda: conformal.absolute([np.nan], [0.0], 0.9), "NaN or infinite"),
        (lambda: conformal.predictions("cqr", np.zeros((2, 1))), "at least two quantiles"),
    ],
)
def test_bad_inputs_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_head_report_calibrates_on_one_split_and_reports_coverage_on_others() -> None:
    rng = np.random.default_rng(3)
    mu, sigma, y = _data(2000, rng)
    mu_t, sigma_t, y_t = _data(20_000, rng)
    gaussian = np.stack([mu, np.log(sigma**2)], -1)
    gaussian_t = np.stack([mu_t, np.log(sigma_t**2)], -1)
    report = conformal.head_report(
        "gaussian",
        (torch.tensor(gaussian), torch.tensor(y)),
        {"id": (gaussian_t, y_t), "ood": (gaussian_t, mu_t + 3 * (y_t - mu_t))},  # ood: 3x noise
        level=0.9,
    )
    assert report["kind"] == "normalized" and report["n_calibration"] == 2000
    assert abs(report["id"]["coverage"] - 0.9) < 0.03
    assert report["ood"]["coverage"] < 0.6  # three times the noise: intervals under-cover
    assert report["id"]["width"] == pytest.approx(
        conformal.normalized(mu, sigma, y, 0.9).evaluate(y_t, mu_t, sigma_t)["width"]
    )
    point = conformal.head_report("regress", (mu[:, None], y), {"id": (mu_t[:, None], y_t)}, 0.8)
    assert point["kind"] == "absolute" and abs(point["id"]["coverage"] - 0.8) < 0.03
    with pytest.raises(ValueError, match="no conformal score for head 'classify'"):
        conformal.head_report("classify", (mu, y), {}, 0.9)


def test_group_calibration_covers_each_group_where_marginal_calibration_does_not() -> None:
    """Groups |x| <= 0.5 (little noise) and |x| > 0.5 (much noise): one threshold for all
    over-covers the first and under-covers the second; one per group covers both."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, 4000)
    x_t = rng.uniform(-1, 1, 20_000)
    sigma, sigma_t = 0.2 + x**2, 0.2 + x_t**2
    mu, mu_t = np.sin(3 * x), np.sin(3 * x_t)
    y = mu + sigma * rng.standard_normal(4000)
    y_t = mu_t + sigma_t * rng.standard_normal(20_000)
    g, g_t = (np.abs(x) > 0.5).astype(int), (np.abs(x_t) > 0.5).astype(int)
    marginal = conformal.absolute(mu, y, 0.9)
    lo, hi = marginal.interval(mu_t)
    inside = (y_t >= lo) & (y_t <= hi)
    assert inside[g_t == 1].mean() < 0.85 and inside[g_t == 0].mean() > 0.95  # off per group
    by_group = conformal.calibrate_by_group("absolute", y, g, mu, level=0.9)
    assert by_group.rules[0].n + by_group.rules[1].n == 4000
    report = by_group.evaluate(y_t, g_t, mu_t)
    for key in (0, 1):
        assert abs(report["groups"][key]["coverage"] - 0.9) < 0.03, report
    assert abs(report["coverage"] - 0.9) < 0.03
    with pytest.raises(ValueError, match=r"groups \[7\] have no calibration points"):
        by_group.interval(np.array([7]), np.array([0.0]))
