"""Node classification on stochastic-block-model graphs (``graph_sbm``): CLUSTER- and
PATTERN-like tasks of "Benchmarking Graph Neural Networks" (Dwivedi et al., 2020).

Every graph is drawn by PyTorch Geometric's ``stochastic_blockmodel_graph`` (offline:
no dataset, no download, no file; torch's RNG seeded per graph from the task seed), its
nodes shuffled. Two modes:

- ``cluster`` (CLUSTER): ``n_blocks`` communities of ``min_size..max_size`` nodes each,
  edge probability ``p`` inside a community and ``q`` between two (CLUSTER: 6
  communities of 5..35 nodes, p = 0.55, q = 0.25). ``seeds_per_block`` nodes of every
  community show its label as their input feature (one-hot over ``n_blocks + 1``
  columns, column 0 for an unlabelled node); the target of every node is its community
  (``n_blocks`` classes). The model must spread the few revealed labels along the
  denser within-community edges.
- ``pattern`` (PATTERN): a base SBM graph (``n_blocks`` communities, p = 0.5,
  q = 0.35 by default), node features drawn uniformly from 3 values (one-hot), and one
  fixed pattern ``P`` of ``pattern_size`` nodes (its edges drawn once from the task seed
  with probability ``pattern_p``, its node features fixed too) joined to every base
  node with probability ``pattern_q``; the target is whether a node belongs to ``P``
  (2 classes, PATTERN's 20-node pattern is ``pattern_size=20``).

Splits: a pool of ``n_train`` training graphs; ``id`` and ``ood`` have ``n_eval``
graphs each, drawn from streams of their own. ``ood`` is ``ood='size'``: communities of
``ood_min_size..ood_max_size`` nodes (larger graphs), or ``ood='pq'``: the training
sizes with edge probabilities ``ood_p``/``ood_q`` (a weaker or different community
signal). Node tokens carry ``lap_pe`` Laplacian eigenvectors and ``rwse`` random-walk
steps computed by PyG's transforms (:func:`~anyformer.tasks.graph_atlas.add_encodings`).

Metric: the weighted accuracy of Benchmarking GNNs (mean per-class recall; see
:mod:`anyformer.tasks.graph_data`) as ``accuracy``, the plain node accuracy as
``node_accuracy``. Baselines: a node-level GIN (PyG ``GINConv``) trained on the training
graphs, and the majority class.
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

BENCHMARK = Paper("Benchmarking Graph Neural Networks", 2020, "Dwivedi et al.")
#: Values of a PATTERN node feature.
PATTERN_VOCAB = 3
#: Edge probabilities (inside, between communities) when ``p``/``q`` are not given.
DEFAULT_PQ = {"cluster": (0.55, 0.25), "pattern": (0.5, 0.35)}


class GraphSBMParams(BaseModel):
    """- ``mode``: ``cluster`` (predict each node's community from a few labelled seeds) or
      ``pattern`` (predict whether a node belongs to the planted pattern);
    - ``n_blocks`` communities of ``min_size..max_size`` nodes (``ood='size'``:
      ``ood_min_size..ood_max_size``);
    - ``p``, ``q``: edge probability inside / between communities (default: CLUSTER's
      0.55 / 0.25, PATTERN's 0.5 / 0.35); ``ood='pq'`` uses ``ood_p``/``ood_q`` instead;
    - ``seeds_per_block``: labelled nodes per community (``cluster``);
    - ``pattern_size``, ``pattern_p`` (edges inside the pattern), ``pattern_q`` (pattern
      to base edges) (``pattern``);
    - ``n_train`` training graphs, ``n_eval`` graphs per evaluation split;
    - ``lap_pe`` Laplacian eigenvectors, ``rwse`` random-walk steps; ``gin_steps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["cluster", "pattern"] = "cluster"
    n_blocks: int = Field(4, ge=2, le=10)
    min_size: int = Field(5, ge=2, le=100)
    max_size: int = Field(12, ge=2, le=100)
    p: float | None = Field(None, gt=0.0, le=1.0)
    q: float | None = Field(None, ge=0.0, le=1.0)
    ood: Literal["size", "pq"] = "size"
    ood_min_size: int = Field(13, ge=2, le=200)
    ood_max_size: int = Field(20, ge=2, le=200)
    ood_p: float = Field(0.45, gt=0.0, le=1.0)
    ood_q: float = Field(0.3, ge=0.0, le=1.0)
    seeds_per_block: int = Field(1, ge=1, le=10)
    pattern_size: int = Field(10, ge=2, le=50)
    pattern_p: float = Field(0.5, gt=0.0, le=1.0)
    pattern_q: float = Field(0.5, gt=0.0, le=1.0)
    n_train: int = Field(500, ge=8, le=20000)
    n_eval: int = Field(100, ge=4, le=5000)
    lap_pe: int = Field(8, ge=0, le=32)
    rwse: int = Field(0, ge=0, le=32)
    gin_steps: int = Field(300, ge=1, le=5000)

    @model_validator(mode="after")
    def _ordered(self) -> GraphSBMParams:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} must be >= min_size={self.min_size}")
        if self.ood_max_size < self.ood_min_size:
            raise ValueError(
                f"ood_max_size={self.ood_max_size} must be >= ood_min_size={self.ood_min_size}"
            )
        if self.ood == "size" and self.ood_min_size <= self.max_size:
            raise ValueError(
                f"ood_min_size={self.ood_min_size} must be > max_size={self.max_size} "
                f"(ood='size' holds larger communities out)"
            )
        if self.mode == "cluster" and self.seeds_per_block > self.min_size:
            raise ValueError(
                f"seeds_per_block={self.seeds_per_block} must be <= min_size={self.min_size}"
            )
        return self

    def pq(self, split: str) -> tuple[float, float]:
        """The edge probabilities (inside, between) of ``split``'s graphs."""
        if split == "ood" and self.ood == "pq":
            return self.ood_p, self.ood_q
        p, q = DEFAULT_PQ[self.mode]
        return (p if self.p is None else self.p, q if self.q is None else self.q)

    def sizes(self, split: str) -> tuple[int, int]:
        """The community sizes (smallest, largest) of ``split``'s graphs."""
        if split == "ood" and self.ood == "size":
            return self.ood_min_size, self.ood_max_size
        return self.min_size, self.max_size


def sbm_edges(sizes: list[int], p: float, q: float) -> torch.Tensor:
    """``edge_index`` (both directions) of an SBM graph whose blocks are consecutive
    node ranges of ``sizes`` (PyG's ``stochastic_blockmodel_graph``; torch's RNG)."""
    from torch_geometric.utils import stochastic_blockmodel_graph

    k = len(sizes)
    probs = torch.full((k, k), q)
    probs.fill_diagonal_(p)
    return stochastic_blockmodel_graph(sizes, probs)


def relabel(edge_index: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``edge_index`` with node ``i`` renamed ``perm[i]``."""
    return perm[edge_index]


def cluster_graph(rng: np.random.Generator, params: GraphSBMParams, split: str) -> Any:
    """One CLUSTER-like graph: ``x`` seed-label one-hots, ``y`` communities (module docstring)."""
    from torch_geometric.data import Data

    lo, hi = params.sizes(split)
    sizes = [int(s) for s in rng.integers(lo, hi + 1, params.n_blocks)]
    with seeded_torch(rng):
        edges = sbm_edges(sizes, *params.pq(split))
    block = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    feature = torch.zeros(len(block), dtype=torch.long)
    start = 0
    for b, s in enumerate(sizes):
        seeds = rng.choice(s, params.seeds_per_block, replace=False) + start
        feature[torch.from_numpy(seeds)] = b + 1
        start += s
    perm = torch.from_numpy(rng.permutation(len(block)))  # node i becomes perm[i]
    x = torch.zeros(len(block), params.n_blocks + 1)
    x[perm] = torch.nn.functional.one_hot(feature, params.n_blocks + 1).float()
    y = torch.zeros(len(block), dtype=torch.long)
    y[perm] = block
    return Data(x=x, y=y, edge_index=relabel(edges, perm), num_nodes=len(block))


@lru_cache(maxsize=4)
def fixed_pattern(seed: int, size: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The planted pattern of a task seed: its ``edge_index`` (both directions) and node
    feature values ``[size]`` in ``0..PATTERN_VOCAB-1``."""
    rng = rng_for(seed, 11)
    upper = np.triu(rng.random((size, size)) < p, 1)
    i, j = np.nonzero(upper)
    edges = torch.from_numpy(np.stack([np.concatenate([i, j]), np.concatenate([j, i])]))
    return edges.long(), torch.from_numpy(rng.integers(0, PATTERN_VOCAB, size)).long()


def pattern_graph(rng: np.random.Generator, params: GraphSBMParams, split: str, seed: int) -> Any:
    """One PATTERN-like graph: base SBM nodes first, then the fixed pattern, shuffled;
    ``y`` is 1 on the pattern's nodes."""
    from torch_geometric.data import Data

    lo, hi = params.sizes(split)
    sizes = [int(s) for s in rng.integers(lo, hi + 1, params.n_blocks)]
    n_base, k = sum(sizes), params.pattern_size
    with seeded_torch(rng):
        base = sbm_edges(sizes, *params.pq(split))
    p_edges, p_feat = fixed_pattern(seed, k, params.pattern_p)
    cross = np.argwhere(rng.random((n_base, k)) < params.pattern_q)
    ci = torch.from_numpy(cross[:, 0]).long()
    cj = torch.from_numpy(cross[:, 1] + n_base).long()
    edges = torch.cat([base, p_edges + n_base, torch.stack([ci, cj]), torch.stack([cj, ci])], 1)
    feat = torch.cat([torch.from_numpy(rng.integers(0, PATTERN_VOCAB, n_base)).long(), p_feat])
    n = n_base + k
    perm = torch.from_numpy(rng.permutation(n))
    x = torch.zeros(n, PATTERN_VOCAB)
    x[perm] = torch.nn.functional.one_hot(feat, PATTERN_VOCAB).float()
    y = torch.zeros(n, dtype=torch.long)
    y[perm[n_base:]] = 1
    return Data(x=x, y=y, edge_index=relabel(edges, perm), num_nodes=n)


@lru_cache(maxsize=4)
def sbm_graphs(params: GraphSBMParams, seed: int) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    """The task's graphs (train pool, then ``id``, then ``ood``) with their encodings, and
    the rows of each split."""
    out, rows = [], {}
    for split, count in (("train", params.n_train), ("id", params.n_eval),
                         ("ood", params.n_eval)):  # fmt: skip
        rng = rng_for(seed, 31, {"train": 0, "id": 1, "ood": 2}[split])
        start = len(out)
        for _ in range(count):
            if params.mode == "cluster":
                out.append(cluster_graph(rng, params, split))
            else:
                out.append(pattern_graph(rng, params, split, seed))
        rows[split] = np.arange(start, len(out))
    add_encodings(out, params.lap_pe, params.rwse, seed, chunk_nodes=RW_CHUNK)
    return tuple(out), rows


@register(
    "task",
    "graph_sbm",
    paper=BENCHMARK,
    summary="node classification on PyG stochastic-block-model graphs: the community "
    "from a few labelled seeds (CLUSTER) or the planted pattern (PATTERN); weighted "
    "accuracy; ood: larger graphs or other p/q; baselines GIN, majority",
    params=GraphSBMParams,
    caps=Capabilities(),
)
class GraphSBM(GraphTask):
    """CLUSTER/PATTERN-like node classification (see the module docstring). Metrics:
    weighted ``accuracy``, ``node_accuracy`` and ``baselines.{gin,majority}`` on the same
    nodes."""

    params: GraphSBMParams
    level = "node"

    def __init__(self, params: GraphSBMParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        self.n_classes = p.n_blocks if p.mode == "cluster" else 2
        self.n_features = p.n_blocks + 1 if p.mode == "cluster" else PATTERN_VOCAB
        self.graphs, self.split_rows = sbm_graphs(p, seed)

    def class_labels(self) -> tuple[str, ...]:
        if self.params.mode == "pattern":
            return ("base", "pattern")
        return tuple(f"community {i}" for i in range(self.n_classes))
