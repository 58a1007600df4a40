"""Behaviour of in-context linear regression: data, splits, baselines and scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import icl
from anyformer.tasks.base import Batch
from anyformer.tasks.icl_common import pair_tokens


def make(seed: int = 0, **params: object) -> icl.ICLLinearRegression:
    return icl.ICLLinearRegression(icl.ICLRegressionParams(**params), seed)


def pairs(batch: Batch, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.inputs[:, 0::2, :d], batch.inputs[:, 1::2, d]


def test_registered() -> None:
    entry = registry.get("task", "icl_linear_regression")
    assert entry.cls is icl.ICLLinearRegression
    assert entry.paper.year == 2022 and "In-Context" in entry.paper.title
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == ("mse", "mse", False)
    assert make(dims=3).model_io() == {
        "embed": "vectors",
        "input_dim": 4,
        "head": "token_regress",
        "n_outputs": 1,
    }


def test_deterministic_by_seed_and_step() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    b.train_batch(50, 8)
    for step in range(3):
        assert torch.equal(a.train_batch(step, 8).inputs, b.train_batch(step, 8).inputs)
        assert not torch.equal(a.train_batch(step, 8).inputs, c.train_batch(step, 8).inputs)
    assert not torch.equal(a.train_batch(0, 8).inputs, a.train_batch(1, 8).inputs)
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 20), b.make_eval_set(split, 20)
        assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea, eb))
    train_ws = {tuple(a.train_batch(s, 4).inputs[:, 0, :].flatten().tolist()) for s in range(20)}
    eval_ws = {tuple(b.inputs[:, 0, :].flatten().tolist()) for b in a.make_eval_set("id", 4)}
    assert train_ws.isdisjoint(eval_ws)


def test_batch_layout() -> None:
    d, k = 4, 9
    task = make(dims=d, n_points=k, noise=0.0)
    batch = task.train_batch(0, 16)
    assert batch.inputs.shape == (16, 2 * k, d + 1) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (16, 2 * k) and batch.targets.dtype == torch.float32
    assert torch.all(batch.inputs[:, 0::2, d] == 0)  # x-tokens: last channel empty
    assert torch.all(batch.inputs[:, 1::2, :d] == 0)  # y-tokens: only the last channel
    xs, ys = pairs(batch, d)
    assert torch.equal(batch.targets[:, 0::2], ys)  # target at x_i is y_i
    assert torch.all(batch.targets[:, 1::2] == 0)
    expected = torch.zeros(2 * k, dtype=torch.bool)
    expected[0::2] = True
    assert torch.equal(batch.loss_mask, expected.expand(16, -1))
    assert batch.padding_mask is None
    # noiseless pairs of one prompt are exactly linear: a w fits every y
    w = torch.linalg.lstsq(xs.double(), ys.double().unsqueeze(-1)).solution
    assert torch.allclose((xs.double() @ w)[..., 0], ys.double(), atol=1e-5)
    assert task.max_seq_len() == 2 * 2 * k  # ood='length' doubles the prompt by default


@pytest.mark.parametrize(("n", "d"), [(3, 5), (5, 5), (9, 5), (1, 3)])
def test_least_squares_equals_numpy_lstsq(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 10 + d)
    xs = rng.normal(size=(6, n, d))
    ys = rng.normal(size=(6, n))
    xq = rng.normal(size=(6, d))
    got = icl.least_squares_predict(
        torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xq)
    )
    want = [xq[i] @ np.linalg.lstsq(xs[i], ys[i], rcond=None)[0] for i in range(6)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_ridge_and_gd_closed_forms() -> None:
    rng = np.random.default_rng(0)
    xs, ys, xq = rng.normal(size=(4, 7, 3)), rng.normal(size=(4, 7)), rng.normal(size=(4, 3))
    t = [torch.from_numpy(a) for a in (xs, ys, xq)]
    want = [
        xq[i] @ np.linalg.solve(xs[i].T @ xs[i] + 0.3 * np.eye(3), xs[i].T @ ys[i])
        for i in range(4)
    ]
    np.testing.assert_allclose(icl.ridge_predict(*t, lam=0.3).numpy(), want, rtol=1e-9)
    # ridge -> least squares as lam -> 0 (overdetermined)
    torch.testing.assert_close(
        icl.ridge_predict(*t, lam=1e-10), icl.least_squares_predict(*t), rtol=1e-6, atol=1e-8
    )
    # one GD step: w = lr * X^T y / n, default lr = n / (n + d + 1 + noise^2)
    step = [xq[i] @ (0.5 / 7 * xs[i].T @ ys[i]) for i in range(4)]
    np.testing.assert_allclose(icl.gd_one_step_predict(*t, lr=0.5).numpy(), step, rtol=1e-9)
    default = [xq[i] @ (xs[i].T @ ys[i]) / (7 + 3 + 1 + 0.25) for i in range(4)]
    np.testing.assert_allclose(icl.gd_one_step_predict(*t, noise=0.5).numpy(), default, rtol=1e-9)
    # no context pairs: every predictor says 0
    empty = (t[0][:, :0], t[1][:, :0], t[2])
    for f in (icl.least_squares_predict, icl.gd_one_step_predict, icl.zero_predict):
        assert torch.equal(f(*empty), torch.zeros(4, dtype=torch.float64))


def test_baselines_on_id_split() -> None:
    d = 5
    task = make(dims=d)  # k = 11, noise 0
    batches = task.make_eval_set("id", 1500)
    zero_out = [torch.zeros(*b.targets.shape, 1) for b in batches]
    m = task.score(zero_out, batches)
    ls, zero, gd = (m["baselines"][n]["by_k"] for n in ("least_squares", "zero", "gd_one_step"))
    assert list(m["by_k"]) == [str(k) for k in range(1, 12)]
    for k in range(1, 12):
        assert zero[str(k)] == pytest.approx(1.0, abs=0.12)  # E[y^2] / d = 1
        assert m["by_k"][str(k)] == zero[str(k)]  # the model here is the zero predictor
    for k in range(d + 1, 12):
        assert ls[str(k)] < 1e-6  # d pairs determine w exactly
    for k in range(2, d + 1):  # underdetermined min-norm: error (d - n) / d with n = k - 1
        assert ls[str(k)] == pytest.approx((d - k + 1) / d, abs=0.08)
    for k in (3, 6, 11):  # the tuned GD step reaches (d + 1) / (n + d + 1)
        assert gd[str(k)] == pytest.approx((d + 1) / (k - 1 + d + 1), abs=0.08)
    assert m["relative_to_least_squares"] is None  # least squares is exact without noise
    curve = m["curve"]
    assert curve["x"] == "in-context examples" and curve["y"] == "mse"
    assert set(curve["series"]) == {"model", *icl.BASELINES}
    fixed = m["baselines"]["gd_fixed_step"]["by_k"]
    eta = icl.fixed_gd_step(d, 11)
    for k in (3, 6, 11):  # d (eta^2 n (n + d + 1) - 2 eta n + 1) / d with n = k - 1
        n = k - 1
        assert fixed[str(k)] == pytest.approx(eta**2 * n * (n + d + 1) - 2 * eta * n + 1, abs=0.08)
    assert curve["series"]["least_squares"]["0"] == ls["1"]
    assert m["mse"] == pytest.approx(sum(m["by_k"].values()) / 11)


def test_default_gd_step_beats_nearby_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    task = make(dims=4)
    xs, ys = task.sample(gen, 20000, 7)
    xs, ys = xs.double(), ys.double()

    def err(lr: float | None) -> float:
        pred = icl.gd_one_step_predict(xs[:, :6], ys[:, :6], xs[:, 6], lr=lr)
        return float(((pred - ys[:, 6]) ** 2).mean())

    best = err(None)
    eta = 6 / (6 + 4 + 1)
    assert best < err(0.7 * eta) and best < err(1.3 * eta) and best < err(1.0)


def test_perfect_model_and_ratio_with_noise() -> None:
    task = make(dims=3, n_points=10, noise=0.5)
    batches = task.make_eval_set("id", 300)
    perfect = task.score([b.targets.unsqueeze(-1) for b in batches], batches)
    assert perfect["mse"] == 0.0
    assert perfect["relative_to_least_squares"] == 0.0
    as_ls = [torch.zeros_like(b.targets) for b in batches]
    for out, b in zip(as_ls, batches):
        out[:, 0::2] = b.extras["baseline_least_squares"]
    m = task.score(as_ls, batches)  # outputs [B, T] are accepted too
    assert m["relative_to_least_squares"] == pytest.approx(1.0, rel=1e-5)
    assert m["by_k"] == pytest.approx(m["baselines"]["least_squares"]["by_k"], rel=1e-5)
    # with noise the zero predictor's error is (d + noise^2) / d
    assert m["baselines"]["zero"]["mse"] == pytest.approx((3 + 0.25) / 3, abs=0.12)
    # ridge with lam = noise^2 is the posterior mean: no worse than least squares
    ridge, ls = m["baselines"]["ridge"]["mse"], m["baselines"]["least_squares"]["mse"]
    assert ridge < ls
    # baselines are recomputed when a batch lacks them (same numbers)
    bare = [Batch(b.inputs, b.targets, b.loss_mask) for b in batches]
    again = task.score(as_ls, bare)
    assert again["baselines"]["ridge"]["mse"] == pytest.approx(ridge, rel=1e-5)


def test_ood_splits() -> None:
    length = make(dims=3, n_points=6, ood_points=15)
    (batch,) = length.make_eval_set("ood", 10)
    assert batch.inputs.shape[1] == 30 and length.max_seq_len() == 30
    assert length.make_eval_set("id", 10)[0].inputs.shape[1] == 12
    assert length.train_batch(0, 4).inputs.shape[1] == 12

    cov = make(dims=3, n_points=6, ood="covariate", ood_scale=3.0)
    xs, _ = pairs(torch_cat(cov.make_eval_set("ood", 2000)), 3)
    assert float(xs.var()) == pytest.approx(9.0, rel=0.1)
    xs_id, _ = pairs(torch_cat(cov.make_eval_set("id", 2000)), 3)
    assert float(xs_id.var()) == pytest.approx(1.0, rel=0.1)
    assert cov.max_seq_len() == 12

    task = make(dims=3, n_points=6, ood="task", ood_scale=2.0)
    batches = task.make_eval_set("ood", 2000)
    m = task.score([torch.zeros_like(b.targets) for b in batches], batches)
    assert m["mse"] == pytest.approx(4.0, rel=0.1)  # |w|^2 scaled by 4


def test_fixed_gd_step_is_best_on_average_over_prefixes() -> None:
    d, k = 4, 9
    gen = torch.Generator().manual_seed(1)
    xs, ys = make(dims=d, noise=0.5).sample(gen, 20000, k)
    xs, ys = xs.double(), ys.double()
    assert icl.fixed_gd_step(d, 1) == 0.0  # a one-pair prompt never has a context pair

    def err(eta: float) -> float:
        pred = icl.prefix_predictions(icl.gd_fixed_step_predict, xs, ys, eta=eta)
        return float(((pred - ys) ** 2).mean())

    eta = icl.fixed_gd_step(d, k, noise=0.5)
    ns = torch.arange(k, dtype=torch.float64)
    assert eta == pytest.approx(float(ns.sum() / (ns * (ns + d + 1 + 0.25)).sum()))
    assert err(eta) < err(0.8 * eta) and err(eta) < err(1.2 * eta)
    # the prediction is eta * x_q . X^T y, i.e. gd_one_step with lr = eta * n
    got = icl.gd_fixed_step_predict(xs[:, :5], ys[:, :5], xs[:, 5], eta=0.1)
    want = icl.gd_one_step_predict(xs[:, :5], ys[:, :5], xs[:, 5], lr=0.5)
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- paired tokens
def test_paired_batch_layout() -> None:
    d, k = 3, 7
    inter, paired = make(dims=d, n_points=k), make(dims=d, n_points=k, tokens="paired")
    assert paired.model_io() == {
        "embed": "vectors",
        "input_dim": 2 * d + 1,
        "head": "token_regress",
        "n_outputs": 1,
    }
    assert paired.max_seq_len() == 2 * k and inter.max_seq_len() == 4 * k  # ood doubles k
    a, b = inter.train_batch(3, 16), paired.train_batch(3, 16)
    xs, ys = pairs(a, d)  # the same prompts in both layouts
    assert b.inputs.shape == (16, k, 2 * d + 1) and b.inputs.dtype == torch.float32
    assert torch.equal(b.inputs[:, :, :d], xs)  # token i starts with the query x_i
    assert torch.equal(b.inputs[:, 1:, d : 2 * d], xs[:, :-1])  # then x_{i-1}
    assert torch.equal(b.inputs[:, 1:, 2 * d], ys[:, :-1])  # then y_{i-1}
    assert torch.all(b.inputs[:, 0, d:] == 0)  # no pair before the first query
    assert torch.equal(b.targets, ys) and torch.equal(paired.pairs_of(b)[1], ys)
    assert torch.equal(paired.pairs_of(b)[0], xs)
    assert torch.equal(b.loss_mask, torch.ones(16, k, dtype=torch.bool))
    assert b.padding_mask is None


def test_paired_tokens_never_hold_their_own_or_a_later_target() -> None:
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(4, 9, 3, generator=gen), torch.randn(4, 9, generator=gen)
    base = pair_tokens(xs, ys)
    for i in range(9):
        changed = ys.clone()
        changed[:, i:] = torch.randn(4, 9 - i, generator=gen)  # y_i and every later y
        tokens = pair_tokens(xs, changed)
        assert torch.equal(tokens[:, : i + 1], base[:, : i + 1])  # tokens 0..i unchanged
        if i + 1 < 9:
            assert not torch.equal(tokens[:, i + 1], base[:, i + 1])  # y_i shows at i + 1
    complete = torch.tensor([False, True] + [True] * 7)
    gated = pair_tokens(xs, ys, complete)
    assert torch.all(gated[:, :2, 3:] == 0) and torch.equal(gated[:, 2:], base[:, 2:])


@pytest.mark.parametrize("split", ["id", "ood"])
def test_layouts_share_prompts_baselines_and_metrics(split: str) -> None:
    d, k = 3, 8
    params = {"dims": d, "n_points": k, "noise": 0.3, "ood": "task"}
    inter, paired = make(**params), make(**params, tokens="paired")
    ia, pb = inter.make_eval_set(split, 300), paired.make_eval_set(split, 300)
    gen = torch.Generator().manual_seed(2)
    out_i, out_p = [], []
    for a, b in zip(ia, pb):
        assert all(torch.equal(x, y) for x, y in zip(inter.pairs_of(a), paired.pairs_of(b)))
        for name in icl.BASELINES:
            assert torch.equal(a.extras[f"baseline_{name}"], b.extras[f"baseline_{name}"])
        pred = torch.randn(b.targets.shape, generator=gen)
        out_p.append(pred.unsqueeze(-1))
        full = torch.randn(a.targets.shape, generator=gen)  # noise at the y-tokens is ignored
        full[:, 0::2] = pred
        out_i.append(full)
    mi, mp = inter.score(out_i, ia), paired.score(out_p, pb)
    assert mi == mp
    assert list(mp["by_k"]) == [str(i) for i in range(1, k + 1)]
    bare = [Batch(b.inputs, b.targets, b.loss_mask) for b in pb]  # baselines recomputed
    again = paired.score(out_p, bare)
    assert again["baselines"]["ridge"]["mse"] == pytest.approx(mp["baselines"]["ridge"]["mse"])


def test_hand_built_lsa_computes_one_gd_step(
    hand_built_lsa: Callable[..., torch.nn.Module],
) -> None:
    """One layer of the findings' linear self-attention, weights set by hand, computes
    ``eta * sum_{j < i} (x_i . x_j) y_j`` at every token of a paired prompt: the model of
    ``lsa_is_one_step_gd`` can implement one gradient-descent step exactly."""
    d, k, eta = 5, 20, 0.05
    task_spec = {"name": "icl_linear_regression", "dims": d, "n_points": k, "tokens": "paired"}
    model = hand_built_lsa(task_spec, d, eta)
    task = make(dims=d, n_points=k, tokens="paired")
    batch = task.train_batch(0, 64)
    xs, ys = task.pairs_of(batch)
    with torch.no_grad():
        out = model(batch.inputs)[..., 0]
    xs64, ys64 = xs.double(), ys.double()
    gram = torch.tril(xs64 @ xs64.transpose(1, 2), diagonal=-1)  # (x_i . x_j), j < i
    want = eta * (gram @ ys64.unsqueeze(-1))[..., 0]
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5)
    assert float(want.abs().max()) > 1.0  # not a vacuous comparison of small numbers
    # with the step the task's gd_fixed_step baseline uses, it *is* that baseline
    model = hand_built_lsa(task_spec, d, icl.fixed_gd_step(d, k))
    batches = task.make_eval_set("id", 256)
    with torch.no_grad():
        m = task.score([model(b.inputs) for b in batches], batches)
    assert m["baselines"]["gd_fixed_step"]["gap"] < 1e-9
    assert m["by_k"] == pytest.approx(m["baselines"]["gd_fixed_step"]["by_k"], rel=1e-4)


def torch_cat(batches: list[Batch]) -> Batch:
    return Batch(
        torch.cat([b.inputs for b in batches]),
        torch.cat([b.targets for b in batches]),
        torch.cat([b.loss_mask for b in batches]),
    )


def test_defaults_resolve() -> None:
    p = icl.ICLRegressionParams(dims=4)
    assert (p.points, p.ood_length, p.shift_scale, p.ridge_lambda) == (9, 18, 1.0, 0.01)
    q = icl.ICLRegressionParams(noise=0.3, ood="covariate")
    assert q.ridge_lambda == pytest.approx(0.09) and q.shift_scale == 2.0 and q.ood_length == 11


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"dims": 0}, "dims=0"),
        ({"noise": -1.0}, "noise=-1.0"),
        ({"n_points": 6, "ood_points": 6}, "ood_points=6 must be > n_points=6"),
        ({"ood": "covariate", "ood_points": 40}, "ood_points=40 applies only with ood='length'"),
        ({"ood_scale": 2.0}, "ood_scale=2.0 applies only with ood='covariate' or ood='task'"),
        ({"ood": "shift"}, "ood='shift'"),
        ({"ridge": 0.0}, "ridge=0.0"),
        ({"dim": 3}, "no parameter 'dim'; did you mean 'dims'?"),
        ({"tokens": "pairs"}, "tokens='pairs'"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "icl_linear_regression").make_params(values, where="task")
    assert needle in str(info.value)
