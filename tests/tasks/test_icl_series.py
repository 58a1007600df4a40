"""In-context AR(p) forecasting: process, layout, baselines against numpy/statsmodels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import icl_series as ar
from anyformer.tasks.base import Batch


def make(seed: int = 0, **params: object) -> ar.ICLAR:
    return ar.ICLAR(ar.ICLARParams(**params), seed)


def test_registered() -> None:
    entry = registry.get("task", "icl_ar")
    assert entry.cls is ar.ICLAR
    assert entry.paper.year == 2025 and "Forecast Time Series" in entry.paper.title
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == ("mse", "mse", False)
    task = make(n_points=30)
    assert task.model_io() == {
        "embed": "vectors",
        "input_dim": 1,
        "head": "token_regress",
        "n_outputs": 1,
    }
    assert task.max_seq_len() == 60


def test_deterministic_by_seed_and_step() -> None:
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    b.train_batch(4, 8)
    for step in range(3):
        pa, pb = a.train_batch(step, 8), b.train_batch(step, 8)
        assert torch.equal(pa.inputs, pb.inputs) and torch.equal(
            pa.extras["coef"], pb.extras["coef"]
        )
        assert not torch.equal(pa.inputs, c.train_batch(step, 8).inputs)
    assert not torch.equal(a.train_batch(0, 8).inputs, a.train_batch(1, 8).inputs)
    for split in ("id", "ood"):
        for p, q in zip(a.make_eval_set(split, 20), b.make_eval_set(split, 20)):
            assert torch.equal(p.inputs, q.inputs)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_layout_and_process(order: int) -> None:
    t = 25
    task = make(order=order, n_points=t)
    batch = task.train_batch(0, 400)
    assert batch.inputs.shape == (400, t, 1) and batch.targets.shape == (400, t)
    assert torch.equal(batch.inputs[:, 1:, 0], batch.targets[:, :-1])  # targets[t] = x_{t+1}
    expected = torch.arange(t) >= order
    assert torch.equal(batch.loss_mask, expected.expand(400, -1))
    coef, sigma = batch.extras["coef"].double(), batch.extras["sigma"].double()
    assert coef.shape == (400, order) and sigma.shape == (400,)
    # every series satisfies its recursion with innovations of std sigma
    series = torch.cat([batch.inputs[..., 0], batch.targets[:, -1:]], 1).double()
    lags = ar.lag_matrix(series, order)
    resid = series[:, order:] - (lags[:, order - 1 : -1] * coef.unsqueeze(1)).sum(-1)
    z = resid / sigma.unsqueeze(-1)
    assert float(z.var()) == pytest.approx(1.0, abs=0.05)
    assert float(series.var()) == pytest.approx(1.0, abs=0.1)  # stationary variance 1
    # the characteristic roots lie in the configured annulus
    for a in coef[:50].numpy():
        moduli = np.abs(np.roots(np.concatenate([[1.0], -a])))
        assert np.all(moduli >= 0.5 - 1e-5) and np.all(moduli <= 0.9 + 1e-5)


def test_coefficients_from_roots_match_numpy_poly() -> None:
    modulus = torch.tensor([[0.5, 0.9], [0.2, 0.7]], dtype=torch.float64)
    angle = torch.tensor([[0.3, 2.0], [1.0, 3.0]], dtype=torch.float64)
    real = torch.tensor([-0.4, 0.8], dtype=torch.float64)
    coef = ar.coefficients_from_roots(modulus, angle, real)
    for i in range(2):
        roots = [real[i].item()]
        for r, th in zip(modulus[i].tolist(), angle[i].tolist()):
            roots += [r * np.exp(1j * th), r * np.exp(-1j * th)]
        np.testing.assert_allclose(coef[i].numpy(), -np.poly(roots).real[1:], atol=1e-12)


def test_stationary_variance_equals_impulse_response_sum() -> None:
    cases = [[0.5], [1.2, -0.5], [0.3, 0.2, 0.1], [1.5, -0.9, 0.2]]
    for a in cases:
        coef = torch.tensor([a], dtype=torch.float64)
        psi = [1.0]
        for j in range(1, 3000):
            psi.append(sum(a[i] * psi[j - 1 - i] for i in range(len(a)) if j - 1 - i >= 0))
        want = float(np.sum(np.square(psi)))
        assert float(ar.stationary_variance(coef)[0]) == pytest.approx(want, rel=1e-9)


def test_least_squares_equals_numpy_lstsq() -> None:
    rng = np.random.default_rng(0)
    for p in (1, 2, 3):
        x = rng.normal(size=(4, 14))
        got = ar.ar_least_squares_predict(torch.from_numpy(x), p).numpy()
        assert np.all(got[:, :p] == 0)
        for b in range(4):
            for t in range(p, 14):
                rows = np.array([x[b, s - p : s][::-1] for s in range(p, t + 1)])
                a = np.linalg.lstsq(rows, x[b, p : t + 1], rcond=None)[0]  # min-norm if short
                want = a @ x[b, t - p + 1 : t + 1][::-1]
                assert got[b, t] == pytest.approx(want, rel=1e-7, abs=1e-9), (p, b, t)


def test_least_squares_equals_statsmodels_autoreg() -> None:
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.ar_model import AutoReg

    task = make(order=3, n_points=40)
    batch = task.make_eval_set("id", 5)[0]
    x = batch.inputs[..., 0].double()
    got = batch.extras["baseline_least_squares"].double()
    fresh = ar.ar_least_squares_predict(x, 3)
    for b in range(5):
        for t in (12, 25, 39):
            fit = AutoReg(x[b, : t + 1].numpy(), lags=3, trend="n").fit()
            want = fit.params @ x[b, t - 2 : t + 1].numpy()[::-1]
            assert float(fresh[b, t]) == pytest.approx(want, rel=1e-8, abs=1e-10)
            assert float(got[b, t]) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_oracle_last_value_zero_and_perfect_model() -> None:
    task = make(order=2, n_points=30)
    batches = task.make_eval_set("id", 600)
    b = batches[0]
    x = b.inputs[..., 0].double()
    a = b.extras["coef"].double()
    oracle = b.extras["baseline_oracle"].double()
    want = a[:, :1] * x[:, 2:] + a[:, 1:] * x[:, 1:-1]
    assert torch.allclose(oracle[:, 2:], want, rtol=1e-5, atol=1e-6)
    assert torch.equal(b.extras["baseline_last_value"][:, 2:], b.inputs[:, 2:, 0])
    m = task.score([bb.targets.unsqueeze(-1) for bb in batches], batches)
    assert m["mse"] == 0.0 and m["relative_to_least_squares"] == 0.0
    assert list(m["by_k"]) == [str(t + 1) for t in range(2, 30)]
    base = m["baselines"]
    sigma2 = float(torch.cat([bb.extras["sigma"] for bb in batches]).double().pow(2).mean())
    assert base["oracle"]["mse"] == pytest.approx(sigma2, rel=0.1)  # innovation variance
    assert base["zero"]["mse"] == pytest.approx(1.0, abs=0.1)
    assert base["least_squares"]["by_k"]["30"] < 1.3 * base["oracle"]["by_k"]["30"]
    as_ls = [torch.zeros_like(bb.targets) for bb in batches]
    for out, bb in zip(as_ls, batches):
        out[:] = bb.extras["baseline_least_squares"]
    m = task.score(as_ls, batches)
    assert m["relative_to_least_squares"] == pytest.approx(1.0, rel=1e-6)
    assert m["relative_to_oracle"] == pytest.approx(
        base["least_squares"]["mse"] / base["oracle"]["mse"], rel=1e-5
    )
    curve = m["curve"]
    assert (curve["x"], curve["y"]) == ("context length", "mse")
    assert set(curve["series"]) == {"model", *ar.BASELINES}
    bare = [Batch(bb.inputs, bb.targets, bb.loss_mask, extras=dict(bb.extras)) for bb in batches]
    for bb in bare:
        for k in [k for k in bb.extras if k.startswith("baseline_")]:
            del bb.extras[k]
    again = task.score(as_ls, bare)
    for name in ar.BASELINES:
        assert again["baselines"][name]["mse"] == pytest.approx(
            m["baselines"][name]["mse"], rel=1e-4
        )


def test_ood_splits() -> None:
    task = make(n_points=20, ood_points=50)
    assert task.make_eval_set("ood", 4)[0].inputs.shape[1] == 50 and task.max_seq_len() == 50
    roots = make(order=2, ood="roots", ood_root_max=0.97)
    for split, (lo, hi) in (("ood", (0.9, 0.97)), ("id", (0.5, 0.9))):
        coef = torch.cat([b.extras["coef"] for b in roots.make_eval_set(split, 100)]).double()
        moduli = np.abs([np.roots([1.0, -a1, -a2]) for a1, a2 in coef.numpy()])
        assert moduli.min() >= lo - 1e-4 and moduli.max() <= hi + 1e-4
    with pytest.raises(ValueError, match="ood_root_max"):
        make(ood="roots", root_max=0.99)


# --------------------------------------------------------------------------- paired tokens
@pytest.mark.parametrize("order", [1, 3])
def test_paired_layout(order: int) -> None:
    p, t = order, 12
    values, paired = make(order=p, n_points=t), make(order=p, n_points=t, tokens="paired")
    assert paired.model_io()["input_dim"] == 2 * p + 1 and values.model_io()["input_dim"] == 1
    assert paired.max_seq_len() == values.max_seq_len()
    a, b = values.train_batch(2, 32), paired.train_batch(2, 32)
    assert b.inputs.shape == (32, t, 2 * p + 1)
    assert torch.equal(b.targets, a.targets) and torch.equal(b.loss_mask, a.loss_mask)
    series = values.unpack(a)["series"]  # x_0 .. x_T
    assert torch.equal(paired.unpack(b)["series"], series)
    for s in range(t):
        lags = [series[:, s - j] if s - j >= 0 else torch.zeros(32) for j in range(p + 1)]
        query = torch.stack(lags[:p], -1)  # (x_s, ..., x_{s-p+1}), zeros before x_0
        assert torch.equal(b.inputs[:, s, :p], query)
        if s >= p:  # the previous regression pair: lags of x_s, then x_s
            assert torch.equal(b.inputs[:, s, p : 2 * p], torch.stack(lags[1:], -1))
            assert torch.equal(b.inputs[:, s, 2 * p], series[:, s])
        else:  # its lag window would reach before x_0: not a pair of the fit
            assert torch.all(b.inputs[:, s, p:] == 0)


def test_paired_tokens_never_hold_their_target_or_later_values() -> None:
    task = make(order=2, n_points=15, tokens="paired")
    data = task.sample(torch.Generator().manual_seed(0), 8, "train")
    base = task.to_batch(data).inputs
    for s in range(15):  # position s forecasts x_{s+1}
        changed = dict(data, series=data["series"].clone())
        changed["series"][:, s + 1 :] += 1.0
        tokens = task.to_batch(changed).inputs
        assert torch.equal(tokens[:, : s + 1], base[:, : s + 1])
        if s + 1 < 15:
            assert not torch.equal(tokens[:, s + 1], base[:, s + 1])


@pytest.mark.parametrize("split", ["id", "ood"])
def test_layouts_share_series_baselines_and_metrics(split: str) -> None:
    values = make(order=2, n_points=20, ood="roots")
    paired = make(order=2, n_points=20, ood="roots", tokens="paired")
    va, pb = values.make_eval_set(split, 300), paired.make_eval_set(split, 300)
    gen = torch.Generator().manual_seed(1)
    outs = []
    for a, b in zip(va, pb):
        assert torch.equal(a.targets, b.targets) and torch.equal(a.loss_mask, b.loss_mask)
        assert torch.equal(a.extras["coef"], b.extras["coef"])
        for name in ar.BASELINES:
            assert torch.equal(a.extras[f"baseline_{name}"], b.extras[f"baseline_{name}"])
        outs.append(torch.randn(*a.targets.shape, 1, generator=gen))
    assert values.score(outs, va) == paired.score(outs, pb)


def test_hand_built_lsa_regresses_on_the_lags(
    hand_built_lsa: Callable[..., torch.nn.Module],
) -> None:
    """The findings' linear self-attention layer, set by hand, computes one GD step of the
    AR(p) regression at every position: ``eta * sum_{s=p}^{t} (q_t . q_{s-1}) x_s`` over
    exactly the rows of the least-squares fit (``q_t`` the lag window ending at ``x_t``)."""
    p, t, eta = 2, 40, 0.03
    task_spec = {"name": "icl_ar", "order": p, "n_points": t, "tokens": "paired"}
    model = hand_built_lsa(task_spec, p, eta)
    task = make(order=p, n_points=t, tokens="paired")
    batch = task.train_batch(0, 64)
    with torch.no_grad():
        out = model(batch.inputs)[..., 0].double()
    series = task.unpack(batch)["series"].double()
    lags = ar.lag_matrix(series[:, :t], p)  # lags[s] = q_s
    want = torch.zeros(64, t, dtype=torch.float64)
    for pos in range(t):
        for s in range(p, pos + 1):  # row s: regressors q_{s-1}, target x_s
            want[:, pos] += eta * (lags[:, pos] * lags[:, s - 1]).sum(-1) * series[:, s]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    assert float(want.abs().max()) > 1.0


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ood": "roots", "ood_root_max": 0.95},
        {"ood_points": 90, "order": 3},
        {"tokens": "paired"},
    ],
)
def test_params_round_trip(values: dict) -> None:
    """A run's spec stores every field; reading it back must validate (conditional
    fields default to None)."""
    params = ar.ICLARParams(**values)
    assert ar.ICLARParams(**params.model_dump(mode="json")) == params


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"order": 0}, "order=0"),
        ({"order": 5, "n_points": 5}, "n_points=5 must be > order=5"),
        ({"root_min": 0.8, "root_max": 0.7}, "root_max=0.7 must be > root_min=0.8"),
        ({"root_min": 0.95}, "root_max=0.9 must be > root_min=0.95"),
        ({"root_max": 1.0}, "root_max=1.0"),
        ({"ood_root_max": 0.95}, "ood_root_max=0.95 applies only with ood='roots'"),
        ({"ood": "roots", "ood_root_max": 0.8}, "ood_root_max=0.8 must be > root_max=0.9"),
        ({"ood": "roots", "ood_points": 90}, "applies only with ood='length'"),
        ({"tokens": "interleaved"}, "tokens='interleaved'"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "icl_ar").make_params(values, where="task")
    assert needle in str(info.value)
