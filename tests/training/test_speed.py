"""Speed flags of the Trainer: precision, activation checkpointing, torch.compile, and the
throughput accounting (tokens/s, FLOP/s, MFU) on every logged training line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from anyformer.errors import SpecError
from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.training import throughput
from anyformer.training.distributed import apply_activation_checkpointing
from anyformer.training.throughput import Throughput, peak_for_name
from anyformer.training.trainer import Trainer


def tiny(dropout: float = 0.0, **train: object) -> ExperimentSpec:
    return resolve(
        ExperimentSpec.from_dict(
            {
                "name": "tinyspeed",
                "model": {
                    "d_model": 32,
                    "n_heads": 4,
                    "n_layers": 2,
                    "max_len": 64,
                    "dropout": dropout,
                },
                "task": {"name": "copy", "min_len": 2, "max_len": 6, "ood_min_len": 7},
                "train": {
                    "steps": 3,
                    "batch_size": 8,
                    "warmup_steps": 0,
                    "eval_every": 100,
                    "eval_size": 8,
                    "checkpoint_every": 100,
                    "log_every": 1,
                    "progress": False,
                    **train,
                },
            }
        )
    )


def trainer(spec: ExperimentSpec, folder: Path | None = None) -> Trainer:
    task = build_task(spec)
    return Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, folder)


def train_losses(spec: ExperimentSpec) -> list[float]:
    t = trainer(spec)
    return [t.train_step(step) for step in range(spec.train.steps)]


# --------------------------------------------------------------------------- precision
def test_fp32_is_the_cpu_default_and_bf16_runs_under_autocast() -> None:
    default = trainer(tiny())
    assert default.precision == "fp32" and default.scaler is None and not default.compile
    batch = default.task.train_batch(0, 4)
    assert default.predict(batch).dtype == torch.float32
    fp32 = train_losses(tiny())
    assert fp32 == train_losses(tiny(precision="fp32"))  # the default is plain fp32
    bf16 = trainer(tiny(precision="bf16"))
    assert bf16.predict(batch).dtype == torch.bfloat16
    losses = [bf16.train_step(step) for step in range(3)]
    assert all(abs(a - b) < 0.05 for a, b in zip(losses, fp32))  # same run, lower precision
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights


def test_fp16_uses_a_gradient_scaler_and_is_refused_with_fsdp() -> None:
    t = trainer(tiny(precision="fp16"))
    assert t.scaler is not None
    assert all(torch.isfinite(torch.tensor(t.train_step(s))) for s in range(2))
    with pytest.raises(SpecError, match="fp16.*fsdp"):
        trainer(tiny(precision="fp16", distributed="fsdp"))
    with pytest.raises(SpecError, match="train.precision"):
        tiny(precision="fp8")


# --------------------------------------------------------------------------- checkpointing
def test_activation_checkpointing_leaves_gradients_and_losses_unchanged() -> None:
    spec = tiny(dropout=0.1)  # dropout: the recomputation must replay the same masks
    plain, ckpt = prepare_model(spec), prepare_model(spec)
    apply_activation_checkpointing(ckpt)
    batch = build_task(spec).train_batch(0, 8)
    objective = build_objective(spec, build_task(spec))
    for model in (plain, ckpt):
        torch.manual_seed(1)
        objective(model(batch.inputs), batch).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=0), name
    assert plain.state_dict().keys() == ckpt.state_dict().keys()  # names unchanged
    with_ckpt = train_losses(tiny(dropout=0.1, activation_checkpointing=True))
    without = train_losses(tiny(dropout=0.1))
    assert all(abs(a - b) <= 1e-6 for a, b in zip(with_ckpt, without))


@pytest.mark.slow
def test_compile_on_cpu_matches_eager_and_reports_graph_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="anyformer.training.trainer")
    fixed = {"min_len": 4, "max_len": 4}  # one sequence length: no recompilation
    spec = tiny(steps=4).with_overrides([f"task.{k}={v}" for k, v in fixed.items()])
    eager = train_losses(spec)
    t = trainer(spec.with_overrides(["train.compile=true"]))
    compiled = t.fit(until=3).losses  # stops before the final evaluation (other shapes)
    assert all(abs(a - b) < 1e-4 for a, (_, b) in zip(eager, compiled))
    # the graph breaks (or their absence) are logged after the first step
    assert any("torch.compile" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- throughput
def test_every_logged_line_carries_tokens_and_flops_per_second(tmp_path: Path) -> None:
    t = trainer(tiny(), tmp_path)
    t.fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "split" not in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        seq = t.task.train_batch(r["step"] - 1, 8).inputs.shape[1]
        assert r["tokens_per_s"] > 0 and "mfu" not in r  # no peak for a CPU
        ratio = r["flops_per_s"] / r["tokens_per_s"]
        assert ratio == pytest.approx(t.model.flops_per_token(seq), rel=1e-9)


def test_throughput_meter_excludes_paused_time_and_computes_mfu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 1.0, 3.0, 4.0, 4.0])  # start, pause in, pause out, report, restart
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = Throughput(lambda seq: 10 * seq, peak=1000.0, world_size=2)
    meter.add(100, seq_len=4)
    with meter.paused():
        pass
    meter.add(100, seq_len=4)
    out = meter.report()  # 200 tokens in 4 - 2 = 2 counted seconds
    assert out["tokens_per_s"] == 100.0
    assert out["flops_per_s"] == 100.0 * 40
    assert out["mfu"] == 4000.0 / (1000.0 * 2)


def test_peak_table_tells_gpu_variants_apart() -> None:
    assert peak_for_name("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert peak_for_name("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert peak_for_name("NVIDIA H100 NVL", "bf16") == 835.5e12
    assert peak_for_name("NVIDIA H200", "bf16") == 989.4e12
    assert peak_for_name("NVIDIA H200 NVL", "bf16") == 835.5e12
    assert peak_for_name("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert peak_for_name("NVIDIA A10G", "bf16") == 70e12
    assert peak_for_name("NVIDIA A10", "bf16") == 125e12
    assert peak_for_name("NVIDIA L4", "bf16") == 121e12
    assert peak_for_name("NVIDIA L40S", "bf16") == 362.05e12
    assert peak_for_name("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 units
    assert peak_for_name("NVIDIA GeForce RTX 4090", "fp16") == 165.2e12
    assert peak_for_name("Some Future GPU", "bf16") is None


def test_benchmark_record_names_the_machine_and_is_written_atomically(tmp_path: Path) -> None:
    env = throughput.benchmark_environment(2, ("numpy", "no-such-package-anywhere"))
    assert env["machine"]["threads"] == 2 and len(env["machine"]["loadavg"]) == 3
    assert env["versions"]["torch"] == torch.__version__
    assert "numpy" in env["versions"] and "no-such-package-anywhere" not in env["versions"]
    record = {**env, "tokens_per_s": 1.5}
    path = throughput.save_benchmark(record, tmp_path / "results", "demo")
    assert path.name == f"demo-{env['date'][:10]}.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(record))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
