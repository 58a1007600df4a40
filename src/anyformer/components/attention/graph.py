"""Adjacency-masked attention over graph node tokens (Dwivedi & Bresson's Graph
Transformer layer)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from anyformer.components.attention.common import (
    key_mask,
    masked_bias,
    merge_heads,
    reference_attention,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.nn.masks import combine_masks
from anyformer.registry import Capabilities, Dims, Paper, register

DWIVEDI = Paper("A Generalization of Transformer Networks to Graphs", 2020, "Dwivedi & Bresson")


class GraphAttentionParams(BaseModel):
    """``self_loops``: a node also attends to itself (``N(i) ∪ {i}``; without it an
    isolated node attends to nothing and outputs zeros)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    self_loops: bool = True


def neighbour_mask(ctx: Context, self_loops: bool) -> torch.Tensor:
    """``[B, 1, T, T]`` bool: query node i may see key node j iff ``ctx.adjacency[b, i, j]``
    (or ``i == j`` with ``self_loops``) and j is a real (unpadded) node."""
    adj = ctx.adjacency
    if adj is None:
        raise ValueError(
            "graph_attention attends along a graph's edges and needs ctx.adjacency "
            "[B, T, T]: give the model a graph task's batches (extras['adjacency'])"
        )
    allowed = adj.bool()
    if self_loops:
        eye = torch.eye(adj.shape[-1], dtype=torch.bool, device=adj.device)
        allowed = allowed | eye
    return combine_masks(allowed[:, None], key_mask(ctx))


@register(
    "attention",
    "graph_attention",
    paper=DWIVEDI,
    summary="multi-head softmax attention restricted to each node's graph neighbours "
    "(ctx.adjacency); pair with norm=batch_norm and a Laplacian PE as the paper does",
    params=GraphAttentionParams,
    caps=Capabilities(
        causal_safe=False,
        position_modes=("none", "embed"),
        complexity="O(n^2)",
        graph=True,
        packing=True,
    ),
)
class GraphAttention(QKVHeads):
    """``softmax(Q K^T / sqrt(d_head) + M) V`` per head, then an output projection, where
    ``M`` is 0 on the edges of the graph (``ctx.adjacency``, plus self-loops) between real
    nodes and very negative elsewhere, so a node gives exactly zero weight to every
    non-neighbour (the exponential underflows to 0). Encoders over graph node tokens only:
    validation refuses it without a graph embedder; edge features are not used. Packed
    rows of graphs (``ctx.segments``, the adjacency block-diagonal per row) keep every
    graph to itself, so packed outputs equal padded ones.
    Paper: "A Generalization of Transformer Networks to Graphs", Dwivedi & Bresson, 2020.
    """

    def __init__(self, dims: Dims, params: GraphAttentionParams) -> None:
        super().__init__(dims)
        self.self_loops = params.self_loops

    def weights(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The attention weights ``[B, H, T, T]`` (rows of real nodes sum to 1)."""
        q, k, _ = self.project(x)
        bias = masked_bias(None, neighbour_mask(ctx, self.self_loops), q.dtype)
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5 + bias
        return scores.softmax(-1)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        allowed = neighbour_mask(ctx, self.self_loops)
        bias = masked_bias(None, allowed, q.dtype)
        y = reference_attention(q, k, v, bias, self.dropout, self.training)
        # a query with no allowed key (an isolated node without self-loops, a padded node)
        # would average every key uniformly: give it zeros instead
        y = y * allowed.any(-1, keepdim=True).to(y.dtype)
        return self.out(merge_heads(y))
