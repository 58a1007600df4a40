"""The forecasting head: tokens to a forecast ``[B, horizon, variates]``.

``horizon`` is ``model.n_outputs`` and ``variates`` is ``model.input_shape[1]`` (the
series ``[lookback, variates]`` a series embedder reads; 1 for other embedders). How it
reads the tokens follows the embedder's ``readout``:

- ``flatten`` (``points``): all ``T`` tokens of a row flattened and one linear map
  ``T * d_model -> horizon * variates``;
- ``channel_rows`` (``patches_1d``, channel-independent: row ``b * C + c`` holds variate
  c's ``N`` tokens) and ``channel_blocks`` (``patches_1d`` with
  ``channel_independent: false``: block c of a row): each variate's ``N`` tokens
  flattened and mapped to its own ``horizon`` values by one linear map
  ``N * d_model -> horizon`` shared by the variates (PatchTST's flatten head, Nie et al.,
  2023);
- ``per_variate`` (``variates``, ``gateformer``): token c, variate c's state, by one
  linear map ``d_model -> horizon`` (iTransformer's projection, Liu et al., 2024);
- otherwise (embedders that are not series ones): the mean over real tokens, then a linear
  map ``d_model -> horizon * variates``.

When the embedder normalises with RevIN it hands the head its statistics
(``readout_state``, carried by the model's ``Context``) and the head returns the
de-normalised forecast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from anyformer.components.embedders.series import PATCHTST, SeriesEmbedder, series_shape
from anyformer.components.heads.base import Head
from anyformer.components.heads.linear import n_outputs, pool
from anyformer.registry import Capabilities, NoParams, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


@register(
    "head",
    "forecast",
    paper=PATCHTST,
    summary="a forecast [B, n_outputs (horizon), variates] from series tokens (flatten or per "
    "variate), de-normalised with the embedder's RevIN statistics",
    params=NoParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class ForecastHead(Head):
    """See the module docstring."""

    pooled: ClassVar[bool] = True
    #: the model passes it the embedder's ``readout_state`` (RevIN statistics)
    reads_state: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        super().__init__()
        self.horizon = n_outputs(spec, "forecast")
        embedder = spec.embedder_ref.entry.cls
        shape = series_shape(spec) if issubclass(embedder, SeriesEmbedder) else None
        self.variates = shape[1] if shape is not None else 1
        config = spec.embedder_ref.config
        self.mode = embedder.readout_of(config) if shape is not None else "pool"
        d = spec.d_model
        if self.mode == "flatten":
            self.proj = nn.Linear(spec.token_layout.length * d, self.horizon * self.variates)
        elif self.mode in ("channel_rows", "channel_blocks"):
            per_variate = spec.token_layout.length
            if self.mode == "channel_blocks":
                per_variate //= self.variates
            self.proj = nn.Linear(per_variate * d, self.horizon)
        elif self.mode == "per_variate":
            self.proj = nn.Linear(d, self.horizon)
        else:
            self.proj = nn.Linear(d, self.horizon * self.variates)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: Any = None
    ) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "flatten":
            y = self.proj(x.flatten(1)).view(b, self.horizon, self.variates)
        elif self.mode == "channel_rows":  # [B*C, N, D] -> [B*C, H] -> [B, H, C]
            y = self.proj(x.flatten(1)).view(-1, self.variates, self.horizon).transpose(1, 2)
        elif self.mode == "channel_blocks":  # [B, C, N*D] -> [B, C, H] -> [B, H, C]
            y = self.proj(x.reshape(b, self.variates, -1)).transpose(1, 2)
        elif self.mode == "per_variate":
            y = self.proj(x).transpose(1, 2)  # [B, C, H] -> [B, H, C]
        else:
            y = self.proj(pool(x, padding_mask, "mean")).view(b, self.horizon, self.variates)
        if state is not None:
            y = state.denormalize(y)
        return y
