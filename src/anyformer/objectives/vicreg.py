"""VICReg: variance-invariance-covariance regularisation between two augmented views."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from anyformer.objectives.driven import DrivenObjective, final_hidden, own_module, pool
from anyformer.objectives.losses import Forward
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch

VICREG = Paper(
    "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning",
    2022,
    "Bardes, Ponce & LeCun",
)
#: The extras a corrupted batch carries: each view's inputs and padding mask.
VIEWS = (("view_a", "view_a_mask"), ("view_b", "view_b_mask"))


class VICRegParams(BaseModel):
    """- ``invariance``, ``variance``, ``covariance``: the weights lambda, mu, nu (25, 25, 1).
    - ``gamma``: the target standard deviation of each embedding dimension; ``eps``
      inside the square root.
    - ``expander_layers``, ``expander_mult``: the expander MLP (Linear-BatchNorm-ReLU
      blocks, then a Linear), ``expander_mult x d_model`` wide.
    - Images: ``crop_scale`` (smallest area share of a random resized crop), ``aspect``
      (largest aspect-ratio change), ``flip`` (horizontal flip with probability 1/2),
      ``noise`` (std of added Gaussian pixel noise).
    - Tokens and vectors: ``drop`` (share of real tokens hidden as padding),
      ``replace`` (share of tokens replaced by another token of the batch), ``noise``
      (vectors: std of added Gaussian noise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    invariance: float = Field(25.0, ge=0.0)
    variance: float = Field(25.0, ge=0.0)
    covariance: float = Field(1.0, ge=0.0)
    gamma: float = Field(1.0, gt=0.0)
    eps: float = Field(1e-4, gt=0.0)
    expander_layers: PositiveInt = 2
    expander_mult: PositiveInt = 4
    crop_scale: float = Field(0.5, gt=0.0, le=1.0)
    aspect: float = Field(4 / 3, ge=1.0)
    flip: bool = True
    noise: float = Field(0.05, ge=0.0)
    drop: float = Field(0.15, ge=0.0, lt=1.0)
    replace: float = Field(0.1, ge=0.0, le=1.0)


def vicreg_terms(
    za: torch.Tensor, zb: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(invariance, variance, covariance)`` of two batches of embeddings ``[N, d]``
    (Bardes et al., 2022, eqs. 1-4, as their reference code): the mean squared
    difference; per view the mean over dimensions of ``relu(gamma - sqrt(Var + eps))``,
    averaged over the two views; per view the sum of squared off-diagonal entries of the
    covariance matrix divided by ``d``, summed over the two views."""
    inv = F.mse_loss(za, zb)
    var = torch.zeros((), device=za.device)
    cov = torch.zeros((), device=za.device)
    n, d = za.shape
    for z in (za, zb):
        z = z - z.mean(0)
        std = torch.sqrt(z.var(0) + eps)
        var = var + F.relu(gamma - std).mean() / 2
        c = (z.T @ z) / (n - 1)
        off = c - torch.diag_embed(torch.diagonal(c))
        cov = cov + off.pow(2).sum() / d
    return inv, var, cov


def image_view(images: torch.Tensor, p: VICRegParams, g: torch.Generator) -> torch.Tensor:
    """One augmented view of ``images [B, C, H, W]``: a random resized crop (area share in
    ``[crop_scale, 1]``, aspect ratio in ``[1/aspect, aspect]``, bilinear, as an affine
    resampling), a horizontal flip with probability 1/2 (``flip``), Gaussian noise."""
    b = images.shape[0]
    area = p.crop_scale + (1 - p.crop_scale) * torch.rand(b, generator=g)
    log_ratio = (2 * torch.rand(b, generator=g) - 1) * torch.log(torch.tensor(p.aspect))
    ratio = log_ratio.exp()
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (2 * torch.rand(b, generator=g) - 1) * (1 - sx)
    ty = (2 * torch.rand(b, generator=g) - 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if p.flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    if p.noise:
        out = out + p.noise * torch.randn(out.shape, generator=g)
    return out.to(images.dtype)


def sequence_view(
    inputs: torch.Tensor, real: torch.Tensor, p: VICRegParams, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of token ids ``[B, T]`` or vectors ``[B, T, D]`` with real tokens ``real``:
    ``replace`` of the tokens replaced by tokens drawn from the batch's real ones (ids)
    or Gaussian noise added (vectors), and ``drop`` of the real tokens hidden as padding
    (each row keeps at least its first real token)."""
    b, t = real.shape
    out = inputs.clone()
    if inputs.dim() == 2:
        pool_ids = inputs[real]
        swap = (torch.rand(b, t, generator=g) < p.replace) & real
        pick = torch.randint(pool_ids.numel(), (b, t), generator=g)
        out = torch.where(swap, pool_ids[pick], out)
    elif p.noise:
        out = out + p.noise * torch.randn(out.shape, generator=g).to(out.dtype)
    dropped = (torch.rand(b, t, generator=g) < p.drop) & real
    first = real & (real.cumsum(1) == 1)
    return out, real & (~dropped | first)


class Expander(nn.Module):
    """VICReg's expander: ``layers - 1`` blocks of Linear, BatchNorm, ReLU, then a Linear."""

    def __init__(self, d_in: int, width: int, layers: int) -> None:
        super().__init__()
        parts: list[nn.Module] = []
        d = d_in
        for _ in range(layers - 1):
            parts += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
            d = width
        parts.append(nn.Linear(d, width))
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register(
    "objective",
    "vicreg",
    paper=VICREG,
    summary="two augmented views' pooled representations through an expander: "
    "25 x invariance (MSE) + 25 x variance hinge (gamma 1) + 1 x covariance off-diagonals",
    params=VICRegParams,
    caps=Capabilities(),
)
class VICReg(DrivenObjective):
    """VICReg (Bardes, Ponce & LeCun, 2022): two augmented views of every example go
    through the model; each view's last hidden states (after the final norm) are averaged
    over its real tokens and mapped by the expander (owned by the objective) to ``z``; the
    loss is ``lambda s(z_a, z_b) + mu [v(z_a) + v(z_b)] / 2 + nu [c(z_a) + c(z_b)]`` with
    ``s`` the mean squared error, ``v`` the hinge ``mean_j relu(gamma - sqrt(Var z_j +
    eps))`` and ``c`` the squared off-diagonal covariances over ``d`` (:func:`vicreg_terms`).

    Augmentations are drawn in :meth:`corrupt` (the views are stored in
    ``batch.extras``): for images (the kind built out fully) random resized crops, flips
    and pixel noise (:func:`image_view`); for token ids random replacement by other
    tokens of the batch and dropping (hidden as padding); for vectors noise and dropping
    (:func:`sequence_view`). The model's head is not trained. A collapsed
    representation (every ``z`` equal) scores ``mu (gamma - sqrt(eps))`` at best: the
    trivial baseline."""

    params: VICRegParams

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        extras: dict[str, Any] = dict(batch.extras)
        x = batch.inputs
        for view, mask in VIEWS:
            if x.dim() == 4:
                extras[view] = image_view(x, self.params, generator)
            else:
                real = batch.padding_mask
                if real is None:
                    real = torch.ones(x.shape[:2], dtype=torch.bool)
                extras[view], extras[mask] = sequence_view(x, real, self.params, generator)
        return Batch(
            batch.inputs, batch.targets, batch.loss_mask, batch.padding_mask, batch.group,
            extras,
        )  # fmt: skip

    def build_module(self, model: nn.Module) -> nn.Module:
        d = model.spec.d_model
        return Expander(d, self.params.expander_mult * d, self.params.expander_layers)

    def embeddings(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_a, z_b)``: the two views' expanded representations ``[B, width]``."""
        out = []
        for view, mask_key in VIEWS:
            inputs, mask = batch.extras[view], batch.extras.get(mask_key)
            _, h = final_hidden(model, lambda x=inputs, m=mask: model(x, padding_mask=m))
            out.append(own_module(model)(pool(h, mask).float()))
        return out[0], out[1]

    def objective_loss(
        self, model: nn.Module, batch: Batch, forward: Forward | None
    ) -> torch.Tensor:
        p = self.params
        inv, var, cov = vicreg_terms(*self.embeddings(model, batch), p.gamma, p.eps)
        return p.invariance * inv + p.variance * var + p.covariance * cov


__all__ = ["VICReg", "VICRegParams", "image_view", "sequence_view", "vicreg_terms"]
