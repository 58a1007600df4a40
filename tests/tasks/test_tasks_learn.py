"""Every image, table and estimation task is learnable: a tiny model trained for a few
seconds beats the task's trivial baseline on held-out ``id`` examples (the majority
class, the mean target, the mean pose, nearest-neighbour upsampling), scored by the
task on the same examples (``baselines.<name>.<headline>``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.training.trainer import Trainer

VIT = {"embedder": {"name": "patches", "patch_size": 2, "cls": True}, "pool": "first"}
VIT4 = {"embedder": {"name": "patches", "patch_size": 4, "cls": True}, "pool": "first"}


def train(task: dict[str, Any], model: dict[str, Any], steps: int,
          lr: float = 3e-3, batch_size: int = 32) -> dict[str, Any]:  # fmt: skip
    spec = ExperimentSpec.from_dict(
        {
            "name": f"learns-{task['name']}",
            "model": {
                "kind": "encoder",
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 4,
                "position": "learned",
                **model,
            },  # fmt: skip
            "task": task,
            "train": {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "warmup_steps": min(20, steps // 5),
                "eval_every": steps,
                "checkpoint_every": steps,
                "eval_size": 256,
                "threads": 1,
                "progress": False,
            },  # fmt: skip
        }
    )
    spec = resolve(spec)
    task_ = build_task(spec)
    trainer = Trainer(prepare_model(spec), task_, build_objective(spec, task_), spec.train)
    return trainer.fit().final["id"]


def beats(metrics: dict[str, Any], headline: str, baseline: str, margin: float,
          higher: bool = True) -> None:  # fmt: skip
    ours, theirs = metrics[headline], metrics["baselines"][baseline][headline]
    if higher:
        assert ours >= theirs + margin, (headline, ours, baseline, theirs)
    else:
        assert ours <= theirs - margin, (headline, ours, baseline, theirs)


def test_digits(tmp_path: Path) -> None:
    m = train({"name": "digits"}, {**VIT, "max_len": 17}, steps=200, batch_size=64)
    beats(m, "accuracy", "majority", 0.5)


@pytest.mark.slow
def test_crossvit_digits_reaches_logistic_regression(tmp_path: Path) -> None:
    """CrossViT (two branches of 2x2 and 4x4 patches, CLS fusion, the two CLS tokens'
    logits averaged), 2x64, 800 steps: at least the logistic regression on the same
    held-out digits (measured: 0.969 vs 0.965; 3x64 for 1500 steps: 0.977)."""
    crossvit = {"embedder": {"name": "crossvit", "small_patch": 2, "large_patch": 4},
                "attention": "cross_branch", "pool": "branches", "max_len": 22, "d_model": 64}  # fmt: skip
    m = train({"name": "digits"}, crossvit, steps=800, batch_size=64)
    beats(m, "accuracy", "logreg", 0.0)


def test_mnist1d(tmp_path: Path) -> None:
    m = train({"name": "mnist1d"}, {"max_len": 40}, steps=150)
    beats(m, "accuracy", "majority", 0.15)


def test_shapes_largest_class(tmp_path: Path) -> None:
    task = {"name": "shapes", "output": "largest_class"}
    m = train(task, {**VIT4, "max_len": 17}, steps=150)
    beats(m, "accuracy", "majority", 0.1)


def test_shapes_count(tmp_path: Path) -> None:
    task = {"name": "shapes", "output": "count"}
    m = train(task, {**VIT4, "max_len": 17}, steps=150)
    beats(m, "accuracy", "majority", 0.1)


@pytest.mark.slow
def test_shapes_boxes_encoder_decoder() -> None:
    """A tiny encoder–decoder (2+2 layers of width 32; the 12x12 image as 36 patches of
    2x2 in the encoder, learned positions) trained 300 steps writes box tokens above the
    majority baseline (the common count with its mean boxes) on held-out ``id`` scenes,
    teacher-forced and under greedy decoding. Measured (seed 0): teacher-forced count
    accuracy 0.871 vs 0.469, mean IoU of matched boxes 0.278 vs 0.091, token accuracy
    0.404 vs 0.167; greedy count 0.789, mean IoU 0.193; exact match 0 (the boxes are
    not yet pixel-exact; connected components get 1.0)."""
    from anyformer.tasks.shapes import greedy_outputs

    spec = resolve(ExperimentSpec.from_dict({
        "name": "learns-boxes",
        "task": {"name": "shapes", "output": "boxes", "size": 12, "max_objects": 2,
                 "ood_min_objects": 3, "ood_max_objects": 4},
        "model": {"kind": "encoder_decoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "position": "learned", "max_len": 64,
                  "encoder": {"embedder": {"name": "patches", "patch_size": 2, "cls": False}}},
        "train": {"steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20,
                  "eval_every": 300, "checkpoint_every": 300, "eval_size": 256, "threads": 1,
                  "progress": False},
    }))  # fmt: skip
    task = build_task(spec)
    model = prepare_model(spec)
    m = Trainer(model, task, build_objective(spec, task), spec.train).fit().final["id"]
    beats(m, "count_accuracy", "majority", 0.2)
    beats(m, "mean_iou", "majority", 0.05)
    beats(m, "token_accuracy", "majority", 0.1)
    assert m["baselines"]["components"]["exact_match"] == 1.0
    model.eval()
    batches = task.eval_set("id", 256)
    greedy = task.score(greedy_outputs(model, batches), batches)
    beats(greedy, "count_accuracy", "majority", 0.1)
    beats(greedy, "mean_iou", "majority", 0.02)


def test_pose_lifting(tmp_path: Path) -> None:
    m = train({"name": "pose_lifting"}, {"max_len": 16}, steps=150)
    beats(m, "mpjpe", "mean", 50.0, higher=False)


@pytest.mark.parametrize("dataset", ["iris", "breast_cancer"])
def test_table_classification(tmp_path: Path, dataset: str) -> None:
    task = {"name": "table", "dataset": dataset}
    m = train(task, {"embedder": "features", "position": "none", "pool": "first",
                               "max_len": 64}, steps=100)  # fmt: skip
    beats(m, "accuracy", "majority", 0.1)


def test_table_diabetes(tmp_path: Path) -> None:
    task = {"name": "table", "dataset": "diabetes"}
    m = train(task, {"embedder": "features", "position": "none", "pool": "first",
                               "max_len": 64}, steps=150)  # fmt: skip
    beats(m, "rmse", "mean", 0.1, higher=False)


def test_super_resolution_learns_but_stays_below_nearest_upsampling() -> None:
    """A tiny ViT with the x2 dense head raises PSNR well above its untrained start, but
    a few seconds (or minutes: 32.2 dB against nearest's 35.5 dB after 600 steps at width
    64 on 16x16 crops) do not bring it to nearest-neighbour or bicubic upsampling, which
    start from the low-resolution pixels themselves; that comparison is left to longer
    runs."""
    spec = resolve(ExperimentSpec.from_dict({
        "name": "learns-sr", "task": {"name": "super_resolution", "crop": 8},
        "model": {"kind": "encoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "position": "learned", "max_len": 17, **VIT},
        "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20,
                  "eval_every": 150, "checkpoint_every": 150, "eval_size": 64, "threads": 1,
                  "progress": False},
    }))  # fmt: skip
    task = build_task(spec)
    trainer = Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train)
    before = trainer.evaluate()["id"]["psnr"]
    after = trainer.fit().final["id"]
    assert after["psnr"] >= before + 5.0, (before, after["psnr"])
    assert after["psnr"] > 20.0


@pytest.mark.slow
def test_series_classification_gunpoint() -> None:
    """PatchTST-style patches on GunPoint (50 training series): 0.907 after 150 steps,
    against majority 0.493 and the archive's 1-NN 0.913."""
    pytest.importorskip("sktime")
    task = {"name": "series_classification", "dataset": "GunPoint"}
    m = train(task, {"embedder": {"name": "patches_1d", "patch_len": 16, "stride": 8}}, steps=150)
    beats(m, "accuracy", "majority", 0.2)


@pytest.mark.slow
def test_audio_folder(tmp_path: Path, make_audio_tree: Callable[..., Path]) -> None:
    root = make_audio_tree(tmp_path / "audio", classes=3, per_class=12, n=2000)
    task = {"name": "audio_folder", "path": str(root), "duration": 0.25, "id_fraction": 0.3}
    m = train(task, {"pool": "mean"}, steps=60, batch_size=16)
    beats(m, "accuracy", "majority", 0.3)
