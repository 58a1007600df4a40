"""Further objectives: the Gaussian negative log-likelihood of a mean-variance head."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anyformer.objectives.losses import Objective
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch


class GaussianNLLParams(BaseModel):
    """Parameters of the Gaussian NLL.

    - ``min_log_var``, ``max_log_var``: the predicted log-variance is clamped to this
      range before use (guards against overflow; the gradient is 0 outside it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_log_var: float = Field(-20.0)
    max_log_var: float = Field(20.0)

    @field_validator("max_log_var")
    @classmethod
    def _range(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("min_log_var")
        if lo is not None and v <= lo:
            raise ValueError(f"max_log_var={v} must be > min_log_var={lo}")
        return v


@register(
    "objective",
    "gaussian_nll",
    paper=Paper(
        "Estimating the Mean and Variance of the Target Probability Distribution",
        1994,
        "Nix & Weigend",
    ),
    summary="Gaussian negative log-likelihood of a (mean, log-variance) output",
    params=GaussianNLLParams,
    caps=Capabilities(),
)
class GaussianNLL(Objective):
    """``0.5 * (log var + (y - mu)^2 / var)`` averaged over ``batch.loss_mask``.

    ``outputs`` ``[B, T, 2]``: channel 0 is the mean ``mu``, channel 1 the log-variance
    (clamped to ``[min_log_var, max_log_var]``). The constant ``0.5 log(2 pi)`` is left
    out. Does not support other output layouts (e.g. a variance or precision channel).
    """

    params: GaussianNLLParams
    heads = ("regress", "token_regress", "gaussian", "token_gaussian")
    #: (mean, log-variance) from a plain regression head takes 2 outputs; the gaussian
    #: heads write both values for each of ``n_outputs`` targets.
    n_outputs = {"regress": 2, "token_regress": 2}

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        if outputs.dim() != batch.targets.dim() + 1 or outputs.shape[-1] != 2:
            raise ValueError(
                f"gaussian_nll needs outputs [..., 2] (mean, log-variance) beside targets "
                f"{tuple(batch.targets.shape)}, got {tuple(outputs.shape)}; "
                "build the model with n_outputs=2"
            )
        mask = batch.loss_mask
        mu = outputs[..., 0][mask].float()
        log_var = outputs[..., 1][mask].float()
        log_var = log_var.clamp(self.params.min_log_var, self.params.max_log_var)
        y = batch.targets[mask].float()
        return 0.5 * (log_var + (y - mu) ** 2 * torch.exp(-log_var)).mean()
