"""Token reduction at inference (IA-RED²-style pruning, ToMe merging): keep=1 is the model
unchanged, the blocks after the cut see the asked number of tokens, pruning keeps the
most attended tokens and the CLS token, and merging averages the matched pair."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import anyformer
from anyformer.compress.tokens import check_reducible, merge_tokens, reduced
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model


def _vit(pool: str = "first", position: str = "learned") -> tuple[Any, Any]:
    spec = anyformer.load_experiment("vision_quickstart").to_dict()
    spec["model"] |= {"d_model": 16, "n_heads": 2, "n_layers": 3, "pool": pool,
                      "position": position}  # fmt: skip
    spec = anyformer.lab.run.resolve(anyformer.ExperimentSpec.from_dict(spec))
    torch.manual_seed(0)
    return spec, build_model(spec.model).eval()


def _inputs(spec: Any) -> torch.Tensor:
    return torch.randn(3, *spec.model.input_shape)


@pytest.mark.parametrize("method", ["prune", "merge"])
def test_keep_one_is_the_model_unchanged(method: str) -> None:
    spec, model = _vit()
    x = _inputs(spec)
    with torch.no_grad():
        ref = model(x)
        with reduced(model, 1.0, method) as counts:
            assert torch.equal(model(x), ref)
        assert counts == [17]  # 16 patches and the CLS token, none removed


@pytest.mark.parametrize("method", ["prune", "merge"])
@pytest.mark.parametrize("keep", [0.5, 0.75])
def test_blocks_after_the_cut_see_the_asked_token_count(method: str, keep: float) -> None:
    spec, model = _vit(pool="mean", position="rope")
    seen: list[int] = []
    model.blocks[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    x = _inputs(spec)
    with torch.no_grad():
        full = model(x)
        t = seen[-1]
        with reduced(model, keep, method, at=1) as counts:
            out = model(x)
    assert seen[-1] == counts[-1] == -(-t * keep // 1) and out.shape == full.shape
    assert torch.isfinite(out).all() and not torch.allclose(out, full)


def test_pruning_keeps_the_cls_token_and_the_most_attended() -> None:
    spec, model = _vit(pool="first")
    seen: list[torch.Tensor] = []
    model.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = _inputs(spec)
    with torch.no_grad():
        model(x)
        before = seen[-1]
        with reduced(model, 0.25, "prune", at=1):
            model(x)
    after = seen[-1]
    assert torch.equal(after[:, 0], before[:, 0])  # the CLS token stays first
    # every kept token is one of the originals, in the original order
    for row_b, row_a in zip(before, after):
        idx = [int((row_b - tok).abs().sum(-1).argmin()) for tok in row_a]
        assert idx == sorted(idx) and idx[0] == 0


def test_merging_averages_the_most_similar_pair() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [1.0, 0.05]]])
    ctx = dataclasses.make_dataclass("C", ["positions", "padding_mask"])(torch.arange(4), None)
    out, new, sizes = merge_tokens(x, ctx, torch.ones(1, 4), 3, protect_first=False)
    # A = tokens 0, 2; B = 1, 3. Token 0 matches token 3 best (cos ~ 0.999): merged there
    assert out.shape == (1, 3, 2) and sizes.tolist() == [[1.0, 1.0, 2.0]]
    assert torch.allclose(out[0, 2], torch.tensor([1.0, 0.025]))
    assert new.positions.tolist() == [[1, 2, 3]]


def test_refusals() -> None:
    spec, model = _vit()
    with pytest.raises(SpecError, match="--keep 0"):
        check_reducible(model, spec, "prune", 0.0, 1)
    with pytest.raises(SpecError, match="--method 'drop'"):
        check_reducible(model, spec, "drop", 0.5, 1)
    quick = anyformer.lab.run.resolve(anyformer.load_experiment("quickstart"))
    with pytest.raises(SpecError, match="model.kind='decoder'"):
        check_reducible(build_model(quick.model), quick, "prune", 0.5, 1)


@pytest.mark.slow
def test_reduce_tokens_command_writes_the_curve(tmp_path: Any) -> None:
    from anyformer.cli import main
    from anyformer.commands.reduce_tokens import _keeps

    spec, _ = _vit()
    spec = spec.with_overrides(
        [
            "train.steps=2",
            "train.warmup_steps=1",
            "train.eval_size=16",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.batch_size=4",
        ]  # fmt: skip
    )
    run = anyformer.lab.run.run_experiment(spec, tmp_path).dir
    assert main(["reduce-tokens", str(run), "--keep", "1,0.5", "--method", "merge"]) == 0
    table = (run / "token_reduction.md").read_text()
    assert "| 1 | id | 17 |" in table and "| 0.5 | id | 9 |" in table
    with pytest.raises(SpecError, match="--keep 'half'"):
        _keeps("half")
