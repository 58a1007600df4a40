"""self_distillation: the teacher is the starting weights and never trains, alpha = 0 is the
base objective exactly, the distance is zero at the start, EMA follows the student, and a
resumed run is bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.objectives.self_distillation import SelfDistillation, Teacher
from anyformer.spec import ExperimentSpec
from anyformer.training.trainer import Trainer

SPEC = {
    "name": "sd",
    "task": {"name": "copy", "min_len": 2, "max_len": 4, "ood_min_len": 5, "ood_max_len": 6},
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16},
    "train": {"steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 6, "eval_size": 8,
              "checkpoint_every": 3, "warmup_steps": 0, "threads": 1, "progress": False,
              "log_every": 1},
}  # fmt: skip


def make(objective: Any, run_dir: Path | None = None) -> Trainer:
    spec = resolve(ExperimentSpec.from_dict({**SPEC, "objective": objective}))
    task = build_task(spec)
    return Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, run_dir)


def backbone(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items() if "objective_module" not in k}


def test_alpha_zero_is_the_base_objective_exactly() -> None:
    base, sd = make("causal_lm"), make({"name": "self_distillation", "alpha": 0.0})
    a, b = base.fit(), sd.fit()
    assert [x for _, x in a.losses] == [x for _, x in b.losses]
    assert a.final["id"]["loss"] == b.final["id"]["loss"]
    for key, value in backbone(base).items():
        assert torch.equal(value, backbone(sd)[key]), key


def test_the_teacher_is_the_starting_weights_and_never_trains() -> None:
    t = make({"name": "self_distillation", "alpha": 1.0})
    start = backbone(t)
    teacher = t.model.objective_module.teacher
    assert isinstance(teacher, Teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    base = make("causal_lm")
    # the distance is zero at the first step: the same loss as the base objective
    assert t.train_step(0) == base.train_step(0)
    t.fit()
    prefix = "objective_module.teacher.model."
    after = {k[len(prefix) :]: v for k, v in t.model.state_dict().items() if k.startswith(prefix)}
    assert after.keys() == start.keys()
    assert all(torch.equal(after[k], start[k]) for k in start)  # bit-identical
    assert any(not torch.equal(backbone(t)[k], start[k]) for k in start)  # the student moved
    t.model.train()
    assert not teacher.training and not teacher.model.training  # always in evaluation mode


def test_ema_teacher_follows_the_student() -> None:
    t = make({"name": "self_distillation", "teacher": "ema", "ema_decay": 0.5})
    t.train_step(0)  # teacher = 0.5 start + 0.5 start (no change yet), then the step
    student = backbone(t)
    before = {k: v.clone() for k, v in t.model.objective_module.teacher.model.state_dict().items()}
    t.train_step(1)
    after = t.model.objective_module.teacher.model.state_dict()
    w = "blocks.0.mixer.qkv.weight"
    key = next(k for k in student if k.endswith(w))
    torch.testing.assert_close(after[w], 0.5 * before[w] + 0.5 * student[key])


@pytest.mark.parametrize("target", ["hidden", "logits"])
def test_a_resumed_run_is_bit_identical(tmp_path: Path, target: str) -> None:
    objective = {"name": "self_distillation", "teacher": "ema", "ema_decay": 0.9,
                 "target": target}  # fmt: skip
    whole = make(objective, tmp_path / "whole")
    whole.fit()
    paused = make(objective, tmp_path / "paused")
    paused.fit(until=3)
    resumed = make(objective, tmp_path / "paused")
    resumed.fit()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("objective_module.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_base_for_another_head_is_refused() -> None:
    from anyformer.errors import SpecError

    with pytest.raises(SpecError, match="base 'mse' reads the outputs of head"):
        make({"name": "self_distillation", "base": "mse"})
    assert isinstance(make({"name": "self_distillation"}).objective, SelfDistillation)
    with pytest.raises(SpecError, match="base 'masked_patches' trains model.kind encoder"):
        make({"name": "self_distillation", "base": "masked_patches"})


def digits(objective: Any, steps: int = 3, batch: int = 8) -> Trainer:
    spec = resolve(
        ExperimentSpec.from_dict(
            {
                "name": "sd-mae", "task": "digits", "objective": objective,
                "model": {"kind": "encoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
                          "embedder": {"name": "patches", "patch_size": 2},
                          "position": "sincos_2d"},
                "train": {"steps": steps, "batch_size": batch, "lr": 3e-3, "eval_every": steps,
                          "eval_size": 64, "warmup_steps": 0, "threads": 1,
                          "progress": False, "log_every": 50},
            }
        )
    )  # fmt: skip
    task = build_task(spec)
    return Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train)


def test_masked_patches_as_base_the_papers_setting() -> None:
    mae = digits("masked_patches")
    zero = digits({"name": "self_distillation", "base": "masked_patches", "alpha": 0.0})
    assert [mae.train_step(s) for s in range(3)] == [zero.train_step(s) for s in range(3)]
    sd = digits({"name": "self_distillation", "base": "masked_patches", "alpha": 1.0})
    parts = sd.model.objective_module
    assert isinstance(parts.teacher, Teacher) and parts.base_module is not None
    losses = [sd.train_step(s) for s in range(3)]
    assert losses[0] == digits("masked_patches").train_step(0)  # distance 0 at the start
    sd.model.eval()
    with torch.no_grad():
        batch = sd.objective.evaluation_batches([sd.task.train_batch(0, 8)], "id")[0]
        out = sd.model(batch.inputs)
        total = float(sd.objective(out, batch))
        assert total > float(sd.objective.base(out, batch))  # the student has moved away


def test_a_forward_that_skips_the_hook_falls_back_to_a_plain_one() -> None:
    """A compiled forward may not call hooks added after compilation; the student's hidden
    states then come from one plain forward, the same values."""
    a = make({"name": "self_distillation", "alpha": 1.0})
    b = make({"name": "self_distillation", "alpha": 1.0})
    a.train_step(0), b.train_step(0)  # the student moves away from the teacher
    batch = b.task.train_batch(1, 8)
    plain = a.objective.training_loss(
        a.model, batch, 1, lambda x: a.training_outputs(x, 1)
    ).detach()

    def hookless(x):  # type: ignore[no-untyped-def] # noqa: ANN001, ANN202
        norm = b.model.norm
        saved = norm._forward_hooks.copy()
        norm._forward_hooks.clear()
        try:
            return b.training_outputs(x, 1)
        finally:
            norm._forward_hooks.update(saved)

    assert float(b.objective.training_loss(b.model, batch, 1, hookless).detach()) == float(plain)
