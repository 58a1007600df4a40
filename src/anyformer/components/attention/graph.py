"""Adjacency-masked attention over graph node tokens (Dwivedi & Bresson's Graph
Transformer layer), with the paper's edge features and edge stream."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.attention.common import (
    key_mask,
    masked_bias,
    merge_heads,
    reference_attention,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.nn.graph_ops import masked_batch_norm
from anyformer.nn.masks import combine_masks
from anyformer.registry import Capabilities, Dims, Paper, register

DWIVEDI = Paper("A Generalization of Transformer Networks to Graphs", 2020, "Dwivedi & Bresson")


class GraphAttentionParams(BaseModel):
    """``self_loops``: a node also attends to itself (``N(i) ∪ {i}``; without it an
    isolated node attends to nothing and outputs zeros). ``edge_features``: when the
    context carries edge states (``ctx.edges``, a graph task with edge features), use
    them as the paper's edge-featured layer does (each score multiplied by the edge's
    embedding, per head and channel) and update them (the edge stream); ``False``:
    ignore them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    self_loops: bool = True
    edge_features: bool = True


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis whose batch statistics count only the positions of a
    mask (:func:`~anyformer.nn.graph_ops.masked_batch_norm`): the edge stream's norm
    over the real edges of a batch of graphs."""

    def __init__(self, d: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return masked_batch_norm(
            x, mask, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip


class EdgeStream(nn.Module):
    """The edge half of Dwivedi & Bresson's layer with edge features:
    ``e' = BN(e + O_e w)``, ``e'' = BN(e' + FFN(e'))`` over the real edges, where ``w``
    ``[B, T, T, H * d_head]`` are the per-head, per-channel scores before their sum
    (``FFN``: ``d -> 2d -> d`` with ReLU, as the paper)."""

    def __init__(self, d: int, bias: bool = True) -> None:
        super().__init__()
        self.out = nn.Linear(d, d, bias=bias)
        self.norm1 = MaskedBatchNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm2 = MaskedBatchNorm(d)

    def forward(self, e: torch.Tensor, w: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        e = self.norm1(e + self.out(w), real)
        return self.norm2(e + self.ffn(e), real)


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
    "(ctx.adjacency), scores multiplied by edge embeddings with an edge stream when the "
    "graph has edge features; pair with norm=batchnorm and a Laplacian PE as the paper",
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
    validation refuses it without a graph embedder.

    With edge features (``ctx.edges`` ``[B, T, T, D]``, ``edge_features``), the paper's
    full layer: the score of head ``h`` is ``sum_c (q_ic k_jc / sqrt(d_head)) E_ijc``
    over the head's channels ``c``, ``E = W_E e_ij`` (``w_ijc``, the per-channel
    products, before the sum), softmax over the neighbours as above; and the edge
    stream ``e_ij <- BN(e + O_e w_ij)``, ``BN(e + FFN(e))`` (:class:`EdgeStream`, BatchNorm
    over the real edges and self-loops only) is handed to the next layer through
    ``ctx.set_edges``. Not done: the paper's clamp of the scores to [-5, 5] before the
    exponential (the masked softmax here is stable without it). Packed rows of graphs
    (``ctx.segments``, the adjacency block-diagonal per row) keep every graph to itself,
    so packed outputs equal padded ones.
    Paper: "A Generalization of Transformer Networks to Graphs", Dwivedi & Bresson, 2020.
    """

    def __init__(self, dims: Dims, params: GraphAttentionParams) -> None:
        super().__init__(dims)
        self.self_loops = params.self_loops
        self.use_edges = params.edge_features
        if params.edge_features:
            self.edge_proj = nn.Linear(dims.d_model, dims.n_heads * dims.d_head, bias=dims.bias)
            self.edge_stream = EdgeStream(dims.d_model, dims.bias)

    def edge_scores(self, q: torch.Tensor, k: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``w [B, H, T, T, d_head]``: ``q_ic k_jc / sqrt(d_head) * (W_E e_ij)_c`` per head."""
        b, h, t, d = q.shape
        e = self.edge_proj(edges).unflatten(-1, (h, d)).permute(0, 3, 1, 2, 4)
        return q[:, :, :, None, :] * k[:, :, None, :, :] * (e / math.sqrt(d))

    def scores(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The masked scores ``[B, H, T, T]`` and, with edge features, ``w``
        (:meth:`edge_scores`)."""
        q, k, _ = self.project(x)
        bias = masked_bias(None, neighbour_mask(ctx, self.self_loops), q.dtype)
        if self.use_edges and ctx.edges is not None:
            w = self.edge_scores(q, k, ctx.edges)
            return w.sum(-1) + bias, w
        return q @ k.transpose(-1, -2) / self.d_head**0.5 + bias, None

    def weights(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The attention weights ``[B, H, T, T]`` (rows of real nodes sum to 1)."""
        return self.scores(x, ctx)[0].softmax(-1)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        allowed = neighbour_mask(ctx, self.self_loops)
        bias = masked_bias(None, allowed, q.dtype)
        if self.use_edges and ctx.edges is not None:
            w = self.edge_scores(q, k, ctx.edges)
            probs = (w.sum(-1) + bias).softmax(-1)
            if self.dropout and self.training:
                probs = torch.nn.functional.dropout(probs, self.dropout)
            y = probs @ v
            real = allowed[:, 0]  # [B, T, T]: edges (and self-loops) between real nodes
            ctx.set_edges(self.edge_stream(ctx.edges, w.permute(0, 2, 3, 1, 4).flatten(-2), real))
        else:
            y = reference_attention(q, k, v, bias, self.dropout, self.training)
        # a query with no allowed key (an isolated node without self-loops, a padded node)
        # would average every key uniformly: give it zeros instead
        y = y * allowed.any(-1, keepdim=True).to(y.dtype)
        return self.out(merge_heads(y))
