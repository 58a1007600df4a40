"""In-context Boolean functions: data, layout, learners against brute force, scores."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import icl_boolean as ib
from anyformer.tasks.base import Batch


def make(seed: int = 0, **params: object) -> ib.ICLBoolean:
    return ib.ICLBoolean(ib.ICLBooleanParams(**params), seed)


def test_registered() -> None:
    entry = registry.get("task", "icl_boolean")
    assert entry.cls is ib.ICLBoolean
    assert entry.paper.year == 2023 and "Discrete Functions" in entry.paper.title
    cls = entry.cls
    assert (cls.default_objective, cls.headline, cls.higher_is_better) == (
        "mse",
        "accuracy",
        True,
    )
    assert make(n_bits=6).model_io() == {
        "embed": "vectors",
        "input_dim": 7,
        "head": "token_regress",
        "n_outputs": 1,
    }
    assert make(n_points=30).max_seq_len() == 120  # ood='length' doubles by default


@pytest.mark.parametrize("fc", ["conjunction", "sparse_parity"])
def test_deterministic_by_seed_and_step(fc: str) -> None:
    a, b, c = make(3, function_class=fc), make(3, function_class=fc), make(4, function_class=fc)
    b.train_batch(9, 8)
    for step in range(3):
        assert torch.equal(a.train_batch(step, 8).inputs, b.train_batch(step, 8).inputs)
        assert not torch.equal(a.train_batch(step, 8).inputs, c.train_batch(step, 8).inputs)
    assert not torch.equal(a.train_batch(0, 8).inputs, a.train_batch(1, 8).inputs)
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 20), b.make_eval_set(split, 20)
        for p, q in zip(ea, eb):
            assert torch.equal(p.inputs, q.inputs)
            assert all(torch.equal(p.extras[k], q.extras[k]) for k in p.extras)
    assert not torch.equal(a.train_batch(0, 20).inputs, a.make_eval_set("id", 20)[0].inputs)


def reference_labels(bits: np.ndarray, extras: dict[str, torch.Tensor], fc: str) -> np.ndarray:
    """f(b) from the stored function, computed independently with numpy."""
    relevant = extras["relevant"].numpy()
    out = np.zeros(bits.shape[:2], dtype=bool)
    for i in range(bits.shape[0]):
        idx = np.flatnonzero(relevant[i])
        if fc == "conjunction":
            want = ~extras["negated"].numpy()[i, idx]
            out[i] = (bits[i][:, idx] == want).all(-1)
        else:
            out[i] = bits[i][:, idx].sum(-1) % 2 == 1
    return out


@pytest.mark.parametrize(
    ("fc", "encoding"),
    [("conjunction", "sign"), ("sparse_parity", "sign"), ("sparse_parity", "binary")],
)
def test_batch_layout_and_labels(fc: str, encoding: str) -> None:
    n, k = 7, 12
    task = make(function_class=fc, n_bits=n, n_points=k, encoding=encoding)
    batch = task.train_batch(0, 64)
    assert batch.inputs.shape == (64, 2 * k, n + 1) and batch.targets.shape == (64, 2 * k)
    xs = batch.inputs[:, 0::2, :n]
    values = {-1.0, 1.0} if encoding == "sign" else {0.0, 1.0}
    assert set(xs.unique().tolist()) == values
    assert torch.all(batch.inputs[:, 0::2, n] == 0)  # x-tokens: label channel empty
    assert torch.all(batch.inputs[:, 1::2, :n] == 0)  # y-tokens: only the label
    labels = batch.inputs[:, 1::2, n]
    assert set(labels.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(batch.targets[:, 0::2], labels) and torch.all(batch.targets[:, 1::2] == 0)
    expected = torch.zeros(2 * k, dtype=torch.bool)
    expected[0::2] = True
    assert torch.equal(batch.loss_mask, expected.expand(64, -1))
    bits = (xs > 0.5).numpy()
    np.testing.assert_array_equal(labels.numpy() > 0, reference_labels(bits, batch.extras, fc))
    if fc == "sparse_parity":
        assert torch.all(batch.extras["relevant"].sum(-1) == 2)


def test_conjunction_positive_fraction() -> None:
    task = make(n_bits=10, literal_prob=0.3, positive_fraction=0.5)
    labels = task.train_batch(0, 2000).targets[:, 0::2]
    # forced positives (1/2) plus naturally satisfied ones (E[2^-m] = 0.85^10 of the rest)
    assert float((labels > 0).float().mean()) == pytest.approx(0.5 + 0.5 * 0.85**10, abs=0.02)


# --------------------------------------------------------------------------- brute force
def all_conjunctions(n: int) -> list[np.ndarray]:
    """Every conjunction over n bits as a truth table on {0,1}^n, plus the always-false one
    (the elimination learner's hypothesis before any positive example)."""
    points = np.array(list(itertools.product([0, 1], repeat=n)), dtype=bool)
    tables = []
    for spec in itertools.product([None, 0, 1], repeat=n):  # absent, b_j = 0, b_j = 1
        ok = np.ones(len(points), dtype=bool)
        for j, want in enumerate(spec):
            if want is not None:
                ok &= points[:, j] == bool(want)
        tables.append(ok)
    tables.append(np.zeros(len(points), dtype=bool))
    return tables


def index_of(bits: np.ndarray) -> np.ndarray:
    return (bits * (1 << np.arange(bits.shape[-1])[::-1])).sum(-1)


def test_elimination_equals_most_specific_consistent_conjunction() -> None:
    n = 4
    task = make(n_bits=n, n_points=14, literal_prob=0.5)
    batch = task.train_batch(0, 60)
    bits = (batch.inputs[:, 0::2, :n] > 0).numpy()
    labels = batch.targets[:, 0::2].numpy() > 0
    got = ib.elimination_predict(torch.from_numpy(bits), torch.from_numpy(labels * 2.0 - 1.0))
    tables = np.stack(all_conjunctions(n))  # [H, 2^n]
    for i in range(bits.shape[0]):
        idx = index_of(bits[i])
        for t in range(bits.shape[1]):
            consistent = (tables[:, idx[:t]] == labels[i, :t]).all(-1)
            assert consistent.any()
            want = tables[consistent, idx[t]].all()  # positive iff every consistent one says so
            assert (got[i, t] > 0) == want, (i, t)


def test_gf2_elimination_against_all_parities() -> None:
    n = 5
    task = make(function_class="sparse_parity", n_bits=n, n_points=12, sparsity=3)
    batch = task.train_batch(1, 80)
    bits = (batch.inputs[:, 0::2, :n] > 0).numpy()
    labels = batch.targets[:, 0::2].numpy() > 0
    got, determined = ib.gf2_predict(
        torch.from_numpy(bits), torch.from_numpy(labels * 2.0 - 1.0), return_determined=True
    )
    subsets = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int64)  # [32, n]
    says = (bits.astype(np.int64) @ subsets.T) % 2 == 1  # [B, K, 32]
    n_undetermined = 0
    for i in range(bits.shape[0]):
        for t in range(bits.shape[1]):
            consistent = (says[i, :t] == labels[i, :t, None]).all(0)
            votes = says[i, t, consistent]
            agree = votes.all() or not votes.any()
            assert bool(determined[i, t]) == agree
            if agree:
                assert (got[i, t] > 0) == votes[0]
            else:  # the consistent parities split exactly in half
                n_undetermined += 1
                assert votes.sum() * 2 == len(votes)
    assert n_undetermined > 50  # both regimes were exercised
    assert determined[:, -1].float().mean() > 0.5


def test_gf2_free_zero_solution_is_consistent() -> None:
    """The parity used for undetermined queries fits every earlier example."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.rand(40, 6, 8, generator=gen) < 0.5
    secret = torch.rand(40, 8, generator=gen) < 0.5
    labels = ((bits & secret.unsqueeze(1)).sum(-1) % 2 == 1).double() * 2 - 1
    rows = torch.zeros(40, 8, 9, dtype=torch.bool)
    have = torch.zeros(40, 8, dtype=torch.bool)
    for i in range(6):
        v = ib._reduce(torch.cat([bits[:, i], (labels[:, i] > 0).unsqueeze(-1)], -1), rows, have)
        for b in torch.nonzero(v[:, :8].any(-1))[:, 0]:
            c = int(v[b, :8].long().argmax())
            rows[b, c], have[b, c] = v[b], True
    s = ib._free_zero_solution(rows, have)
    fit = (bits & s.unsqueeze(1)).sum(-1) % 2 == 1
    assert torch.equal(fit, labels > 0)


def test_sparse_enumeration_and_majority_against_loops() -> None:
    n, k = 6, 2
    task = make(function_class="sparse_parity", n_bits=n, n_points=10)
    batch = task.train_batch(2, 30)
    bits = (batch.inputs[:, 0::2, :n] > 0).numpy()
    labels = batch.targets[:, 0::2]
    got = ib.sparse_enumeration_predict(torch.from_numpy(bits), labels, k)
    maj = ib.majority_predict(labels)
    lab = labels.numpy() > 0
    for i in range(bits.shape[0]):
        for t in range(bits.shape[1]):
            ones = zeros = 0
            for combo in itertools.combinations(range(n), k):
                f = [bits[i, j, list(combo)].sum() % 2 == 1 for j in range(t + 1)]
                if all(f[j] == lab[i, j] for j in range(t)):
                    ones, zeros = ones + f[t], zeros + (not f[t])
            assert (got[i, t] > 0) == (ones > zeros)
            pos = int(lab[i, :t].sum())
            assert (maj[i, t] > 0) == (pos > t - pos)


# --------------------------------------------------------------------------- scores
def test_scores_of_baselines_and_perfect_model() -> None:
    task = make(n_bits=8, n_points=30)
    batches = task.make_eval_set("id", 400)
    perfect = task.score([b.targets.unsqueeze(-1) for b in batches], batches)
    assert perfect["accuracy"] == 1.0 and set(perfect["by_k"]) == {str(k) for k in range(1, 31)}
    assert set(perfect["baselines"]) == {"elimination", "majority"}
    elim = perfect["baselines"]["elimination"]
    assert elim["by_k"]["1"] < 0.6 and min(list(elim["by_k"].values())[-5:]) > 0.98
    assert perfect["gap_to_optimal"] == pytest.approx(
        sum(v - 1.0 for v in elim["by_k"].values()) / 30
    )
    as_learner = [torch.zeros_like(b.targets) for b in batches]
    for out, b in zip(as_learner, batches):
        out[:, 0::2] = b.extras["baseline_elimination"]
    m = task.score(as_learner, batches)  # outputs [B, T] are accepted too
    assert m["by_k"] == elim["by_k"] and m["gap_to_optimal"] == 0.0
    curve = m["curve"]
    assert (curve["x"], curve["y"]) == ("in-context examples", "accuracy")
    assert curve["series"]["elimination"]["0"] == elim["by_k"]["1"]
    assert set(curve["series"]) == {"model", "elimination", "majority"}
    # baselines are recomputed when a batch lacks them (same numbers)
    bare = [Batch(b.inputs, b.targets, b.loss_mask) for b in batches]
    assert task.score(as_learner, bare)["baselines"] == m["baselines"]


def test_parity_learners_on_eval_set() -> None:
    task = make(function_class="sparse_parity", n_bits=8, n_points=24)
    batches = task.make_eval_set("id", 300)
    m = task.score([torch.zeros(*b.targets.shape, 1) for b in batches], batches)
    base = m["baselines"]
    assert set(base) == {"gf2_elimination", "sparse_enumeration", "majority"}
    assert base["gf2_elimination"]["by_k"]["24"] == 1.0  # 23 examples pin down the parity
    assert base["gf2_elimination"]["by_k"]["2"] < 0.65
    assert base["sparse_enumeration"]["accuracy"] >= base["gf2_elimination"]["accuracy"]
    assert base["majority"]["accuracy"] == pytest.approx(0.5, abs=0.05)
    assert m["accuracy"] == pytest.approx(0.5, abs=0.05)  # output 0 means label -1
    big = make(function_class="sparse_parity", n_bits=40, sparsity=3)
    assert "sparse_enumeration" not in big.baseline_names  # C(40, 3) > limit


def test_ood_splits() -> None:
    task = make(function_class="sparse_parity", n_bits=6, n_points=10, ood_points=25)
    (batch,) = task.make_eval_set("ood", 10)
    assert batch.inputs.shape[1] == 50 and task.max_seq_len() == 50
    biased = make(function_class="sparse_parity", n_bits=6, ood="bias", ood_bias=0.8)
    bits = torch.cat([b.inputs[:, 0::2, :6] for b in biased.make_eval_set("ood", 500)]) > 0
    assert float(bits.float().mean()) == pytest.approx(0.8, abs=0.01)
    bits = torch.cat([b.inputs[:, 0::2, :6] for b in biased.make_eval_set("id", 500)]) > 0
    assert float(bits.float().mean()) == pytest.approx(0.5, abs=0.01)
    assert biased.max_seq_len() == 80


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"function_class": "sparse_parity", "sparsity": 3},
        {"ood": "bias", "ood_bias": 0.6, "literal_prob": 0.2},
        {"ood_points": 90, "encoding": "binary"},
    ],
)
def test_params_round_trip(values: dict) -> None:
    """A run's spec stores every field; reading it back must validate (conditional
    fields default to None)."""
    params = ib.ICLBooleanParams(**values)
    assert ib.ICLBooleanParams(**params.model_dump(mode="json")) == params


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"n_bits": 0}, "n_bits=0"),
        ({"sparsity": 3}, "sparsity=3 applies only with function_class='sparse_parity'"),
        (
            {"function_class": "sparse_parity", "n_bits": 4, "sparsity": 5},
            "sparsity=5 must be <= n_bits=4",
        ),
        (
            {"function_class": "sparse_parity", "literal_prob": 0.2},
            "literal_prob=0.2 applies only with function_class='conjunction'",
        ),
        ({"n_points": 10, "ood_points": 10}, "ood_points=10 must be > n_points=10"),
        ({"ood": "bias", "ood_points": 90}, "ood_points=90 applies only with ood='length'"),
        ({"ood_bias": 0.7}, "ood_bias=0.7 applies only with ood='bias'"),
        ({"encoding": "onehot"}, "encoding='onehot'"),
        ({"bits": 3}, "no parameter 'bits'"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "icl_boolean").make_params(values, where="task")
    assert needle in str(info.value)
