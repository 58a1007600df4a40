"""MatFormer: nested FFN granularities, Mix'n'Match, joint training (sum / sample),
extraction of standalone submodels (model and CLI), validation and FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer.components.ffn_matformer import MatFormerFFN, MatFormerParams
from anyformer.errors import SpecError
from anyformer.model.elastic import (
    extract,
    granularities,
    set_widths,
    training_widths,
    widths_set,
)
from anyformer.model.transformer import build_model
from anyformer.registry import Dims

V = 32


def _spec(ffn: Any = "matformer", **extra: Any) -> dict[str, Any]:
    spec = dict(
        vocab_size=V, d_model=32, n_heads=4, n_layers=3, max_len=64, position="rope", ffn=ffn
    )
    spec.update(extra)
    return spec


def _tokens(b: int = 3, t: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(0))


def test_each_granularity_is_the_mlp_of_the_first_hidden_units() -> None:
    ffn = MatFormerFFN(Dims(16, 4, 32, causal=True), MatFormerParams(activation="relu"))
    x = torch.randn(2, 5, 16)
    assert ffn.nested_units() == [8, 16, 32, 64]
    for frac, m in zip((0.125, 0.25, 0.5, 1.0), (8, 16, 32, 64)):
        ffn.set_width(frac)
        h = F.relu(x @ ffn.up.weight[:m].T + ffn.up.bias[:m])
        torch.testing.assert_close(ffn(x), h @ ffn.down.weight[:, :m].T + ffn.down.bias)
    ffn.set_width(1.0)
    full = F.relu(ffn.up(x))
    torch.testing.assert_close(ffn(x), ffn.down(full))
    assert ffn.flops_per_token(1) == 4 * 16 * 64


@pytest.mark.parametrize("widths", [0.25, [0.125, 1.0, 0.5]])
def test_extracted_model_equals_the_nested_one_and_is_smaller(widths: Any) -> None:
    model = build_model(_spec()).eval()
    x = _tokens()
    with widths_set(model, widths):
        nested = model(x)
        nested_flops = model.flops_per_token(12)
    small, spec = extract(model, widths)
    assert all(spec.layer(i).ffn.name == "mlp" for i in range(3))
    torch.testing.assert_close(small(x), nested, rtol=0, atol=1e-5)
    assert small.num_params() < model.num_params()
    assert small.flops_per_token(12) == nested_flops
    assert model(x).shape == nested.shape and not torch.allclose(model(x), nested)


def test_extraction_keeps_depth_schedules_and_other_overrides() -> None:
    spec = _spec(
        depth={"name": "looped", "loops": 2},
        layers={1: {"norm": "rmsnorm"}, 2: {"ffn": {"name": "matformer", "active": 0.5}}},
    )
    model = build_model(spec).eval()
    assert model.blocks[2].ffn.active_units == 64 and model.blocks[0].ffn.active_units == 128
    x = _tokens()
    small, new = extract(model, 0.5)
    assert new.depth.name == "looped" and new.layer(1).norm.name == "rmsnorm"
    with widths_set(model, 0.5):
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_training_widths_sum_all_or_sample_one_by_step() -> None:
    summed = build_model(_spec())
    assert training_widths(summed, 7) == [(1.0, w) for w in (0.125, 0.25, 0.5, 1.0)]
    sampled = build_model(_spec({"name": "matformer", "train": "sample"}))
    draws = [training_widths(sampled, s) for s in range(40)]
    assert all(len(d) == 1 for d in draws)
    assert draws == [training_widths(sampled, s) for s in range(40)]  # seeded by the step
    assert len({d[0][1] for d in draws}) == 4
    plain = build_model(_spec("mlp"))
    assert training_widths(plain, 0) == [(1.0, None)] and not plain.trains_several_outputs


def test_sum_training_gives_the_sum_of_losses_and_nested_gradients() -> None:
    model = build_model(_spec(tie_embeddings=False)).train()
    x = _tokens()
    pairs = model.training_outputs(x, None, 0)
    assert [w for w, _ in pairs] == [1.0] * 4
    losses = [F.cross_entropy(o.reshape(-1, V), x.roll(-1, 1).reshape(-1)) for _, o in pairs]
    for (_, out), w in zip(pairs, (0.125, 0.25, 0.5, 1.0)):
        with widths_set(model, w):
            torch.testing.assert_close(out, model(x))
    sum(losses).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(ffn.active_units == 128 for ffn in (b.ffn for b in model.blocks))  # restored


def test_sample_training_trains_the_sampled_width_only() -> None:
    model = build_model(_spec({"name": "matformer", "train": "sample"})).train()
    x = _tokens()
    ((_, width),) = training_widths(model, 3)
    ((_, out),) = model.training_outputs(x, None, 3)
    F.cross_entropy(out.reshape(-1, V), x.reshape(-1)).backward()
    m = round(width * 128)
    grad = model.blocks[0].ffn.up.weight.grad
    assert grad[:m].abs().sum() > 0 and (m == 128 or grad[m:].abs().sum() == 0)


def test_nested_training_makes_every_width_fit_a_batch() -> None:
    model = build_model(_spec(n_layers=1)).train()
    x = _tokens(4, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def losses() -> list[float]:
        out = []
        for w in (0.125, 1.0):
            with widths_set(model, w), torch.no_grad():
                logits = model(x)[:, :-1]
                out.append(float(F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))))
        return out

    before = losses()
    for step in range(30):
        pairs = model.training_outputs(x[:, :-1], None, step)
        loss = sum(F.cross_entropy(o.reshape(-1, V), x[:, 1:].reshape(-1)) for _, o in pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = losses()
    assert all(a < 0.5 * b for a, b in zip(after, before))


@pytest.mark.parametrize(
    ("ffn", "words"),
    [
        ({"name": "matformer", "widths": [0.5, 0.25, 1.0]}, ["widths", "increasing"]),
        ({"name": "matformer", "widths": [0.25, 0.5]}, ["widths", "end with 1.0"]),
        ({"name": "matformer", "widths": [0.001, 0.002, 1.0]}, ["widths", "equal"]),
        ({"name": "matformer", "active": 0}, ["active"]),
        ({"name": "matformer", "train": "all"}, ["train"]),
    ],
)
def test_bad_matformer_params_are_refused(ffn: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        build_model(_spec(ffn))
    for word in words:
        assert word in str(err.value)


def test_width_setting_errors_and_mixed_granularities() -> None:
    model = build_model(_spec())
    with pytest.raises(SpecError, match="3 distinct blocks"):
        set_widths(model, [0.5, 0.5])
    with pytest.raises(SpecError, match="no nested FFN"):
        set_widths(build_model(_spec("mlp")), 0.5)
    mixed = build_model(_spec(layers={1: {"ffn": {"name": "matformer", "widths": [0.5, 1.0]}}}))
    with pytest.raises(SpecError, match="same widths"):
        granularities(mixed)


def test_cli_extract_writes_a_run_folder_with_equal_outputs(tmp_path: Path) -> None:
    from anyformer.cli import main
    from anyformer.lab.elastic import load_trained
    from anyformer.lab.run import prepare_model, resolve
    from anyformer.spec import ExperimentSpec
    from anyformer.training.checkpoint import save_checkpoint
    from anyformer.training.trainer import make_optimizer

    spec = resolve(
        ExperimentSpec.from_dict(
            {
                "name": "mat",
                "model": _spec(vocab_size=None, d_model=32, n_layers=2, max_len=32),
                "task": {"name": "copy", "max_len": 5, "ood_min_len": 6, "ood_max_len": 7},
                "train": {"steps": 3, "progress": False, "device": "cpu"},
            }
        )
    )
    run = tmp_path / "mat-run"
    spec.save(run / "spec.yaml")
    model = prepare_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(run / "checkpoint", 3, model, make_optimizer(model, spec.train), {})
    assert main(["extract", str(run), "--widths", "0.25", "0.5", "--out", str(tmp_path)]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("mat-w0.25-0.5-")]
    new_spec, small = load_trained(folder)
    assert new_spec.model.layer(0).ffn.name == "mlp"
    x = torch.randint(0, spec.model.vocab_size, (2, 10))
    model.eval()
    with widths_set(model, [0.25, 0.5]):
        torch.testing.assert_close(small.eval()(x), model(x), rtol=0, atol=1e-5)
    assert small.num_params() < model.num_params()
    assert main(["extract", str(run), "--widths", "0.5", "0.5", "0.5"]) == 2  # wrong count
