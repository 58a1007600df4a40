"""Pure tensor operations for graphs held as padded node tokens.

A batch of graphs reaches the model dense: node states ``x [B, N, D]`` with a
``padding_mask [B, N]`` (True at real nodes), the adjacency ``[B, N, N]`` bool
(``adjacency[b, i, j]``: an edge from node j to node i) and, optionally, edge states
``[B, N, N, E]`` (zero off the edges). Message-passing layers (PyTorch Geometric's) take
the sparse form instead: the real nodes stacked ``[n_nodes, D]`` and ``edge_index
[2, n_edges]`` (row 0 the source j, row 1 the target i, PyG's ``flow='source_to_target'``).
:func:`sparse_graph` converts one way with plain indexing (the inverse of PyG's
``to_dense_batch``/``to_dense_adj``), :meth:`SparseGraph.to_dense` the other.

Also here: :func:`masked_batch_norm`, BatchNorm whose statistics count only the real
positions of a mask (padded nodes, non-edges), and the *token mask scope* through which
a model tells such norms which tokens are real (norms see only ``x``).

Registers nothing; imports nothing but torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SparseGraph:
    """The sparse (PyG) view of a padded batch of graphs.

    - ``node_index [n_nodes]``: flat index ``b * N + i`` of each real node, row-major
      (PyG's node order of the same graphs batched with ``Batch.from_data_list``);
    - ``batch [n_nodes]``: the graph of each real node (PyG's ``batch`` vector);
    - ``edge_index [2, n_edges]``: source and target of each edge in the stacked node
      numbering, ordered by graph, then target, then source;
    - ``edge_flat [n_edges]``: flat index ``(b * N + i) * N + j`` of each edge in the dense
      ``[B, N, N]`` layout (to gather dense edge states);
    - ``shape``: ``(B, N)``.
    """

    node_index: torch.Tensor
    batch: torch.Tensor
    edge_index: torch.Tensor
    edge_flat: torch.Tensor
    shape: tuple[int, int]

    @property
    def n_nodes(self) -> int:
        return int(self.node_index.numel())

    def nodes(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, ...]`` -> the real nodes' rows ``[n_nodes, ...]``."""
        return x.flatten(0, 1).index_select(0, self.node_index)

    def edges(self, e: torch.Tensor) -> torch.Tensor:
        """Dense edge states ``[B, N, N, E]`` -> ``[n_edges, E]`` in ``edge_index`` order."""
        return e.flatten(0, 2).index_select(0, self.edge_flat)

    def to_dense(self, h: torch.Tensor) -> torch.Tensor:
        """Node rows ``[n_nodes, ...]`` -> ``[B, N, ...]``, zeros at padded nodes."""
        b, n = self.shape
        out = h.new_zeros((b * n, *h.shape[1:]))
        return out.index_copy(0, self.node_index, h).unflatten(0, (b, n))


def sparse_graph(adjacency: torch.Tensor, padding_mask: torch.Tensor | None) -> SparseGraph:
    """The :class:`SparseGraph` of ``adjacency [B, N, N]`` (bool, ``[b, i, j]``: edge
    j -> i) over the real nodes of ``padding_mask [B, N]`` (``None``: all real). Edges
    touching a padded node are dropped."""
    b, n, _ = adjacency.shape
    device = adjacency.device
    real = (
        torch.ones(b, n, dtype=torch.bool, device=device)
        if padding_mask is None
        else padding_mask.to(device=device, dtype=torch.bool)
    )
    flat_real = real.reshape(-1)
    node_index = flat_real.nonzero().squeeze(1)
    # stacked id of every dense node (-1 at padding)
    ids = torch.full((b * n,), -1, dtype=torch.long, device=device)
    ids[node_index] = torch.arange(node_index.numel(), device=device)
    adj = adjacency.bool()
    if padding_mask is not None:
        adj = adj & (real[:, :, None] & real[:, None, :])
    b_idx, i_idx, j_idx = adj.nonzero(as_tuple=True)  # row-major: graph, target, source
    target = b_idx * n + i_idx
    edge_flat = target * n + j_idx
    edge_index = torch.stack([ids[b_idx * n + j_idx], ids[target]])
    return SparseGraph(node_index, node_index // n, edge_index, edge_flat, (b, n))


def context_sparse_graph(ctx: object) -> SparseGraph:
    """:func:`sparse_graph` of a mixer context's ``adjacency`` and ``padding_mask``,
    computed once per forward pass: the first call stores it on the context object
    (attribute ``_sparse_graph``) and every later layer of the same pass reuses it."""
    cached = getattr(ctx, "_sparse_graph", None)
    if cached is None:
        cached = sparse_graph(ctx.adjacency, ctx.padding_mask)  # type: ignore[attr-defined]
        object.__setattr__(ctx, "_sparse_graph", cached)
    return cached


def masked_batch_norm(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """BatchNorm over the last axis of ``x [..., C]`` whose batch statistics (training)
    count only the positions where ``mask`` (``x.shape[:-1]``, bool) is True; the running
    statistics are updated from those alone. Real positions are normalised exactly as
    ``F.batch_norm`` would normalise the real rows alone, so padding (how much, and what
    it holds) changes nothing; masked positions come out 0. ``mask=None``: plain
    BatchNorm over every position."""
    c = x.shape[-1]
    flat = x.reshape(-1, c)
    if mask is None:
        return F.batch_norm(
            flat, running_mean, running_var, weight, bias, training, momentum, eps
        ).view_as(x)
    where = mask.reshape(-1).to(device=x.device, dtype=torch.bool)
    if bool(where.all()):
        return masked_batch_norm(
            x, None, running_mean, running_var, weight, bias, training, momentum, eps
        )
    index = where.nonzero().squeeze(1)
    rows = flat.index_select(0, index)
    if rows.shape[0] == 0:
        return torch.zeros_like(x)
    if training and rows.shape[0] == 1:  # one real row: no variance to estimate
        training = False
    y = F.batch_norm(rows, running_mean, running_var, weight, bias, training, momentum, eps)
    return flat.new_zeros(flat.shape).index_copy(0, index, y).view_as(x)


#: The real tokens ``[B, T]`` of the forward pass under way (``None``: all real or none
#: declared); set by the model around its blocks, read by norms that mask padding.
_TOKEN_MASK: ContextVar[torch.Tensor | None] = ContextVar("anyformer_token_mask", default=None)


@contextmanager
def token_mask_scope(mask: torch.Tensor | None) -> Iterator[None]:
    """Declare ``mask [B, T]`` (True at real tokens) the token mask of the code inside
    (a model's forward over padded rows), for :func:`current_token_mask`."""
    token = _TOKEN_MASK.set(mask)
    try:
        yield
    finally:
        _TOKEN_MASK.reset(token)


def current_token_mask(x: torch.Tensor) -> torch.Tensor | None:
    """The declared token mask when it fits ``x [B, T, ...]`` (same ``B, T``), else
    ``None`` (no scope, or a tensor of another shape: a norm over something else)."""
    mask = _TOKEN_MASK.get()
    if mask is None or x.dim() < 3 or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask


__all__ = [
    "SparseGraph",
    "context_sparse_graph",
    "current_token_mask",
    "masked_batch_norm",
    "sparse_graph",
    "token_mask_scope",
]
