"""The forecasting head: tokens to a forecast ``[B, horizon, variates]``.

``horizon`` is ``model.n_outputs`` and ``variates`` is ``model.input_shape[1]`` (the
series ``[lookback, variates]`` a series embedder reads; 1 for other embedders). How it
reads the tokens follows the embedder's ``readout``:

- ``flatten`` (``points``, ``patches_1d``): all ``T`` tokens of a row flattened and one
  linear map ``T * d_model -> horizon * variates`` (PatchTST's flatten head, Nie et al.,
  2023; ``patches_1d``'s channel blocks each map to their own variate's ``horizon``
  values by one map shared by the variates, as PatchTST's channel-independent head);
- ``per_variate`` (``variates``): token c, variate c's state, by one linear map
  ``d_model -> horizon`` (iTransformer's projection, Liu et al., 2024);
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
        self.mode = embedder.readout if shape is not None else "pool"
        d = spec.d_model
        if self.mode == "flatten":
            self.tokens = spec.token_layout.length
            blocks = 1 if spec.embedder_ref.name == "points" else self.variates
            self.blocks = blocks  # patches_1d: one block of tokens per variate
            per_block = self.tokens // blocks
            out = self.horizon * (self.variates if blocks == 1 else 1)
            self.proj = nn.Linear(per_block * d, out)
        elif self.mode == "per_variate":
            self.proj = nn.Linear(d, self.horizon)
        else:
            self.proj = nn.Linear(d, self.horizon * self.variates)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: Any = None
    ) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "flatten" and self.blocks == 1:
            y = self.proj(x.flatten(1)).view(b, self.horizon, self.variates)
        elif self.mode == "flatten":  # channel blocks: [B, C, N*D] -> [B, C, H]
            y = self.proj(x.reshape(b, self.blocks, -1)).transpose(1, 2)
        elif self.mode == "per_variate":
            y = self.proj(x).transpose(1, 2)  # [B, C, H] -> [B, H, C]
        else:
            y = self.proj(pool(x, padding_mask, "mean")).view(b, self.horizon, self.variates)
        if state is not None:
            y = state.denormalize(y)
        return y
