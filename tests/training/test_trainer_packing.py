"""``train.packing``: the Trainer packs every training and evaluation batch, and a packed
run gives the losses and metrics of the padded run; tokens/s counts real tokens; models
that cannot keep packed documents apart are refused at validation, naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.lab.run import (
    SPEC_FILE,
    build_objective,
    build_task,
    prepare_model,
    resolve,
    resume_run,
)
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec, TrainSpec
from anyformer.tasks.packing import pack_batch
from anyformer.training.trainer import Trainer

# listops rows have different lengths within a batch (right-padded), so packing really
# packs; copy, sort, ... draw one length per batch and have no padding to remove
TASK = {"name": "listops", "max_depth": 3, "max_args": 4}
STEPS, BATCH = 4, 16
LOSS_TOL = 1e-5


def spec(packing: bool, model: dict[str, Any] | None = None) -> ExperimentSpec:
    data = {
        "name": "packing",
        "model": {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_len": 128, **(model or {})},
        "task": TASK,
        "train": {
            "steps": STEPS,
            "batch_size": BATCH,
            "lr": 3e-3,
            "warmup_steps": 0,
            "eval_every": 100,
            "eval_size": 64,
            "checkpoint_every": 100,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
            "packing": packing,
        },
    }
    return resolve(ExperimentSpec.from_dict(data))


def trainer(s: ExperimentSpec, folder: Path | None = None) -> Trainer:
    task = build_task(s)
    return Trainer(prepare_model(s), task, build_objective(s, task), s.train, folder)


def flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, int | float):
            out[prefix + key] = float(value)
    return out


def assert_same_metrics(padded: dict[str, Any], packed: dict[str, Any]) -> None:
    """Counting metrics (accuracies) equal exactly; losses to LOSS_TOL."""
    a, b = flat(padded), flat(packed)
    assert a.keys() == b.keys()
    for key in a:
        if key.split(".")[-1] == "loss":
            assert b[key] == pytest.approx(a[key], abs=LOSS_TOL), key
        else:
            assert b[key] == a[key], key


def record_forwards(t: Trainer) -> list[tuple[int, bool]]:
    """(rows, given segments) of every forward pass of the trainer's model."""
    calls: list[tuple[int, bool]] = []

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((int(args[0].shape[0]), kwargs.get("segments") is not None))

    t.model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_listops_batches_are_really_packed() -> None:
    """The comparison below is not vacuous: a training batch loses rows when packed."""
    task = build_task(spec(True))
    batch = task.train_batch(0, BATCH)
    packed, _ = pack_batch(batch)
    assert batch.n_real_tokens < batch.n_tokens
    assert packed.inputs.shape[0] < batch.inputs.shape[0]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param({}, id="decoder"),
        pytest.param({"kind": "encoder", "head": "lm", "position": "alibi"}, id="encoder"),
        pytest.param({"depth": {"name": "early_exit", "every": 1}}, id="early-exit"),
    ],
)
def test_packed_run_gives_the_losses_and_metrics_of_the_padded_run(model: dict) -> None:
    padded, packed = trainer(spec(False, model)), trainer(spec(True, model))
    packed_calls = record_forwards(packed)
    padded_calls = record_forwards(padded)

    # step 0: identical weights, so identical scores (outputs differ by rounding only)
    assert_same_metrics(padded.evaluate(), packed.evaluate())
    n_eval = len(padded_calls)
    assert not any(seg for _, seg in padded_calls)
    assert all(seg for _, seg in packed_calls) and len(packed_calls) == n_eval

    # identical training: packed gradients equal padded ones, so the runs stay together
    a, b = padded.fit(), packed.fit()
    assert [s for s, _ in a.losses] == [s for s, _ in b.losses] == list(range(1, STEPS + 1))
    for (_, la), (_, lb) in zip(a.losses, b.losses, strict=True):
        assert lb == pytest.approx(la, abs=LOSS_TOL)
    assert_same_metrics(a.final, b.final)

    # every training forward of the packed run took packed rows, fewer than the batch
    train_calls = packed_calls[n_eval : n_eval + STEPS]
    assert all(seg for _, seg in packed_calls)
    assert any(rows < BATCH for rows, _ in train_calls)
    assert all(rows == BATCH for rows, _ in padded_calls[n_eval : n_eval + STEPS])


@pytest.mark.parametrize("packing", [False, True])
def test_tokens_per_second_counts_real_tokens(packing: bool) -> None:
    t = trainer(spec(packing))
    t.fit()
    batches = [t.task.train_batch(step, BATCH) for step in range(STEPS)]
    real = sum(b.n_real_tokens for b in batches)
    assert t.meter.total_tokens == real < sum(b.n_tokens for b in batches)


def test_a_padded_run_resumes_packed_and_continues_as_if_padded(tmp_path: Path) -> None:
    """``train.packing`` is how a run runs, not what it trains: resuming may switch it."""
    whole = trainer(spec(False)).fit().losses
    folder = tmp_path / "run"
    padded = spec(False)
    padded.save(folder / SPEC_FILE)
    trainer(padded, folder).fit(until=STEPS // 2)  # paused with a checkpoint
    resumed = resume_run(folder, ["train.packing=true"])
    assert resumed.spec.train.packing and resumed.result.step == STEPS
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r and "split" not in r]
    assert [s for s, _ in losses] == [s for s, _ in whole]
    for (_, a), (_, b) in zip(whole, losses, strict=True):
        assert b == pytest.approx(a, abs=LOSS_TOL)


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ({"attention": "linear", "position": "none"}, ["'linear'", "layers 0, 1"]),
        ({"layers": {1: {"attention": "sliding_window"}}}, ["'sliding_window'", "layers 1"]),
        ({"head": "classify", "n_outputs": 3}, ["per-token head", "classify"]),
        ({"depth": {"name": "continuous_thought", "thoughts": 1}}, ["continuous_thought"]),
    ],
)
def test_models_that_cannot_keep_documents_apart_are_refused(
    model: dict, fragments: list[str]
) -> None:
    data = {"model": {"d_model": 32, "n_layers": 2, **model}, "train": {"packing": True}}
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(data)
    message = str(info.value)
    for fragment in ["train.packing=true", "cannot", *fragments]:
        assert fragment in message, message
    data["train"] = {"packing": False}
    ExperimentSpec.from_dict(data)  # the same model trains padded


def test_a_head_left_to_the_task_is_checked_once_resolved() -> None:
    """An encoder's head is ``classify`` unless the task sets one: stdlib_lm sets ``lm``
    (accepted), copy sets none (refused when the run resolves)."""
    model = {"kind": "encoder", "d_model": 32, "n_layers": 1}
    text = {"name": "stdlib_lm", "seq_len": 16}
    ok = resolve(
        ExperimentSpec.from_dict({"model": model, "task": text, "train": {"packing": True}})
    )
    assert ok.model.resolved_head == "lm"
    unresolved = ExperimentSpec.from_dict({"model": model, "train": {"packing": True}})
    with pytest.raises(SpecError, match="train.packing=true .* per-token head"):
        resolve(unresolved)


def test_the_trainer_refuses_a_hand_built_model_that_cannot_pack() -> None:
    s = spec(False)
    task = build_task(s)
    model = build_model(s.model.model_copy(update={"head": "classify", "n_outputs": 2}))
    with pytest.raises(SpecError, match="train.packing=true"):
        Trainer(model, task, build_objective(s, task), TrainSpec(packing=True, device="cpu"))


def test_the_cli_refuses_packing_with_a_mixer_that_cannot_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["run", "quickstart", "train.packing=true", "model.attention=linear"]
    assert main([*argv, "model.position=none", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.packing" in err and "'linear'" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_unpack_padded_puts_each_sequence_back_in_its_row() -> None:
    batch = build_task(spec(True)).train_batch(1, BATCH)
    packed, layout = pack_batch(batch)
    back = layout.unpack_padded(packed.inputs, int(batch.inputs.shape[1]), pad=-1)
    real = batch.padding_mask
    assert real is not None
    assert torch.equal(back[real], batch.inputs[real])
    assert bool((back[~real] == -1).all())
