"""Lifting 2-D joints of a generated skeleton to 3-D (``pose_lifting``).

The skeleton is a 16-joint kinematic tree (pelvis root; hips, knees, ankles; spine,
neck, head; shoulders, elbows, wrists) with fixed bone offsets in metres. A pose draws
each joint's two rotation angles (about the body's x and z axes) uniformly within that
joint's limits (knees and elbows bend one way only) and the whole body's heading
uniformly in ``[0, 360)`` degrees; forward kinematics gives the 3-D joints. A camera at
``distance`` metres from the pelvis, raised by an elevation angle and looking at it,
projects the joints (pinhole, focal length ``distance``, so the image scale is about
the world's).

With ``frames > 1`` an example is a short motion: every angle moves by a constant
velocity (up to ``max_speed`` degrees per frame, clipped at the limits) while the camera
stays; tokens are frame-major (``frame * 16 + joint``).

Batch: ``inputs`` ``[B, frames * 16, 2]``, the 2-D joints relative to the projected
pelvis; ``targets`` ``[B, frames * 16, 3]``, the 3-D joints in the camera's frame
relative to the pelvis; ``loss_mask`` all True. Splits: the camera elevation is drawn
from ``min_elevation .. max_elevation`` degrees in training and ``id`` and from
``ood_min_elevation .. ood_max_elevation`` (unseen, higher views) in ``ood``; poses are
real-valued, so no evaluation pose occurs in training.

Metrics: ``mpjpe`` (headline; the mean per-joint position error, the Euclidean distance
between predicted and true 3-D joints, in millimetres) and ``mse``; baselines ``linear``
(a least-squares linear map from all 2-D coordinates of an example to all its 3-D ones,
fitted on 4,000 training poses) and ``mean`` (the mean training 3-D pose).

Papers: the 2-D-to-3-D lifting transformers of F15 (HoT, Li et al., 2024; KTPFormer,
Peng et al., 2024), on synthetic skeletons instead of Human3.6M.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, range_validators, rng_for
from anyformer.tasks.supervised import Examples, SupervisedTask

HOT = Paper(
    "Hourglass Tokenizer for Efficient Transformer-Based 3D Human Pose Estimation",
    2024,
    "Li et al.",
)
#: Parent of each joint (-1: the root).
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14)
JOINTS = ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
          "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow",
          "r_wrist")  # fmt: skip
#: Offset of each joint from its parent in the parent's rest frame (x right, y up, z front).
OFFSETS = np.array([
    [0, 0, 0], [-0.12, 0, 0], [0, -0.45, 0], [0, -0.43, 0], [0.12, 0, 0], [0, -0.45, 0],
    [0, -0.43, 0], [0, 0.25, 0], [0, 0.27, 0], [0, 0.18, 0], [0.17, -0.02, 0],
    [0, -0.29, 0], [0, -0.26, 0], [-0.17, -0.02, 0], [0, -0.29, 0], [0, -0.26, 0],
])  # fmt: skip
#: Limits (degrees) of each joint's rotation about x (bend forward/back) and z (sideways).
LIMITS = np.array([
    [[0, 0], [0, 0]], [[-80, 40], [-10, 40]], [[0, 130], [0, 0]], [[-20, 20], [0, 0]],
    [[-80, 40], [-40, 10]], [[0, 130], [0, 0]], [[-20, 20], [0, 0]], [[-15, 45], [-20, 20]],
    [[-20, 30], [-15, 15]], [[-30, 40], [-30, 30]], [[-10, 10], [-10, 10]],
    [[-120, 60], [-10, 120]], [[-140, 0], [0, 0]], [[-10, 10], [-10, 10]],
    [[-120, 60], [-120, 10]], [[-140, 0], [0, 0]],
], dtype=np.float64)  # fmt: skip
N_JOINTS = len(PARENTS)
#: Training poses the linear baseline is fitted on.
FIT_POSES = 4000
ELEVATION_FIELDS = ("min_elevation", "max_elevation", "ood_min_elevation", "ood_max_elevation")


def rot_x(a: np.ndarray) -> np.ndarray:
    """Rotations about x by angles ``a`` (radians): ``[..., 3, 3]``."""
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(*a.shape, 3, 3)


def rot_y(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*a.shape, 3, 3)


def rot_z(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*a.shape, 3, 3)


def forward_kinematics(angles: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """3-D joints ``[..., 16, 3]`` (pelvis at the origin) of joint angles ``[..., 16, 2]``
    (degrees about x and z) and a heading ``[...]`` (degrees about the vertical y)."""
    rad = np.deg2rad(angles)
    local = rot_x(rad[..., 0]) @ rot_z(rad[..., 1])  # [..., 16, 3, 3]
    glob = [rot_y(np.deg2rad(heading))]
    pos = [np.zeros((*heading.shape, 3))]
    for j in range(1, N_JOINTS):
        parent = PARENTS[j]
        g = glob[parent] @ local[..., j, :, :]
        glob.append(g)
        pos.append(pos[parent] + (g @ OFFSETS[j]))
    return np.stack(pos, -2)


def project(
    joints: np.ndarray, elevation: np.ndarray, distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame 3-D joints ``[..., 16, 3]`` and their pelvis-relative 2-D projections
    ``[..., 16, 2]``, for a camera raised by ``elevation`` degrees ``[...]`` at
    ``distance`` metres looking at the pelvis (focal length ``distance``)."""
    r = rot_x(np.deg2rad(elevation))[..., None, :, :]  # a raised camera sees the body tilted
    cam = (r @ joints[..., None])[..., 0]
    depth = cam[..., 2:3] + distance
    uv = distance * cam[..., :2] / depth
    return cam, uv - uv[..., :1, :]


class PoseParams(BaseModel):
    """Parameters of ``pose_lifting`` (see the module docstring); elevations in degrees;
    ``noise``: the standard deviation of Gaussian noise added to the 2-D inputs (a
    detector's error; 0 = exact projections)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    frames: int = Field(1, ge=1, le=16)
    max_speed: float = Field(4.0, ge=0.0, le=30.0)
    distance: float = Field(5.0, ge=2.0, le=50.0)
    min_elevation: float = Field(-10.0, ge=-60.0, le=80.0)
    max_elevation: float = Field(20.0, ge=-60.0, le=80.0)
    ood_min_elevation: float = Field(40.0, ge=-60.0, le=80.0)
    ood_max_elevation: float = Field(60.0, ge=-60.0, le=80.0)
    noise: float = Field(0.0, ge=0.0, le=0.1)

    _max, _ood, _ood_max = range_validators(ELEVATION_FIELDS, why="ood views are higher")

    @model_validator(mode="after")
    def _speed(self) -> PoseParams:
        default = type(self).model_fields["max_speed"].default  # a resolved spec has every field
        if self.max_speed != default and self.frames == 1:
            raise ValueError("max_speed applies only with frames > 1 (motions)")
        return self


@register(
    "task",
    "pose_lifting",
    paper=HOT,
    summary="lift 2-D joints of a generated skeleton to 3-D; ood: unseen camera elevations; "
    "MPJPE vs least-squares lifting",
    params=PoseParams,
    caps=Capabilities(),
)
class PoseLifting(SupervisedTask):
    """2-D joint tokens to 3-D joints (see the module docstring). Metrics: ``mpjpe`` (mm),
    ``mse`` and ``baselines.{linear,mean}.{mpjpe,mse}``."""

    headline: ClassVar[str] = "mpjpe"
    higher_is_better: ClassVar[bool] = False
    default_objective: ClassVar[str] = "mse"
    input_kind: ClassVar[str] = "vectors"
    quantity: ClassVar[str] = "joint coordinate (m)"
    kind = "regress"
    params: PoseParams

    @property
    def n_tokens(self) -> int:
        return self.params.frames * N_JOINTS

    def model_io(self) -> dict[str, Any]:
        return {"embed": "vectors", "input_dim": 2, "head": "token_regress", "n_outputs": 3}

    def max_seq_len(self) -> int:
        return self.n_tokens

    def poses(self, rng: np.random.Generator, n: int, split: str) -> Examples:
        """``n`` examples of ``split``: 2-D inputs ``[n, T, 2]``, 3-D targets ``[n, T, 3]``."""
        drawn = self.sample(rng, n, split)
        return drawn["uv"], drawn["cam"]

    def sample(self, rng: np.random.Generator, n: int, split: str) -> dict[str, np.ndarray]:
        """``n`` motions of ``split``: ``uv`` ``[n, T, 2]``, ``cam`` ``[n, T, 3]``, the
        joint ``angles`` ``[n, frames, 16, 2]``, ``heading`` ``[n, frames]`` and camera
        ``elevation`` ``[n]`` (degrees)."""
        p = self.params
        lo, hi = LIMITS[..., 0], LIMITS[..., 1]
        base = rng.uniform(lo, hi, size=(n, N_JOINTS, 2))
        speed = rng.uniform(-p.max_speed, p.max_speed, size=(n, N_JOINTS, 2))
        heading = rng.uniform(0.0, 360.0, size=n)
        turn = rng.uniform(-p.max_speed, p.max_speed, size=n)
        low, high = (
            (p.ood_min_elevation, p.ood_max_elevation)
            if split == "ood"
            else (p.min_elevation, p.max_elevation)
        )
        elevation = rng.uniform(low, high, size=n)
        t = np.arange(p.frames, dtype=np.float64)
        angles = np.clip(base[:, None] + t[None, :, None, None] * speed[:, None], lo, hi)
        joints = forward_kinematics(angles, heading[:, None] + t[None] * turn[:, None])
        # joints: [n, frames, 16, 3]; the camera is the same for every frame
        cam, uv = project(joints, elevation[:, None], p.distance)
        if p.noise > 0:
            uv = uv + rng.normal(0.0, p.noise, size=uv.shape)
        return {
            "uv": uv.reshape(n, -1, 2),
            "cam": cam.reshape(n, -1, 3),
            "angles": angles,
            "heading": heading[:, None] + t[None] * turn[:, None],
            "elevation": elevation,
        }

    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        """As for every supervised task, with ``loss_mask`` ``[B, T]`` (every joint token)."""
        batch = super().to_batch(x, y)
        batch.loss_mask = torch.ones(y.shape[:2], dtype=torch.bool)
        return batch

    def train_examples(self, step: int, n: int) -> Examples:
        return self.poses(rng_for(self.seed, SPLIT_IDS["train"], step), n, "train")

    def eval_examples(self, split: str, size: int) -> Examples:
        return self.poses(rng_for(self.seed, SPLIT_IDS[split], 0), size, split)

    def fit_examples(self) -> Examples:
        return self.poses(rng_for(self.seed, 3, 0), FIT_POSES, "train")

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        from sklearn.dummy import DummyRegressor
        from sklearn.linear_model import LinearRegression

        return {"linear": LinearRegression, "mean": DummyRegressor}

    def regression_scores(
        self, pred: np.ndarray, targets: np.ndarray, batches: list[Batch]
    ) -> dict[str, Any]:
        err = pred.reshape(targets.shape) - targets
        return {
            "mpjpe": float(np.linalg.norm(err, axis=-1).mean() * 1000.0),
            "mse": float(np.mean(err**2)),
        }
