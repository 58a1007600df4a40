"""Parameter and FLOP accounting that respects weight sharing."""

from __future__ import annotations

from torch import nn


def count_params(module: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> int:
    """Number of distinct parameters (shared tensors counted once), minus ``exclude``'s."""
    skip = {id(p) for m in exclude for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def forward_flops_per_token(module: nn.Module, seq_len: int) -> int:
    """Forward-pass FLOPs per token, counting 2 per multiply-add in matrix products.

    A module that defines ``flops_per_token(seq_len)`` reports for itself and its
    children (attention adds its score terms that way); otherwise linear layers
    count ``2 * in * out`` and containers sum their children, each child once. This
    is one execution of ``module``; repeated executions are counted by the depth
    schedule, whose ``forward_flops`` (:mod:`anyformer.model.depth`) adds a block's
    count once per execution in its order, so a block run k times counts k times.
    Elementwise work (norms, activations) is ignored.
    """
    own = getattr(module, "flops_per_token", None)
    if callable(own):
        return int(own(seq_len))
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    return sum(forward_flops_per_token(child, seq_len) for child in module.children())
