"""The fused query/key/value projection the attention variants share, and the base class
of the variants that keep the usual projections around their own attention.

One ``nn.Linear`` maps a token to every head of every part at once (``d_model ->
sum(groups) * d_head``): the columns hold the heads of the first part (the queries),
then those of the second (the keys), and so on, each head ``d_head`` wide. That is the
layout ``softmax`` has always used, so the parameter is still called ``qkv`` in every
variant and checkpoints load unchanged. The layer stays a plain ``nn.Linear`` (decoding
runs plain linears from column-major weight copies); the head layout travels with it as
the attribute ``head_groups``.

Registers nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from anyformer.registry import Dims


def qkv_projection(
    dims: Dims, kv_heads: int | None = None, parts: int = 3, groups: Sequence[int] | None = None
) -> nn.Linear:
    """The fused projection ``d_model -> sum(groups) * d_head`` (bias per ``dims.bias``).

    ``groups`` is the number of heads of each part; by default ``n_heads`` queries, then
    ``parts - 1`` parts of ``kv_heads`` heads each (``kv_heads`` defaults to ``n_heads``;
    fewer gives grouped/multi-query keys and values). :func:`project_qkv` splits its
    output."""
    if groups is None:
        kv = kv_heads or dims.n_heads
        groups = (dims.n_heads, *([kv] * (parts - 1)))
    linear = nn.Linear(dims.d_model, sum(groups) * dims.d_head, bias=dims.bias)
    linear.head_groups = tuple(groups)
    return linear


def head_groups(qkv: nn.Module) -> tuple[int, ...]:
    """The head layout of a :func:`qkv_projection`, also through a wrapper that keeps the
    layer as ``base_layer`` (peft's LoRA layers)."""
    layer = qkv
    while not hasattr(layer, "head_groups") and hasattr(layer, "base_layer"):
        layer = layer.base_layer
    return layer.head_groups  # type: ignore[return-value]


def project_qkv(
    qkv: nn.Linear, x: torch.Tensor, heads_first: bool = True
) -> tuple[torch.Tensor, ...]:
    """Apply a :func:`qkv_projection` to ``x [..., T, D]`` and split it into its parts.

    Each part is ``[..., H_i, T, d_head]`` (``heads_first``, what attention kernels take)
    or ``[..., T, H_i, d_head]`` (heads next to the channels, as a one-token recurrent
    step over ``x [B, D]`` wants: ``[B, H_i, d_head]``)."""
    groups: tuple[int, ...] = head_groups(qkv)
    heads = qkv(x).unflatten(-1, (sum(groups), -1))  # [..., T, sum(groups), d_head]
    if heads_first:  # one transpose, then views of it (as few ops as decoding allows)
        return heads.transpose(-3, -2).split(groups, dim=-3)
    return heads.split(groups, dim=-2)


def linear_flops(*layers: nn.Linear) -> int:
    """Forward FLOPs per token of the given linear layers (a multiply and an add per weight;
    a factorized layer counts the weights it reports with ``n_weights()``: ``rank (in +
    out)`` for low-rank SVD factors, the nonzeros for dense x N:M-sparse ones)."""
    return sum(
        2 * layer.n_weights()
        if hasattr(layer, "n_weights")
        else 2 * layer.in_features * layer.out_features
        for layer in layers
    )


class QKVHeads(nn.Module):
    """Base of the variants that keep the usual fused q/k/v projection and an output
    projection: ``qkv: d_model -> (n_heads + 2 kv_heads) d_head`` (q, k, v in that order)
    and ``out: d_model -> d_model`` (a residual projection), created in that order."""

    def __init__(self, dims: Dims, kv_heads: int | None = None) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.kv_heads = kv_heads or dims.n_heads
        self.d_head = dims.d_head
        self.dropout = dims.dropout
        self.qkv = qkv_projection(dims, self.kv_heads)
        self.out = nn.Linear(dims.n_heads * dims.d_head, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[B, H, T, d_head]``, k and v ``[B, kv_heads, T, d_head]``."""
        q, k, v = project_qkv(self.qkv, x)
        return q, k, v

    def projection_flops(self) -> int:
        """Forward FLOPs per token of the q/k/v and output projections."""
        return linear_flops(self.qkv, self.out)

    def flops_per_token(self, seq_len: int) -> int:
        """Projections plus scores and weighted sum over ``seq_len`` keys."""
        return self.projection_flops() + 4 * seq_len * self.n_heads * self.d_head


__all__ = ["QKVHeads", "head_groups", "linear_flops", "project_qkv", "qkv_projection"]
