"""In-context regression with per-prompt noise: Bayes predictive, Gaussian NLL, scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.objectives import extra
from anyformer.tasks import icl_uncertainty as iu
from anyformer.tasks.base import Batch


def make(seed: int = 0, **params: object) -> iu.ICLUncertainty:
    return iu.ICLUncertainty(iu.ICLUncertaintyParams(**params), seed)


def test_registered() -> None:
    entry = registry.get("task", "icl_uncertainty")
    assert entry.cls is iu.ICLUncertainty
    assert entry.paper.year == 2024 and "Uncertainty Quantification" in entry.paper.title
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == (
        "gaussian_nll",
        "nll",
        False,
    )
    assert registry.get("objective", "gaussian_nll").cls is extra.GaussianNLL
    task = make(dims=3)
    assert task.model_io() == {
        "embed": "vectors",
        "input_dim": 4,
        "head": "token_regress",
        "n_outputs": 2,
    }
    assert task.max_seq_len() == 28


def test_deterministic_and_layout() -> None:
    a, b, c = make(seed=1, dims=3), make(seed=1, dims=3), make(seed=2, dims=3)
    b.train_batch(5, 8)
    for step in range(3):
        pa, pb = a.train_batch(step, 8), b.train_batch(step, 8)
        assert torch.equal(pa.inputs, pb.inputs) and torch.equal(
            pa.extras["sigma"], pb.extras["sigma"]
        )
        assert not torch.equal(pa.inputs, c.train_batch(step, 8).inputs)
    for split in ("id", "ood"):
        for p, q in zip(a.make_eval_set(split, 20), b.make_eval_set(split, 20)):
            assert torch.equal(p.inputs, q.inputs)
    batch = a.train_batch(0, 3000)
    k = 7
    assert batch.inputs.shape == (3000, 2 * k, 4)
    assert torch.all(batch.inputs[:, 0::2, 3] == 0) and torch.all(batch.inputs[:, 1::2, :3] == 0)
    assert torch.equal(batch.targets[:, 0::2], batch.inputs[:, 1::2, 3])
    sigma = batch.extras["sigma"]
    assert sorted(set(sigma.tolist())) == pytest.approx([0.1, 0.3, 1.0])
    # y = w . x + sigma eps: within a prompt the least-squares residual variance is sigma^2
    xs, ys = batch.inputs[:, 0::2, :3].double(), batch.targets[:, 0::2].double()
    fit = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution
    resid = ((xs @ fit)[..., 0] - ys).pow(2).sum(-1) / (k - 3)
    for s in (0.1, 0.3, 1.0):
        rows = (sigma - s).abs() < 1e-6
        assert float(resid[rows].mean()) == pytest.approx(s**2, rel=0.1)


def test_known_sigma_equals_kernel_form() -> None:
    task = make(dims=2, n_points=6)
    data = task.sample(torch.Generator().manual_seed(0), 8, "id")
    base = task.baselines(data)
    xs, ys, sig = (data[k].double().numpy() for k in ("xs", "ys", "sigma"))
    for i in range(8):
        s2 = sig[i] ** 2
        for t in range(6):
            x, y, q = xs[i, :t], ys[i, :t], xs[i, t]
            gram = x @ x.T + s2 * np.eye(t)
            mean = q @ x.T @ np.linalg.solve(gram, y) if t else 0.0
            var = q @ q + s2 - (q @ x.T @ np.linalg.solve(gram, x @ q) if t else 0.0)
            nll = 0.5 * (math.log(2 * math.pi * var) + (ys[i, t] - mean) ** 2 / var)
            assert float(base["known_sigma_mean"][i, t]) == pytest.approx(mean, abs=1e-9)
            assert float(base["known_sigma_var"][i, t]) == pytest.approx(var, rel=1e-9)
            assert float(base["known_sigma_nll"][i, t]) == pytest.approx(nll, rel=1e-9)


def mvn_logpdf(y: np.ndarray, cov: np.ndarray) -> float:
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (len(y) * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


def test_bayes_mixture_equals_ratio_of_joint_densities() -> None:
    """p(y_t | D) = sum_s p(s) N([y_D, y_t]; 0, K_s) / sum_s p(s) N(y_D; 0, K_s)."""
    levels = (0.2, 0.5, 1.5)
    task = make(dims=3, n_points=8, noise_levels=levels)
    data = task.sample(torch.Generator().manual_seed(1), 6, "id")
    base = task.baselines(data)
    xs, ys = data["xs"].double().numpy(), data["ys"].double().numpy()
    for i in range(6):
        for t in range(8):
            x, y = xs[i, : t + 1], ys[i, : t + 1]
            joint = [mvn_logpdf(y, x @ x.T + s**2 * np.eye(t + 1)) for s in levels]
            prefix = [mvn_logpdf(y[:t], x[:t] @ x[:t].T + s**2 * np.eye(t)) for s in levels]
            want = -(np.logaddexp.reduce(joint) - np.logaddexp.reduce(prefix))
            assert float(base["bayes_nll"][i, t]) == pytest.approx(want, rel=1e-8, abs=1e-9)
            # mean: posterior weights of s times each s's Gaussian-process mean
            w = np.exp(np.array(prefix) - np.logaddexp.reduce(prefix))
            means = [
                x[t] @ x[:t].T @ np.linalg.solve(x[:t] @ x[:t].T + s**2 * np.eye(t), y[:t])
                if t
                else 0.0
                for s in levels
            ]
            assert float(base["bayes_mean"][i, t]) == pytest.approx(w @ means, abs=1e-9)
            assert float(base["bayes_gaussian_mean"][i, t]) == float(base["bayes_mean"][i, t])


def test_bayes_mixture_equals_numeric_integration() -> None:
    """d = 1: integrate over w on a fine grid and sum over the noise grid."""
    levels = (0.1, 0.4, 1.0)
    task = make(dims=1, n_points=6, noise_levels=levels)
    data = task.sample(torch.Generator().manual_seed(2), 4, "id")
    base = task.baselines(data)
    w = np.linspace(-8, 8, 160_001)
    dw = w[1] - w[0]
    xs, ys = data["xs"].double().numpy()[..., 0], data["ys"].double().numpy()

    def log_normal(v: np.ndarray, mean: np.ndarray, var: float) -> np.ndarray:
        return -0.5 * (np.log(2 * np.pi * var) + (v - mean) ** 2 / var)

    for i in range(4):
        for t in range(6):
            # log of p(s) N(w; 0, 1) prod_{j < t} N(y_j; w x_j, s^2), per s, on the w grid
            logs = np.stack(
                [
                    -np.log(3)
                    + log_normal(w, 0.0, 1.0)
                    + sum(log_normal(ys[i, j], w * xs[i, j], s**2) for j in range(t))
                    for s in levels
                ]
            )
            top = logs.max()
            post = np.exp(logs - top)  # unnormalised joint posterior over (s, w)
            evidence = post.sum() * dw
            like = np.stack([np.exp(log_normal(ys[i, t], w * xs[i, t], s**2)) for s in levels])
            density = (post * like).sum() * dw / evidence
            mean = (post * (w * xs[i, t])).sum() * dw / evidence
            second = (post * ((w * xs[i, t]) ** 2 + np.array(levels)[:, None] ** 2)).sum()
            var = second * dw / evidence - mean**2
            assert float(base["bayes_nll"][i, t]) == pytest.approx(-np.log(density), abs=1e-6)
            assert float(base["bayes_mean"][i, t]) == pytest.approx(mean, abs=1e-6)
            assert float(base["bayes_var"][i, t]) == pytest.approx(var, rel=1e-6)


def test_gaussian_nll_objective() -> None:
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 6, 2, generator=gen)
    targets = torch.randn(4, 6, generator=gen)
    mask = torch.rand(4, 6, generator=gen) < 0.6
    batch = Batch(torch.zeros(4, 6, 3), targets, mask)
    obj = extra.GaussianNLL(extra.GaussianNLLParams())
    want = F.gaussian_nll_loss(out[..., 0][mask], targets[mask], out[..., 1][mask].exp())
    assert torch.allclose(obj(out, batch), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="n_outputs=2"):
        obj(out[..., :1], batch)
    with pytest.raises(SpecError, match="max_log_var=-30.0 must be > min_log_var=-20.0"):
        registry.get("objective", "gaussian_nll").make_params({"max_log_var": -30.0})


def test_mean_variance_model_trains_with_gaussian_nll() -> None:
    torch.manual_seed(0)
    task = make(dims=2, n_points=6)
    model = build_model(
        dict(
            kind="decoder",
            d_model=32,
            n_heads=4,
            n_layers=2,
            max_len=task.max_seq_len(),
            position="none",
            **task.model_io(),
        )
    )
    obj = registry.get("objective", "gaussian_nll")
    loss_fn = obj.cls(obj.make_params())
    batch = task.train_batch(0, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    y2 = float(batch.targets[batch.loss_mask].pow(2).mean())
    best_constant = 0.5 * (math.log(y2) + 1.0)  # N(0, E[y^2]): no use of the context
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(batch.inputs), batch)
        loss.backward()
        opt.step()
    # the (mean, log-variance) head fits the batch better than any constant Gaussian
    assert float(loss.detach()) < best_constant - 0.15
    metrics = task.evaluate(lambda b: model(b.inputs), "id", 64, loss_fn)
    assert math.isfinite(metrics["nll"]) and math.isfinite(metrics["loss"])


def test_scores_baselines_and_perfect_model() -> None:
    task = make(dims=3)
    batches = task.make_eval_set("id", 1500)
    as_gauss = [
        torch.stack(
            [
                b.extras["baseline_bayes_gaussian_mean"],
                b.extras["baseline_bayes_gaussian_var"].log(),
            ],
            -1,
        ).repeat_interleave(2, dim=1)
        for b in batches
    ]
    m = task.score(as_gauss, batches)
    base = m["baselines"]
    assert m["nll"] == pytest.approx(base["bayes_gaussian"]["nll"], rel=1e-5)
    assert m["by_k_mse"] == pytest.approx(base["bayes"]["by_k_mse"], rel=1e-5)
    assert m["nll_gap_to_bayes"] > 0  # the exact mixture beats its moment-matched Gaussian
    assert base["known_sigma"]["nll"] < base["bayes"]["nll"] < base["zero"]["nll"]
    assert base["bayes"]["calibration"] == pytest.approx(1.0, abs=0.1)
    assert base["zero"]["by_k"]["1"] == pytest.approx(base["bayes_gaussian"]["by_k"]["1"])
    last = str(task.params.points)
    assert base["bayes"]["by_k"][last] < base["bayes"]["by_k"]["1"] - 1.0
    curve = m["curve"]
    assert (curve["x"], curve["y"]) == ("in-context examples", "nll")
    assert set(curve["series"]) == {"model", *iu.BASELINES}
    assert curve["series"]["bayes"]["0"] == base["bayes"]["by_k"]["1"]
    # a sharp, exact model: NLL falls with the variance, MSE is 0
    sharp = [torch.stack([b.targets, torch.full_like(b.targets, -8.0)], -1) for b in batches]
    s = task.score(sharp, batches)
    assert s["mse"] == 0.0 and s["nll"] == pytest.approx(0.5 * (math.log(2 * math.pi) - 8.0))
    with pytest.raises(ValueError, match="n_outputs=2"):
        task.score([b.targets.unsqueeze(-1) for b in batches], batches)
    # baselines are recomputed when a batch lacks them (same numbers)
    b = batches[0]
    bare = [Batch(b.inputs, b.targets, b.loss_mask, extras={"sigma": b.extras["sigma"]})]
    again, stored = task.score(as_gauss[:1], bare), task.score(as_gauss[:1], batches[:1])
    for name in iu.BASELINES:
        assert again["baselines"][name]["nll"] == pytest.approx(
            stored["baselines"][name]["nll"], rel=1e-5
        )


def test_ood_splits() -> None:
    length = make(dims=2, n_points=5, ood_points=12)
    assert length.make_eval_set("ood", 4)[0].inputs.shape[1] == 24
    assert length.max_seq_len() == 24
    noise = make(dims=2, ood="noise", ood_noise_levels=(3.0,))
    assert torch.all(noise.make_eval_set("ood", 30)[0].extras["sigma"] == 3.0)
    batches = noise.make_eval_set("ood", 500)
    m = noise.score(
        [torch.zeros(*b.targets.shape, 2) for b in batches], batches
    )  # the training-prior Bayes is overconfident under the noise shift
    assert m["baselines"]["bayes"]["calibration"] > 2.0
    assert m["baselines"]["known_sigma"]["calibration"] == pytest.approx(1.0, abs=0.2)
    task = make(dims=2, ood="task", ood_scale=3.0)
    ys = torch.cat([b.targets[:, 0::2] for b in task.make_eval_set("ood", 2000)])
    assert float(ys.var()) == pytest.approx(2 * 9 + (0.01 + 0.09 + 1) / 3, rel=0.1)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ood": "noise", "ood_noise_levels": [2.0, 3.0]},
        {"ood": "task", "ood_scale": 3.0},
        {"ood_points": 40, "noise_levels": [0.5]},
    ],
)
def test_params_round_trip(values: dict) -> None:
    """A run's spec stores every field; reading it back must validate (conditional
    fields default to None)."""
    params = iu.ICLUncertaintyParams(**values)
    assert iu.ICLUncertaintyParams(**params.model_dump(mode="json")) == params


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"noise_levels": []}, "noise_levels=() must be a non-empty list of values > 0"),
        ({"noise_levels": [0.1, 0.0]}, "must be a non-empty list of values > 0"),
        ({"ood_noise_levels": [2.0]}, "ood_noise_levels=(2.0,) applies only with ood='noise'"),
        ({"ood_scale": 2.0}, "ood_scale=2.0 applies only with ood='task'"),
        ({"dims": 2, "ood_points": 5}, "ood_points=5 must be > n_points=5"),
        ({"ood": "noise", "ood_points": 50}, "applies only with ood='length'"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "icl_uncertainty").make_params(values, where="task")
    assert needle in str(info.value)
