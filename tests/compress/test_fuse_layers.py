"""Layer removal with learnable fusion (FuseGPT): the shallower model equals the parent
with the dropped blocks skipped while the fusion coefficients are 0; the recovery
fine-tune moves only the coefficients and lowers the loss; bad input is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anyformer
from anyformer import registry
from anyformer.cli import main
from anyformer.compress.fuse import (
    FusedLinear,
    attach_fusion,
    batch_loss,
    check_droppable,
    drop_blocks,
    fold,
    fuse_layers,
    neighbours,
    recover,
)
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model


def _setup(**model: Any) -> tuple[Any, Any, Any, Any]:
    base = anyformer.load_experiment("quickstart").to_dict()
    task = registry.get("task", "copy")
    copy = task.cls(task.make_params({"max_len": 5, "ood_min_len": 6, "ood_max_len": 7}), 0)
    base["model"] |= {"d_model": 16, "n_heads": 2, "n_layers": 4, "vocab_size": 30,
                      "max_len": 64, **model}  # fmt: skip
    spec = anyformer.ExperimentSpec.from_dict(base)
    torch.manual_seed(0)
    objective = registry.get("objective", "causal_lm")
    return spec, build_model(spec.model).eval(), objective.cls(objective.make_params()), copy


def test_dropped_model_equals_the_parent_with_those_blocks_skipped() -> None:
    spec, model, _, _ = _setup()
    small, new = drop_blocks(model, spec, [1, 2])
    assert new.model.n_layers == 2 and len(small.blocks) == 2
    x = torch.randint(0, 30, (2, 9))
    model.depth.order = lambda training: [0, 3]  # the parent, skipping blocks 1 and 2
    with torch.no_grad():
        assert torch.equal(small(x), model(x))


def test_zero_coefficients_without_recovery_are_exact_removal() -> None:
    spec, model, objective, task = _setup()
    batches = [task.train_batch(i, 4) for i in range(2)]
    fused, new, info = fuse_layers(model, spec, objective, batches, drop=2)
    removed, _ = drop_blocks(model, spec, info["dropped"])
    assert new.model.n_layers == 2 and len(info["importance"]) == 4
    for (name, p), q in zip(removed.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(p, q), name
    assert neighbours(4, [1, 2]) == {0: [1], 1: [2]}  # nearest kept, the following on a tie
    assert neighbours(4, [0]) == {0: [0]}


def test_recovery_trains_only_the_coefficients_and_lowers_the_loss() -> None:
    spec, model, objective, task = _setup()
    small, _ = drop_blocks(model, spec, [1, 2])
    wrappers = attach_fusion(small, model, [1, 2])
    assert wrappers and all(isinstance(w, FusedLinear) for w in wrappers)
    before = {k: v.clone() for k, v in small.state_dict().items() if "w_d" not in k}
    batch = task.train_batch(0, 4)
    losses = recover(small, wrappers, objective, [batch] * 10, lr=0.1)
    assert losses[-1] < losses[0] - 0.02
    after = small.state_dict()
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert moved and all(k.endswith((".a", ".b")) for k in moved)
    with torch.no_grad():
        loss = float(batch_loss(small, objective, batch))
        fold(small)
        assert not any(isinstance(m, FusedLinear) for m in small.modules())
        assert abs(float(batch_loss(small, objective, batch)) - loss) < 1e-5


def test_refusals_name_the_field() -> None:
    spec, _, objective, _ = _setup()
    with pytest.raises(SpecError, match="--drop 4"):
        check_droppable(spec, objective, 4)
    looped, _, _, _ = _setup(n_layers=1, depth={"name": "looped", "loops": 2})
    with pytest.raises(SpecError, match="model.depth='looped'"):
        check_droppable(looped, objective, 1)


@pytest.mark.slow
def test_fuse_layers_command_writes_a_shallower_run(tmp_path: Path) -> None:
    spec, _, _, _ = _setup()
    spec = spec.with_overrides(
        [
            "train.steps=2",
            "train.warmup_steps=1",
            "train.eval_size=8",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.batch_size=4",
        ]  # fmt: skip
    )
    run = anyformer.lab.run.run_experiment(spec, tmp_path / "runs").dir
    assert main(["fuse-layers", str(run), "--drop", "1", "--recover-steps", "3",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    (dest,) = tmp_path.glob("*-fused1-*")
    assert "| removed (3 blocks) | id |" in (dest / "report.md").read_text()
    _, small = anyformer.lab.generate.load_run_model(dest)
    assert len(small.blocks) == 3


def test_per_layer_overrides_follow_their_blocks() -> None:
    spec, model, _, _ = _setup(layers={3: {"n_heads": 1}, 1: {"n_heads": 1}})
    small, new = drop_blocks(model, spec, [1])
    assert set(new.model.layers) == {2} and new.model.layers[2].n_heads == 1
    x = torch.randint(0, 30, (2, 9))
    model.depth.order = lambda training: [0, 2, 3]
    with torch.no_grad():
        assert torch.equal(small(x), model(x))
