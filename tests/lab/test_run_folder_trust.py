"""Run folders under kills, signals, concurrent writers and edited specs: one writer at a
time, metrics that survive a kill, SIGTERM like Ctrl-C, resumes that tell the truth, and
divergence advice from what was seen."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from anyformer.cli import main
from anyformer.errors import RunError, SpecError
from anyformer.lab.run import (
    LOCK_FILE,
    build_objective,
    build_task,
    prepare_model,
    resolve,
    resume_run,
    run_experiment,
    run_folder,
    run_lock,
)
from anyformer.spec import ExperimentSpec
from anyformer.training.checkpoint import latest_checkpoint, load_checkpoint
from anyformer.training.schedule import lr_at
from anyformer.training.trainer import Trainer, trim_metrics


def tiny(steps: int = 12, **train: Any) -> ExperimentSpec:
    return resolve(
        ExperimentSpec.from_dict(
            {
                "name": "trust",
                "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 32},
                "task": {
                    "name": "copy",
                    "min_len": 2,
                    "max_len": 4,
                    "ood_min_len": 5,
                    "ood_max_len": 6,
                },
                "train": {
                    "steps": steps,
                    "batch_size": 4,
                    "eval_every": 6,
                    "eval_size": 4,
                    "checkpoint_every": 6,
                    "log_every": 1,
                    "progress": False,
                    "warmup_steps": 2,
                    **train,
                },
            }
        )
    )


def trainer(spec: ExperimentSpec, folder: Path, objective: Any = None) -> Trainer:
    task = build_task(spec)
    return Trainer(
        prepare_model(spec), task, objective or build_objective(spec, task), spec.train, folder
    )


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def losses(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(folder) if "split" not in r]


def interrupt_at(t: Trainer, step: int, action: Any) -> None:
    real = t.task.train_batch

    def hooked(s: int, batch_size: int):  # noqa: ANN202
        if s == step:
            action()
        return real(s, batch_size)

    t.task.train_batch = hooked  # type: ignore[method-assign]


# ------------------------------------------------------------------------ one writer
def _hold(folder: Path, ready: Any, release: Any) -> None:
    with run_lock(folder):
        ready.set()
        release.wait(60)


def test_a_second_writer_exits_2_naming_the_holder_and_a_dead_holder_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny(2, eval_every=2)
    spec.save(tmp_path / "spec.yaml")
    folder = run_folder(spec, tmp_path / "runs")
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(folder, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        code = main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by process {holder.pid}" in err, err
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE], "the refused run wrote"
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the kernel drops its flock
        holder.join()
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid
    code = main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs")])
    assert code == 0
    assert not (folder / LOCK_FILE).exists(), "the lock is released when the run ends"
    assert [s for s, _ in losses(folder)] == [1, 2]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_on_error_and_ctrl_c(tmp_path: Path, error: type) -> None:
    with pytest.raises(error), run_lock(tmp_path / "r"):
        assert (tmp_path / "r" / LOCK_FILE).is_file()
        raise error
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    with run_lock(tmp_path / "r"), run_lock(tmp_path / "r"):  # re-entrant in one process
        pass


# ------------------------------------------------------------------------ metrics.jsonl
def test_a_torn_last_line_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = tiny()
    trainer(spec, tmp_path).fit(until=6)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 1.2')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        trainer(spec, tmp_path).fit()
    assert "the last line could not be read" in caplog.text
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 13))


def test_a_crash_while_trimming_metrics_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9))
    path.write_text(text)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        trim_metrics(path, 6)
    assert path.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_rerun_after_a_kill_before_the_first_checkpoint_does_not_duplicate_steps(
    tmp_path: Path,
) -> None:
    spec = tiny()
    t = trainer(spec, tmp_path)

    def killed() -> None:
        raise SystemExit(137)  # not Ctrl-C: no checkpoint is written

    interrupt_at(t, 4, killed)
    with pytest.raises(SystemExit):
        t.fit()
    assert latest_checkpoint(tmp_path / "checkpoint") is None
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4]
    trainer(spec, tmp_path).fit()
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 13))


# ------------------------------------------------------------------------ signals
def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path: Path) -> None:
    spec = tiny()
    whole = trainer(spec, tmp_path / "whole")
    whole.fit()
    before = signal.getsignal(signal.SIGTERM)
    t = trainer(spec, tmp_path / "cut")
    interrupt_at(t, 8, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = t.fit()
    assert result.interrupted and result.step == 8
    assert (tmp_path / "cut" / "checkpoint" / "latest").read_text() == "step-8"
    assert signal.getsignal(signal.SIGTERM) is before
    trainer(spec, tmp_path / "cut").fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_sigterm_under_the_cli_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny(6).save(tmp_path / "spec.yaml")
    real = Trainer.train_step

    def step(self: Trainer, s: int) -> float:
        if s == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, s)

    monkeypatch.setattr(Trainer, "train_step", step)
    code = main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path)])
    assert code == 130
    assert "interrupted at step 3; checkpoint saved" in capsys.readouterr().err


def test_a_second_ctrl_c_while_saving_the_same_step_again_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny()
    trainer(spec, tmp_path / "whole").fit()
    t = trainer(spec, tmp_path / "cut")

    def second_ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt  # while the interrupted run publishes step 6 again

    def first_ctrl_c() -> None:
        monkeypatch.setattr(os, "replace", second_ctrl_c)
        raise KeyboardInterrupt

    interrupt_at(t, 6, first_ctrl_c)  # right after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    monkeypatch.undo()
    live = latest_checkpoint(tmp_path / "cut" / "checkpoint")
    assert live is not None and load_checkpoint(live, prepare_model(spec))["step"] == 6
    trainer(spec, tmp_path / "cut").fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


# ------------------------------------------------------------------------ resume
def test_an_edited_spec_is_named_not_called_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_experiment(tiny(6), run_dir=tmp_path / "r")
    data = ExperimentSpec.from_yaml(run.dir / "spec.yaml").to_dict()
    data["model"]["d_model"] = 32
    data["train"]["lr"] = 0.01
    ExperimentSpec.from_dict(data).save(run.dir / "spec.yaml")
    for argv in (["resume", str(run.dir)], ["generate", str(run.dir), "--prompt", "1 2"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "the spec no longer matches the checkpoint" in err
        assert "model.d_model: 16 in the checkpoint, 32 now" in err
        assert "train.lr: 0.001 in the checkpoint, 0.01 now" in err
        assert "size mismatch" not in err and "damaged" not in err


def test_steps_below_the_checkpoint_are_refused(tmp_path: Path) -> None:
    run = run_experiment(tiny(6), run_dir=tmp_path / "r")
    before = (run.dir / "spec.yaml").read_text()
    with pytest.raises(
        SpecError, match=r"train.steps=3 is below the step of the checkpoint .* \(6\)"
    ):
        resume_run(run.dir, ["train.steps=3"])
    assert (run.dir / "spec.yaml").read_text() == before


def test_resume_with_more_steps_replans_the_schedule(tmp_path: Path) -> None:
    """The documented choice: after a resume the learning rate at step s is the one a run
    planned for the new train.steps uses at s; steps already trained keep theirs."""
    short = tiny(6)
    run = run_experiment(short, run_dir=tmp_path / "r")
    resume_run(run.dir, ["train.steps=12"])
    longer = short.with_overrides(["train.steps=12"]).train
    lrs = {r["step"]: r["lr"] for r in records(run.dir) if "lr" in r}
    assert sorted(lrs) == list(range(1, 13))
    assert [lrs[s] for s in range(1, 7)] == [lr_at(s - 1, short.train) for s in range(1, 7)]
    assert [lrs[s] for s in range(7, 13)] == [lr_at(s - 1, longer) for s in range(7, 13)]
    assert lrs[7] > lrs[6]  # the re-planned cosine is higher than the old end


# ------------------------------------------------------------------------ divergence
def test_a_loss_non_finite_before_any_update_blames_the_initial_model(tmp_path: Path) -> None:
    def poisoned(outputs: torch.Tensor, batch: object) -> torch.Tensor:
        return outputs.float().sum() * float("nan")

    with pytest.raises(RunError, match="at step 1") as info:
        trainer(tiny(), tmp_path, poisoned).fit()
    assert "before any update" in str(info.value) and "init_std" in str(info.value)
    assert latest_checkpoint(tmp_path / "checkpoint") is None


@pytest.mark.parametrize(
    ("factor", "fragment"),
    [
        (100.0, "the gradient norm exploded from about"),
        (1e8, "the gradients became non-finite at step 5"),
    ],
)
def test_an_exploding_gradient_is_named(tmp_path: Path, factor: float, fragment: str) -> None:
    spec = tiny(eval_every=12, checkpoint_every=12)
    task = build_task(spec)
    base, calls = build_objective(spec, task), []

    def growing(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        calls.append(1)
        scale = factor ** (len(calls) - 1) if len(calls) < 6 else float("nan")
        return base(outputs, batch) * scale

    with pytest.raises(RunError, match="at step 6") as info:
        trainer(spec, tmp_path, growing).fit()
    message = str(info.value)
    assert fragment in message and "lower train.lr" in message, message
    assert "before any update" not in message


def test_weight_decay_times_lr_above_one_is_named(tmp_path: Path) -> None:
    spec = tiny()
    train = spec.train.model_copy(update={"lr": 0.5, "weight_decay": 4.0})
    task = build_task(spec)
    t = Trainer(prepare_model(spec), task, build_objective(spec, task), train, tmp_path)
    assert "train.weight_decay x train.lr = 2 >= 1" in t._advice(5)


def test_ctrl_c_with_non_finite_weights_keeps_the_last_finite_checkpoint(tmp_path: Path) -> None:
    spec = tiny()
    t = trainer(spec, tmp_path)

    def poison_then_ctrl_c() -> None:
        with torch.no_grad():
            dict(t.model.named_parameters())["norm.weight"].fill_(float("nan"))
        raise KeyboardInterrupt

    interrupt_at(t, 8, poison_then_ctrl_c)
    with pytest.raises(RunError, match="'norm.weight' holds NaN or inf"):
        t.fit()
    assert (tmp_path / "checkpoint" / "latest").read_text() == "step-6"


def test_links_planted_in_a_run_folder_are_not_followed(tmp_path: Path) -> None:
    """A shared folder whose .lock, metrics.jsonl or checkpoint/ is a link must not make a
    run truncate, append to or load another file."""
    from anyformer.errors import RunFolderError

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    spec = tiny(6)
    run = run_experiment(spec, run_dir=tmp_path / "r")
    (run.dir / LOCK_FILE).symlink_to(victim)
    with pytest.raises(RunFolderError, match="is a link"):
        resume_run(run.dir)
    (run.dir / LOCK_FILE).unlink()
    (run.dir / "metrics.jsonl").unlink()
    (run.dir / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(RunFolderError, match="is a link"):
        resume_run(run.dir)
    assert victim.read_text() == "keep me\n"
    other = run_experiment(tiny(6, seed=1), run_dir=tmp_path / "other")
    (run.dir / "metrics.jsonl").unlink()
    (run.dir / "checkpoint").rename(tmp_path / "moved")
    (run.dir / "checkpoint").symlink_to(other.dir / "checkpoint")
    with pytest.raises(RunFolderError, match="is a link"):
        resume_run(run.dir)
