"""Structured pruning: the pruned model equals the masked original (1e-6) before any
recovery, its parameter count drops by exactly the removed rows and columns, magnitude
pruning reaches the planned sparsity, mixers whose heads cannot be removed are refused
by name, and ``anyformer prune`` works on a trained quickstart-shaped run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from anyformer.cli import main
from anyformer.compress.prune import (
    Plan,
    check_prunable,
    ffns_of,
    magnitude_prune,
    masked,
    model_params,
    plan_masks,
    remove,
    removed_fraction,
    sparsity,
    structured_plan,
)
from anyformer.errors import SpecError
from anyformer.lab import load_experiment
from anyformer.lab.run import run_experiment
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec


def model(**kw: Any) -> Any:
    spec = dict(vocab_size=20, d_model=32, n_layers=2, n_heads=4, max_len=16, **kw)
    return build_model(spec).eval()


def random_plan(m: Any, heads: float = 0.25, ffn: float = 0.5) -> Plan:
    g = torch.Generator().manual_seed(1)
    hs = {i: torch.rand(b.mixer.n_heads, generator=g) for i, b in enumerate(m.blocks)}
    us = {
        (i, n): torch.rand(f.down.in_features, generator=g)
        for i, b in enumerate(m.blocks)
        for n, f in ffns_of(b)
    }
    return structured_plan(m, heads, ffn, hs, us)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"kind": "encoder", "ffn": {"name": "glu"}, "head": "classify", "n_outputs": 3},
        {"norm_placement": "macaron", "bias": False},
    ],
)
def test_pruned_equals_masked_original(kw: dict[str, Any]) -> None:
    m = model(**kw)
    plan = random_plan(m)
    small, spec = remove(m, plan)
    x = torch.randint(0, 20, (3, 9))
    with masked(m, *plan_masks(m, plan)):
        want = m(x)
    got = small(x)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(m(x), want, atol=1e-4)  # the masks do change the model
    # 8 heads, 25% removed globally (at least one kept per layer); half of each FFN
    assert sum(spec.layer_heads(i) for i in range(2)) == 6
    assert all(b.mixer.qkv.out_features == 3 * spec.layer_heads(i) * 8
               for i, b in enumerate(small.blocks))  # fmt: skip


def test_parameter_count_drops_as_computed() -> None:
    m = model()
    plan = random_plan(m)
    small, spec = remove(m, plan)
    d, dh = 32, 8
    removed = 0
    for i in range(2):
        gone = 4 - len(plan.heads[i])
        removed += gone * (3 * dh * d + 3 * dh) + gone * dh * d  # qkv rows (+bias), out cols
    hidden = 128
    for kept in plan.units.values():
        gone = hidden - len(kept)
        removed += gone * (d + 1) + gone * d  # up rows (+bias), down columns
    assert model_params(m) - model_params(small) == removed
    # the spec alone rebuilds the same sizes
    assert model_params(build_model(spec)) == model_params(small)


def test_magnitude_pruning_is_masked_sparsity() -> None:
    m = model()
    plan = random_plan(m)
    fractions = removed_fraction(m, plan)
    masks = magnitude_prune(m, fractions)
    params = dict(m.named_parameters())
    for name, frac in fractions.items():
        zeros = float((params[name] == 0).float().mean())
        assert abs(zeros - frac) < 0.01
        kept = params[name][masks[name]].abs().min()
        assert kept >= params[name].detach().abs().flatten().sort().values[
            round(frac * params[name].numel()) - 1]  # fmt: skip
    assert 0.3 < sparsity(m) < 0.6


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"attention": "linear", "position": "none"}, ["layer 0", "linear", "--heads"]),
        ({"attention": {"name": "softmax", "kv_heads": 2}}, ["grouped", "softmax"]),
        ({"position": "alibi"}, ["alibi", "--heads"]),
        ({"ffn": "none"}, ["--ffn", "none"]),
    ],
)
def test_refusals_name_the_component(kw: dict[str, Any], words: list[str]) -> None:
    m = model(**kw)
    heads, ffn = (0.0, 0.5) if kw.get("ffn") == "none" else (0.25, 0.0)
    with pytest.raises(SpecError) as err:
        check_prunable(m, heads, ffn)
    for w in words:
        assert w in str(err.value)


def test_spec_refuses_heads_on_other_mixers() -> None:
    with pytest.raises(SpecError, match="layers.1.n_heads=2.*linear"):
        model(attention="linear", position="none", layers={1: {"n_heads": 2}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the README quickstart, trained briefly
    spec = load_experiment("quickstart").with_overrides(
        ["train.steps=20", "train.eval_every=20", "train.checkpoint_every=20",
         "train.eval_size=32", "train.batch_size=16", "train.progress=false"]
    )  # fmt: skip
    return run_experiment(spec, out=tmp_path_factory.mktemp("runs")).dir


def test_prune_command_writes_a_smaller_run(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code = main(["prune", str(run_dir), "--heads", "0.25", "--ffn", "0.5", "--out", str(tmp_path),
                 "--recover-steps", "4"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    (folder,) = tmp_path.iterdir()
    c = json.loads((folder / "prune.json").read_text())
    assert c["params"]["pruned"] < c["params"]["parent"]
    assert set(c["metrics"]) == {"id", "ood"}
    assert (folder / "report.md").is_file() and "parent" in (folder / "prune.md").read_text()
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert sum(spec.model.layer_heads(i) for i in range(2)) == 6  # 8 heads, 2 removed
    assert spec.model.layers[0].ffn.config.mult == 2.0  # 256 hidden units, 128 kept


def test_prune_magnitude_and_bad_method(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(["prune", str(run_dir), "--method", "magnitude", "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    c = json.loads((folder / "prune.json").read_text())
    assert c["params"]["pruned"] == c["params"]["parent"] and c["sparsity"] > 0.3
    assert main(["prune", str(run_dir), "--heads", "1.5"]) == 2
    assert "--heads=1.5" in capsys.readouterr().err


def test_importance_scores_every_head_and_unit() -> None:
    from anyformer.compress.prune import importance
    from anyformer.lab.run import build_objective, build_task

    spec = ExperimentSpec.from_dict({"model": {"d_model": 32, "n_heads": 4, "max_len": 32,
                                               "norm_placement": "macaron"},
                                     "task": {"name": "copy", "max_len": 6, "ood_min_len": 7,
                                              "ood_max_len": 8}})  # fmt: skip
    from anyformer.lab.run import resolve

    spec = resolve(spec)
    m = build_model(spec.model)
    task = build_task(spec)
    heads, units = importance(m, task, build_objective(spec, task), n_batches=2, batch_size=4)
    assert set(heads) == {0, 1} and all(
        torch.isclose(h.norm(), torch.tensor(1.0)) for h in heads.values()
    )
    assert len(units) == 4 and all((u > 0).all() for u in units.values())
