"""Shared machinery of the graph tasks built on lists of PyTorch Geometric ``Data``.

A :class:`GraphTask` holds its graphs (PyG ``Data``, ``x`` the node features with the
Laplacian and random-walk encodings appended by :func:`~anyformer.tasks.graph_atlas.
add_encodings`), the rows of each split, and a target per graph (``level='graph'``) or
per node (``level='node'``, ``y`` of each ``Data``). Batches are padded node tokens, as
``graph_atlas``'s: ``inputs [B, N, F]``, ``padding_mask [B, N]``, ``extras['adjacency']
[B, N, N]`` and ``extras['graph']`` (indices into the task's graphs); targets are ``[B]``
(graph level, a ``classify`` head) or ``[B, N]`` with ``loss_mask`` the real nodes
(node level, a ``token_classify`` head).

Node-level metrics follow "Benchmarking Graph Neural Networks" (Dwivedi et al., 2020) for
its SBM node tasks (PATTERN, CLUSTER): ``accuracy`` is the *weighted* accuracy, the mean
over classes of each class's recall (the share of that class's nodes predicted right),
the classes being those that occur among the targets or the predictions of the split
(the benchmark's confusion-matrix rows), so a majority-class predictor scores 1/C and not
the majority's share. ``node_accuracy`` is the plain share of nodes predicted right.

Baselines on the same graphs: ``gin`` (a 3-layer GIN of PyG's ``GINConv`` trained
on the training graphs, 32 per step, node- or graph-level; Xu et al., 2019) and
``majority`` (the most common training class), the trivial predictor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from anyformer.tasks.base import SPLIT_IDS, Batch, rng_for
from anyformer.tasks.graph_atlas import dense_batch, pyg_batch, train_gin
from anyformer.tasks.plot_data import PlotData, confusion
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows

#: Graphs per training step of the GIN baseline.
GIN_BATCH = 32
#: Nodes per disjoint union the random-walk encodings are computed on.
RW_CHUNK = 256


def weighted_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """The mean per-class recall of ``pred`` against ``labels`` over the classes that occur
    in either (the weighted accuracy of Benchmarking GNNs' SBM tasks: a predicted class
    that no node has counts with recall 0)."""
    classes = np.union1d(labels, pred)
    recalls = [float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else 0.0
               for c in classes]  # fmt: skip
    return float(np.mean(recalls)) if recalls else 0.0


def node_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``accuracy`` (weighted, :func:`weighted_accuracy`) and ``node_accuracy`` (plain)."""
    return {
        "accuracy": weighted_accuracy(pred, labels),
        "node_accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
    }


class GraphTask(SupervisedTask):
    """A classification task over a fixed list of PyG graphs (see the module docstring).

    Subclasses set ``graphs``, ``split_rows`` (graph indices of ``train``, ``id``,
    ``ood``), ``level``, ``n_classes``, ``n_features`` (node feature columns before the
    encodings), and for graph level ``labels`` (one class per graph); node-level classes
    are each graph's ``y``. Parameters read here: ``lap_pe``, ``rwse``, ``gin_steps``.
    """

    input_kind: ClassVar[str] = "vectors"
    level: str = "node"
    n_features: int = 1

    def __init__(self, params: Any, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.kind = "classify"
        self.graphs: tuple[Any, ...] = ()
        self.labels = np.zeros(0, dtype=np.int64)
        self.split_rows: dict[str, np.ndarray] = {}

    def model_io(self) -> dict[str, Any]:
        p = self.params
        return {
            "input_dim": self.n_features + p.lap_pe + p.rwse,
            "embedder": {"name": "graph_nodes", "lap_pe": p.lap_pe, "rwse": p.rwse},
            "head": "token_classify" if self.level == "node" else "classify",
            "n_outputs": self.n_classes,
        }

    def max_seq_len(self) -> int:
        return max(g.num_nodes for g in self.graphs)

    # ------------------------------------------------------------ examples and batches
    def _examples(self, rows: np.ndarray) -> Examples:
        return rows, (self.labels[rows] if self.level == "graph" else rows)

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

    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        """The graphs at indices ``x`` as padded node tokens (module docstring)."""
        from torch_geometric.utils import to_dense_batch

        rows = [int(i) for i in x]
        graphs = [self.graphs[i] for i in rows]
        inputs, mask, adj = dense_batch(graphs)
        if self.level == "graph":
            targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
            loss_mask = torch.ones(len(rows), dtype=torch.bool)
        else:
            batch = torch.repeat_interleave(torch.arange(len(rows)),
                                            torch.tensor([g.num_nodes for g in graphs]))  # fmt: skip
            y_nodes = torch.cat([g.y.long() for g in graphs])
            targets, _ = to_dense_batch(y_nodes, batch, max_num_nodes=inputs.shape[1])
            loss_mask = mask.clone()
        return Batch(
            inputs=inputs,
            targets=targets,
            loss_mask=loss_mask,
            padding_mask=mask,
            extras={"adjacency": adj, "graph": torch.tensor(rows, dtype=torch.long)},
        )

    # ------------------------------------------------------------ baselines
    def _training_labels(self, rows: np.ndarray) -> np.ndarray:
        if self.level == "graph":
            return self.labels[rows]
        return torch.cat([self.graphs[int(i)].y.long() for i in rows]).numpy()

    def fitted_baselines(self) -> dict[str, Any]:
        """The GIN trained on the training graphs, once per instance (and the majority class)."""
        if self._fitted is None:
            rows = self.split_rows["train"]
            y = self._training_labels(rows)
            self._majority = int(np.bincount(y, minlength=self.n_classes).argmax())
            graphs = [self.graphs[int(i)] for i in rows]
            gin = train_gin(graphs, y, self.n_classes, self.params.gin_steps, self.seed,
                            node_level=self.level == "node", batch_graphs=GIN_BATCH)  # fmt: skip
            self._fitted = {"gin": gin}
        return self._fitted

    def baseline_predictions(self, batch: Batch) -> dict[str, np.ndarray]:
        """Class indices ``[B]`` (graph level) or ``[B, N]`` (node level; padded nodes 0)."""
        gin = self.fitted_baselines()["gin"]
        graphs = [self.graphs[int(i)] for i in batch.extras["graph"]]
        with torch.no_grad():
            pred = gin(pyg_batch(graphs)).argmax(-1)
        majority = np.full(tuple(batch.targets.shape), self._majority)
        if self.level == "graph":
            return {"gin": pred.numpy(), "majority": majority}
        dense = torch.zeros(batch.targets.shape, dtype=torch.long)
        dense[batch.padding_mask] = pred
        return {"gin": dense.numpy(), "majority": majority}

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        """A baseline's answers as one-hot logits ``[B, n_classes]`` or ``[B, N, n_classes]``."""
        return [
            torch.nn.functional.one_hot(
                torch.from_numpy(self.baseline_predictions(b)[name]).long(), self.n_classes
            ).float()
            for b in batches
        ]

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Graph level: ``accuracy``. Node level: weighted ``accuracy`` and
        ``node_accuracy`` over the real nodes (module docstring); both with
        ``baselines.{gin,majority}`` on the same graphs, and ``examples`` counted."""
        if self.level == "graph":
            return super().score(outputs, batches)
        real = [b.loss_mask.bool() for b in batches]
        labels = torch.cat([b.targets[m] for b, m in zip(batches, real)]).numpy()
        pred = torch.cat([o.argmax(-1)[m.to(o.device)].cpu() for o, m in zip(outputs, real)])
        base: dict[str, list[np.ndarray]] = {}
        for batch, m in zip(batches, real):
            for name, p in self.baseline_predictions(batch).items():
                base.setdefault(name, []).append(p[m.numpy()])
        return {
            **node_metrics(pred.numpy(), labels),
            "examples": int(labels.shape[0]),
            "graphs": int(sum(b.targets.shape[0] for b in batches)),
            "baselines": {n: node_metrics(np.concatenate(ps), labels) for n, ps in base.items()},
        }

    def plot_data(
        self, split: str, outputs: list[torch.Tensor], batches: list[Batch]
    ) -> PlotData | None:
        """The confusion matrix of the predicted classes (over real nodes at node level)."""
        if self.level == "graph":
            return super().plot_data(split, outputs, batches)
        real = [b.loss_mask.bool() for b in batches]
        labels = torch.cat([b.targets[m] for b, m in zip(batches, real)]).numpy()
        pred = torch.cat([o.argmax(-1)[m.to(o.device)].cpu() for o, m in zip(outputs, real)])
        return confusion(split, labels, pred.numpy(), self.n_classes, self.class_labels())


def split_by_permutation(
    n_rows: int, seed: int, id_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, id)`` rows of ``n_rows`` examples: a permutation drawn from ``seed``, the
    first ``id_fraction`` (at least one) held out, each part sorted."""
    perm = rng_for(seed, 7).permutation(n_rows)
    n_id = max(1, round(n_rows * id_fraction))
    return np.sort(perm[n_id:]), np.sort(perm[:n_id])


@contextmanager
def seeded_torch(rng: np.random.Generator) -> Iterator[None]:
    """A context in which torch's and NumPy's global RNGs are seeded from ``rng`` and
    restored after (PyG's generators draw from both: ``barabasi_albert_graph`` calls
    ``np.random.choice``)."""
    seed = int(rng.integers(0, 2**31 - 1))
    state = np.random.get_state()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(state)


__all__ = [
    "GIN_BATCH",
    "RW_CHUNK",
    "GraphTask",
    "node_metrics",
    "seeded_torch",
    "split_by_permutation",
    "weighted_accuracy",
]
