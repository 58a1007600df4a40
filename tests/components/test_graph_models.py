"""Graph models: edge features and the edge stream of graph_attention, masked BatchNorm,
the dense <-> sparse conversion, the gps and mpnn_vn mixers (against PyTorch
Geometric's layers) and the edge_classify head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anyformer.components.base import Context
from anyformer.nn.graph_ops import masked_batch_norm, sparse_graph, token_mask_scope
from anyformer.registry import Dims, get

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.data import Batch as PygBatch  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.utils import to_dense_adj, to_dense_batch  # noqa: E402

D, H = 16, 2


def _graphs(sizes: tuple[int, ...] = (5, 3, 6), seed: int = 0, edge_dim: int = 3) -> list[Data]:
    """Random undirected graphs (both directions stored) with node and edge features."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        upper = torch.rand(n, n, generator=g).triu(1) > 0.5
        src, dst = upper.nonzero().T
        ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
        half = torch.randn(src.numel(), edge_dim, generator=g)
        out.append(Data(x=torch.randn(n, D, generator=g), edge_index=ei,
                        edge_attr=torch.cat([half, half]), num_nodes=n))  # fmt: skip
    return out


def _dense(graphs: list[Data]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, N, D], mask, adjacency [b, i, j] (edge j -> i) and edge_attr [B, N, N, E]."""
    b = PygBatch.from_data_list(graphs)
    x, mask = to_dense_batch(b.x, b.batch)
    n = x.shape[1]
    adj = to_dense_adj(b.edge_index, b.batch, max_num_nodes=n).transpose(1, 2) > 0
    attr = to_dense_adj(b.edge_index, b.batch, b.edge_attr, max_num_nodes=n).transpose(1, 2)
    return x, mask, adj, attr


def _ctx(
    adj: torch.Tensor, mask: torch.Tensor | None, edges: torch.Tensor | None = None
) -> Context:
    dims = Dims(d_model=D, n_heads=H, causal=False, max_len=adj.shape[-1])
    position = get("position", "none").build(None, dims)
    return Context(torch.arange(adj.shape[-1]), False, position, mask, adjacency=adj, edges=edges)


def _mixer(name: str, **params: object) -> torch.nn.Module:
    torch.manual_seed(0)
    entry = get("attention", name)
    dims = Dims(d_model=D, n_heads=H, causal=False, max_len=8)
    return entry.build(entry.make_params(**params), dims).eval()


# ------------------------------------------------------------------ masked BatchNorm
def test_masked_batch_norm_is_batch_norm_of_the_real_rows_whatever_the_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    stats = [torch.zeros(4), torch.ones(4)]
    y = masked_batch_norm(x, mask, *stats, None, None, True, 0.1, 1e-5)
    real = x[mask]
    want = (real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y[mask], want)
    assert torch.equal(y[~mask], torch.zeros_like(y[~mask]))
    torch.testing.assert_close(stats[0], 0.1 * real.mean(0))  # running mean: real rows only
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), 4, generator=g)
    wide = torch.cat([noisy, torch.randn(3, 2, 4, generator=g)], 1)  # more padding
    wide_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
    z = masked_batch_norm(wide, wide_mask, None, None, None, None, True)
    torch.testing.assert_close(z[wide_mask], y[mask])


def test_batchnorm_norm_masks_the_padding_the_model_declares() -> None:
    norm = get("norm", "batchnorm").build(None, Dims(d_model=4, n_heads=1, causal=False, max_len=8))
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    noisy = x.clone()
    noisy[~mask] = 50.0
    with token_mask_scope(mask):
        a, b = norm.train()(x), norm(noisy)
    torch.testing.assert_close(a[mask], b[mask])
    assert not torch.allclose(norm(x)[mask], norm(noisy)[mask])  # outside the scope it counts


# ------------------------------------------------------------------ dense <-> sparse
def test_sparse_graph_is_pygs_batch_of_the_same_graphs() -> None:
    graphs = _graphs()
    x, mask, adj, _ = _dense(graphs)
    g = sparse_graph(adj, mask)
    ref = PygBatch.from_data_list(graphs)
    assert torch.equal(g.nodes(x), ref.x) and torch.equal(g.batch, ref.batch)
    ours = set(map(tuple, g.edge_index.T.tolist()))
    assert ours == set(map(tuple, ref.edge_index.T.tolist())) and len(ours) == ref.num_edges
    assert torch.equal(g.to_dense(g.nodes(x)), x * mask[..., None])


# ------------------------------------------------------------------ graph_attention + edges
def test_edge_featured_graph_attention_gives_zero_weight_to_non_neighbours() -> None:
    x, mask, adj, attr = _dense(_graphs())
    edges = torch.nn.Linear(3, D)(attr)
    mixer = _mixer("graph_attention")
    ctx = _ctx(adj, mask, edges)
    w = mixer.weights(x, ctx)
    allowed = (adj | torch.eye(adj.shape[-1], dtype=torch.bool)) & mask[:, None, :]
    blocked = (~allowed & mask[:, :, None])[:, None].expand_as(w)  # real queries' non-neighbours
    assert blocked.any() and torch.equal(w[blocked], torch.zeros_like(w[blocked]))
    rows = mask[:, None].expand(-1, H, -1)
    torch.testing.assert_close(w.sum(-1)[rows], torch.ones(int(rows.sum())))
    plain = mixer.weights(x, _ctx(adj, mask))
    assert not torch.allclose(w, plain)  # the edge embedding changes the scores


def test_edge_stream_updates_real_edges_and_a_non_edge_changes_nothing() -> None:
    x, mask, adj, attr = _dense(_graphs())
    edges = torch.nn.Linear(3, D)(attr).detach()
    mixer = _mixer("graph_attention").train()
    ctx = _ctx(adj, mask, edges.clone())
    y = mixer(x, ctx)
    allowed = (
        (adj | torch.eye(adj.shape[-1], dtype=torch.bool)) & mask[:, None, :] & mask[:, :, None]
    )
    assert not torch.allclose(ctx.edges[allowed], edges[allowed])  # the stream moved on
    assert torch.equal(ctx.edges[~allowed], torch.zeros_like(ctx.edges[~allowed]))
    other = edges.clone()
    other[~allowed] = 7.0  # states off the edges (and at padding) are never read
    ctx2 = _ctx(adj, mask, other)
    torch.testing.assert_close(mixer(x, ctx2)[mask], y[mask])
    torch.testing.assert_close(ctx2.edges, ctx.edges)


# ------------------------------------------------------------------ gps
def test_gps_local_part_equals_pygs_gineconv_on_the_same_graphs() -> None:
    graphs = _graphs()
    x, mask, adj, attr = _dense(graphs)
    proj = torch.nn.Linear(3, D)
    mixer = _mixer("gps")
    ref = PygBatch.from_data_list(graphs)
    with torch.no_grad():
        got = mixer.local_part(x, _ctx(adj, mask, proj(attr)))
        want = mixer.local(ref.x, ref.edge_index, proj(ref.edge_attr))  # PyG's GINEConv
    assert type(mixer.local).__name__ == "GINEConv"
    torch.testing.assert_close(got[mask], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))


def test_gps_equals_pygs_gpsconv_with_copied_weights() -> None:
    from torch_geometric.nn import GINEConv, GPSConv

    from anyformer.components.attention.message_passing import copy_gps_weights, gin_mlp

    graphs = _graphs()
    x, mask, adj, attr = _dense(graphs)
    torch.manual_seed(1)
    conv = GPSConv(D, GINEConv(gin_mlp(D)), heads=H, norm=None).eval()
    with torch.no_grad():  # GPSConv ends with h + MLP(h): zero the MLP to read h itself
        conv.mlp[-2].weight.zero_()
        conv.mlp[-2].bias.zero_()
    mixer = _mixer("gps")
    copy_gps_weights(mixer, conv)
    ref = PygBatch.from_data_list(graphs)
    edge = torch.randn(ref.num_edges, D)
    dense_edge = torch.zeros(*adj.shape, D)
    target, source = _local(ref)
    dense_edge[ref.batch[ref.edge_index[1]], target, source] = edge  # [b, i, j]: edge j -> i
    with torch.no_grad():
        want = conv(ref.x, ref.edge_index, ref.batch, edge_attr=edge) - 2 * ref.x
        got = mixer(x, _ctx(adj, mask, dense_edge))
    torch.testing.assert_close(got[mask], want, rtol=1e-4, atol=1e-5)


def _local(ref: PygBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each edge's (target, source) index inside its graph."""
    start = ref.ptr[ref.batch]
    return ref.edge_index[1] - start[ref.edge_index[1]], ref.edge_index[0] - start[
        ref.edge_index[0]
    ]


# ------------------------------------------------------------------ mpnn_vn
def _permuted(
    x: torch.Tensor, mask: torch.Tensor, adj: torch.Tensor, e: torch.Tensor, perm: torch.Tensor
):
    return x[:, perm], mask[:, perm], adj[:, perm][:, :, perm], e[:, perm][:, :, perm]


@pytest.mark.parametrize("name", ["mpnn_vn", "gps", "graph_attention"])
def test_permuting_nodes_permutes_outputs(name: str) -> None:
    x, mask, adj, attr = _dense(_graphs())
    edges = torch.nn.Linear(3, D)(attr).detach()
    mixer = _mixer(name)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = mixer(x, _ctx(adj, mask, edges))
        xp, mp, ap, ep = _permuted(x, mask, adj, edges, perm)
        yp = mixer(xp, _ctx(ap, mp, ep))
    torch.testing.assert_close(yp[mp], y[:, perm][mp], rtol=1e-5, atol=1e-5)


def test_virtual_node_carries_messages_between_unconnected_nodes() -> None:
    """y = GINE(x + MLP(mean of the graph's nodes)): checked by hand, and a node with no
    edges still hears every other node of its graph (and none of another graph)."""
    x = torch.randn(2, 4, D)
    mask = torch.ones(2, 4, dtype=torch.bool)
    adj = torch.zeros(2, 4, 4, dtype=torch.bool)
    adj[:, 0, 1] = adj[:, 1, 0] = True
    mixer = _mixer("mpnn_vn")
    with torch.no_grad():
        y = mixer(x, _ctx(adj, mask))
        v = mixer.virtual(x.mean(1))
        h = (x + v[:, None]).reshape(8, D)
        ei = torch.tensor([[1, 0, 5, 4], [0, 1, 4, 5]])
        want = mixer.conv(h, ei, torch.zeros(4, D)).reshape(2, 4, D)
        torch.testing.assert_close(y, want)
        x2 = x.clone()
        x2[0, 3] += 1.0  # node 3 of graph 0: no edges
        y2 = mixer(x2, _ctx(adj, mask))
    assert not torch.allclose(y2[0, 2], y[0, 2])  # node 2 (no edges either) hears it
    torch.testing.assert_close(y2[1], y[1])  # the other graph does not


# ------------------------------------------------------------------ edge head
def test_edge_head_is_an_mlp_of_each_pair_of_node_states() -> None:
    from anyformer.spec import ModelSpec

    spec = ModelSpec(kind="encoder", d_model=D, n_outputs=3, embed="vectors", input_dim=4,
                     position="none", max_len=8)  # fmt: skip
    torch.manual_seed(0)
    head = get("head", "edge_classify").build(None, spec=spec)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = head(x, mask)
    w1 = torch.cat([head.source.weight, head.target.weight], 1)
    for b, i, j in [(0, 1, 3), (0, 3, 1), (1, 2, 0)]:
        z = torch.relu(w1 @ torch.cat([x[b, i], x[b, j]]) + head.source.bias)
        torch.testing.assert_close(out[b, i, j], head.out(z))
    assert out.shape == (2, 5, 5, 3) and torch.equal(out[1, 3:], torch.zeros(2, 5, 3))


# ------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def atlas_data() -> tuple:
    from anyformer.tasks.graph_atlas import GraphAtlas, GraphAtlasParams

    task = GraphAtlas(GraphAtlasParams(target="triangles", lap_pe=0, rwse=0, gin_steps=1), 0)
    train = task.to_batch(*task.fit_examples())
    test = task.to_batch(*task._examples(task.split_rows["ood"][::4]))
    return task, train, test


@pytest.mark.slow  # 2-4 s each on a loaded 2-core machine
@pytest.mark.parametrize("name", ["graph_attention", "gps", "mpnn_vn"])
def test_each_graph_mixer_learns_an_atlas_target_above_trivial(
    name: str, atlas_data: tuple
) -> None:
    """The triangle count (36 classes; trained on graphs up to 6 nodes, scored on 7-node
    graphs) beats the majority class by far after 60 full-batch steps of a 2-layer model
    of width 16 (measured: 0.26-0.51 against 0.09)."""
    from anyformer.model import build_model
    from anyformer.spec import ModelSpec
    from anyformer.tasks.packing import model_inputs

    task, train, test = atlas_data
    io = {k: v for k, v in task.model_io().items()}
    torch.manual_seed(0)
    spec = ModelSpec(kind="encoder", attention=name, position="none", norm="batchnorm",
                     norm_placement="post", d_model=16, n_heads=2, n_layers=2, max_len=8,
                     **io)  # fmt: skip
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(train.inputs, **model_inputs(train)), train.targets
        )
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (
            (model.eval()(test.inputs, **model_inputs(test)).argmax(-1) == test.targets)
            .float()
            .mean()
        )
    majority = np.mean(test.targets.numpy() == np.bincount(train.targets.numpy()).argmax())
    assert float(acc) > majority + 0.1, (float(acc), majority)


def test_a_task_can_train_edge_labels_with_the_edge_head() -> None:
    """A graph model with ``head: edge_classify`` gives logits per pair of nodes, and the
    tasks' default objective (masked cross-entropy) scores the pairs ``loss_mask`` marks."""
    from anyformer.model import build_model
    from anyformer.objectives.losses import CausalLM, CausalLMParams
    from anyformer.spec import ModelSpec
    from anyformer.tasks.base import Batch

    x, mask, adj, attr = _dense(_graphs())
    torch.manual_seed(0)
    spec = ModelSpec(kind="encoder", embedder={"name": "graph_nodes"}, input_dim=D,
                     attention="mpnn_vn", position="none", d_model=D, n_heads=H, n_layers=1,
                     max_len=8, head="edge_classify", n_outputs=2, edge_dim=3)  # fmt: skip
    model = build_model(spec)
    logits = model(x, mask, adjacency=adj, edge_attr=attr)
    assert logits.shape == (*adj.shape, 2)
    pairs = mask[:, :, None] & mask[:, None, :]
    batch = Batch(inputs=x, targets=adj.long(), loss_mask=pairs, padding_mask=mask)
    loss = CausalLM(CausalLMParams(answer_only=True)).loss(logits, batch)
    want = torch.nn.functional.cross_entropy(logits[pairs], adj.long()[pairs])
    torch.testing.assert_close(loss, want)
