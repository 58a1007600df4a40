"""Distribution heads: a Gaussian (mean, log-variance) per target, pooled (``gaussian``)
or per token (``token_gaussian``).

Layout of the outputs, shared with :mod:`anyformer.components.heads.quantile`: the
targets' shape followed by the values per target, i.e. ``[B, 2]`` (pooled, one target),
``[B, n_outputs, 2]`` (pooled, several), ``[B, T, 2]`` or ``[B, T, n_outputs, 2]`` (per
token). The target axis is left out when ``model.n_outputs`` is 1, so the ``gaussian_nll``
objective (channel 0 the mean, channel 1 the log-variance) and ``mse`` (channel 0) read
the outputs beside targets ``[B]`` / ``[B, T]`` as they do a ``token_regress`` head with
two outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from anyformer.components.heads.base import Head
from anyformer.components.heads.linear import entry_name, n_outputs, pool, pooling
from anyformer.registry import Capabilities, NoParams, Paper, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


class ValuesHead(Head):
    """A linear map to ``n_values`` values per target (``model.n_outputs`` targets),
    pooled first by ``model.pool`` (mean, first, last) when ``pooled``; see the module
    docstring for the layout."""

    pooled: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, params: BaseModel, values: int) -> None:
        super().__init__()
        self.n_targets = n_outputs(spec, entry_name(self))
        self.values = values
        self.how = pooling(spec) if self.pooled else spec.pool
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


NIX_WEIGEND = Paper(
    "Estimating the Mean and Variance of the Target Probability Distribution",
    1994,
    "Nix & Weigend",
)


@register(
    "head",
    "gaussian",
    paper=NIX_WEIGEND,
    summary="mean and log-variance per target [B, (n_outputs,) 2] of each row, pooled by "
    "model.pool",
    params=NoParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class GaussianHead(ValuesHead):
    """``(mu, log sigma^2)`` of a Gaussian per target: channel 0 the mean, channel 1 the
    log-variance (train with the ``gaussian_nll`` objective; conformal intervals with
    normalised residuals in :mod:`anyformer.tasks.conformal`)."""

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        super().__init__(spec, params, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.shape_out(self.raw(x, padding_mask))


@register(
    "head",
    "token_gaussian",
    paper=NIX_WEIGEND,
    summary="mean and log-variance per target per token [B, T, (n_outputs,) 2]",
    params=NoParams,
    caps=Capabilities(complexity="O(n)"),
)
class TokenGaussianHead(GaussianHead):
    """``gaussian`` per token."""

    pooled = False
