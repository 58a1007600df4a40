"""DDP and FSDP2 under ``torchrun --nproc_per_node=2`` on CPU (gloo), against one process.

One torchrun launch (``dist_worker.py``) serves every test of the module: a DDP run through
the command line, an FSDP2 run, an FSDP2 continuation of a single-process checkpoint, and
DDP runs of depth schedules that train several outputs per step (early exits, a looped
loss window).
The references are single-process runs of the same spec in this process. The learning
rate is constant so that runs of different lengths share their first steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from anyformer.errors import SpecError
from anyformer.lab.run import prepare_model, resolve, resume_run, run_experiment
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch
from anyformer.training.checkpoint import checkpoint_info, latest_checkpoint, load_checkpoint
from anyformer.training.distributed import init_distributed, loss_weight, shard_batch

STEPS = 6
WORKER = Path(__file__).with_name("dist_worker.py")
#: Models that train several outputs per step: depth schedules whose forward returns
#: extra outputs the loss averages over, and MatFormer FFNs (one forward per width).
DEPTHS = {
    "early-exit": ["model.depth.name=early_exit"],
    "loss-window": ["model.depth.name=looped", "model.depth.loops=3", "model.depth.loss_window=2"],
    "matformer-sum": ["model.ffn.name=matformer", "model.ffn.widths=[0.5,1.0]"],
}


def tiny(steps: int = STEPS) -> ExperimentSpec:
    return resolve(
        ExperimentSpec.from_dict(
            {
                "name": "tinydist",
                "model": {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_len": 64},
                "task": {
                    "name": "copy",
                    "min_len": 2,
                    "max_len": 6,
                    "ood_min_len": 7,
                    "ood_max_len": 8,
                },
                "train": {
                    "steps": steps,
                    "batch_size": 8,
                    "warmup_steps": 0,
                    "min_lr_ratio": 1.0,
                    "eval_every": 100,
                    "eval_size": 16,
                    "checkpoint_every": 100,
                    "log_every": 1,
                    "progress": False,
                },
            }
        )
    )


def losses(folder: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "split" not in r]


def close(a: list[Any], b: list[Any], tol: float = 1e-5) -> bool:
    return [s for s, _ in a] == [s for s, _ in b] and all(
        abs(x - y) <= tol for (_, x), (_, y) in zip(a, b)
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    spec = tiny()
    spec.save(out / "spec.yaml")
    single = run_experiment(spec, run_dir=out / "single")
    shutil.copytree(single.dir, out / "resume")
    run_experiment(tiny(2 * STEPS), run_dir=out / "single-long")
    run_experiment(tiny().with_overrides(["train.packing=true"]), run_dir=out / "single-packed")
    for name, overrides in DEPTHS.items():
        run_experiment(tiny().with_overrides(overrides), run_dir=out / f"single-{name}")
    (out / "depths.json").write_text(json.dumps(DEPTHS))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(out)], capture_output=True, text=True, timeout=400, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (cli_run,) = (out / "cli").iterdir()
    (packed_run,) = (out / "cli-packed").iterdir()
    runs = {name: next((out / f"cli-{name}").iterdir()) for name in DEPTHS}
    return {"out": out, "cli": cli_run, "packed": packed_run, **runs}


def test_ddp_through_the_cli_matches_one_process(launched: dict[str, Path]) -> None:
    ddp, single = losses(launched["cli"]), losses(launched["out"] / "single")
    assert len(ddp) == STEPS  # rank 0 alone writes metrics
    assert close(ddp, single, 1e-5), (ddp, single)
    assert (launched["cli"] / "report.md").is_file()
    info = checkpoint_info(latest_checkpoint(launched["cli"] / "checkpoint"))
    assert info["format"] == "dcp" and info["world_size"] == 2 and info["mode"] == "ddp"
    first = json.loads((launched["cli"] / "metrics.jsonl").read_text().splitlines()[0])
    assert first["tokens_per_s"] > 0 and first["flops_per_s"] > 0 and "mfu" not in first


def test_ddp_with_packed_batches_matches_one_process(launched: dict[str, Path]) -> None:
    ddp, single = losses(launched["packed"]), losses(launched["out"] / "single-packed")
    assert len(ddp) == STEPS
    assert close(ddp, single, 1e-5), (ddp, single)
    assert "packing: true" in (launched["packed"] / "spec.yaml").read_text()
    # packing is exact: the same per-token losses as padded batches, under DDP too
    assert close(ddp, losses(launched["out"] / "single"), 1e-5)


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_ddp_trains_several_outputs_per_step_as_one_process(
    launched: dict[str, Path], name: str
) -> None:
    """Early exits and a looped loss window come back in the forward's output, so the
    DDP wrapper sees them like any output, and the widths of a MatFormer step are two
    forwards through the wrapper before one backward: the same losses as one process."""
    ddp, single = losses(launched[name]), losses(launched["out"] / f"single-{name}")
    assert len(ddp) == STEPS
    assert close(ddp, single, 1e-5), (ddp, single)
    assert DEPTHS[name][0].split("=")[1] in (launched[name] / "spec.yaml").read_text()
    assert checkpoint_info(latest_checkpoint(launched[name] / "checkpoint"))["mode"] == "ddp"
    # and not the plain model's losses: the extra outputs are in the loss
    assert not close(ddp, losses(launched["out"] / "single"), 1e-3)


def test_fsdp_matches_one_process_and_its_checkpoint_loads_on_one_rank(
    launched: dict[str, Path],
) -> None:
    out = launched["out"]
    fsdp = [tuple(x) for x in json.loads((out / "fsdp-losses-0.json").read_text())]
    assert fsdp == [tuple(x) for x in json.loads((out / "fsdp-losses-1.json").read_text())]
    assert close(fsdp, losses(out / "single"), 1e-5)
    path = latest_checkpoint(out / "fsdp" / "checkpoint")
    assert checkpoint_info(path)["world_size"] == 2
    model = prepare_model(tiny())
    torch.nn.init.zeros_(model.head.weight)  # the load must overwrite everything
    state = load_checkpoint(path, model)  # one process, no process group
    assert state["step"] == STEPS
    full = load_file(str(out / "fsdp-full.safetensors"))
    weights = model.state_dict()
    assert set(full) == set(weights)
    for name, value in full.items():
        assert torch.equal(weights[name], value), name


def test_ddp_run_resumes_on_one_process(launched: dict[str, Path]) -> None:
    run = resume_run(launched["cli"], ["train.distributed=none", f"train.steps={2 * STEPS}"])
    assert run.result.step == 2 * STEPS
    assert close(losses(run.dir), losses(launched["out"] / "single-long"), 1e-5)


def test_single_process_checkpoint_resumes_under_fsdp(launched: dict[str, Path]) -> None:
    out = launched["out"]
    resumed = [tuple(x) for x in json.loads((out / "resumed-losses-0.json").read_text())]
    assert [s for s, _ in resumed] == list(range(STEPS + 1, 2 * STEPS + 1))
    assert close(resumed, losses(out / "single-long")[STEPS:], 1e-5)


def test_shards_weight_the_global_mean_loss_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(8, 5, generator=g)
    mask = torch.rand(8, 5, generator=g) > 0.3
    mask[:4, :] = True  # rank 0's rows count far more positions than rank 1's
    batch = Batch(values, values, mask)
    whole = values[mask].mean()
    parts = []
    for rank in range(2):
        local = shard_batch(batch, rank, 2)
        assert torch.equal(local.inputs, values[4 * rank : 4 * rank + 4])
        parts.append(local.inputs[local.loss_mask].mean() * loss_weight(batch, local, 2))
    assert torch.allclose(sum(parts) / 2, whole, atol=1e-7)
    with pytest.raises(SpecError, match="batch_size=8 is not divisible by the 3"):
        shard_batch(batch, 0, 3)


def test_torchrun_without_a_distributed_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SpecError, match="train.distributed=ddp"):
        init_distributed("none", torch.device("cpu"))


def test_python_dash_m_anyformer_is_the_command_line() -> None:
    # what `torchrun -m anyformer ...` starts on every process
    proc = subprocess.run(
        [sys.executable, "-m", "anyformer", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "usage: anyformer" in proc.stdout


class _Wrapper(torch.nn.Module):
    """Stands in for the DDP wrapper: forwards every call to the model, counting them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.calls = model, 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("mode", ["sum", "sample"])
def test_a_wrapped_model_runs_its_outputs_through_the_wrapper(mode: str) -> None:
    """Every forward of a training step goes through the (DDP) wrapper: one per trained
    width, each with its two exits."""
    from anyformer.lab.run import build_objective, build_task
    from anyformer.training.trainer import Trainer

    ffn = {"name": "matformer", "widths": [0.5, 1.0], "train": mode}
    spec = tiny().with_overrides(["model.depth.name=early_exit"])
    spec = ExperimentSpec.model_validate({**spec.model_dump(), "model": {
        **spec.model.model_dump(mode="json"), "ffn": ffn}})  # fmt: skip
    task = build_task(spec)
    trainer = Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train)
    trainer.wrapped = wrapper = _Wrapper(trainer.model)
    batch = task.train_batch(0, 4)
    pairs = trainer.training_outputs(batch, 0)
    forwards = 2 if mode == "sum" else 1
    assert wrapper.calls == forwards and [w for w, _ in pairs] == [0.5, 0.5] * forwards
    trainer.wrapped = trainer.model
    expected = trainer.training_outputs(batch, 0)
    for (_, got), (_, want) in zip(pairs, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
