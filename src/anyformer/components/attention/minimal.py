"""Minimal attention from "Reducing the Transformer Architecture to a Minimum"
(Bermeitinger et al., 2024): one query-key matrix per head (``collapsed``) and a
symmetric similarity (``symmetric``).

Softmax attention scores token pairs with x_i W_Q W_K^T x_j^T; only the product
W_QK = W_Q W_K^T matters, so it can be learned as one matrix. A symmetric W_QK makes
the similarity symmetric (token i is as similar to j as j to i) and needs only half of
the parameters.

``width`` chooses what one head's W_QK acts on:

- ``model``: the whole token, W_QK in R^{d_model x d_model} per head. This is exactly
  the set of products W_Q W_K^T of softmax attention (of any rank), but costs
  ``n_heads * d_model^2`` parameters (more than W_Q and W_K once n_heads > 2);
- ``head``: the head's own ``d_head``-slice of the token, W_QK in R^{d_head x d_head}
  per head (``d_model^2 / n_heads`` parameters, the parameter-saving reading).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.attention.common import Impl, ImplCheck, attend, merge_heads, split_heads
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register

PAPER = Paper("Reducing the Transformer Architecture to a Minimum", 2024, "Bermeitinger et al.")

#: Standard deviation of the directly-held matrices (the model's default ``init_std``).
INIT_STD = 0.02

Width = Literal["model", "head"]


class _MinimalBase(nn.Module):
    """Value and output projections, and the per-head view of the input that W_QK acts on.

    Not built on the shared :func:`~anyformer.components.attention.qkv.qkv_projection`:
    queries and keys come from one W_QK per head (the point of these variants), so only
    the value projection is an ordinary linear map.

    Attention goes through :func:`~anyformer.components.attention.common.attend`, so both
    variants decode with a KV cache (the cached keys are the key vectors of each head)
    and accept packed rows."""

    def __init__(self, dims: Dims, width: Width, impl: Impl) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.d_model = dims.d_model
        self.width = width
        self.impl = impl
        self.dropout = dims.dropout
        self.span = dims.d_model if width == "model" else dims.d_head
        self.value = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    def token_view(self, x: torch.Tensor) -> torch.Tensor:
        """What each head's W_QK acts on: ``[B, H, T, span]`` (the whole token repeated,
        or the head's slice)."""
        if self.width == "head":
            return split_heads(x, self.n_heads)
        b, t, d = x.shape
        return x.unsqueeze(1).expand(b, self.n_heads, t, d)

    def query_key(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Similarity scores ``[B, H, T, T]`` before position bias and masks."""
        q, k = self.query_key(x)
        return q @ k.transpose(-1, -2) / math.sqrt(self.d_head)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k = self.query_key(x)
        v = split_heads(self.value(x), self.n_heads)
        scale = 1.0 / math.sqrt(self.d_head)
        y = attend(q, k, v, ctx, self.impl, self.dropout, self.training, scale=scale)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """W_QK, value and output projections; scores over ``span`` channels; weighted sum."""
        proj = 2 * self.n_heads * self.span * self.span + 4 * self.d_model * self.d_model
        return proj + 2 * seq_len * self.n_heads * (self.span + self.d_head)


# --------------------------------------------------------------------------- collapsed
class CollapsedParams(BaseModel):
    """``width``: ``model`` (W_QK acts on the whole token, d_model x d_model per head) or
    ``head`` (on the head's d_head-slice, d_head x d_head per head).
    ``impl``: ``fast`` (fused kernel) or ``reference`` (explicit softmax), tested equal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"width": "head"})
    width: Width = "model"
    impl: Impl = "fast"


@register(
    "attention",
    "collapsed",
    paper=PAPER,
    summary="one query-key matrix per head: scores x_i W_QK x_j^T instead of separate "
    "query and key projections",
    params=CollapsedParams,
    caps=Capabilities(
        packing=True,
        complexity="O(n^2)",
        kv_cache=True,
        prefix=True,
        position_modes=("none", "embed", "bias"),
    ),
)
class CollapsedAttention(_MinimalBase):
    """softmax((x W_QK^h + b^h) x^T / sqrt(d_head) + B) (x W_V^h) per head h, then W_O.

    W_QK^h replaces W_Q^h (W_K^h)^T. The optional bias b^h (``model.bias``) is a key
    term b^h . x_j: the collapsed form of the query and key biases (the query-only terms
    cancel in the softmax), so any softmax attention folds into this one exactly.

    Paper: "Reducing the Transformer Architecture to a Minimum", Bermeitinger et al., 2024.
    Not supported: rotary positions (there are no separate query and key vectors of
    d_head channels to rotate; use ``embed`` or ``bias`` schemes) and the paper's
    further removal of W_V and W_O.
    """

    def __init__(self, dims: Dims, params: CollapsedParams) -> None:
        super().__init__(dims, params.width, params.impl)
        h, m = dims.n_heads, self.span
        if params.width == "model":
            self.qk = nn.Linear(dims.d_model, h * m, bias=dims.bias)
        else:
            self.qk_weight = nn.Parameter(torch.randn(h, m, m) * INIT_STD)
            self.qk_bias = nn.Parameter(torch.zeros(h, m)) if dims.bias else None

    def query_key(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x W_QK + b, x) per head, each ``[B, H, T, span]``."""
        keys = self.token_view(x)
        if self.width == "model":
            return split_heads(self.qk(x), self.n_heads), keys
        q = keys @ self.qk_weight.unsqueeze(0)
        if self.qk_bias is not None:
            q = q + self.qk_bias[None, :, None, :]
        return q, keys


# --------------------------------------------------------------------------- symmetric
class SymmetricParams(BaseModel):
    """``form``: ``cholesky`` (W_QK = L L^T with L lower-triangular: symmetric positive
    semi-definite, so every token is at least as similar to itself as its scores allow,
    the paper's parameterisation) or ``symmetrized`` (W_QK = (L + L^T) / 2: any symmetric
    matrix). Both hold only the m(m+1)/2 entries of L.
    ``width``: ``model`` or ``head`` (see the module docstring).
    ``impl``: ``fast`` (fused kernel) or ``reference`` (explicit softmax), tested equal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    IMPL_CHECK: ClassVar[ImplCheck] = ({}, {"form": "symmetrized", "width": "head"})
    form: Literal["cholesky", "symmetrized"] = "cholesky"
    width: Width = "model"
    impl: Impl = "fast"


@register(
    "attention",
    "symmetric",
    paper=PAPER,
    summary="a symmetric query-key matrix per head (L L^T from a triangular L): symmetric "
    "similarity with half the parameters",
    params=SymmetricParams,
    caps=Capabilities(
        packing=True,
        complexity="O(n^2)",
        kv_cache=True,
        prefix=True,
        position_modes=("none", "embed", "bias"),
    ),
)
class SymmetricAttention(_MinimalBase):
    """softmax(x W^h x^T / sqrt(d_head) + B) (x W_V^h) per head h, W^h symmetric, then W_O.

    The similarity x_i W^h x_j^T equals x_j W^h x_i^T, so the score matrix is symmetric
    before position bias and masks. Each head holds the packed lower triangle of L^h;
    ``cholesky`` computes z = x L and scores z z^T; ``symmetrized`` uses (L + L^T)/2.
    No bias term (it would break the symmetry).

    Paper: "Reducing the Transformer Architecture to a Minimum", Bermeitinger et al., 2024.
    Not supported: rotary positions (a rotation by position makes the similarity
    asymmetric), the paper's removal of W_V and W_O.
    """

    def __init__(self, dims: Dims, params: SymmetricParams) -> None:
        super().__init__(dims, params.width, params.impl)
        self.form = params.form
        m = self.span
        rows, cols = torch.tril_indices(m, m)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.tril = nn.Parameter(torch.randn(dims.n_heads, rows.numel()) * INIT_STD)

    def lower(self) -> torch.Tensor:
        """The lower-triangular factors L, ``[H, span, span]``."""
        m = self.span
        factor = self.tril.new_zeros(self.n_heads, m, m)
        factor[:, self.rows, self.cols] = self.tril
        return factor

    def matrix(self) -> torch.Tensor:
        """The symmetric W_QK of every head, ``[H, span, span]``."""
        factor = self.lower()
        if self.form == "cholesky":
            return factor @ factor.transpose(-1, -2)
        return (factor + factor.transpose(-1, -2)) / 2

    def query_key(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.token_view(x)
        if self.form == "cholesky":
            z = tokens @ self.lower().unsqueeze(0)
            return z, z
        return tokens @ self.matrix().unsqueeze(0), tokens


__all__ = ["CollapsedAttention", "SymmetricAttention"]
