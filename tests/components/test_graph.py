"""Graph inputs: the graph_nodes embedder, graph_attention and the graph_atlas task."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from anyformer.components.attention.graph import GraphAttention, GraphAttentionParams
from anyformer.components.base import Context
from anyformer.components.embedders.graph import flip_signs
from anyformer.errors import SpecError
from anyformer.model import build_model
from anyformer.registry import Dims, get
from anyformer.spec import ModelSpec, parse
from anyformer.tasks.graph_atlas import (
    GraphAtlas,
    GraphAtlasParams,
    atlas_graphs,
    dense_batch,
    dense_edge_attr,
)
from anyformer.tasks.packing import model_inputs


def _projector(a: torch.Tensor) -> torch.Tensor:
    return a @ torch.linalg.pinv(a)


def test_lap_pe_sign_flips_leave_the_span_unchanged() -> None:
    graphs = atlas_graphs(4, 6, 0)
    pe = torch.stack([g.x[:, 7:11] for g in graphs if g.num_nodes == 7][:16]).double()
    g = torch.Generator().manual_seed(0)
    flipped = flip_signs(pe, g)
    assert not torch.equal(flipped, pe)
    ratio = flipped / torch.where(pe == 0, torch.ones_like(pe), pe)
    assert torch.all((ratio.abs() - 1).abs()[pe != 0] < 1e-12)  # every column is +-itself
    for a, b in zip(pe, flipped):
        torch.testing.assert_close(_projector(a), _projector(b))


def test_lap_pe_are_laplacian_eigenvectors() -> None:
    """The encodings PyG's transform wrote are eigenvectors of the normalised Laplacian."""
    data = atlas_graphs(4, 6, 0)[-1]
    a = nx.to_numpy_array(data.graph, nodelist=sorted(data.graph))
    d = a.sum(1) ** -0.5
    lap = np.eye(len(a)) - d[:, None] * a * d[None]
    pe = data.x[:, 7:11].double().numpy()
    for v in pe.T:
        lv = lap @ v
        lam = float(v @ lv)
        np.testing.assert_allclose(lv, lam * v, atol=1e-5)


def _graph_ctx(adj: torch.Tensor, mask: torch.Tensor | None = None) -> Context:
    t = adj.shape[-1]
    dims = Dims(d_model=16, n_heads=2, causal=False, max_len=t)
    return Context(torch.arange(t), False, get("position", "none").build(None, dims), mask,
                   adjacency=adj)  # fmt: skip


def test_graph_attention_gives_exactly_zero_weight_to_non_neighbours() -> None:
    torch.manual_seed(0)
    dims = Dims(d_model=16, n_heads=2, causal=False, max_len=6)
    mixer = GraphAttention(dims, GraphAttentionParams()).eval()
    adj = torch.zeros(2, 6, 6, dtype=torch.bool)
    for b, edges in enumerate([[(0, 1), (1, 2), (3, 4)], [(0, 5), (2, 3), (3, 4), (1, 4)]]):
        for i, j in edges:
            adj[b, i, j] = adj[b, j, i] = True
    x = torch.randn(2, 6, 16) * 5
    ctx = _graph_ctx(adj)
    w = mixer.weights(x, ctx)
    allowed = (adj | torch.eye(6, dtype=torch.bool))[:, None].expand_as(w)
    assert torch.all(w[~allowed] == 0)
    assert torch.all(w[allowed] > 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))
    # changing a node's input changes no output of a node it is not adjacent to
    y = mixer(x, ctx)
    x2 = x.clone()
    x2[0, 5] += 10.0  # node 5 of graph 0 is isolated
    y2 = mixer(x2, ctx)
    assert torch.equal(y[0, :5], y2[0, :5]) and torch.equal(y[1], y2[1])


def test_graph_attention_refuses_a_model_without_graph_inputs() -> None:
    with pytest.raises(SpecError, match="no graph node tokens"):
        parse(
            ModelSpec,
            dict(
                kind="encoder",
                vocab_size=10,
                attention="graph_attention",
                d_model=16,
                n_heads=2,
                head="token_classify",
                n_outputs=3,
            ),
        )
    dims = Dims(d_model=16, n_heads=2, causal=False, max_len=6)
    mixer = GraphAttention(dims, GraphAttentionParams())
    ctx = Context(torch.arange(6), False, get("position", "none").build(None, dims))
    with pytest.raises(ValueError, match="adjacency"):
        mixer(torch.randn(1, 6, 16), ctx)


@pytest.fixture(scope="module")
def task() -> GraphAtlas:
    return GraphAtlas(GraphAtlasParams(target="triangles", gin_steps=5), seed=0)


def test_atlas_splits_are_disjoint_and_split_by_size(task: GraphAtlas) -> None:
    rows = task.split_rows
    assert set(rows["train"]).isdisjoint(rows["id"])
    sizes = np.array([g.num_nodes for g in task.graphs])
    assert sizes[rows["ood"]].min() == 7 and len(rows["ood"]) == 1044
    assert sizes[np.concatenate([rows["train"], rows["id"]])].max() == 6
    assert len(rows["train"]) + len(rows["id"]) == 208


def test_atlas_batches_hold_each_graph(task: GraphAtlas) -> None:
    batch = task.make_eval_set("ood", 50)[0]
    for row, index in enumerate(batch.extras["graph"].tolist()):
        g = task.graphs[index].graph
        n = g.number_of_nodes()
        assert int(batch.padding_mask[row].sum()) == n
        adj = torch.from_numpy(nx.to_numpy_array(g, nodelist=sorted(g)) > 0)
        assert torch.equal(batch.extras["adjacency"][row, :n, :n], adj)
        assert not batch.extras["adjacency"][row, n:].any()
        assert int(batch.targets[row]) == sum(nx.triangles(g).values()) // 3


def test_padded_graphs_equal_each_graph_alone(task: GraphAtlas) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(kind="encoder", attention="graph_attention", position="none", d_model=16,
                     n_heads=2, n_layers=2, max_len=8, head="classify", n_outputs=36,
                     **{k: v for k, v in task.model_io().items() if k != "head" and
                        k != "n_outputs"})  # fmt: skip
    model = build_model(spec).eval()
    batch = task.make_eval_set("id", 12)[0]
    with torch.no_grad():
        together = model(batch.inputs, **model_inputs(batch))
        for row, index in enumerate(batch.extras["graph"].tolist()):
            inputs, mask, adj = dense_batch([task.graphs[index]])
            edges = dense_edge_attr([task.graphs[index]], inputs.shape[1])
            alone = model(inputs, mask, adjacency=adj, edge_attr=edges)
            torch.testing.assert_close(together[row], alone[0], rtol=1e-5, atol=1e-5)


def test_graph_quickstart_resolves_to_a_graph_transformer() -> None:
    from anyformer.lab.experiments import load_experiment
    from anyformer.lab.run import resolve

    spec = resolve(load_experiment("graph_quickstart"))
    model = spec.model
    assert model.embedder_ref.name == "graph_nodes" and model.attention.name == "graph_attention"
    assert model.embedder_ref.config.lap_pe == 4 and model.embedder_ref.config.rwse == 6
    assert model.input_dim == 7 + 4 + 6 and spec.train.threads == 2


@pytest.mark.slow
def test_graph_quickstart_learns_connectivity_beyond_the_majority_class(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """300 steps of the Graph Transformer beat the majority class on ood graphs."""
    from anyformer.cli import main

    steps = ["train.steps=300", "train.eval_every=300", "train.checkpoint_every=300",
             "train.threads=1", "task.gin_steps=100"]  # fmt: skip
    assert main(["run", "graph_quickstart", *steps, "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    ood = [r for r in rows if r.get("split") == "ood"][-1]
    assert "gin" in capsys.readouterr().out
    base = ood["baselines"]
    assert ood["accuracy"] > base["majority"]["accuracy"] + 0.05 and "gin" in base


@pytest.mark.parametrize("attention", ["graph_attention", "softmax"])
def test_packed_graphs_equal_padded_graphs(attention: str) -> None:
    """Node graphs packed into shared rows (block-diagonal adjacency and document mask)
    give every node the output it has in the padded batch."""
    from anyformer.tasks.graph_sbm import GraphSBM, GraphSBMParams
    from anyformer.tasks.packing import pack_batch

    task = GraphSBM(GraphSBMParams(n_train=16, n_eval=8, gin_steps=5, lap_pe=4, rwse=4), 0)
    io = task.model_io()
    torch.manual_seed(0)
    spec = ModelSpec(kind="encoder", attention=attention, position="none", d_model=16,
                     n_heads=2, n_layers=2, max_len=96, norm="batchnorm", **io)  # fmt: skip
    model = build_model(spec).eval()
    padded = task.make_eval_set("id", 8)[0]
    packed, layout = pack_batch(padded, row_len=96)
    assert packed.inputs.shape[0] < padded.inputs.shape[0]
    adj = packed.extras["adjacency"]
    lengths = padded.padding_mask.sum(1).tolist()
    blocks = torch.zeros_like(adj)
    for i, (row, start, n) in enumerate(layout.places):
        assert n == lengths[i]
        assert torch.equal(adj[row, start : start + n, start : start + n],
                           padded.extras["adjacency"][i, :n, :n])  # fmt: skip
        blocks[row, start : start + n, start : start + n] = True
    assert not adj[~blocks].any()  # no edge between two graphs of a row
    with torch.no_grad():
        out_padded = model(padded.inputs, **model_inputs(padded))
        out_packed = model(packed.inputs, **model_inputs(packed))
    back = layout.unpack_padded(out_packed, padded.inputs.shape[1])
    mask = padded.padding_mask
    torch.testing.assert_close(back[mask], out_padded[mask], rtol=1e-5, atol=1e-5)
    assert task.score([back], [padded]) == task.score([out_padded], [padded])


def test_graph_sbm_experiment_resolves_to_a_node_level_graph_transformer() -> None:
    from anyformer.lab.experiments import load_experiment
    from anyformer.lab.run import resolve

    spec = resolve(load_experiment("graph_sbm"))
    model = spec.model
    assert model.embedder_ref.name == "graph_nodes" and model.attention.name == "graph_attention"
    assert model.resolved_head == "token_classify" and model.n_outputs == 4
    assert model.input_dim == 5 + 8 and model.packing_problem() is None
