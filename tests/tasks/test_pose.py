"""``pose_lifting``: forward kinematics keeps bone lengths, angles stay within limits,
the camera and the projection are what they say, ood elevations are unseen, MPJPE on
known errors, and the least-squares lifting baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.pose import (
    LIMITS,
    N_JOINTS,
    OFFSETS,
    PARENTS,
    PoseLifting,
    forward_kinematics,
    project,
)


def build(seed: int = 0, **params: Any) -> PoseLifting:
    entry = registry.get("task", "pose_lifting")
    return entry.build(entry.make_params(params), seed)  # type: ignore[return-value]


def bones(joints: np.ndarray) -> np.ndarray:
    """Bone lengths ``[..., 15]``."""
    return np.stack(
        [np.linalg.norm(joints[..., j, :] - joints[..., PARENTS[j], :], axis=-1)
         for j in range(1, N_JOINTS)], -1,
    )  # fmt: skip


def test_forward_kinematics_keeps_bone_lengths_and_the_rest_pose() -> None:
    rest = forward_kinematics(np.zeros((N_JOINTS, 2)), np.array(0.0))
    expected = np.zeros((N_JOINTS, 3))
    for j in range(1, N_JOINTS):
        expected[j] = expected[PARENTS[j]] + OFFSETS[j]
    assert np.allclose(rest, expected)
    rng = np.random.default_rng(0)
    angles = rng.uniform(-180, 180, size=(20, N_JOINTS, 2))
    joints = forward_kinematics(angles, rng.uniform(0, 360, size=20))
    lengths = np.linalg.norm(OFFSETS[1:], axis=1)
    assert np.allclose(bones(joints), lengths[None])
    # a heading turns the whole body about the vertical axis
    turned = forward_kinematics(np.zeros((N_JOINTS, 2)), np.array(90.0))
    assert np.allclose(turned[:, 1], rest[:, 1])
    assert np.allclose(turned[:, [0, 2]] @ [[0, -1], [1, 0]], rest[:, [0, 2]]) or np.allclose(
        turned[:, [0, 2]] @ [[0, 1], [-1, 0]], rest[:, [0, 2]]
    )


def test_projection_is_a_pinhole_camera_raised_by_the_elevation() -> None:
    joints = forward_kinematics(np.zeros((N_JOINTS, 2)), np.array(0.0))
    cam, uv = project(joints, np.array(0.0), 5.0)
    assert np.allclose(cam, joints)  # level camera: the body's frame
    assert np.allclose(uv, 5.0 * joints[:, :2] / (joints[:, 2:] + 5.0))
    high, _ = project(joints, np.array(60.0), 5.0)
    assert np.allclose(bones(high), bones(joints))  # a rotation
    head = N_JOINTS - 7  # the head, straight above the pelvis at rest
    assert high[head, 2] != pytest.approx(0.0)  # seen from above, it leans in depth


def test_samples_stay_within_limits_and_ood_elevations_are_unseen() -> None:
    task = build(frames=3, max_speed=10.0)
    rng = np.random.default_rng(1)
    train = task.sample(rng, 200, "train")
    ood = task.sample(rng, 200, "ood")
    lo, hi = LIMITS[..., 0], LIMITS[..., 1]
    assert ((train["angles"] >= lo - 1e-9) & (train["angles"] <= hi + 1e-9)).all()
    step = np.abs(np.diff(train["angles"], axis=1))
    assert step.max() <= 10.0 + 1e-9
    assert train["elevation"].min() >= -10 and train["elevation"].max() <= 20
    assert ood["elevation"].min() >= 40 and ood["elevation"].max() <= 60
    # frame-major tokens: frame f's joints are tokens 16 f .. 16 f + 15, pelvis at 0
    cam = train["cam"].reshape(200, 3, N_JOINTS, 3)
    assert np.allclose(cam[:, :, 0], 0) and np.allclose(
        train["uv"].reshape(200, 3, 16, 2)[:, :, 0], 0
    )
    assert np.allclose(bones(cam), np.linalg.norm(OFFSETS[1:], axis=1))
    batch = task.train_batch(0, 4)
    assert batch.inputs.shape == (4, 48, 2) and batch.targets.shape == (4, 48, 3)
    assert batch.loss_mask.shape == (4, 48) and bool(batch.loss_mask.all())
    assert batches_equal(batch, build(frames=3, max_speed=10.0).train_batch(0, 4))
    assert not batches_equal(batch, build(1, frames=3, max_speed=10.0).train_batch(0, 4))
    assert task.model_io() == {"embed": "vectors", "input_dim": 2, "head": "token_regress",
                               "n_outputs": 3}  # fmt: skip
    assert task.max_seq_len() == 48


def test_mpjpe_and_the_lifting_baselines() -> None:
    task = build()
    batches = task.eval_set("id", 300)
    exact = task.score([b.targets.clone() for b in batches], batches)
    assert exact["mpjpe"] == 0.0
    # 3 mm and 4 mm off: 5 mm per joint
    shift = torch.tensor([0.003, 0.004, 0.0])
    assert task.score([b.targets + shift for b in batches], batches)["mpjpe"] == pytest.approx(
        5.0, rel=1e-4
    )
    base = exact["baselines"]
    assert 80.0 < base["linear"]["mpjpe"] < 250.0
    assert base["linear"]["mpjpe"] < 0.6 * base["mean"]["mpjpe"]
    ood = task.score([b.targets for b in task.eval_set("ood", 300)], task.eval_set("ood", 300))
    assert ood["baselines"]["linear"]["mpjpe"] > base["linear"]["mpjpe"]


def test_overlapping_elevations_and_unused_speeds_are_refused() -> None:
    entry = registry.get("task", "pose_lifting")
    with pytest.raises(SpecError, match="ood_min_elevation=20.0 must be > max_elevation=20.0"):
        entry.make_params({"ood_min_elevation": 20.0})
    with pytest.raises(SpecError, match="max_speed applies only with frames > 1"):
        entry.make_params({"max_speed": 3.0})
