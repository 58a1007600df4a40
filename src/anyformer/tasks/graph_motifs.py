"""Node classification on BA graphs with planted house motifs (``graph_motifs``), the
BA-Shapes construction of "GNNExplainer: Generating Explanations for Graph Neural
Networks" (Ying et al., 2019), made by PyTorch Geometric's ``ExplainerDataset``
(``graph_generator=BAGraph``, ``motif_generator='house'``; generated in memory, no
download, no file; torch's RNG seeded per graph from the task seed).

Each graph is a Barabási–Albert graph of ``min_base..max_base`` nodes (``ba_edges``
edges per new node) with ``min_motifs..max_motifs`` five-node houses each joined to a
random base node by one edge. Targets (``target``): ``role`` (4 classes, PyG's labels:
0 a base node, 1 an upper corner, 2 a lower corner, 3 the roof of a house) or
``in_motif`` (2 classes: base or house). Node features (``features``): the one-hot
degree capped at :data:`MAX_DEGREE` (``degree``) or a constant 1 (``constant``, as
BA-Shapes: structure only), followed by ``lap_pe`` Laplacian eigenvectors and ``rwse``
random-walk return probabilities (PyG's transforms). ``ood``: larger base graphs with
more houses (``ood_min_base..ood_max_base``, ``ood_min_motifs..ood_max_motifs``).

Metric: weighted ``accuracy`` (mean per-class recall, :mod:`anyformer.tasks.graph_data`)
and ``node_accuracy``. Baselines: a node-level GIN (PyG ``GINConv``) and the majority
class (a base node).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import rng_for
from anyformer.tasks.graph_atlas import add_encodings
from anyformer.tasks.graph_data import RW_CHUNK, GraphTask, seeded_torch

GNN_EXPLAINER = Paper(
    "GNNExplainer: Generating Explanations for Graph Neural Networks", 2019, "Ying et al."
)
#: The largest degree with its own feature column (higher degrees share it).
MAX_DEGREE = 10
ROLES = ("base", "upper", "lower", "roof")


class GraphMotifsParams(BaseModel):
    """- ``target``: ``role`` (base / upper corner / lower corner / roof) or ``in_motif``;
    - ``min_base..max_base`` BA nodes with ``ba_edges`` edges per new node and
      ``min_motifs..max_motifs`` houses per graph (``ood``: the ``ood_*`` ranges);
    - ``features``: ``degree`` (one-hot, capped at 10) or ``constant``;
    - ``n_train`` training graphs, ``n_eval`` per evaluation split;
    - ``lap_pe`` Laplacian eigenvectors, ``rwse`` random-walk steps; ``gin_steps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["role", "in_motif"] = "role"
    min_base: int = Field(15, ge=3, le=500)
    max_base: int = Field(30, ge=3, le=500)
    ba_edges: int = Field(1, ge=1, le=5)
    min_motifs: int = Field(1, ge=1, le=50)
    max_motifs: int = Field(3, ge=1, le=50)
    ood_min_base: int = Field(40, ge=3, le=1000)
    ood_max_base: int = Field(60, ge=3, le=1000)
    ood_min_motifs: int = Field(4, ge=1, le=100)
    ood_max_motifs: int = Field(6, ge=1, le=100)
    features: Literal["degree", "constant"] = "degree"
    n_train: int = Field(400, ge=8, le=20000)
    n_eval: int = Field(100, ge=4, le=5000)
    lap_pe: int = Field(8, ge=0, le=32)
    rwse: int = Field(8, ge=0, le=32)
    gin_steps: int = Field(300, ge=1, le=5000)

    @model_validator(mode="after")
    def _ordered(self) -> GraphMotifsParams:
        for low, high in (("min_base", "max_base"), ("min_motifs", "max_motifs"),
                          ("ood_min_base", "ood_max_base"),
                          ("ood_min_motifs", "ood_max_motifs")):  # fmt: skip
            if getattr(self, high) < getattr(self, low):
                raise ValueError(
                    f"{high}={getattr(self, high)} must be >= {low}={getattr(self, low)}"
                )
        if self.ood_min_base <= self.max_base:
            raise ValueError(
                f"ood_min_base={self.ood_min_base} must be > max_base={self.max_base} "
                f"(ood holds larger graphs out)"
            )
        for motifs, base in (("max_motifs", "min_base"), ("ood_max_motifs", "ood_min_base")):
            if getattr(self, motifs) > getattr(self, base):
                raise ValueError(
                    f"{motifs}={getattr(self, motifs)} houses need as many base nodes to "
                    f"attach to; {base}={getattr(self, base)} is fewer"
                )
        if self.ba_edges >= self.min_base:
            raise ValueError(f"ba_edges={self.ba_edges} must be < min_base={self.min_base}")
        return self


def motif_graph(rng: np.random.Generator, params: GraphMotifsParams, split: str) -> Any:
    """One BA graph with houses from PyG's ``ExplainerDataset`` (``x`` the features, ``y``
    the target; nodes shuffled)."""
    from torch_geometric.data import Data
    from torch_geometric.datasets import ExplainerDataset
    from torch_geometric.datasets.graph_generator import BAGraph

    ood = split == "ood"
    lo, hi = (params.ood_min_base, params.ood_max_base) if ood else (params.min_base,
                                                                     params.max_base)  # fmt: skip
    mlo, mhi = ((params.ood_min_motifs, params.ood_max_motifs) if ood
                else (params.min_motifs, params.max_motifs))  # fmt: skip
    n_base, n_motifs = int(rng.integers(lo, hi + 1)), int(rng.integers(mlo, mhi + 1))
    with seeded_torch(rng):
        made = ExplainerDataset(
            graph_generator=BAGraph(num_nodes=n_base, num_edges=params.ba_edges),
            motif_generator="house",
            num_motifs=n_motifs,
        )[0]
    n = int(made.y.shape[0])
    perm = torch.from_numpy(rng.permutation(n))
    y = made.y if params.target == "role" else (made.y > 0).long()
    edges = perm[made.edge_index]
    if params.features == "degree":
        deg = torch.bincount(edges[0], minlength=n).clamp(max=MAX_DEGREE)
        x = torch.nn.functional.one_hot(deg, MAX_DEGREE + 1).float()
    else:
        x = torch.ones(n, 1)
    target = torch.zeros(n, dtype=torch.long)
    target[perm] = y.long()
    return Data(x=x, y=target, edge_index=edges, num_nodes=n)


@lru_cache(maxsize=4)
def motif_graphs(
    params: GraphMotifsParams, seed: int
) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    """The task's graphs (train pool, ``id``, ``ood``) with encodings, and each split's rows."""
    out, rows = [], {}
    for i, (split, count) in enumerate((("train", params.n_train), ("id", params.n_eval),
                                        ("ood", params.n_eval))):  # fmt: skip
        rng = rng_for(seed, 37, i)
        start = len(out)
        out += [motif_graph(rng, params, split) for _ in range(count)]
        rows[split] = np.arange(start, len(out))
    add_encodings(out, params.lap_pe, params.rwse, seed, chunk_nodes=RW_CHUNK)
    return tuple(out), rows


@register(
    "task",
    "graph_motifs",
    paper=GNN_EXPLAINER,
    summary="node classification on PyG ExplainerDataset graphs (BA base + house motifs): "
    "each node's house role or motif membership; ood: larger graphs, more houses; "
    "baselines GIN, majority",
    params=GraphMotifsParams,
    caps=Capabilities(),
)
class GraphMotifs(GraphTask):
    """BA-Shapes-like node classification (see the module docstring)."""

    params: GraphMotifsParams
    level = "node"

    def __init__(self, params: GraphMotifsParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.n_classes = len(ROLES) if params.target == "role" else 2
        self.n_features = MAX_DEGREE + 1 if params.features == "degree" else 1
        self.graphs, self.split_rows = motif_graphs(params, seed)

    def class_labels(self) -> tuple[str, ...]:
        return ROLES if self.params.target == "role" else ("base", "house")
