"""DSFormer's dense x N:M-sparse factorization: the N:M pattern survives training under
both masks, N = M at full rank is the original layer, the stored-weight formula, the
structure rebuilt from the spec, and bad options refused naming the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from anyformer.compress.factorize import (
    approximation_report,
    choose_ranks,
    matched_rank,
    parse_sparsity,
)
from anyformer.errors import SpecError
from anyformer.model.dense_sparse import (
    DenseSparseLinear,
    dense_sparse_linear,
    dense_sparse_params,
    fit_dense_sparse,
    mask_bits,
    nm_mask,
    relative_error,
)
from anyformer.model.factorized import apply_factorized, factorizable, stored_params
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec, FactorizedSparsity, ModelSpec

SMALL = {"vocab_size": 13, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 16}


def sparsity(n: int = 2, m: int = 4, mask: str = "learned") -> FactorizedSparsity:
    return FactorizedSparsity(n=n, m=m, mask=mask)  # type: ignore[arg-type]


def ds_layers(model: nn.Module) -> list[DenseSparseLinear]:
    return [mod for mod in model.modules() if isinstance(mod, DenseSparseLinear)]


def assert_nm(layer: DenseSparseLinear) -> None:
    s = layer.first.weight * layer.current_mask()
    per_group = (s != 0).reshape(layer.rank, -1, layer.m).sum(-1)
    assert int(per_group.max()) <= layer.n


def test_nm_mask_keeps_the_n_largest_of_every_m() -> None:
    w = torch.tensor([[0.1, -3.0, 2.0, 0.0, 5.0, 4.0, -6.0, 1.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, True, False]]
    assert nm_mask(w, 4, 4).all()


@pytest.mark.parametrize("mask", ["learned", "fixed"])
def test_the_nm_pattern_holds_after_training_steps(mask: str) -> None:
    torch.manual_seed(0)
    dense = build_model(SMALL)
    ranks = {name: 12 for name in factorizable(dense)}
    model = apply_factorized(dense, ranks, sparsity(2, 4, mask), iters=1)
    layers = ds_layers(model)
    assert len(layers) == 8
    before = [layer.current_mask().clone() for layer in layers]
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    ids = torch.randint(0, 13, (4, 10))
    for _ in range(5):
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        pruned_grad = [layer.first.weight.grad[~layer.current_mask()] for layer in layers]
        opt.step()
    for layer in layers:
        assert_nm(layer)
    if mask == "fixed":  # kept pattern: the pruned weights get no gradient and stay 0
        for layer, old in zip(layers, before):
            assert torch.equal(layer.mask, old)
            assert torch.all(layer.first.weight[~layer.mask] == 0)
        assert all(torch.all(g == 0) for g in pruned_grad)
    else:  # straight-through: pruned weights get gradient, so the pattern can move
        assert any(bool((g != 0).any()) for g in pruned_grad)
        assert any(not torch.equal(layer.current_mask(), old) for layer, old in zip(layers, before))


@pytest.mark.parametrize(("shape", "m"), [((24, 40), 4), ((40, 24), 8), ((32, 32), 2)])
def test_dense_s_at_full_rank_equals_the_original_layer(shape: tuple[int, int], m: int) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    x = torch.randn(5, shape[0])
    for mask in (True, False):
        layer = dense_sparse_linear(lin, min(shape), m, m, learned=mask, iters=2)
        torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.weight, lin.weight, atol=1e-5, rtol=1e-5)


def test_alternating_least_squares_never_increases_the_error() -> None:
    torch.manual_seed(2)
    w = torch.randn(24, 32)
    errors = []
    for iters in (0, 1, 3, 6):
        d, s, mask = fit_dense_sparse(w, 12, 2, 4, iters)
        assert torch.all(s[~mask] == 0)
        errors.append(float(torch.linalg.matrix_norm(w.double() - d @ s)))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.9 * errors[0]


def test_stored_weight_formula_mask_bits_and_the_models_count() -> None:
    assert dense_sparse_params(32, 24, 8, 2, 4) == 8 * 24 + 8 * 32 // 2 + 24
    assert dense_sparse_params(32, 24, 8, 2, 4, bias=False) == 8 * 24 + 8 * 16
    assert mask_bits(32, 8, 2, 4) == 8 * 8 * 3  # C(4, 2) = 6 patterns: 3 bits a group
    assert mask_bits(32, 8, 4, 4) == 0 and mask_bits(64, 1, 1, 8) == 8 * 3
    model = build_model(SMALL)
    layers = factorizable(model)
    expected = model.num_params() + sum(
        dense_sparse_params(lin.in_features, lin.out_features, 8, 2, 4)
        - lin.weight.numel() - lin.bias.numel()
        for lin in layers.values()
    )  # fmt: skip
    apply_factorized(model, {name: 8 for name in layers}, sparsity(2, 4))
    assert stored_params(model) == expected
    # the dense storage of S holds the pruned zeros too: twice the nonzeros at 2:4
    assert model.num_params() - stored_params(model) == sum(8 * lin.in_features // 2
                                                            for lin in layers.values())  # fmt: skip
    # FLOPs count the nonzeros (N:M kernels): fwd + bwd = 3x forward
    dense = build_model(SMALL)
    saved = sum(
        2 * (lin.in_features * lin.out_features - (8 * lin.out_features + 8 * lin.in_features // 2))
        for lin in factorizable(dense).values()
    )
    assert dense.flops_per_token(9) - model.flops_per_token(9) == 3 * saved


def test_equal_params_gives_no_more_weights_than_the_svd() -> None:
    model = build_model(SMALL)
    sp = sparsity(2, 4)
    ranks = choose_ranks(model, rank=6, sparsity=sp, equal_params=True)
    for name, lin in factorizable(model).items():
        r = ranks[name]
        budget = 6 * (lin.in_features + lin.out_features)
        assert r * (lin.out_features + lin.in_features // 2) <= budget
        assert r == min(lin.in_features, lin.out_features) or (
            (r + 1) * (lin.out_features + lin.in_features // 2) > budget
        )
    lin = nn.Linear(32, 32)  # square at 2:4: 4/3 of the SVD rank
    assert matched_rank(lin, 6, sp) == 8 and matched_rank(lin, 30, sp) == 32


def test_approximation_report_beside_the_svd_at_the_same_weights() -> None:
    torch.manual_seed(3)
    model = build_model(SMALL)
    dense = factorizable(model)
    originals = {n: nn.Linear(lin.in_features, lin.out_features) for n, lin in dense.items()}
    for n, lin in originals.items():
        lin.load_state_dict(dense[n].state_dict())
    ranks = {n: 8 for n in dense}
    apply_factorized(model, ranks, sparsity(2, 4), iters=3)
    report = approximation_report(originals, model, ranks, sparsity(2, 4))
    row = report["layers"]["blocks.0.mixer.out"]  # 32x32: 8*32 + 8*16 = 384 weights
    assert row["weights"] == 384 and row["svd_rank_same_weights"] == 6
    layer = model.get_submodule("blocks.0.mixer.out")
    assert row["error"] == pytest.approx(
        relative_error(layer, originals["blocks.0.mixer.out"].weight)
    )
    assert 0 < report["mean_error"] < 1 and 0 < report["mean_svd_error_same_weights"] < 1
    assert report["mask_bits"] == sum(mask_bits(lin.in_features, 8, 2, 4) for lin in dense.values())


@pytest.mark.parametrize("mask", ["learned", "fixed"])
def test_a_dense_sparse_model_is_rebuilt_from_its_spec_with_the_same_outputs(mask: str) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    ranks = choose_ranks(model, rank=6, sparsity=sparsity(2, 4, mask))
    apply_factorized(model, ranks, sparsity(2, 4, mask), iters=2)
    data = {**SMALL, "factorized": ranks, "factorized_sparsity": {"n": 2, "m": 4, "mask": mask}}
    spec = ModelSpec.model_validate(data)
    again = ModelSpec.model_validate(spec.model_dump(mode="json"))
    assert again.factorized_sparsity == spec.factorized_sparsity
    rebuilt = build_model(again).eval()
    rebuilt.load_state_dict(model.state_dict())
    ids = torch.randint(0, 13, (2, 9))
    torch.testing.assert_close(rebuilt(ids), model(ids))
    assert ("blocks.0.ffn.up.mask" in model.state_dict()) == (mask == "fixed")


def test_specs_without_sparsity_are_written_and_hashed_as_before() -> None:
    exp = {"name": "x", "model": {**SMALL, "max_len": 64, "factorized": {"blocks.0.ffn.up": 4}},
           "task": {"name": "copy"}}  # fmt: skip
    spec = ExperimentSpec.from_dict(exp)
    assert "factorized_sparsity" not in spec.to_dict()["model"]
    with_sp = ExperimentSpec.from_dict(
        {**exp, "model": {**exp["model"], "factorized_sparsity": {"n": 2, "m": 4}}}
    )
    assert with_sp.hash != spec.hash


def test_bad_options_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"n=5 exceeds m=4.*valid: 1 <= n <= m"):
        ModelSpec.model_validate({**SMALL, "factorized": {"blocks.0.ffn.up": 4},
                                  "factorized_sparsity": {"n": 5, "m": 4}})  # fmt: skip
    with pytest.raises(ValueError, match="factorized_sparsity is set but factorized names no"):
        ModelSpec.model_validate({**SMALL, "factorized_sparsity": {"n": 2, "m": 4}})
    with pytest.raises(ValueError, match="mask"):
        ModelSpec.model_validate({**SMALL, "factorized": {"blocks.0.ffn.up": 4},
                                  "factorized_sparsity": {"mask": "random"}})  # fmt: skip
    with pytest.raises(SpecError, match=r"model.factorized_sparsity.m=3: layer 'blocks.0.ffn.up'"):
        build_model({**SMALL, "factorized": {"blocks.0.ffn.up": 4},
                     "factorized_sparsity": {"n": 1, "m": 3}})  # fmt: skip
    for bad in ("2", "2:4:8", "a:b", "5:4", "0:4"):
        with pytest.raises(SpecError, match=rf"--sparsity='{bad}' is invalid"):
            parse_sparsity(bad)
    with pytest.raises(SpecError, match="--mask='soft' is invalid; valid: learned, fixed"):
        parse_sparsity("2:4", "soft")
    with pytest.raises(SpecError, match="--equal-params needs --sparsity"):
        choose_ranks(build_model(SMALL), rank=4, equal_params=True)


TINY_TRAIN = [
    "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.eval_size=32",
    "train.warmup_steps=2", "train.progress=false", "train.threads=1", "train.batch_size=16",
]  # fmt: skip


@pytest.mark.slow
def test_factorize_sparsity_then_resume_keeps_the_pattern(tmp_path: Path) -> None:
    from anyformer.cli import main
    from anyformer.lab import run_experiment
    from anyformer.lab.experiments import load_experiment
    from anyformer.lab.loaded import load_run

    spec = load_experiment("quickstart").with_overrides(TINY_TRAIN)
    run = run_experiment(spec, out=tmp_path / "runs")
    argv = ["factorize", str(run.dir), "--rank", "8", "--sparsity", "2:4", "--equal-params",
            "--out", str(tmp_path / "f")]  # fmt: skip
    assert main(argv) == 0
    (folder,) = (tmp_path / "f").iterdir()
    record = json.loads((folder / "parent.json").read_text())
    assert record["sparsity"] == {"n": 2, "m": 4, "mask": "learned"}
    assert record["params_ratio"] < 0.5 and math.isfinite(record["approximation"]["mean_error"])
    child = load_run(folder)
    assert child.spec.model.factorized_sparsity == sparsity(2, 4)
    assert main(["resume", str(folder), "train.steps=30", "train.eval_every=30",
                 "train.checkpoint_every=30"]) == 0  # fmt: skip
    trained = load_run(folder)
    layers = ds_layers(trained.model)
    assert layers and all(assert_nm(layer) is None for layer in layers)
    before = dict(child.model.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in trained.model.named_parameters())
    assert main(["factorize", str(run.dir), "--rank", "8", "--sparsity", "4:2"]) == 2


def test_quantize_and_lora_refuse_the_sparse_factor_they_could_not_reach() -> None:
    """The sparse factor's weight is multiplied by its parent, never through its own
    forward: quantizing or LoRA-adapting it would be silently ignored, so both refuse,
    naming the layer (a LoRA target without it still works)."""
    from anyformer.adapters import apply_adapter
    from anyformer.compress.qmodel import NotQuantizable, check_quantizable
    from anyformer.spec import AdapterSpec

    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    apply_factorized(model, {"blocks.0.ffn.up": 6}, sparsity(2, 4, "learned"), iters=1)
    with pytest.raises(NotQuantizable, match=r"'blocks.0.ffn.up.first'.*DSFormer"):
        check_quantizable(model)
    with pytest.raises(SpecError, match=r"adapter.target='\*'.*blocks.0.ffn.up.first"):
        apply_adapter(model, AdapterSpec(kind="lora", target="*"))
    trained = apply_adapter(model, AdapterSpec(kind="lora", target="blocks.0.ffn.up.second"))
    assert any("lora_A" in n for n in trained)
