"""Low-rank SVD factorization (Greenformers): exact at full rank, the best rank-r
approximation below it, parameter counts as computed, the structure rebuilt from the
spec, and `anyformer factorize` on the quickstart's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from anyformer.compress.factorize import choose_ranks
from anyformer.errors import SpecError
from anyformer.model.factorized import (
    apply_factorized,
    factorizable,
    factorize_linear,
    factorized_params,
    rank_for_energy,
)
from anyformer.model.transformer import build_model

SMALL = {"vocab_size": 13, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 16}


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_svd_at_full_rank_equals_the_original_layer(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    f = factorize_linear(lin, min(shape))
    x = torch.randn(5, shape[0])
    torch.testing.assert_close(f(x), lin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.weight, lin.weight, atol=1e-5, rtol=1e-5)


def test_truncation_error_is_the_dropped_singular_values_eckart_young() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(20, 30, bias=False)
    s = torch.linalg.svdvals(lin.weight.double())
    for r in (1, 5, 19):
        err = torch.linalg.matrix_norm((factorize_linear(lin, r).weight - lin.weight).double())
        assert err.item() == pytest.approx(s[r:].pow(2).sum().sqrt().item(), rel=1e-4)


@pytest.mark.parametrize("rank", [1, 4, 7])
def test_parameter_count_at_rank_r_is_as_computed(rank: int) -> None:
    model = build_model(SMALL)
    layers = factorizable(model)
    expected = model.num_params() + sum(
        factorized_params(lin, rank) - lin.weight.numel() - lin.bias.numel()
        for lin in layers.values()
    )
    apply_factorized(model, {name: rank for name in layers})
    assert model.num_params() == expected
    lin = nn.Linear(10, 6)
    assert factorized_params(lin, rank) == rank * 16 + 6


def test_rank_for_energy_keeps_that_fraction_of_squared_singular_values() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 1.0])  # squares 9, 4, 1, 1 of 15
    assert rank_for_energy(s, 9 / 15) == 1
    assert rank_for_energy(s, 0.61) == 2
    assert rank_for_energy(s, 13 / 15) == 2
    assert rank_for_energy(s, 0.9) == 3
    assert rank_for_energy(s, 1.0) == 4


def test_a_factorized_model_is_rebuilt_from_its_spec_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    ranks = choose_ranks(model, rank=6)
    assert set(ranks) == set(factorizable(model)) and set(ranks.values()) == {6}
    apply_factorized(model, ranks)
    rebuilt = build_model({**SMALL, "factorized": ranks}).eval()
    rebuilt.load_state_dict(model.state_dict())
    ids = torch.randint(0, 13, (2, 9))
    torch.testing.assert_close(rebuilt(ids), model(ids))
    assert rebuilt.num_params() == model.num_params() < build_model(SMALL).num_params()
    dense = build_model(SMALL)
    saved = sum(
        2 * (lin.in_features * lin.out_features - 6 * (lin.in_features + lin.out_features))
        for lin in factorizable(dense).values()
    )
    assert dense.flops_per_token(9) - rebuilt.flops_per_token(9) == 3 * saved  # fwd + bwd


def test_bad_ranks_and_names_are_refused_naming_the_field() -> None:
    model = build_model(SMALL)
    for bad in (0, 33):
        with pytest.raises(SpecError, match=rf"--rank={bad} is invalid.*valid: 1\.\.32"):
            choose_ranks(model, rank=bad)
    with pytest.raises(SpecError, match="--energy=1.5"):
        choose_ranks(model, energy=1.5)
    with pytest.raises(SpecError, match="model.factorized: 'blocks.9.ffn.up'"):
        build_model({**SMALL, "factorized": {"blocks.9.ffn.up": 2}})
    with pytest.raises(SpecError, match=r"model.factorized.blocks.0.ffn.up=40 exceeds"):
        build_model({**SMALL, "factorized": {"blocks.0.ffn.up": 40}})


def test_energy_gives_each_layer_its_own_rank_and_skips_layers_that_would_grow() -> None:
    model = build_model(SMALL)
    assert choose_ranks(model, energy=1.0) == {}  # full rank saves nothing anywhere
    ranks = choose_ranks(model, energy=0.5)
    assert ranks and all(1 <= r < 32 for r in ranks.values())


TINY_TRAIN = [
    "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.eval_size=32",
    "train.warmup_steps=2", "train.progress=false", "train.threads=1", "train.batch_size=16",
]  # fmt: skip


@pytest.mark.slow
def test_factorize_command_on_the_quickstart_run(tmp_path: Path) -> None:
    from anyformer.cli import main
    from anyformer.lab import run_experiment
    from anyformer.lab.experiments import load_experiment
    from anyformer.lab.loaded import load_run

    spec = load_experiment("quickstart").with_overrides(TINY_TRAIN)
    run = run_experiment(spec, out=tmp_path / "runs")
    assert main(["factorize", str(run.dir), "--rank", "8", "--out", str(tmp_path / "f")]) == 0
    (folder,) = (tmp_path / "f").iterdir()
    record = json.loads((folder / "parent.json").read_text())
    assert record["params_ratio"] < 0.5 and set(record["ranks"].values()) == {8}
    assert "Compared with the parent" in (folder / "report.md").read_text()
    assert load_run(folder).spec.model.factorized == record["ranks"]
    assert main(["factorize", str(run.dir), "--rank", "0"]) == 2
