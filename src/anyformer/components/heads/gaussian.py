"""Distribution heads: a Gaussian (mean, log-variance) per target, pooled or per token.

Layout of the outputs, shared with :mod:`anyformer.components.heads.quantile`: the
targets' shape followed by the values per target, i.e. ``[B, 2]`` (pooled, one target),
``[B, n_outputs, 2]`` (pooled, several), ``[B, T, 2]`` or ``[B, T, n_outputs, 2]`` (per
token). The target axis is left out when ``model.n_outputs`` is 1, so the ``gaussian_nll``
objective (channel 0 the mean, channel 1 the log-variance) and ``mse`` (channel 0) read
the outputs beside targets ``[B]`` / ``[B, T]`` as they do a ``token_regress`` head with
two outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.heads.base import Head
from anyformer.components.heads.linear import n_outputs, pool
from anyformer.registry import Capabilities, Paper, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


class DistributionParams(BaseModel):
    """``per_token``: one distribution per token ``[B, T, ...]`` instead of one per row
    pooled by ``model.pool`` (mean, first, last) ``[B, ...]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    per_token: bool = False


class ValuesHead(Head):
    """A linear map to ``n_values`` values per target (``model.n_outputs`` targets),
    pooled first unless ``per_token``; see the module docstring for the layout.
    ``pooled`` says, per instance, whether it pools (the registry's ``pooled``
    capability states the default)."""

    name = "values"

    def __init__(self, spec: ModelSpec, params: DistributionParams, values: int) -> None:
        super().__init__()
        self.n_targets = n_outputs(spec, self.name)
        self.values = values
        self.pooled = not params.per_token
        self.how = spec.pool
        self.proj = nn.Linear(spec.d_model, self.n_targets * values)

    def n_values(self) -> int:
        """Values written per target."""
        return self.values

    def raw(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``[..., n_targets, n_values]`` before any transform (pooled when ``pooled``)."""
        if self.pooled:
            x = pool(x, padding_mask, self.how)
        return self.proj(x).unflatten(-1, (self.n_targets, self.values))

    def shape_out(self, y: torch.Tensor) -> torch.Tensor:
        return y.squeeze(-2) if self.n_targets == 1 else y


@register(
    "head",
    "gaussian",
    paper=Paper(
        "Estimating the Mean and Variance of the Target Probability Distribution",
        1994,
        "Nix & Weigend",
    ),
    summary="mean and log-variance per target [..., 2], pooled (model.pool) or per_token",
    params=DistributionParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class GaussianHead(ValuesHead):
    """``(mu, log sigma^2)`` of a Gaussian per target: channel 0 the mean, channel 1 the
    log-variance (train with the ``gaussian_nll`` objective; conformal intervals with
    normalised residuals in :mod:`anyformer.tasks.conformal`)."""

    name = "gaussian"

    def __init__(self, spec: ModelSpec, params: DistributionParams) -> None:
        super().__init__(spec, params, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.shape_out(self.raw(x, padding_mask))
