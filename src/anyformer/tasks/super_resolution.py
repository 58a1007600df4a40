"""x2 super-resolution of crops of scikit-learn's two sample photographs (``super_resolution``).

The photographs are ``china.jpg`` and ``flower.jpg`` (``load_sample_images``, 427x640
RGB), as float values in ``[0, 1]``. An example is a high-resolution crop ``[3, crop,
crop]`` (the target) and its low-resolution version ``[3, crop / 2, crop / 2]`` (the
input), each low-resolution pixel the mean of a 2x2 block. Splits: training crops lie
in the left ``train_fraction`` of the columns of ``china.jpg`` and ``id`` crops in the
rest of that photograph (no pixel shared), ``ood`` crops anywhere in ``flower.jpg``.
Crop corners are drawn from ``(seed, step)`` (training) or the split's fixed stream.

The model reads the low-resolution image (``patches`` embedder) and outputs the
high-resolution one through a ``dense`` head (:attr:`SuperResolution.output_shape`,
``[3, crop, crop]``; three channels per output pixel).
Metrics: ``psnr`` (headline; the mean over examples of ``10 log10(1 / MSE)`` with the
prediction clamped to ``[0, 1]``, an exact one capped at 100 dB) and ``mse``; baselines
``bicubic`` (PyTorch's bicubic upsampling of the input, the classical reference of the
super-resolution papers) and ``nearest`` (pixel repetition).

Papers: Mobile-SRViT (Smith et al., 2024) and the Recursive Generalization Transformer
(Chen et al., 2024) super-resolve images with vision transformers; this is their task at
toy scale.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, rng_for
from anyformer.tasks.images import image_seq_len
from anyformer.tasks.plot_data import ImageGrid, to_hwc
from anyformer.tasks.supervised import Examples, SupervisedTask, psnr

RGT = Paper("Recursive Generalization Transformer for Image Super-Resolution", 2024, "Chen et al.")


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, np.ndarray]:
    """``china.jpg`` and ``flower.jpg`` as float32 ``[3, 427, 640]`` in ``[0, 1]``."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return tuple(  # type: ignore[return-value]
        np.ascontiguousarray(p.transpose(2, 0, 1), dtype=np.float32) / 255.0
        for p in (china, flower)
    )


def downsample(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, C, H / 2, W / 2]``: the mean of each 2x2 block."""
    n, c, h, w = images.shape
    return images.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def upsample(images: torch.Tensor, mode: str) -> torch.Tensor:
    """x2 upsampling (``bicubic`` with ``align_corners=False``, or ``nearest``),
    clamped to ``[0, 1]``."""
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(images.double(), scale_factor=2, mode=mode, **kwargs).clamp(0, 1)


class SuperResolutionParams(BaseModel):
    """Parameters of ``super_resolution``: ``crop`` (the high-resolution side, even) and
    ``train_fraction`` (the share of ``china.jpg``'s columns crops are trained on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    crop: int = Field(16, ge=4, le=128)
    train_fraction: float = Field(0.75, ge=0.3, le=0.9)

    @field_validator("crop")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"crop={v} must be even (x2 super-resolution)")
        return v


@register(
    "task",
    "super_resolution",
    paper=RGT,
    summary="x2 super-resolution of crops of scikit-learn's sample photos; PSNR vs bicubic",
    params=SuperResolutionParams,
    caps=Capabilities(),
)
class SuperResolution(SupervisedTask):
    """Upsample a crop x2 (see the module docstring). Metrics: ``psnr``, ``mse`` and
    ``baselines.{bicubic,nearest}.{psnr,mse}``."""

    headline: ClassVar[str] = "psnr"
    higher_is_better: ClassVar[bool] = True
    default_objective: ClassVar[str] = "mse"
    kind = "regress"
    params: SuperResolutionParams

    def __init__(self, params: SuperResolutionParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        china, flower = sample_photos()
        cut = int(round(params.train_fraction * china.shape[2]))
        self.regions = {"train": china[:, :, :cut], "id": china[:, :, cut:], "ood": flower}
        for name, region in self.regions.items():
            if min(region.shape[1:]) < params.crop:
                raise ValueError(f"the {name} region {region.shape[1:]} is smaller than crop")

    @property
    def low_shape(self) -> tuple[int, int, int]:
        half = self.params.crop // 2
        return (3, half, half)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """The shape of a prediction, ``[3, crop, crop]`` (twice the input's height and
        width), which the ``dense`` head re-folds its per-patch outputs to."""
        return (3, self.params.crop, self.params.crop)

    def model_io(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.low_shape),
            "embedder": "patches",
            "head": {"name": "dense", "scale": 2},  # x2: each patch token writes 2p x 2p pixels
            "n_outputs": 3,
        }

    def max_seq_len(self) -> int:
        return image_seq_len(self.low_shape)

    def crops(self, region: np.ndarray, rng: np.random.Generator, n: int) -> Examples:
        """``n`` random crops of ``region``: (low-resolution inputs, high-resolution targets)."""
        c = self.params.crop
        ys = rng.integers(0, region.shape[1] - c + 1, size=n)
        xs = rng.integers(0, region.shape[2] - c + 1, size=n)
        high = np.stack([region[:, y : y + c, x : x + c] for y, x in zip(ys, xs)])
        return downsample(high), high

    def train_examples(self, step: int, n: int) -> Examples:
        return self.crops(self.regions["train"], rng_for(self.seed, SPLIT_IDS["train"], step), n)

    def eval_examples(self, split: str, size: int) -> Examples:
        return self.crops(self.regions[split], rng_for(self.seed, SPLIT_IDS[split], 0), size)

    def fit_examples(self) -> Examples:
        raise NotImplementedError("the super-resolution baselines are not fitted")

    def baseline_predictions(self, batch: Batch) -> dict[str, np.ndarray]:
        return {m: upsample(batch.inputs, m).numpy() for m in ("bicubic", "nearest")}

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        return [upsample(b.inputs, name).float() for b in batches]

    def image_grid(
        self, split: str, outputs: torch.Tensor, batches: list[Batch], rows: int = 4
    ) -> ImageGrid:
        """Low-resolution input, the model's x2 output, the target and the input's
        nearest-neighbour upsampling (the baseline a model must beat) of the first
        ``rows`` crops."""
        grid = super().image_grid(split, outputs, batches, rows)
        inputs = torch.cat([b.inputs for b in batches])[:rows]
        nearest = to_hwc(upsample(inputs, "nearest").numpy())
        return ImageGrid(split, (*grid.columns, "nearest"), (*grid.images, nearest))

    def regression_scores(
        self, pred: np.ndarray, targets: np.ndarray, batches: list[Batch]
    ) -> dict[str, Any]:
        p, t = torch.from_numpy(pred), torch.from_numpy(targets)
        return {
            "psnr": float(psnr(p, t).mean()),
            "mse": float(((p.clamp(0, 1) - t) ** 2).mean()),
        }
