"""Message-passing mixers over graph node tokens: the GPS layer (local message passing in
parallel with global attention) and an MPNN with a virtual node.

Both run on padded batches: node states ``x [B, N, D]`` with ``ctx.padding_mask`` and
``ctx.adjacency``; inside, the real nodes and the edges are converted to PyTorch
Geometric's sparse form (:func:`~anyformer.nn.graph_ops.context_sparse_graph`: the real
nodes stacked row-major, ``edge_index`` from the adjacency; the conversion is computed
once per forward pass and shared by the layers), PyG's convolution runs on it, and the
result is scattered back to ``[B, N, D]`` (zeros at padded nodes). Edge states
(``ctx.edges``, the model's embedding of the task's edge features) are gathered per edge;
without them every edge carries zeros. PyTorch Geometric is imported when a mixer is
built (an optional dependency).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.attention.common import attend, merge_heads
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.nn.graph_ops import SparseGraph, context_sparse_graph
from anyformer.registry import Capabilities, Dims, Paper, register

GPS = Paper("Recipe for a General, Powerful, Scalable Graph Transformer", 2022, "Rampášek et al.")
MPNN_VN = Paper("On the Connection Between MPNN and Graph Transformer", 2023, "Cai et al.")


def graph_of(ctx: Context, name: str) -> SparseGraph:
    """The sparse view of the context's graphs; a ValueError naming ``ctx.adjacency``
    when the context carries none."""
    if ctx.adjacency is None:
        raise ValueError(
            f"{name} passes messages along a graph's edges and needs ctx.adjacency "
            f"[B, T, T]: give the model a graph task's batches (extras['adjacency'])"
        )
    return context_sparse_graph(ctx)


def edge_states(ctx: Context, graph: SparseGraph, d: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_edges, d]``: ``ctx.edges`` at each edge of ``graph`` (zeros without edges)."""
    if ctx.edges is None:
        return like.new_zeros(graph.edge_index.shape[1], d)
    return graph.edges(ctx.edges)


def gin_mlp(d: int) -> nn.Sequential:
    """GIN's update network as GraphGPS builds it: ``Linear(d, d) -> ReLU -> Linear(d, d)``."""
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))


def local_conv(kind: str, d: int) -> nn.Module:
    """PyG's message-passing layer ``kind`` at width ``d``: ``gine`` (``GINEConv`` over
    :func:`gin_mlp`, Hu et al. 2020), ``gin`` (``GINConv``, Xu et al. 2019; edge states
    unused) or ``gatedgcn`` (``ResGatedGraphConv`` with edge states in its gates;
    Bresson & Laurent 2017)."""
    from torch_geometric.nn import GINConv, GINEConv, ResGatedGraphConv

    if kind == "gine":
        return GINEConv(gin_mlp(d))
    if kind == "gin":
        return GINConv(gin_mlp(d))
    return ResGatedGraphConv(d, d, edge_dim=d)


def run_conv(conv: nn.Module, h: torch.Tensor, g: SparseGraph, e: torch.Tensor) -> torch.Tensor:
    """``conv`` on stacked node rows ``h`` with ``g``'s edges (edge states ``e`` for the
    convolutions that read them)."""
    from torch_geometric.nn import GINConv

    if isinstance(conv, GINConv):
        return conv(h, g.edge_index)
    return conv(h, g.edge_index, e)


class GPSParams(BaseModel):
    """``local``: the message-passing block (``gine``: PyG's ``GINEConv``, GraphGPS's
    default; ``gatedgcn``: PyG's ``ResGatedGraphConv`` with edge gates);
    ``global_attention``: the global multi-head attention branch (off: the local block
    alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local: Literal["gine", "gatedgcn"] = "gine"
    global_attention: bool = True


@register(
    "attention",
    "gps",
    paper=GPS,
    summary="GraphGPS layer: a PyG message-passing block (GINE or GatedGCN) along the "
    "graph's edges plus global multi-head attention over all real nodes, summed",
    params=GPSParams,
    caps=Capabilities(
        causal_safe=False, position_modes=("none", "embed"), complexity="O(n^2)", graph=True
    ),
)
class GPSLayer(QKVHeads):
    """``y = MPNN(x, E) + Attn(x)``: ``MPNN`` is PyG's ``GINEConv`` (or
    ``ResGatedGraphConv``) on the real nodes and edges (edge states from ``ctx.edges``),
    ``Attn`` softmax attention over every real node (the key-padding mask hides padded
    ones; fused SDPA). The block around it adds the residual, the norm and the FFN.

    Versus GraphGPS / PyG's ``GPSConv``, which computes ``N1(x + MPNN(x)) + N2(x +
    Attn(x))`` and then ``N3(h + MLP(h))``: here the residual ``x`` is added once by the
    block (the layer's output is the two branches' sum), and each branch has no norm of
    its own (the block's norm follows, e.g. ``norm_placement=post`` with
    ``norm=batchnorm``). With those norms off, ``GPSConv(x) = 2x + MPNN(x) + Attn(x)``
    before its MLP, so ``gps(x) = GPSConv(x) - 2x`` when the weights are copied (tested).
    Paper: "Recipe for a General, Powerful, Scalable Graph Transformer", Rampášek et al.,
    2022.
    """

    def __init__(self, dims: Dims, params: GPSParams) -> None:
        super().__init__(dims)
        self.d_model = dims.d_model
        self.local = local_conv(params.local, dims.d_model)
        self.global_attention = params.global_attention

    def local_part(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``MPNN(x, E)`` as ``[B, T, D]`` (zeros at padded nodes)."""
        g = graph_of(ctx, "gps")
        h = g.nodes(x)
        return g.to_dense(run_conv(self.local, h, g, edge_states(ctx, g, self.d_model, h)))

    def global_part(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Multi-head softmax attention of every node over the real nodes."""
        q, k, v = self.project(x)
        y = attend(q, k, v, ctx, "fast", self.dropout, self.training)
        return self.out(merge_heads(y))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.local_part(x, ctx)
        if self.global_attention:
            y = y + self.global_part(x, ctx)
        return y


class MPNNVNParams(BaseModel):
    """``conv``: the message passing (``gine``: PyG's ``GINEConv`` with edge states;
    ``gin``: ``GINConv``, no edge states); ``pool``: how the virtual node aggregates the
    real nodes (``mean`` or ``sum``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv: Literal["gine", "gin"] = "gine"
    pool: Literal["mean", "sum"] = "mean"


@register(
    "attention",
    "mpnn_vn",
    paper=MPNN_VN,
    summary="MPNN + virtual node: a node aggregating all real nodes (MLP of their mean or "
    "sum) broadcast back to each before GIN/GINE message passing (PyG)",
    params=MPNNVNParams,
    caps=Capabilities(
        causal_safe=False, position_modes=("none", "embed"), complexity="O(n)", graph=True
    ),
)
class MPNNVirtualNode(nn.Module):
    """``v = MLP(pool_j x_j)`` over the real nodes of each graph (the virtual node),
    ``y = GINE(x + v, E)`` on the real nodes: every node receives the virtual node's
    message, then its neighbours' (the virtual node joined to every node, as OGB's
    GIN-VN). The virtual node is recomputed from the node states in each layer (no
    state of its own across layers). Linear in the number of nodes and edges; the claim
    of Cai et al. is that this approximates (linear) global attention.
    Paper: "On the Connection Between MPNN and Graph Transformer", Cai et al., 2023.
    """

    def __init__(self, dims: Dims, params: MPNNVNParams) -> None:
        super().__init__()
        self.d_model = dims.d_model
        self.pool = params.pool
        self.virtual = gin_mlp(dims.d_model)
        self.conv = local_conv(params.conv, dims.d_model)

    def virtual_node(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``[B, D]``: the virtual node of each graph, ``MLP(pool over its real nodes)``."""
        if ctx.padding_mask is None:
            pooled = x.sum(1) if self.pool == "sum" else x.mean(1)
        else:
            m = ctx.padding_mask.to(x.dtype)[..., None]
            pooled = (x * m).sum(1)
            if self.pool == "mean":
                pooled = pooled / m.sum(1).clamp(min=1)
        return self.virtual(pooled)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        g = graph_of(ctx, "mpnn_vn")
        v = self.virtual_node(x, ctx)
        h = g.nodes(x) + v.index_select(0, g.batch)
        return g.to_dense(run_conv(self.conv, h, g, edge_states(ctx, g, self.d_model, h)))


def copy_gps_weights(layer: GPSLayer, gps_conv: Any) -> None:
    """Copy PyG ``GPSConv``'s local convolution and ``nn.MultiheadAttention`` weights into
    ``layer`` (same width and heads; the MHA's ``in_proj`` rows are the queries, keys and
    values, each split into heads of ``d_head`` consecutive rows, the layout of ``qkv``)."""
    with torch.no_grad():
        layer.local.load_state_dict(gps_conv.conv.state_dict())
        attn = gps_conv.attn
        layer.qkv.weight.copy_(attn.in_proj_weight)
        layer.qkv.bias.copy_(attn.in_proj_bias)
        layer.out.weight.copy_(attn.out_proj.weight)
        layer.out.bias.copy_(attn.out_proj.bias)


__all__ = ["GPSLayer", "MPNNVirtualNode", "copy_gps_weights", "graph_of"]
