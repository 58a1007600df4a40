"""``super_resolution``: crops and their 2x2-mean inputs, disjoint regions per split,
PSNR on known errors, and the bicubic baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.super_resolution import (
    SuperResolution,
    downsample,
    sample_photos,
    upsample,
)
from anyformer.tasks.supervised import PSNR_CAP, psnr


def build(seed: int = 0, **params: object) -> SuperResolution:
    entry = registry.get("task", "super_resolution")
    return entry.build(entry.make_params(params), seed)  # type: ignore[return-value]


def test_psnr_and_resampling_compute_what_they_say() -> None:
    target = torch.full((2, 3, 4, 4), 0.5)
    assert psnr(target, target).tolist() == [PSNR_CAP, PSNR_CAP]
    # an error of 0.1 everywhere: MSE 0.01, PSNR 20 dB; predictions are clamped to [0, 1]
    assert psnr(target + 0.1, target)[0].item() == pytest.approx(20.0)
    assert psnr(torch.full_like(target, 7.0), torch.ones_like(target))[0].item() == PSNR_CAP
    images = np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4)
    low = downsample(images)
    assert low.shape == (2, 3, 2, 2) and low[0, 0, 0, 0] == np.mean([0, 1, 4, 5])
    flat = torch.full((1, 3, 5, 5), 0.25)
    assert torch.allclose(upsample(flat, "bicubic"), torch.full((1, 3, 10, 10), 0.25).double())
    assert torch.equal(upsample(flat, "nearest")[0, :, ::2, ::2], flat[0].double())


def test_crops_are_deterministic_and_taken_from_disjoint_regions() -> None:
    task = build()
    china, flower = sample_photos()
    cut = round(0.75 * 640)
    assert np.array_equal(task.regions["train"], china[:, :, :cut])
    assert np.array_equal(task.regions["id"], china[:, :, cut:])
    assert task.regions["ood"] is flower
    # a crop of a region whose pixels encode their coordinates shows where it came from
    h, w = 40, 30
    coords = np.zeros((3, h, w), dtype=np.float32)
    coords[0], coords[1] = np.mgrid[0:h, 0:w]
    low, high = task.crops(coords, np.random.default_rng(0), 50)
    assert high.shape == (50, 3, 16, 16) and low.shape == (50, 3, 8, 8)
    for crop in high:
        y0, x0 = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        assert np.array_equal(crop, coords[:, y0 : y0 + 16, x0 : x0 + 16])
    assert np.allclose(low, downsample(high))
    batch = task.train_batch(0, 4)
    assert batch.inputs.shape == (4, 3, 8, 8) and batch.targets.shape == (4, 3, 16, 16)
    assert batches_equal(batch, build().train_batch(0, 4))
    assert not batches_equal(batch, build(seed=1).train_batch(0, 4))
    assert task.model_io() == {"input_shape": [3, 8, 8], "embedder": "patches",
                               "head": {"name": "dense", "scale": 2}, "n_outputs": 3}  # fmt: skip
    assert task.output_shape == (3, 16, 16)


def test_bicubic_baseline_and_scores_on_the_same_crops() -> None:
    task = build()
    for split in ("id", "ood"):
        batches = task.eval_set(split, 128)
        exact = task.score([b.targets for b in batches], batches)
        assert exact["psnr"] == PSNR_CAP and exact["mse"] == 0.0
        base = exact["baselines"]
        assert 25.0 < base["bicubic"]["psnr"] < 60.0
        assert base["bicubic"]["psnr"] > base["nearest"]["psnr"]
        as_model = task.score(task.baseline_outputs("bicubic", batches), batches)
        assert as_model["psnr"] == pytest.approx(base["bicubic"]["psnr"], rel=1e-5)
        # 0.1 off at every pixel (inside [0, 1]): 20 dB for every crop
        off = [torch.where(b.targets <= 0.5, b.targets + 0.1, b.targets - 0.1) for b in batches]
        assert task.score(off, batches)["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_an_odd_crop_is_refused() -> None:
    with pytest.raises(SpecError, match="crop=15 must be even"):
        registry.get("task", "super_resolution").make_params({"crop": 15})


def test_a_head_other_than_the_tasks_dense_head_is_refused_by_name() -> None:
    """``model.head=dense`` (scale 1) on x2 super-resolution used to reach the loss and
    stop with a shape error from the objective."""
    from anyformer.errors import SpecError
    from anyformer.lab.run import resolve
    from anyformer.spec import ExperimentSpec

    data = {
        "name": "sr",
        "model": {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2},
                  "position": "none", "d_model": 16, "n_heads": 2, "n_layers": 1,
                  "max_len": 64},
        "task": "super_resolution",
    }  # fmt: skip
    assert resolve(ExperimentSpec.from_dict(data)).model.head_ref.params["scale"] == 2
    wrong = dict(data, model={**data["model"], "head": "dense"})
    with pytest.raises(SpecError, match=r"model.head=.*does not fit task 'super_resolution'"):
        resolve(ExperimentSpec.from_dict(wrong))
