"""Model fusion (Singh & Jaggi; Imfeld et al.): optimal-transport alignment of heads and
FFN neurons recovers a model from a permuted copy of itself exactly; naive averaging of
the same pair does not; mismatched runs and unsupported components are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anyformer
from anyformer.cli import main
from anyformer.compress.merge_models import (
    check_same_shape,
    ffn_units,
    fuse,
    permute_heads,
)
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model

pytest.importorskip("scipy")


def _spec(**model: Any) -> Any:
    base = anyformer.load_experiment("quickstart").to_dict()
    base["model"] |= {"d_model": 16, "n_heads": 4, "n_layers": 2, "vocab_size": 30, **model}
    return anyformer.ExperimentSpec.from_dict(base)


def _permuted(model: Any, seed: int) -> Any:
    """A copy of ``model`` with the heads and hidden neurons of every block shuffled."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for block in other.blocks:
        _, targets = ffn_units(block.ffn)
        perm = torch.randperm(block.ffn.down.in_features, generator=g)
        for layer, dim, repeat in targets:
            index = torch.cat([perm + r * perm.numel() for r in range(repeat)])
            with torch.no_grad():
                layer.weight.copy_(layer.weight.index_select(dim, index))
                if layer.bias is not None and dim == 0:
                    layer.bias.copy_(layer.bias[index])
        permute_heads(block.mixer, torch.randperm(block.mixer.qkv.head_groups[0], generator=g))
    return other


@pytest.mark.parametrize("ffn", ["mlp", "glu"])
def test_ot_fusion_with_a_permuted_copy_recovers_the_model(ffn: str) -> None:
    spec = _spec(ffn=ffn)
    torch.manual_seed(0)
    model = build_model(spec.model).eval()
    twin = _permuted(model, 1)
    x = torch.randint(0, 30, (3, 11))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(twin(x), ref, atol=1e-5)  # same function, other unit order
        fused, info = fuse(model, twin, spec, "ot")
        assert all(row["ffn_cost_after"] < 1e-10 for row in info["blocks"])
        for (name, p), q in zip(model.state_dict().items(), fused.state_dict().values()):
            assert torch.allclose(p, q, atol=1e-6), name
        assert torch.allclose(fused(x), ref, atol=1e-6)
        naive, _ = fuse(model, twin, spec, "average")
        assert (naive(x) - ref).abs().max() > 1e-2


def test_ot_fusion_aligns_a_permuted_residual_stream_from_activations() -> None:
    from anyformer.compress.merge_models import permute_residual

    spec = _spec()
    torch.manual_seed(0)
    model = build_model(spec.model).eval()
    twin = _permuted(model, 2)
    x = torch.randint(0, 30, (4, 12))
    permute_residual(twin, torch.randperm(16, generator=torch.Generator().manual_seed(3)), x)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(twin(x), ref, atol=1e-5)
        fused, info = fuse(model, twin, spec, "ot", inputs=x)
        assert info["residual_perm_moved"] > 0
        assert torch.allclose(fused(x), ref, atol=1e-6)
        units_only, _ = fuse(model, twin, spec, "ot")
        assert (units_only(x) - ref).abs().max() > 1e-2


def test_fusion_refuses_other_shapes_and_unsupported_components() -> None:
    with pytest.raises(SpecError, match="model.d_model: 16 vs 32"):
        check_same_shape(_spec(), _spec(d_model=32))
    spec = _spec(position="alibi")
    model = build_model(spec.model)
    with pytest.raises(SpecError, match="model.position='alibi'"):
        fuse(model, model, spec, "ot")
    spec = _spec(ffn="matformer")
    model = build_model(spec.model)
    with pytest.raises(SpecError, match="model.ffn='matformer'"):
        fuse(model, model, spec, "ot")
    with pytest.raises(SpecError, match="--method 'median'"):
        fuse(model, model, spec, "median")


@pytest.mark.slow
def test_fuse_models_command_writes_a_run_with_a_report(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        spec = _spec().with_overrides(
            [
                f"train.seed={seed}",
                "train.steps=2",
                "train.warmup_steps=1",
                "train.eval_size=8",
                "train.eval_every=2",
                "train.checkpoint_every=2",
                "train.batch_size=4",
            ]  # fmt: skip
        )
        runs.append(anyformer.lab.run.run_experiment(spec, tmp_path / "runs").dir)
    args = ["fuse-models", str(runs[0]), str(runs[1]), "--method", "ot", "--out", str(tmp_path)]
    assert main(args) == 0
    (dest,) = tmp_path.glob("*-fused-ot-*")
    report = (dest / "report.md").read_text()
    assert "| parent_a | id |" in report and "| fused | ood |" in report
    _, fused = anyformer.lab.generate.load_run_model(dest)
    assert fused.num_params() > 0
