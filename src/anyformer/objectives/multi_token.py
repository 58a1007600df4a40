"""Multi-token prediction (``multi_token``).

"Better & Faster Large Language Models via Multi-token Prediction" (Gloeckle et al.,
2024): a shared trunk feeds ``k`` output heads, head ``j`` predicting the token ``j``
places ahead, all sharing the unembedding; the loss is the mean of their
cross-entropies, and the first head alone is a next-token model. FTP's per-token future
state ("Future Token Prediction", Walker, 2024) is not built.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ConfigDict, Field
from torch import nn

from anyformer.objectives.losses import CausalLM, CausalLMParams, Forward
from anyformer.objectives.tokens import masked_cross_entropy, real_positions
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch


class MultiTokenParams(CausalLMParams):
    """Parameters of ``multi_token`` (and ``causal_lm``'s ``answer_only``,
    ``label_smoothing``, which apply to the next-token head).

    - ``k``: tokens predicted at each position (the next one and ``k - 1`` further).
    - ``head_hidden``: the hidden width of each extra head's MLP, as a multiple of
      ``d_model``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(2, ge=1, le=16)
    head_hidden: float = Field(2.0, gt=0.0, le=16.0)


class ExtraHead(nn.Module):
    """Head ``j >= 2``'s own layer on the trunk's final (normed) states: a residual MLP,
    ``h + W2 gelu(W1 LN(h))``, before the model's shared head. ``W2`` starts at zero, so
    every head starts as the next-token head."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.nn.functional.gelu(self.up(self.norm(h))))


def offset_targets(
    batch: Batch, counted: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, mask)`` of the head predicting ``offset`` tokens ahead (``offset=1``:
    the task's own next-token ``targets``): at position ``t`` the target
    ``targets[t + offset - 1]``, counted when that target is (``counted``), position
    ``t`` is real and, in a packed row, both lie in one document."""
    shift = offset - 1
    t = batch.targets.shape[1]
    targets = torch.zeros_like(batch.targets)
    mask = torch.zeros_like(counted)
    if shift >= t:
        return targets, mask
    targets[:, : t - shift] = batch.targets[:, shift:]
    mask[:, : t - shift] = counted[:, shift:] & real_positions(batch)[:, : t - shift]
    segments = batch.extras.get("segments")
    if segments is not None and shift > 0:
        mask[:, : t - shift] &= segments[:, : t - shift] == segments[:, shift:]
    return targets, mask


@register(
    "objective",
    "multi_token",
    paper=Paper(
        "Better & Faster Large Language Models via Multi-token Prediction",
        2024,
        "Gloeckle et al.",
    ),
    summary="predict the next k tokens with k heads sharing the trunk and unembedding; "
    "loss = mean over the k offsets (decoder, prefix_lm)",
    params=MultiTokenParams,
    caps=Capabilities(),
)
class MultiToken(CausalLM):
    """Mean over ``j = 1..k`` of the cross-entropy of the token ``j`` places ahead.

    Head 1 is the model's own head (so ``k = 1`` is exactly ``causal_lm``); heads
    ``2..k`` are :class:`ExtraHead` layers the objective owns (:meth:`module`, trained
    with the model as ``model.objective_module``) on the trunk's final normed states
    (read from the input of ``model.head`` during the forward), each followed by the
    model's head (the shared unembedding). Evaluation (:meth:`loss`) scores the
    next-token head alone: the next-token quality the paper compares."""

    params: MultiTokenParams
    heads = ("lm",)
    kinds = ("decoder", "prefix_lm")

    def module(self, model: nn.Module) -> nn.Module | None:
        if self.params.k == 1:
            return None
        d = model.spec.d_model
        hidden = max(1, round(self.params.head_hidden * d))
        return nn.ModuleList(ExtraHead(d, hidden) for _ in range(self.params.k - 1))

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int, forward: Forward
    ) -> torch.Tensor:
        extra = getattr(model, "objective_module", None)
        if self.params.k == 1 or extra is None:
            return super().training_loss(model, batch, step, forward)
        seen: list[torch.Tensor] = []

        def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        hook = model.head.register_forward_pre_hook(grab)
        try:
            next_token = super().training_loss(model, batch, step, forward)
        finally:
            hook.remove()
        h = seen[-1]  # the final states the model's (last) head read
        counted = batch.loss_mask if self.params.answer_only else real_positions(batch)
        total = next_token
        for j, layer in enumerate(extra, start=2):
            targets, mask = offset_targets(batch, counted, j)
            total = total + masked_cross_entropy(model.head(layer(h)), targets, mask)
        return total / self.params.k
