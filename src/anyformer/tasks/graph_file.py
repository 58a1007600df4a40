"""A user's own graphs (``graph_file``): a list of PyTorch Geometric ``Data`` objects
saved with ``torch.save`` (``task.path=FILE``).

The file is read with ``torch.load(weights_only=True)`` and, for the duration of the
load only, PyG's data classes added to the allowed globals (``Data``, its
``DataEdgeAttr``/``DataTensorAttr`` and ``GlobalStorage``; what ``torch.save`` writes
for a ``Data``). Nothing else is unpickled: a file that would need any other global
(a plain pickled object, a ``__reduce__`` that calls a function) is refused with a
``SpecError`` (exit 2) naming ``task.path`` before any of its code runs. PyG's own
``torch_geometric.io.fs.torch_load`` falls back to ``weights_only=False`` in that case;
this task never does. The file may be at most :data:`MAX_BYTES` bytes.

Parameters choose what is learned: ``level`` ``graph`` (one class per graph, the
attribute ``target`` of each ``Data``, a single integer) or ``node`` (one class per
node, ``target`` a ``[num_nodes]`` integer tensor); ``features`` names the node feature
attribute (``[num_nodes, F]``, or ``[num_nodes]``; ``none``: a constant 1 per node).
Every graph needs ``edge_index`` (``[2, E]`` integers within its nodes; edges are used
as given, so give both directions for an undirected graph). Each refusal names the
field, the graph index and what was found.

Splits: the ``ood_fraction`` largest graphs (by node count, ties by index) are ``ood``;
the others are divided between training and ``id`` by a permutation drawn from the seed
(``id_fraction`` to ``id``). Baselines: GIN (PyG ``GINConv``; graph- or node-level) and
the majority class; node-level accuracy is the weighted accuracy of
:mod:`anyformer.tasks.graph_data`.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.errors import SpecError
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.graph_atlas import add_encodings
from anyformer.tasks.graph_data import RW_CHUNK, GraphTask, split_by_permutation

PYG = Paper("Fast Graph Representation Learning with PyTorch Geometric", 2019, "Fey & Lenssen")
#: The largest file read.
MAX_BYTES = 500_000_000
#: The most classes a target may have.
MAX_CLASSES = 1000


class GraphFileParams(BaseModel):
    """- ``path``: a ``torch.save`` file holding a list of PyG ``Data``;
    - ``level``: ``graph`` or ``node``; ``target``: the attribute holding the classes;
    - ``features``: the node feature attribute (``none``: a constant 1 per node);
    - ``id_fraction`` of the other graphs held out for ``id``; ``ood_fraction``: the
      largest graphs, held out for ``ood``;
    - ``lap_pe`` Laplacian eigenvectors, ``rwse`` random-walk steps; ``gin_steps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    level: Literal["graph", "node"] = "graph"
    target: str = Field("y", min_length=1, max_length=100)
    features: str = Field("x", min_length=1, max_length=100)
    id_fraction: float = Field(0.2, gt=0.0, le=0.5)
    ood_fraction: float = Field(0.2, gt=0.0, le=0.5)
    lap_pe: int = Field(4, ge=0, le=32)
    rwse: int = Field(8, ge=0, le=32)
    gin_steps: int = Field(300, ge=1, le=5000)


def safe_globals() -> list[Any]:
    """The classes a ``torch.save`` of PyG ``Data`` objects needs beyond tensors."""
    from torch_geometric.data import Data
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]


def load_graphs(path: str) -> list[Any]:
    """The PyG ``Data`` list in ``path`` (module docstring); refusals are ``SpecError``s
    naming ``task.path``."""
    from torch_geometric.data import Data

    where = f"task.path={path}"
    if not os.path.exists(path):
        raise SpecError(f"{where}: no such file")
    if not os.path.isfile(path):
        raise SpecError(f"{where}: not a regular file")
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise SpecError(f"{where}: {size} bytes, more than the {MAX_BYTES} a graph file may have")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it names {found.group(1)}" if found else "it is not tensors and PyG Data"
        raise SpecError(
            f"{where}: refused, loading it could run code ({what}); only a torch.save "
            f"of a list of torch_geometric.data.Data is read (weights_only)"
        ) from None
    except Exception as exc:  # not a torch.save file at all, truncated, ...
        raise SpecError(
            f"{where}: not a torch.save file of PyG Data ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, Data):
        obj = [obj]
    if not isinstance(obj, (list, tuple)) or not obj:
        raise SpecError(
            f"{where}: holds {type(obj).__name__}"
            f"{' (empty)' if isinstance(obj, (list, tuple)) else ''}; "
            f"expected a non-empty list of torch_geometric.data.Data"
        )
    for i, g in enumerate(obj):
        if not isinstance(g, Data):
            raise SpecError(f"{where}: item {i} is a {type(g).__name__}, not a PyG Data")
    return list(obj)


def _check_graph(i: int, g: Any, params: GraphFileParams) -> tuple[Any, torch.Tensor]:
    """Graph ``i`` as a plain ``Data(x, edge_index, num_nodes)`` and its target."""
    from torch_geometric.data import Data

    where = f"task.path={params.path}: graph {i}"
    n = g.num_nodes
    if n is None or n < 1:
        raise SpecError(f"{where} has no nodes")
    edges = g.edge_index
    if not isinstance(edges, torch.Tensor) or edges.dim() != 2 or edges.shape[0] != 2:
        raise SpecError(f"{where}: edge_index must be a [2, E] tensor, got {_shape(edges)}")
    if edges.is_floating_point() or (edges.numel() and (edges.min() < 0 or edges.max() >= n)):
        raise SpecError(f"{where}: edge_index must hold integer node ids in 0..{n - 1}")
    if params.features == "none":
        x = torch.ones(n, 1)
    else:
        x = getattr(g, params.features, None)
        if not isinstance(x, torch.Tensor) or x.shape[:1] != (n,) or x.dim() > 2:
            raise SpecError(
                f"{where}: task.features='{params.features}' must name a [num_nodes={n}, F] "
                f"tensor attribute, got {_shape(x)} (task.features=none: a constant feature)"
            )
        x = x.float().reshape(n, -1)
        if not torch.isfinite(x).all():
            raise SpecError(f"{where}: task.features='{params.features}' holds NaN or inf")
    y = getattr(g, params.target, None)
    want = (n,) if params.level == "node" else (1,)
    if isinstance(y, int) and not isinstance(y, bool):
        y = torch.tensor([y])
    if not isinstance(y, torch.Tensor) or tuple(y.reshape(-1).shape) != want:
        raise SpecError(
            f"{where}: task.target='{params.target}' must be {'one class per node' if params.level == 'node' else 'one class per graph'} "  # noqa: E501
            f"(shape {list(want)}) for task.level={params.level}, got {_shape(y)}"
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.min() < 0 or y.max() >= MAX_CLASSES:
        raise SpecError(
            f"{where}: task.target='{params.target}' must hold integer classes in "
            f"0..{MAX_CLASSES - 1} (regression targets are not supported)"
        )
    return Data(x=x, edge_index=edges.long(), num_nodes=n), y.reshape(-1).long()


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return "nothing" if value is None else f"a {type(value).__name__}"


@register(
    "task",
    "graph_file",
    paper=PYG,
    summary="your own graphs: a torch.save list of PyG Data (weights_only load), graph- or "
    "node-level classes of a chosen attribute; ood: the largest graphs; baselines GIN, majority",
    params=GraphFileParams,
    caps=Capabilities(),
)
class GraphFile(GraphTask):
    """Graph or node classification on a user's PyG graphs (see the module docstring)."""

    params: GraphFileParams

    def __init__(self, params: GraphFileParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        self.level = p.level
        graphs, targets = zip(*(_check_graph(i, g, p) for i, g in enumerate(load_graphs(p.path))))
        widths = {g.x.shape[1] for g in graphs}
        if len(widths) > 1:
            raise SpecError(
                f"task.path={p.path}: task.features='{p.features}' has {sorted(widths)} "
                f"columns in different graphs; every graph needs the same"
            )
        if len(graphs) < 3:
            raise SpecError(
                f"task.path={p.path}: {len(graphs)} graphs; at least 3 are needed "
                f"(training, id and ood)"
            )
        self.n_features = widths.pop()
        for g, y in zip(graphs, targets):
            g.y = y
        if p.level == "graph":
            self.labels = np.array([int(y[0]) for y in targets])
        self.n_classes = max(2, int(max(int(y.max()) for y in targets)) + 1)
        graphs = list(graphs)
        add_encodings(graphs, p.lap_pe, p.rwse, seed=0, chunk_nodes=RW_CHUNK)
        self.graphs = tuple(graphs)
        sizes = np.array([g.num_nodes for g in graphs])
        n_ood = max(1, round(len(graphs) * p.ood_fraction))
        by_size = np.lexsort((np.arange(len(graphs)), sizes))  # ascending, ties by index
        ood, rest = np.sort(by_size[-n_ood:]), np.sort(by_size[:-n_ood])
        train, held = split_by_permutation(len(rest), seed, p.id_fraction)
        self.split_rows = {"train": rest[train], "id": rest[held], "ood": ood}
