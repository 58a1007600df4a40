"""Edge-level head: class logits for every ordered pair of graph nodes (node-level heads
are the per-token ``token_classify`` / ``token_regress``; graph-level ones the pooled
``classify`` / ``regress``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt
from torch import nn

from anyformer.components.attention.graph import DWIVEDI
from anyformer.components.heads.base import Head
from anyformer.components.heads.linear import n_outputs
from anyformer.registry import Capabilities, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


class EdgeClassifyParams(BaseModel):
    """``hidden``: width of the pair MLP's hidden layer (0: ``d_model``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: NonNegativeInt = 0


@register(
    "head",
    "edge_classify",
    paper=DWIVEDI,
    summary="edge-level logits [B, T, T, n_outputs] for every ordered pair of node tokens: "
    "an MLP of the pair's two final states",
    params=EdgeClassifyParams,
    caps=Capabilities(complexity="O(n^2)"),
)
class EdgeClassifyHead(Head):
    """``out[b, i, j] = W_2 ReLU(W_s h_i + W_t h_j + b_1) + b_2``: an MLP of the pair of
    final node states ``[h_i ; h_j]`` (computed without building the pairs' concatenation:
    ``W_1 [h_i ; h_j] = W_s h_i + W_t h_j``), the edge predictor of Dwivedi & Bresson's
    edge-level tasks (there on ``[h_i ; h_j]``, as here). Pairs that touch a padded node
    (``padding_mask`` False) are 0. A task asks for it with ``head: edge_classify``
    and gives ``targets`` and ``loss_mask`` ``[B, T, T]`` (the pairs to score)."""

    #: outputs carry a pair axis: ``[B, T, T, ...]`` (the head contract slices both)
    pairwise: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, params: EdgeClassifyParams) -> None:
        super().__init__()
        d = spec.d_model
        hidden = params.hidden or d
        self.source = nn.Linear(d, hidden)  # W_s and b_1 (the row node i)
        self.target = nn.Linear(d, hidden, bias=False)  # W_t (the column node j)
        self.out = nn.Linear(hidden, n_outputs(spec, "edge_classify"))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self.source(x)[:, :, None, :] + self.target(x)[:, None, :, :]
        logits = self.out(torch.relu(z))
        if padding_mask is not None:
            real = padding_mask.bool()
            logits = logits * (real[:, :, None] & real[:, None, :])[..., None].to(logits.dtype)
        return logits
