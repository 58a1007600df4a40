"""The base class of depth schedules: which of a model's distinct blocks run, how often
and in what order.

A model builds ``model.n_layers`` *distinct* blocks (``model.blocks``; per-layer
overrides ``model.layers.<i>`` index these), and its depth schedule decides how they
run. A schedule is registered in the ``depth`` slot and built as ``cls(spec, params)``
(it sees the whole :class:`~anyformer.spec.ModelSpec`, since a schedule may add heads);
an optional ``check_spec(params, spec) -> str | None`` rejects combinations it cannot
serve, naming the field and what would be valid. Its forward is::

    schedule(model, x, ctx, inputs) -> ModelOutput

where ``x`` is the embedded input ``[B, T, D]`` (positions added, dropout applied),
``ctx`` the mixers' :class:`~anyformer.components.base.Context`, ``inputs`` the model's
raw inputs and the :class:`~anyformer.model.output.ModelOutput` carries what the model
returns (``model.readout`` applies the final norm, pooling and head) and any extra
outputs (exits, loss-window iterates, blocks executed). A schedule keeps nothing of a
call on itself. Schedules hold no block weights, so a model with the default ``stack``
has exactly the parameters and state-dict keys it had before schedules existed. Weight
sharing is therefore automatic in parameter counts (a tensor is counted once); FLOPs
come from :meth:`DepthSchedule.forward_flops`, which counts every block *execution*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.base import Context
from anyformer.model.flops import forward_flops_per_token
from anyformer.model.output import ModelOutput

if TYPE_CHECKING:
    from anyformer.model.transformer import Transformer
    from anyformer.spec import ModelSpec


def frozen() -> ConfigDict:
    """The pydantic config of every schedule's parameters: no unknown keys, immutable."""
    return ConfigDict(extra="forbid", frozen=True)


class DepthSchedule(nn.Module):
    """Base class: runs the blocks listed by :meth:`order`, then the model's readout.

    Its registry capabilities say what it allows: ``kv_cache``, whether incremental
    decoding with a cache is possible (the cache keys its slots by mixer call order, so
    a fixed schedule is fine; one whose depth varies per step, or that re-runs the
    prefix, leaves it False and ``generate`` recomputes the whole sequence instead);
    ``packing``, whether packed rows (``ctx.segments``) may run through it (the blocks
    keep documents apart; a schedule that moves tokens across positions leaves it False
    and :meth:`~anyformer.spec.ModelSpec.packing_problem` refuses packing).

    A subclass usually overrides :meth:`order` (a fixed sequence of blocks) or
    :meth:`forward` (returning a :class:`ModelOutput`; a bare tensor is taken as its
    ``logits``).
    """

    def __init__(self, spec: ModelSpec, params: BaseModel) -> None:
        super().__init__()
        self.n_layers = spec.n_layers
        self.params = params

    @property
    def several_outputs(self) -> bool:
        """Whether a training forward returns several outputs to average the loss over
        (``ModelOutput.extra_logits``: early exits, a looped loss window); read from the
        parameters, fixed for the schedule's life."""
        return False

    def order(self, training: bool) -> list[int]:
        """Indices of the distinct blocks run by one forward pass, in order."""
        return list(range(self.n_layers))

    @property
    def executed_depth(self) -> int:
        """Block executions of a training forward pass (residual-branch init uses it)."""
        return len(self.order(training=True))

    def run(
        self, blocks: nn.ModuleList, order: list[int], x: torch.Tensor, ctx: Context
    ) -> torch.Tensor:
        """``x`` through ``blocks[i]`` for each ``i`` of ``order``."""
        modules = list(blocks)  # indexing a ModuleList costs more than a list, per call
        for i in order:
            x = modules[i](x, ctx)
        return x

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> ModelOutput:
        x = self.run(model.blocks, self.order(self.training), x, ctx)
        return ModelOutput(model.readout(x, ctx))

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Forward FLOPs per token of a training (or evaluation) pass: every block
        execution and the head."""
        per_block = [forward_flops_per_token(b, seq_len) for b in model.blocks]
        blocks = sum(per_block[i] for i in self.order(training))
        return blocks + forward_flops_per_token(model.head, seq_len)


def layers_total(spec: ModelSpec, need: int, how: str) -> str | None:
    """A refusal when ``spec.n_layers`` is not the ``need`` distinct blocks that ``how``
    (a schedule's parameters, written out) add up to; ``None`` when it is."""
    if spec.n_layers == need:
        return None
    return (
        f"{how} = {need} distinct blocks, but model.n_layers={spec.n_layers} "
        f"(n_layers counts the distinct blocks, each with its own weights); "
        f"set model.n_layers={need}"
    )
