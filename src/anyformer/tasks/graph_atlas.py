"""Graph-level properties of networkx's graph atlas (``graph_atlas``).

The atlas (``networkx.graph_atlas_g()``, "An Atlas of Graphs", Read & Wilson, 1998)
holds all 1,253 undirected graphs with up to 7 nodes, one per isomorphism class; the
empty graph (0 nodes) is left out. Each graph is a PyTorch Geometric ``Data``: node
features are the one-hot degree (0..6), followed by ``lap_pe`` Laplacian eigenvectors
(``AddLaplacianEigenvectorPE``; zeros past a graph's ``n - 1`` eigenvectors; signs fixed
per graph by the seed, the ``graph_nodes`` embedder flips them in training) and
``rwse`` random-walk return probabilities (``AddRandomWalkPE``). A batch is the PyG
``Batch`` of its graphs made dense (``to_dense_batch``, ``to_dense_adj``): ``inputs``
``[B, N, 7 + lap_pe + rwse]`` with ``N`` the batch's largest graph, ``padding_mask``
``[B, N]`` (True at real nodes), ``targets`` ``[B]`` (a class), and the extras
``adjacency`` ``[B, N, N]`` bool (read by graph mixers as ``Context.adjacency``),
``edge_attr`` ``[B, N, N, 1]`` (with ``edge_features``: 1 on every edge, 0 elsewhere;
the atlas has no edge labels, so this constant feature, as Dwivedi & Bresson give graphs
without edge labels, lets the edge-featured layers run; the model embeds it to
``Context.edges``) and ``graph`` ``[B]`` (the atlas index).

Targets (``target``): ``connected`` (2 classes), ``bipartite`` (2), ``diameter``
(0 = disconnected, else the diameter + 1; 8 classes) and ``triangles`` (the triangle
count, 0..35). Splits by size: graphs of at most ``max_train_nodes`` nodes are divided
between training and ``id`` by a permutation drawn from the seed (``id_fraction`` to
``id``); ``ood`` is every graph with more nodes (the 1,044 of 7 nodes by default). The
splits share no graph, and atlas graphs are pairwise non-isomorphic.

Baselines on the same graphs: ``majority`` (the most common training class, the
trivial predictor) and ``gin``: a GIN (PyG's ``GINConv``, 3 layers of width 64, sum
readout; Xu et al., 2019) trained on the training graphs with the same node features
(full batch, Adam, ``gin_steps`` steps, seeded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, rng_for
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows

ATLAS = Paper("An Atlas of Graphs", 1998, "Read & Wilson")
#: Node feature columns: the one-hot degree 0..MAX_DEGREE.
MAX_DEGREE = 6
N_CLASSES = {"connected": 2, "bipartite": 2, "diameter": 8, "triangles": 36}


class GraphAtlasParams(BaseModel):
    """- ``target``: ``connected``, ``bipartite``, ``diameter`` or ``triangles``;
    - ``max_train_nodes``: training and ``id`` graphs have at most this many nodes
      (``ood``: the larger ones), 3..6;
    - ``id_fraction``: share of the small graphs held out for ``id``;
    - ``lap_pe``: Laplacian eigenvectors per node (0: none); ``rwse``: random-walk
      steps (0: none);
    - ``gin_steps``: training steps of the GIN baseline;
    - ``edge_features``: batches carry ``edge_attr`` (one constant feature per edge) and
      the model gets ``edge_dim=1``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["connected", "bipartite", "diameter", "triangles"] = "connected"
    max_train_nodes: int = Field(6, ge=3, le=6)
    id_fraction: float = Field(0.2, gt=0.0, le=0.5)
    lap_pe: int = Field(4, ge=0, le=6)
    rwse: int = Field(6, ge=0, le=16)
    gin_steps: int = Field(300, ge=1, le=5000)
    edge_features: bool = True


def graph_target(g: Any, target: str) -> int:
    """The class of networkx graph ``g`` for ``target`` (see the module docstring)."""
    import networkx as nx

    if target == "connected":
        return int(nx.is_connected(g))
    if target == "bipartite":
        return int(nx.is_bipartite(g))
    if target == "diameter":
        return nx.diameter(g) + 1 if nx.is_connected(g) else 0
    return sum(nx.triangles(g).values()) // 3


@lru_cache(maxsize=8)
def atlas_graphs(lap_pe: int, rwse: int, seed: int) -> tuple[Any, ...]:
    """Every atlas graph with at least one node as a PyG ``Data`` (``x`` the node features
    with the encodings appended, ``edge_index`` both directions, ``n`` its node count),
    in atlas order."""
    import networkx as nx
    from torch_geometric.data import Data

    out = []
    for g in nx.graph_atlas_g()[1:]:
        n = g.number_of_nodes()
        edges = torch.tensor(list(g.edges()), dtype=torch.long).reshape(-1, 2).T
        data = Data(edge_index=torch.cat([edges, edges.flip(0)], 1), num_nodes=n)
        data.edge_attr = torch.ones(data.edge_index.shape[1], 1)
        deg = torch.tensor([d for _, d in sorted(g.degree())], dtype=torch.long)
        data.x = torch.nn.functional.one_hot(deg, MAX_DEGREE + 1).float()
        data.graph = g
        out.append(data)
    add_encodings(out, lap_pe, rwse, seed)
    return tuple(out)


def add_encodings(
    graphs: list[Any], lap_pe: int, rwse: int, seed: int, chunk_nodes: int | None = None
) -> None:
    """Append ``lap_pe`` Laplacian eigenvector columns (PyG's ``AddLaplacianEigenvectorPE``
    on the symmetric normalised Laplacian, dense eigendecomposition at every size so the
    result is deterministic; zeros past a graph's ``n - 1`` eigenvectors; signs drawn from
    ``seed``) and ``rwse`` random-walk return probabilities (``AddRandomWalkPE``) to the
    ``x`` of every PyG ``Data`` in ``graphs``, in place. The walks run on disjoint unions
    of the graphs (a walk stays in its graph): one union of all (``chunk_nodes=None``),
    or unions of consecutive graphs of at most ``chunk_nodes`` nodes (PyG's transform is
    dense, cubic in the union's size, below 2,000 nodes)."""
    from torch_geometric.data import Batch as PygBatch
    from torch_geometric.data import Data
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE

    if lap_pe:
        with torch.random.fork_rng():  # the transform draws signs from torch's RNG
            torch.manual_seed(seed)
            for data in graphs:
                pe = torch.zeros(data.num_nodes, lap_pe)
                k = min(lap_pe, data.num_nodes - 1)
                if k > 0:
                    enc = AddLaplacianEigenvectorPE(k, attr_name="pe", is_undirected=True)
                    enc.SPARSE_THRESHOLD = data.num_nodes + 1  # ARPACK's start is random
                    plain = Data(edge_index=data.edge_index, num_nodes=data.num_nodes)
                    pe[:, :k] = enc(plain).pe.float()
                data.x = torch.cat([data.x, pe], 1)
    if not rwse:
        return
    chunks: list[list[Any]] = [[]]
    for data in graphs:
        if (
            chunk_nodes is not None
            and chunks[-1]
            and (sum(d.num_nodes for d in chunks[-1]) + data.num_nodes > chunk_nodes)
        ):
            chunks.append([])
        chunks[-1].append(data)
    for chunk in chunks:  # walks stay inside their graph: a transform per disjoint union
        union = PygBatch.from_data_list([Data(edge_index=d.edge_index, num_nodes=d.num_nodes)
                                         for d in chunk])  # fmt: skip
        with warnings.catch_warnings():  # torch's beta notice about sparse CSR tensors
            warnings.simplefilter("ignore", UserWarning)
            rw = AddRandomWalkPE(rwse, attr_name="rw")(union).rw.float()
        for data, part in zip(chunk, rw.split([d.num_nodes for d in chunk])):
            data.x = torch.cat([data.x, part], 1)


def dense_batch(graphs: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyG ``Data`` graphs as padded node tokens: ``inputs [B, N, F]``, ``mask [B, N]``
    (True at real nodes) and ``adjacency [B, N, N]`` bool (``[b, i, j]``: an edge from
    node j to node i, ``Context.adjacency``'s convention)."""
    from torch_geometric.utils import to_dense_adj, to_dense_batch

    pyg = pyg_batch(graphs)
    inputs, mask = to_dense_batch(pyg.x, pyg.batch)
    adj = to_dense_adj(pyg.edge_index, pyg.batch, max_num_nodes=inputs.shape[1]) > 0
    return inputs, mask, adj.transpose(1, 2)  # PyG's [b, source, target] -> [b, i, j]


def dense_edge_attr(graphs: list[Any], max_nodes: int) -> torch.Tensor:
    """The edge features of PyG ``Data`` graphs (each with ``edge_attr [n_edges, E]``)
    as the dense ``[B, max_nodes, max_nodes, E]`` tensor a batch carries in
    ``extras['edge_attr']``: ``[b, i, j]`` holds the features of graph b's edge from
    node j to node i (the adjacency's convention), zeros where there is no edge. The
    model embeds it to ``Context.edges`` (``model.edge_dim = E``)."""
    from torch_geometric.data import Batch as PygBatch
    from torch_geometric.utils import to_dense_adj

    pyg = PygBatch.from_data_list(
        [g.__class__(edge_index=g.edge_index, edge_attr=g.edge_attr, num_nodes=g.num_nodes)
         for g in graphs]
    )  # fmt: skip
    attr = pyg.edge_attr.float()
    if attr.dim() == 1:
        attr = attr[:, None]
    dense = to_dense_adj(pyg.edge_index, pyg.batch, attr, max_num_nodes=max_nodes)
    return dense.transpose(1, 2)


def train_gin(
    graphs: list[Any],
    labels: np.ndarray,
    n_classes: int,
    steps: int,
    seed: int,
    node_level: bool = False,
    batch_graphs: int | None = None,
) -> Any:
    """A 3-layer GIN (PyG ``GINConv``, width 64; Xu et al., 2019) fitted with Adam (lr
    1e-3) on the graphs, full-batch or, with ``batch_graphs``, on that many graphs per
    step drawn from ``seed``: graph classes from the sum readout of every layer
    (``labels`` one per graph), or with ``node_level`` node classes from every layer's
    node states (``labels`` one per node of the graphs in order). Its
    ``forward(pyg_batch)`` gives the logits per graph (per node)."""
    from torch import nn
    from torch_geometric.nn import GINConv, global_add_pool

    class GIN(nn.Module):
        def __init__(self, d_in: int) -> None:
            super().__init__()
            dims = [d_in, 64, 64, 64]
            self.convs = nn.ModuleList(
                GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b)))
                for a, b in zip(dims, dims[1:])
            )
            self.out = nn.Linear(64 * 3, n_classes)

        def forward(self, batch: Any) -> torch.Tensor:
            h, states = batch.x, []
            for conv in self.convs:
                h = conv(h, batch.edge_index).relu()
                states.append(h if node_level else global_add_pool(h, batch.batch))
            return self.out(torch.cat(states, -1))

    with torch.random.fork_rng(), torch.enable_grad():  # scores may run under no_grad
        torch.manual_seed(seed)
        data = pyg_batch(graphs)
        y = torch.from_numpy(labels).long()
        model = GIN(graphs[0].x.shape[1])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(seed)
        ends = np.cumsum([g.num_nodes for g in graphs]) if node_level else None
        for _ in range(steps):
            if batch_graphs is not None and batch_graphs < len(graphs):
                rows = np.sort(rng.choice(len(graphs), batch_graphs, replace=False))
                data = pyg_batch([graphs[i] for i in rows])
                if ends is None:
                    y = torch.from_numpy(labels[rows]).long()
                else:
                    y = torch.from_numpy(np.concatenate(
                        [labels[ends[i] - graphs[i].num_nodes : ends[i]] for i in rows]
                    )).long()  # fmt: skip
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data), y).backward()
            opt.step()
    return model.eval()


def pyg_batch(graphs: list[Any]) -> Any:
    """The PyG ``Batch`` (disjoint union) of the graphs' ``x`` and ``edge_index``."""
    from torch_geometric.data import Batch as PygBatch

    return PygBatch.from_data_list([g.__class__(x=g.x, edge_index=g.edge_index) for g in graphs])


@register(
    "task",
    "graph_atlas",
    paper=ATLAS,
    summary="graph-level properties (connected, bipartite, diameter, triangles) of "
    "networkx's atlas of all graphs up to 7 nodes; ood: larger graphs; baselines GIN, majority",
    params=GraphAtlasParams,
    caps=Capabilities(),
)
class GraphAtlas(SupervisedTask):
    """Graph classification on the graph atlas (see the module docstring). Metrics:
    ``accuracy`` and ``baselines.{gin,majority}.accuracy`` on the same graphs."""

    input_kind: ClassVar[str] = "vectors"
    params: GraphAtlasParams

    def __init__(self, params: GraphAtlasParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        self.kind = "classify"
        self.n_classes = N_CLASSES[p.target]
        self.graphs = atlas_graphs(p.lap_pe, p.rwse, 0)
        self.labels = np.array([graph_target(g.graph, p.target) for g in self.graphs])
        sizes = np.array([g.num_nodes for g in self.graphs])
        small = np.flatnonzero(sizes <= p.max_train_nodes)
        perm = rng_for(seed, 7).permutation(small)
        n_id = max(1, round(len(small) * p.id_fraction))
        self.split_rows = {
            "train": np.sort(perm[n_id:]),
            "id": np.sort(perm[:n_id]),
            "ood": np.flatnonzero(sizes > p.max_train_nodes),
        }

    def model_io(self) -> dict[str, Any]:
        p = self.params
        return {
            "input_dim": MAX_DEGREE + 1 + p.lap_pe + p.rwse,
            "embedder": {"name": "graph_nodes", "lap_pe": p.lap_pe, "rwse": p.rwse},
            "head": "classify",
            "n_outputs": self.n_classes,
            **({"edge_dim": 1} if p.edge_features else {}),
        }

    def max_seq_len(self) -> int:
        return max(g.num_nodes for g in self.graphs)

    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        """The graphs at atlas indices ``x`` as padded node tokens (module docstring)."""
        rows = [int(i) for i in x]
        graphs = [self.graphs[i] for i in rows]
        inputs, mask, adj = dense_batch(graphs)
        extras = {"adjacency": adj, "graph": torch.tensor(rows, dtype=torch.long)}
        if self.params.edge_features:
            extras["edge_attr"] = dense_edge_attr(graphs, inputs.shape[1])
        return Batch(
            inputs=inputs,
            targets=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
            loss_mask=torch.ones(len(rows), dtype=torch.bool),
            padding_mask=mask,
            extras=extras,
        )

    def _examples(self, rows: np.ndarray) -> Examples:
        return rows, self.labels[rows]

    def train_examples(self, step: int, n: int) -> Examples:
        rows = self.split_rows["train"]
        return self._examples(
            rows[take_rows(rng_for(self.seed, SPLIT_IDS["train"], step), len(rows), n)]
        )

    def eval_examples(self, split: str, size: int) -> Examples:
        rows = self.split_rows[split]
        return self._examples(rows[np.sort(eval_order(self.seed, split, len(rows), size))])

    def fit_examples(self) -> Examples:
        return self._examples(self.split_rows["train"])

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        return {}

    def fitted_baselines(self) -> dict[str, Any]:
        """The GIN trained on the training graphs, once per instance (and the majority class)."""
        if self._fitted is None:
            rows, y = self.fit_examples()
            self._majority = int(np.bincount(y, minlength=self.n_classes).argmax())
            graphs = [self.graphs[i] for i in rows]
            self._fitted = {
                "gin": train_gin(graphs, y, self.n_classes, self.params.gin_steps, self.seed)
            }
        return self._fitted

    def baseline_predictions(self, batch: Batch) -> dict[str, np.ndarray]:
        gin = self.fitted_baselines()["gin"]
        graphs = [self.graphs[int(i)] for i in batch.extras["graph"]]
        data = pyg_batch(graphs)
        with torch.no_grad():
            pred = gin(data).argmax(-1).numpy()
        n = len(graphs)
        return {"gin": pred, "majority": np.full(n, self._majority)}
