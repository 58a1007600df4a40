"""Dense x semi-structured sparse factorization of linear layers (DSFormer).

A weight ``W [out, in]`` is replaced by ``D S``: a small dense ``D [out, r]`` (the
layer ``second``, holding the bias) times a sparse ``S [r, in]`` (the layer ``first``)
with at most ``n`` nonzeros in every group of ``m`` consecutive inputs of each row (N:M
sparsity along ``in``, e.g. 2:4, the pattern sparse tensor cores run). It keeps
``r out + r in n / m`` weights (plus the bias) instead of ``in out``, and the positions
of the nonzeros: ``ceil(log2 C(m, n))`` bits per group of ``m`` (3 bits per group for
2:4; NVIDIA's format stores 2 bits per nonzero, 4 per group) — :func:`dense_sparse_params`,
:func:`mask_bits`.

The pattern is ``learned`` (DSFormer's Straight-Through Factorizer: the ``n`` largest
``|S|`` of each group are kept at every forward, and the gradient reaches all of ``S``
as if nothing were masked, so a pruned weight can come back) or ``fixed`` (chosen when
the layer is fitted, kept as the buffer ``mask``; pruned weights get no gradient).

Fitting (:func:`fit_dense_sparse`): the truncated SVD ``W ~ U_r s_r V_r^T`` gives
``S = sqrt(s_r) V_r^T`` and ``D = U_r sqrt(s_r)``; ``S`` is pruned to its N:M pattern,
then alternating least squares refits ``D`` given ``S`` and each column of ``S`` on its
kept rows given ``D`` (each step exact, so the error never increases). With ``n = m``
and ``r = min(in, out)`` it is the exact SVD and the layer equals the original.

Paper: "DSFormer: Effective Compression of Text-Transformers by Dense-Sparse Weight
Factorization", Chand et al., 2023.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest ``|weight|`` of every ``m`` consecutive
    entries of each row (``weight [rows, cols]``, ``cols`` a multiple of ``m``)."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // m, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def dense_sparse_params(in_features: int, out_features: int, rank: int, n: int, m: int,
                        bias: bool = True) -> int:  # fmt: skip
    """Stored weights of a dense x N:M-sparse layer: ``rank out`` dense, ``rank in n / m``
    nonzeros, and the bias (the mask's position bits are :func:`mask_bits`)."""
    return rank * out_features + rank * in_features * n // m + (out_features if bias else 0)


def mask_bits(in_features: int, rank: int, n: int, m: int) -> int:
    """Bits that record which ``n`` of each ``m`` entries of ``S`` are kept:
    ``ceil(log2 C(m, n))`` per group, ``rank in / m`` groups."""
    return rank * (in_features // m) * math.ceil(math.log2(math.comb(m, n)))


class DenseSparseLinear(nn.Module):
    """``second(x @ (first.weight * mask)^T)``: ``in_features -> rank -> out_features``
    with ``first`` N:M-sparse along its inputs and ``second`` dense (with the bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 n: int, m: int, learned: bool) -> None:  # fmt: skip
        super().__init__()
        if in_features % m:
            raise ValueError(f"in_features={in_features} is not a multiple of m={m}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.n, self.m, self.learned = n, m, learned
        self.first = nn.Linear(in_features, rank, bias=False)
        # this layer multiplies ``first.weight`` (masked) itself, never calling ``first``:
        # code that replaces or hooks linear layers (quantize, LoRA) must leave it alone
        self.first.weight_read_by_parent = "the dense x N:M-sparse layer (DSFormer) " + (
            "multiplies its weight with the sparsity mask itself, without calling it"
        )
        self.second = nn.Linear(rank, out_features, bias=bias)
        if not learned:
            self.register_buffer("mask", torch.ones(rank, in_features, dtype=torch.bool))

    def current_mask(self) -> torch.Tensor:
        """The N:M pattern this forward uses: recomputed from ``|S|`` when learned."""
        if self.learned:
            return nm_mask(self.first.weight, self.n, self.m)
        return self.mask

    def sparse_weight(self) -> torch.Tensor:
        """``S`` as the forward uses it: masked, with the straight-through gradient (to
        every entry) when the mask is learned, the masked gradient when it is fixed."""
        s = self.first.weight
        masked = s * self.current_mask()
        return s + (masked - s).detach() if self.learned else masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.linear(x, self.sparse_weight()))

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out, in]`` weight this layer computes (``D S``)."""
        return self.second.weight @ (self.first.weight * self.current_mask())

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def n_weights(self) -> int:
        """Stored weights without the bias: ``rank out + rank in n / m``."""
        return dense_sparse_params(self.in_features, self.out_features, self.rank,
                                   self.n, self.m, bias=False)  # fmt: skip

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token counting the nonzeros only (what N:M kernels run)."""
        return 2 * self.n_weights()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, sparsity={self.n}:{self.m}, "
            f"mask={'learned' if self.learned else 'fixed'}"
        )


@torch.no_grad()
def _refit_sparse(w: torch.Tensor, d: torch.Tensor, mask: torch.Tensor,
                  chunk: int = 256) -> torch.Tensor:  # fmt: skip
    """Least squares of every column of ``S`` on its kept rows given ``D``: column ``j``
    solves ``min ||W[:, j] - D[:, kept] s||`` (normal equations, rows not kept fixed at 0)."""
    rank, cols = mask.shape
    gram, rhs = d.T @ d, d.T @ w  # [r, r], [r, in]
    eye = torch.eye(rank, dtype=w.dtype, device=w.device)
    out = torch.zeros(rank, cols, dtype=w.dtype, device=w.device)
    scale = gram.diagonal().mean().clamp_min(1e-300)
    for start in range(0, cols, chunk):
        keep = mask[:, start : start + chunk].T.to(w.dtype)  # [c, r]
        g = gram * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(1 - keep)
        g = g + 1e-12 * scale * eye
        b = (rhs[:, start : start + chunk].T * keep)[..., None]
        out[:, start : start + chunk] = torch.linalg.solve(g, b)[..., 0].T * keep.T
    return out


@torch.no_grad()
def fit_dense_sparse(
    weight: torch.Tensor, rank: int, n: int, m: int, iters: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(D, S, mask)`` in float64 with ``D S ~ weight`` and ``S`` N:M-sparse along its
    columns: the SVD's factors, ``S`` pruned to its ``n`` largest per ``m``, then
    ``iters`` rounds of alternating least squares (``D``, then ``S`` under the mask)."""
    w = weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    sparse = root[:, None] * vh[:rank]
    dense = u[:, :rank] * root[None, :]
    mask = nm_mask(sparse, n, m)
    sparse = sparse * mask
    for _ in range(iters):
        dense = torch.linalg.lstsq(sparse.T, w.T).solution.T
        sparse = _refit_sparse(w, dense, mask)
    if iters:
        dense = torch.linalg.lstsq(sparse.T, w.T).solution.T
    return dense, sparse, mask


@torch.no_grad()
def dense_sparse_linear(linear: nn.Linear, rank: int, n: int, m: int, learned: bool,
                        iters: int = 0) -> DenseSparseLinear:  # fmt: skip
    """``linear`` as a :class:`DenseSparseLinear` fitted by :func:`fit_dense_sparse`."""
    dense, sparse, mask = fit_dense_sparse(linear.weight, rank, n, m, iters)
    new = DenseSparseLinear(linear.in_features, linear.out_features, rank,
                            linear.bias is not None, n, m, learned)  # fmt: skip
    new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    new.first.weight.copy_(sparse.to(linear.weight.dtype))
    new.second.weight.copy_(dense.to(linear.weight.dtype))
    if not learned:
        new.mask.copy_(mask)
    if linear.bias is not None:
        new.second.bias.copy_(linear.bias)
    return new


def relative_error(linear: nn.Module, reference: torch.Tensor) -> float:
    """``||W - reference|| / ||reference||`` (Frobenius) of a layer's computed weight."""
    ref = reference.detach().double()
    diff = linear.weight.detach().double() - ref
    return float(torch.linalg.matrix_norm(diff) / torch.linalg.matrix_norm(ref).clamp_min(1e-300))


__all__ = [
    "DenseSparseLinear",
    "dense_sparse_linear",
    "dense_sparse_params",
    "fit_dense_sparse",
    "mask_bits",
    "nm_mask",
    "relative_error",
]
