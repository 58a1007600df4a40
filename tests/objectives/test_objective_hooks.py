"""The objective hooks pretraining objectives build on: ``corrupt`` (batches rewritten
before the forward, deterministically per step and per evaluation batch), ``module``
(trainable modules of the objective's own, trained and checkpointed with the model),
``training_loss`` (an objective driving the forward itself) and ``kinds``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.objectives.losses import CausalLM, CausalLMParams, attach_objective
from anyformer.registry import Capabilities, register
from anyformer.spec import ExperimentSpec, objective_problem
from anyformer.tasks.base import Batch
from anyformer.training.trainer import Trainer

SPEC = {
    "name": "hooks",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16},
    "task": {"name": "copy", "min_len": 2, "max_len": 3, "ood_min_len": 4, "ood_max_len": 5},
    "train": {"steps": 4, "batch_size": 4, "eval_size": 8, "eval_every": 4,
              "checkpoint_every": 2, "warmup_steps": 0, "log_every": 1, "threads": 1,
              "progress": False},
}  # fmt: skip


class MaskFirst(CausalLM):
    """Replaces a random input token per row with id 1 (drawn from the generator) and
    records every batch it corrupted."""

    corrupts = True

    def __init__(self) -> None:
        super().__init__(CausalLMParams())
        self.seen: list[torch.Tensor] = []

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        inputs = batch.inputs.clone()
        col = torch.randint(inputs.shape[1], (inputs.shape[0],), generator=generator)
        inputs[torch.arange(inputs.shape[0]), col] = 1
        self.seen.append(inputs)
        return Batch(inputs, batch.targets, batch.loss_mask, batch.padding_mask, batch.group)


class WithProbe(CausalLM):
    """Owns a linear probe trained on the model's embeddings beside the usual loss."""

    def module(self, model: nn.Module) -> nn.Module:
        return nn.Linear(model.spec.d_model, 1)

    def training_loss(self, model, batch, step, forward):  # type: ignore[no-untyped-def]
        lm = super().training_loss(model, batch, step, forward)
        probe = model.objective_module(model.embed(batch.inputs)).pow(2).mean()
        return lm + probe


def make(objective_cls: type, run_dir: Path | None = None) -> Trainer:
    spec = resolve(ExperimentSpec.from_dict(SPEC))
    task = build_task(spec)
    objective = objective_cls() if objective_cls is MaskFirst else build_objective(spec, task)
    if objective_cls is WithProbe:
        objective = WithProbe(CausalLMParams())
    return Trainer(prepare_model(spec), task, objective, spec.train, run_dir)


def test_training_batches_are_corrupted_by_step_and_evaluation_sets_stay_fixed() -> None:
    a, b = make(MaskFirst), make(MaskFirst)
    a.fit(), b.fit()
    # training: the same corruption in two runs (a function of the seed and the step)
    assert len(a.objective.seen) >= 4
    for x, y in zip(a.objective.seen[:4], b.objective.seen[:4]):
        assert torch.equal(x, y)
    assert not torch.equal(a.objective.seen[0], a.objective.seen[1])
    # evaluation: corrupted batches are a fixed function of the split and batch index
    batches = a.task.eval_set("id", 8)
    first = a.objective.evaluation_batches(batches, "id")
    again = a.objective.evaluation_batches(batches, "id")
    assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(first, again))
    assert any(not torch.equal(p.inputs, q.inputs) for p, q in zip(first, batches))


def test_evaluation_scores_the_corrupted_batches() -> None:
    t = make(MaskFirst)
    t.model.eval()
    got = t.task.evaluate(lambda b: t.model(b.inputs, b.padding_mask), "id", 8, t.objective)
    batches = t.objective.evaluation_batches(t.task.eval_set("id", 8), "id")
    with torch.no_grad():
        outs = [t.model(b.inputs, b.padding_mask) for b in batches]
    assert got["exact_match"] == t.task.score(outs, batches)["exact_match"]
    n = [int(b.loss_mask.sum()) for b in batches]
    loss = sum(float(t.objective(o, b)) * k for o, b, k in zip(outs, batches, n)) / sum(n)
    assert got["loss"] == pytest.approx(loss, rel=1e-6)


def test_objective_modules_train_and_checkpoint_with_the_model(tmp_path: Path) -> None:
    t = make(WithProbe, tmp_path)
    probe = t.model.objective_module
    before = copy.deepcopy(probe.state_dict())
    t.fit()
    assert not torch.equal(before["weight"], probe.weight)  # trained by the optimizer
    assert any(k.startswith("objective_module.") for k in t.model.state_dict())
    # a fresh trainer resumes the probe from the checkpoint
    again = make(WithProbe, tmp_path)
    again._resume()
    assert torch.equal(again.model.objective_module.weight, probe.weight)
    # attaching twice keeps the first module
    attach_objective(again.model, again.objective)
    assert torch.equal(again.model.objective_module.weight, probe.weight)


def test_an_objective_for_other_model_kinds_is_refused_naming_both() -> None:
    @register("objective", "encoder_only_for_test", paper=None, summary="test",
              params=CausalLMParams, caps=Capabilities())  # fmt: skip
    class EncoderOnly(CausalLM):
        kinds = ("encoder",)

    try:
        with pytest.raises(SpecError) as err:
            ExperimentSpec.from_dict({**SPEC, "objective": "encoder_only_for_test"})
        fine = {**SPEC, "model": {**SPEC["model"], "kind": "encoder"}}
        spec = ExperimentSpec.from_dict({**fine, "objective": "encoder_only_for_test"})
        assert objective_problem(spec) is None
    finally:
        registry._REGISTRY["objective"].pop("encoder_only_for_test")
    assert "model.kind encoder" in str(err.value) and "kind='decoder'" in str(err.value)
