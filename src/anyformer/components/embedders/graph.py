"""Graph node tokens: node features plus optional Laplacian and random-walk encodings."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt
from torch import nn

from anyformer.components.attention.graph import DWIVEDI
from anyformer.components.embedders.base import Embedder
from anyformer.registry import Capabilities, register


class GraphNodesParams(BaseModel):
    """The columns of a node's input vector ``[features | lap_pe | rwse]`` (a graph task
    fills ``lap_pe`` and ``rwse`` with what its batches carry; ``input_dim`` is the
    total); ``sign_flip``: flip each Laplacian eigenvector's sign at random per graph in
    training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lap_pe: NonNegativeInt = 0
    rwse: NonNegativeInt = 0
    sign_flip: bool = True


def flip_signs(pe: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``pe [B, T, k]`` with every column of every row (graph) multiplied by an
    independent random sign: an eigenvector's sign is arbitrary, so a model trained on
    random signs learns to ignore it (Dwivedi & Bresson, 2020)."""
    b, _, k = pe.shape
    signs = torch.randint(0, 2, (b, 1, k), generator=generator, device=pe.device) * 2 - 1
    return pe * signs.to(pe.dtype)


@register(
    "embedder",
    "graph_nodes",
    paper=DWIVEDI,
    summary="one token per graph node: features -> d_model, plus linear maps of its "
    "Laplacian eigenvector PE (random sign flips in training) and random-walk SE",
    params=GraphNodesParams,
    caps=Capabilities(input_kind="vectors", complexity="O(n)", graph=True),
)
class GraphNodes(Embedder):
    """``inputs [B, T, input_dim]``, one row per node (padded nodes anywhere, hidden by
    the batch's ``padding_mask``), laid out ``[features | lap_pe | rwse]``: the token is
    ``W_x x + W_pe (s * pe) + W_rw rw`` with ``s`` a random sign per eigenvector and
    graph in training (1 in evaluation). The encodings are computed by the task with
    PyTorch Geometric's ``AddLaplacianEigenvectorPE`` and ``AddRandomWalkPE``; the
    batch's ``extras['adjacency']`` reaches the mixers as ``Context.adjacency``.
    Paper: "A Generalization of Transformer Networks to Graphs", Dwivedi & Bresson, 2020.
    """

    def __init__(self, spec: Any, params: GraphNodesParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        self.n_pe, self.n_rw, self.sign_flip = params.lap_pe, params.rwse, params.sign_flip
        n_x = spec.input_dim - self.n_pe - self.n_rw
        self.n_x = n_x
        self.features = nn.Linear(n_x, spec.d_model)
        self.lap_pe = nn.Linear(self.n_pe, spec.d_model, bias=False) if self.n_pe else None
        self.rwse = nn.Linear(self.n_rw, spec.d_model, bias=False) if self.n_rw else None

    @classmethod
    def check(cls, params: Any, spec: Any) -> str | None:
        dim = getattr(spec, "input_dim", None)
        if dim is None:
            return "embedder graph_nodes needs model.input_dim (a graph task fills it)"
        if dim - params.lap_pe - params.rwse < 1:
            return (
                f"model.input_dim={dim} leaves no node feature columns besides "
                f"lap_pe={params.lap_pe} and rwse={params.rwse}"
            )
        return None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[..., : self.n_x]
        out = self.features(x)
        if self.lap_pe is not None:
            pe = inputs[..., self.n_x : self.n_x + self.n_pe]
            if self.training and self.sign_flip:
                pe = flip_signs(pe)
            out = out + self.lap_pe(pe)
        if self.rwse is not None:
            out = out + self.rwse(inputs[..., self.n_x + self.n_pe :])
        return out
