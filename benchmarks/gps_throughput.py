"""A GPS layer's forward + backward: anyformer's ``gps`` block against PyTorch
Geometric's ``GPSConv``, in one process, on the same batches of graphs.

Configuration (both sides): width ``--d``, ``--heads`` attention heads, the local model
PyG's ``GINEConv`` over ``Linear -> ReLU -> Linear``, global multi-head softmax
attention over the nodes of each graph, an MLP ``d -> 2d -> d`` with ReLU, BatchNorm,
no dropout. The batches: ``--batch`` random undirected graphs (Erdős–Rényi, edge
probability ``--p``) of 20..40 nodes, with edge states of width ``d``.

- anyformer: one block of ``attention=gps, norm=batchnorm, norm_placement=post,
  ffn=mlp(relu, mult 2)``: ``h = BN(x + GINE(x, E) + Attn(x))``, ``y = BN(h + MLP(h))``,
  on the padded batch the graph tasks produce (``x [B, N, d]``, ``padding_mask``,
  adjacency ``[B, N, N]``, edge states ``[B, N, N, d]``); the layer converts to PyG's
  sparse form inside (:func:`anyformer.nn.graph_ops.sparse_graph`, timed: it runs in
  every forward) and its BatchNorm counts real nodes only.
- PyG: ``GPSConv(d, GINEConv(...), heads, norm='batch_norm')``:
  ``h = BN1(x + GINE(x, E)) + BN2(x + Attn(x))``, ``y = BN3(h + MLP(h))`` on the sparse
  batch (``x [n_nodes, d]``, ``edge_index``, ``batch``, ``edge_attr [n_edges, d]``; its
  attention pads with ``to_dense_batch`` inside, timed).

So the two layers do the same matrix products; GPSConv has one BatchNorm more and sums
two residual branches where the anyformer block adds one (see the ``gps`` docstring).
The record also checks numerical equivalence where it is exact: with norms off and the
MLP zeroed, ``GPSConv(x) - 2x`` equals anyformer's ``gps`` mixer with GPSConv's weights
copied (``max_abs_diff``). A step is forward, the sum of squared outputs over the real
nodes, backward (parameter gradients and the node states'); no optimiser.

Timed with :func:`anyformer.training.cost.interleaved_speed` (warm-up, rounds rotating
the order); reported: nodes/s per side (median over rounds) and the ratio anyformer /
PyG (median of per-round ratios, with min and max). Target >= 1.0.

    python benchmarks/gps_throughput.py              # writes results/gps_throughput-<date>.json
    python benchmarks/gps_throughput.py --quick      # smoke run (tiny, nothing written)
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def random_graphs(batch: int, lo: int, hi: int, p: float, d: int, seed: int) -> list[Any]:
    """``batch`` Erdős–Rényi graphs of ``lo..hi`` nodes (both edge directions), node
    states ``[n, d]`` and edge states ``[n_edges, d]`` (equal in both directions)."""
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(batch):
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        src, dst = (torch.rand(n, n, generator=g) < p).triu(1).nonzero().T  # i < j
        half = torch.randn(src.numel(), d, generator=g)
        graphs.append(
            Data(
                x=torch.randn(n, d, generator=g),
                edge_index=torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1),
                edge_attr=torch.cat([half, half]),
                num_nodes=n,
            )
        )
    return graphs


def dense_inputs(graphs: list[Any]) -> dict[str, torch.Tensor]:
    """The padded form a graph task hands the model: node states, mask, adjacency
    (``[b, i, j]``: edge j -> i) and dense edge states."""
    from torch_geometric.data import Batch
    from torch_geometric.utils import to_dense_adj, to_dense_batch

    b = Batch.from_data_list(graphs)
    x, mask = to_dense_batch(b.x, b.batch)
    n = x.shape[1]
    adj = to_dense_adj(b.edge_index, b.batch, max_num_nodes=n).transpose(1, 2) > 0
    edges = to_dense_adj(b.edge_index, b.batch, b.edge_attr, max_num_nodes=n).transpose(1, 2)
    return {"x": x, "mask": mask, "adjacency": adj, "edges": edges.contiguous()}


def anyformer_block(d: int, heads: int) -> nn.Module:
    """One anyformer block: gps mixer (GINE + attention), masked BatchNorm, post layout,
    MLP ``d -> 2d -> d`` with ReLU."""
    from anyformer.model.transformer import build_block
    from anyformer.spec import ModelSpec

    spec = ModelSpec(
        kind="encoder",
        embedder={"name": "graph_nodes"},
        input_dim=d,
        attention={"name": "gps", "local": "gine"},
        norm="batchnorm",
        norm_placement="post",
        ffn={"name": "mlp", "activation": "relu", "mult": 2.0},
        position="none",
        d_model=d,
        n_heads=heads,
        n_layers=1,
        max_len=64,
    )
    return build_block(spec, 0)


def pyg_layer(d: int, heads: int, norm: str | None = "batch_norm") -> nn.Module:
    from torch_geometric.nn import GINEConv, GPSConv

    from anyformer.components.attention.message_passing import gin_mlp

    return GPSConv(d, GINEConv(gin_mlp(d)), heads=heads, dropout=0.0, norm=norm)


def anyformer_stepper(block: nn.Module, dense: dict[str, torch.Tensor], heads: int) -> Callable:
    from anyformer.components.base import Context
    from anyformer.nn.graph_ops import token_mask_scope
    from anyformer.registry import Dims, get

    x = dense["x"].clone().requires_grad_(True)
    mask, adj, edges = dense["mask"], dense["adjacency"], dense["edges"]
    n = x.shape[1]
    position = get("position", "none").build(
        None, Dims(d_model=x.shape[-1], n_heads=heads, causal=False, max_len=n)
    )
    nodes = int(mask.sum())

    def step(_: int) -> tuple[int, float]:
        ctx = Context(torch.arange(n), False, position, mask, adjacency=adj, edges=edges)
        with token_mask_scope(mask):
            y = block(x, ctx)
        y[mask].square().sum().backward()
        block.zero_grad(set_to_none=True)
        x.grad = None
        return nodes, 0.0

    return step


def pyg_stepper(layer: nn.Module, graphs: list[Any]) -> Callable:
    from torch_geometric.data import Batch

    b = Batch.from_data_list(graphs)
    x = b.x.clone().requires_grad_(True)
    edge_index, batch, edge_attr = b.edge_index, b.batch, b.edge_attr

    def step(_: int) -> tuple[int, float]:
        y = layer(x, edge_index, batch, edge_attr=edge_attr)
        y.square().sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        return int(x.shape[0]), 0.0

    return step


def equivalence(graphs: list[Any], d: int, heads: int) -> float:
    """Max |gps mixer - (GPSConv - 2x)| with GPSConv's weights copied, its norms off and
    its MLP zeroed (the exact correspondence; see the ``gps`` docstring)."""
    from torch_geometric.data import Batch

    from anyformer.components.attention.message_passing import copy_gps_weights
    from anyformer.components.base import Context
    from anyformer.registry import Dims, get

    torch.manual_seed(0)
    conv = pyg_layer(d, heads, norm=None).eval()
    with torch.no_grad():
        conv.mlp[-2].weight.zero_()
        conv.mlp[-2].bias.zero_()
    dims = Dims(d_model=d, n_heads=heads, causal=False, max_len=64)
    entry = get("attention", "gps")
    mixer = entry.build(entry.make_params(), dims).eval()
    copy_gps_weights(mixer, conv)
    b = Batch.from_data_list(graphs)
    dense = dense_inputs(graphs)
    n = dense["x"].shape[1]
    ctx = Context(torch.arange(n), False, get("position", "none").build(None, dims),
                  dense["mask"], adjacency=dense["adjacency"], edges=dense["edges"])  # fmt: skip
    with torch.no_grad():
        want = conv(b.x, b.edge_index, b.batch, edge_attr=b.edge_attr) - 2 * b.x
        got = mixer(dense["x"], ctx)[dense["mask"]]
    return float((got - want).abs().max())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict:
    from anyformer.training.cost import interleaved_speed

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nodes", default="20,40", help="smallest,largest graph")
    parser.add_argument("--p", type=float, default=0.15, help="edge probability")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=12, help="rounded up to a multiple of 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.nodes.split(","))
    if args.quick:
        args.d, args.batch, args.steps, args.rounds, lo, hi = 16, 4, 1, 1, 4, 8
    graphs = random_graphs(args.batch, lo, hi, args.p, args.d, seed=0)
    torch.manual_seed(0)
    ours, theirs = (
        anyformer_block(args.d, args.heads).train(),
        pyg_layer(args.d, args.heads).train(),
    )
    steppers = {
        "anyformer": anyformer_stepper(ours, dense_inputs(graphs), args.heads),
        "pyg": pyg_stepper(theirs, graphs),
    }
    speeds = interleaved_speed(steppers, args.rounds, args.steps)
    per_round = {k: v["rounds_tokens_per_s"] for k, v in speeds.items()}
    ratios = [a / b for a, b in zip(per_round["anyformer"], per_round["pyg"], strict=True)]
    median = {k: statistics.median(v) for k, v in per_round.items()}
    n_nodes = sum(g.num_nodes for g in graphs)
    n_edges = sum(g.edge_index.shape[1] for g in graphs)
    record = {
        **benchmark_environment(args.threads, ("torch_geometric",)),
        "config": {
            "d": args.d,
            "heads": args.heads,
            "batch": args.batch,
            "nodes": [lo, hi],
            "p": args.p,
            "local": "GINEConv",
            "n_nodes": n_nodes,
            "n_edges": n_edges,
        },  # fmt: skip
        "params": {"anyformer": n_params(ours), "pyg": n_params(theirs)},
        "rounds": len(per_round["pyg"]),
        "steps": args.steps,
        "nodes_per_s": median,
        "rounds_nodes_per_s": per_round,
        "ratio_anyformer_vs_pyg": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "max_abs_diff_vs_gpsconv": equivalence(graphs[:8], args.d, args.heads),
    }
    print(f"threads {args.threads}; {args.batch} graphs of {lo}-{hi} nodes ({n_nodes} nodes, "
          f"{n_edges} directed edges); d={args.d}, heads={args.heads}")  # fmt: skip
    print(f"params: anyformer {record['params']['anyformer']:,}, pyg {record['params']['pyg']:,}")
    print(f"nodes/s (fwd+bwd): anyformer {median['anyformer']:,.0f}, pyg {median['pyg']:,.0f}; "
          f"ratio {record['ratio_anyformer_vs_pyg']:.2f} (spread {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    print(
        f"max |gps - (GPSConv - 2x)| with copied weights: {record['max_abs_diff_vs_gpsconv']:.2e}"
    )
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'gps_throughput')}")
    return record


if __name__ == "__main__":
    main()
