"""In-context regression on a linear/sinusoid mixture: data, Bayes baselines, scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import icl
from anyformer.tasks import icl_functions as fx
from anyformer.tasks.base import Batch
from anyformer.tasks.icl_common import gaussian_predictive


def make(seed: int = 0, **params: object) -> fx.ICLMixture:
    return fx.ICLMixture(fx.ICLMixtureParams(**params), seed)


def test_registered() -> None:
    entry = registry.get("task", "icl_mixture")
    assert entry.cls is fx.ICLMixture
    assert entry.paper.year == 2023 and "Pretraining Data Mixtures" in entry.paper.title
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == ("mse", "mse", False)
    task = make(dims=2)
    assert task.model_io() == {
        "embed": "vectors",
        "input_dim": 3,
        "head": "token_regress",
        "n_outputs": 1,
    }
    assert task.params.points == 9 and task.max_seq_len() == 36


def test_deterministic_by_seed_and_step() -> None:
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    b.train_batch(7, 8)
    for step in range(3):
        pa, pb = a.train_batch(step, 8), b.train_batch(step, 8)
        assert torch.equal(pa.inputs, pb.inputs)
        assert torch.equal(pa.extras["family"], pb.extras["family"])
        assert not torch.equal(pa.inputs, c.train_batch(step, 8).inputs)
    assert not torch.equal(a.train_batch(0, 8).inputs, a.train_batch(1, 8).inputs)
    for split in ("id", "ood"):
        for p, q in zip(a.make_eval_set(split, 30), b.make_eval_set(split, 30)):
            assert torch.equal(p.inputs, q.inputs)
            assert torch.equal(p.extras["baseline_bayes"], q.extras["baseline_bayes"])


def test_layout_and_families() -> None:
    d, k = 2, 12
    task = make(dims=d, n_points=k, noise=1e-4, frequency=3.0, ood="combination")
    batch = task.train_batch(0, 200)
    assert batch.inputs.shape == (200, 2 * k, d + 1)
    assert torch.all(batch.inputs[:, 0::2, d] == 0) and torch.all(batch.inputs[:, 1::2, :d] == 0)
    assert torch.equal(batch.targets[:, 0::2], batch.inputs[:, 1::2, d])
    family = batch.extras["family"]
    assert set(family.tolist()) == {0, 1}
    assert float(family.float().mean()) == pytest.approx(0.5, abs=0.1)
    xs, ys = batch.inputs[:, 0::2, :d].double(), batch.targets[:, 0::2].double()
    # each prompt is (almost) exactly a linear model on its family's features
    for fam, feats in ((0, xs), (1, fx.sinusoid_features(xs, 3.0))):
        rows = family == fam
        f, y = feats[rows], ys[rows]
        w = torch.linalg.lstsq(f, y.unsqueeze(-1)).solution
        assert float(((f @ w)[..., 0] - y).abs().max()) < 1e-3
    # and not on the other family's features
    rows = family == 0
    f = fx.sinusoid_features(xs, 3.0)[rows]
    w = torch.linalg.lstsq(f, ys[rows].unsqueeze(-1)).solution
    assert float(((f @ w)[..., 0] - ys[rows]).abs().mean()) > 0.05
    ood = torch.cat([b.extras["family"] for b in task.make_eval_set("ood", 40)])
    assert torch.all(ood == 2)


def test_gaussian_predictive_equals_kernel_form_and_ridge() -> None:
    rng = np.random.default_rng(0)
    b, k, m, s2, pv = 3, 7, 4, 0.3, 0.7
    feats, ys = rng.normal(size=(b, k, m)), rng.normal(size=(b, k))
    mean, var = gaussian_predictive(torch.from_numpy(feats), torch.from_numpy(ys), s2, pv)
    for i in range(b):
        for t in range(k):
            f, y, q = feats[i, :t], ys[i, :t], feats[i, t]
            gram = pv * f @ f.T + s2 * np.eye(t)
            kq = pv * f @ q
            want_mean = kq @ np.linalg.solve(gram, y) if t else 0.0
            want_var = pv * q @ q + s2 - (kq @ np.linalg.solve(gram, kq) if t else 0.0)
            assert float(mean[i, t]) == pytest.approx(want_mean, rel=1e-9, abs=1e-12)
            assert float(var[i, t]) == pytest.approx(want_var, rel=1e-9)
    t = [torch.from_numpy(a) for a in (feats, ys)]
    ridge = icl.prefix_predictions(icl.ridge_predict, *t, lam=s2 / pv)
    assert torch.allclose(mean, ridge, rtol=1e-9, atol=1e-12)


def mvn_logpdf(y: np.ndarray, cov: np.ndarray) -> float:
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (len(y) * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


def test_bayes_and_oracle_baselines_against_independent_computation() -> None:
    task = make(dims=2, n_points=9, noise=0.2, frequency=2.0, p_linear=0.3)
    data = task.sample(torch.Generator().manual_seed(5), 12, "id")
    base = task.baselines(data)
    xs, ys = data["xs"].double().numpy(), data["ys"].double().numpy()
    s2, w = 0.04, {"linear": 0.3, "sinusoid": 0.7}
    for i in range(xs.shape[0]):
        feats = {
            "linear": xs[i],
            "sinusoid": np.concatenate([np.sin(2 * xs[i]), np.cos(2 * xs[i])], -1),
        }
        for t in range(xs.shape[1]):
            log_post, means = {}, {}
            for fam, f in feats.items():
                gram = f[:t] @ f[:t].T + s2 * np.eye(t)
                means[fam] = f[t] @ f[:t].T @ np.linalg.solve(gram, ys[i, :t]) if t else 0.0
                log_post[fam] = math.log(w[fam]) + (mvn_logpdf(ys[i, :t], gram) if t else 0.0)
            top = max(log_post.values())
            z = {f: math.exp(v - top) for f, v in log_post.items()}
            want = sum(z[f] * means[f] for f in z) / sum(z.values())
            assert float(base["bayes"][i, t]) == pytest.approx(want, rel=1e-7, abs=1e-9)
            assert float(base["linear"][i, t]) == pytest.approx(means["linear"], abs=1e-9)
            assert float(base["sinusoid"][i, t]) == pytest.approx(means["sinusoid"], abs=1e-9)
            true = "linear" if int(data["family"][i]) == 0 else "sinusoid"
            assert float(base["family_oracle"][i, t]) == pytest.approx(means[true], abs=1e-9)


@pytest.mark.parametrize(("p_linear", "family"), [(1.0, "linear"), (0.0, "sinusoid")])
def test_bayes_with_a_single_family_is_that_family(p_linear: float, family: str) -> None:
    task = make(dims=2, n_points=7, p_linear=p_linear)
    base = task.baselines(task.sample(torch.Generator().manual_seed(3), 6, "id"))
    assert torch.allclose(base["bayes"], base[family], rtol=1e-12, atol=1e-12)
    assert torch.equal(base["family_oracle"], base[family])


def test_combination_oracle_uses_joint_features() -> None:
    task = make(dims=2, n_points=8, ood="combination", noise=0.3)
    data = task.sample(torch.Generator().manual_seed(0), 5, "ood")
    xs = data["xs"].double()
    joint = torch.cat([xs, fx.sinusoid_features(xs, 2.0)], -1)
    want = icl.prefix_predictions(icl.ridge_predict, joint, data["ys"].double(), lam=0.09 / 0.5)
    assert torch.allclose(task.baselines(data)["family_oracle"], want, rtol=1e-9, atol=1e-12)


def test_scores_baselines_and_perfect_model() -> None:
    task = make(dims=2, noise=0.1)
    batches = task.make_eval_set("id", 600)
    perfect = task.score([b.targets.unsqueeze(-1) for b in batches], batches)
    assert perfect["mse"] == 0.0 and perfect["relative_to_bayes"] == 0.0
    assert set(perfect["by_family"]) == {"linear", "sinusoid"}
    base = perfect["baselines"]
    assert base["zero"]["mse"] == pytest.approx(1.0 + 0.01 / 2, abs=0.1)
    assert base["family_oracle"]["mse"] < base["bayes"]["mse"] < base["linear"]["mse"]
    assert base["bayes"]["mse"] < base["sinusoid"]["mse"]
    for fam, v in perfect["by_family"].items():  # the oracle is that family's predictor
        assert v["baselines"]["family_oracle"]["by_k"] == v["baselines"][fam]["by_k"]
    last = str(task.params.points)
    assert base["bayes"]["by_k"][last] < 0.05  # the family is identified by then
    as_bayes = [torch.zeros_like(b.targets) for b in batches]
    for out, b in zip(as_bayes, batches):
        out[:, 0::2] = b.extras["baseline_bayes"]
    m = task.score(as_bayes, batches)
    assert m["relative_to_bayes"] == pytest.approx(1.0, rel=1e-5)
    assert m["by_family"]["linear"]["by_k"] == pytest.approx(
        m["by_family"]["linear"]["baselines"]["bayes"]["by_k"], rel=1e-5
    )
    curve = m["curve"]
    assert (curve["x"], curve["y"]) == ("in-context examples", "mse")
    assert set(curve["series"]) == {"model", *fx.BASELINES}
    assert curve["series"]["bayes"]["0"] == base["bayes"]["by_k"]["1"]
    # baselines are recomputed when a batch lacks them (same numbers)
    b = batches[0]
    bare = [Batch(b.inputs, b.targets, b.loss_mask, extras={"family": b.extras["family"]})]
    again, stored = task.score(as_bayes[:1], bare), task.score(as_bayes[:1], batches[:1])
    for name in fx.BASELINES:
        assert again["baselines"][name]["mse"] == pytest.approx(
            stored["baselines"][name]["mse"], rel=1e-5, abs=1e-7
        )


def test_ood_splits() -> None:
    task = make(dims=2, n_points=6, ood_points=15)
    assert task.make_eval_set("ood", 5)[0].inputs.shape[1] == 30 and task.max_seq_len() == 30
    comb = make(dims=2, ood="combination")
    batches = comb.make_eval_set("ood", 300)
    m = comb.score([torch.zeros_like(b.targets) for b in batches], batches)
    assert set(m["by_family"]) == {"combination"}
    base = m["baselines"]
    assert base["zero"]["mse"] == pytest.approx(1.0, abs=0.15)  # E[f^2] = d still
    # out of the mixture, the oracle (told the combined family) beats the mixture's Bayes
    assert base["family_oracle"]["mse"] < 0.6 * base["bayes"]["mse"]


@pytest.mark.parametrize(
    "values",
    [{}, {"ood": "combination"}, {"ood_points": 40, "p_linear": 0.2}],
)
def test_params_round_trip(values: dict) -> None:
    """A run's spec stores every field; reading it back must validate (conditional
    fields default to None)."""
    params = fx.ICLMixtureParams(**values)
    assert fx.ICLMixtureParams(**params.model_dump(mode="json")) == params


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"noise": 0.0}, "noise=0.0"),
        ({"p_linear": 1.5}, "p_linear=1.5"),
        ({"dims": 2, "ood_points": 9}, "ood_points=9 must be > n_points=9"),
        ({"ood": "combination", "ood_points": 40}, "applies only with ood='length'"),
        ({"ood": "frequency"}, "ood='frequency'"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "icl_mixture").make_params(values, where="task")
    assert needle in str(info.value)
