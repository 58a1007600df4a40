"""Distillation (Hinton et al. 2015; MiniLM v1/v2): the logit KL at temperature T, the
attention relations read from the model's own softmax attention, and `anyformer distill`
end to end on a tiny teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from anyformer.components.attention.common import merge_heads, recording
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model, mixers
from anyformer.objectives.distill import (
    Distill,
    DistillParams,
    Recorded,
    allowed_keys,
    logit_kl,
    relation_log_probs,
)
from anyformer.objectives.losses import attach_objective
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch

SMALL = {
    "vocab_size": 11,
    "d_model": 16,
    "n_layers": 2,
    "n_heads": 4,
    "max_len": 16,
    "init_std": 0.3,
}


def batch(b: int = 3, t: int = 7, pad: bool = False) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    if pad:
        mask[0, 5:] = False
    return Batch(ids, ids.roll(-1, 1), mask, padding_mask=mask if pad else None)


def distilled(teacher: dict, student: dict, **params: object) -> tuple[Distill, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(student)
    objective = Distill(DistillParams(teacher_model=ModelSpec(**teacher), **params))
    attach_objective(model, objective)
    return objective, model


def relation_loss(objective: Distill, model: torch.nn.Module, b: Batch) -> torch.Tensor:
    teacher = objective.teacher(model)
    seen_s, seen_t = Recorded(), Recorded()
    with recording(mixers(model.blocks)[-1], seen_s):
        model(b.inputs, padding_mask=b.padding_mask)
    with recording(mixers(teacher.blocks)[-1], seen_t):
        teacher(b.inputs, padding_mask=b.padding_mask)
    heads = objective.relation_heads(teacher, model)
    return objective.relation_loss(seen_t, seen_s, heads, b.padding_mask)


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_logit_kl_is_zero_for_identical_logits_and_positive_otherwise(t: float) -> None:
    x = torch.randn(20, 9)
    assert logit_kl(x, x.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    y = x + torch.randn(20, 9)
    manual = (
        (torch.softmax(y / t, -1) * (torch.log_softmax(y / t, -1) - torch.log_softmax(x / t, -1)))
        .sum(-1)
        .mean()
        * t
        * t
    )
    assert logit_kl(x, y, t).item() == pytest.approx(manual.item(), rel=1e-5)
    assert manual > 0


@pytest.mark.parametrize("relations", ["minilm", "minilm_v2"])
@pytest.mark.parametrize("pad", [False, True])
def test_relation_loss_is_zero_for_a_copy_of_the_teacher_and_positive_otherwise(
    relations: str, pad: bool
) -> None:
    objective, model = distilled(SMALL, SMALL, relations=relations)
    teacher = objective.teacher(model)
    b = batch(pad=pad)
    assert relation_loss(objective, model, b).item() > 1e-4  # independent initialisations
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("objective_module")}
    teacher.load_state_dict(own)
    assert relation_loss(objective, model, b).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_heads_let_a_narrower_student_with_fewer_heads_be_distilled() -> None:
    student = {**SMALL, "d_model": 8, "n_heads": 2, "n_layers": 1}
    objective, model = distilled(SMALL, student, relations="minilm_v2")
    assert objective.relation_heads(objective.teacher(model), model) == 2  # gcd(4, 2)
    loss = relation_loss(objective, model, batch())
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if n.startswith("blocks.0.mixer.qkv")
    )
    with pytest.raises(SpecError, match="relation_heads=3"):
        distilled(SMALL, student, relation_heads=3)[0].relation_heads(
            objective.teacher(model), model
        )


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_the_qk_relation_per_head_is_the_attention_the_model_computed(position: str) -> None:
    """With as many relation heads as attention heads, P = exp(qk relation) times V and the
    output projection reproduce the attention layer's output (position bias, causal and
    padding masks included)."""
    model = build_model({**SMALL, "position": position}).eval()
    b = batch(pad=True)
    mixer = mixers(model.blocks)[-1]
    seen, outs = Recorded(), []
    handle = mixer.register_forward_hook(lambda _m, _i, out: outs.append(out))
    with recording(mixer, seen):
        model(b.inputs, padding_mask=b.padding_mask)
    handle.remove()
    q, k, v, bias, causal = seen.value
    logp = relation_log_probs(q, k, 4, allowed_keys(bias, causal, q.shape[2], q.device), bias)
    again = mixer.out(merge_heads(logp.exp() @ v))
    torch.testing.assert_close(again, outs[-1], atol=1e-5, rtol=1e-5)


def test_a_mixer_without_softmax_attention_is_refused_by_name() -> None:
    with pytest.raises(SpecError, match="attention='linear'"):
        distilled(SMALL, {**SMALL, "attention": "linear", "position": "none"})
    distilled(SMALL, {**SMALL, "attention": "linear", "position": "none"}, relations="none")


def test_training_loss_combines_task_logits_and_relations() -> None:
    objective, model = distilled(SMALL, SMALL, alpha=0.5, beta=1.0)
    b = batch()

    def forward(x: Batch) -> list:
        return [(1.0, model(x.inputs))]

    loss = objective.training_loss(model, b, 0, forward)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is None for p in objective.teacher(model).parameters())
    assert model.head.weight.grad is not None or model.embed.weight.grad is not None


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anyformer.lab import run_experiment
    from anyformer.lab.experiments import load_experiment

    out = tmp_path_factory.mktemp("runs")
    spec = load_experiment("quickstart").with_overrides(TINY_TRAIN + ["model.d_model=32"])
    return run_experiment(spec, out=out).dir


TINY_TRAIN = [
    "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.eval_size=32",
    "train.warmup_steps=2", "train.progress=false", "train.threads=1", "train.batch_size=16",
]  # fmt: skip


@pytest.mark.slow
def test_distill_command_writes_a_student_run_compared_with_its_teacher(
    teacher_run: Path, tmp_path: Path
) -> None:
    from anyformer.cli import main

    code = main(["distill", str(teacher_run), "quickstart", *TINY_TRAIN, "model.d_model=16",
                 "model.n_heads=2", "model.n_layers=1", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    (folder,) = tmp_path.iterdir()
    record = json.loads((folder / "parent.json").read_text())
    rows = {(r["variant"], r["split"]): r for r in record["rows"]}
    assert rows["student", "id"]["params"] < rows["teacher", "id"]["params"] / 2
    assert "Compared with the teacher" in (folder / "report.md").read_text()
    losses = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in losses if "loss" in r and "split" not in r]
    assert train[-1] < train[0]  # the distillation loss decreases
    from anyformer.lab.loaded import load_run

    held = load_run(folder).model.objective_module.teacher.model.state_dict()
    for name, tensor in load_run(teacher_run).model.state_dict().items():
        assert torch.equal(held[name], tensor), name  # the trained teacher, frozen


def test_distill_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from anyformer.cli import main

    assert main(["distill", str(tmp_path), "quickstart"]) == 2


def test_a_teacher_that_is_not_a_run_folder_is_refused_naming_objective_teacher(
    tmp_path: Path,
) -> None:
    from anyformer.errors import RunFolderError
    from anyformer.lab.run import resolve
    from anyformer.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict(
        {"task": "copy", "objective": {"name": "distill", "teacher": str(tmp_path)}}
    )
    with pytest.raises(RunFolderError, match=r"objective.teacher='.*' is not a run folder"):
        resolve(spec)


def test_a_regression_base_distils_outputs_by_squared_distance() -> None:
    objective = Distill(DistillParams(base={"name": "mse"}, relations="none"))
    s, t = torch.randn(4, 3, 1), torch.randn(4, 3, 1)
    b = Batch(torch.zeros(4, 3), torch.zeros(4, 3), torch.ones(4, 3, dtype=torch.bool))
    assert objective.logit_loss(s, t, b).item() == pytest.approx(((s - t) ** 2).mean().item())
