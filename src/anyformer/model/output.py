"""What one forward pass of a model computes besides its outputs.

``Transformer.forward(..., return_outputs=True)`` returns a :class:`ModelOutput`; plain
``model(inputs)`` returns only its ``logits``. Everything a forward produces travels in
this object, never on the modules, so a forward is a pure function of its inputs and
the weights: two forwards may interleave (or run on two DDP replicas) without one
reading the other's results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """One forward pass's outputs.

    - ``logits``: what ``model(inputs)`` returns (``[B, T, V]``, or ``[B, V]`` pooled).
    - ``extra_logits``: outputs trained alongside ``logits``, first to last: the earlier
      exits of an ``early_exit`` depth, or the earlier iterates of a looped loss window
      (training mode only; empty otherwise).
    - ``blocks_executed``: block executions per example ``[B]`` or per token ``[B, T]``
      when the depth varies (``early_exit`` in evaluation), else ``None``.
    - ``mean_blocks_executed``: their mean over the examples, or over the real tokens
      (a 0-dim tensor), else ``None``.
    """

    logits: torch.Tensor
    extra_logits: list[torch.Tensor] = field(default_factory=list)
    blocks_executed: torch.Tensor | None = None
    mean_blocks_executed: torch.Tensor | None = None

    @property
    def trained_outputs(self) -> list[torch.Tensor]:
        """Every output the objective is applied to: ``[*extra_logits, logits]``."""
        return [*self.extra_logits, self.logits]

    def weighted(self, weight: float = 1.0) -> list[tuple[float, torch.Tensor]]:
        """``[(weight / n, output), ...]`` over the ``n`` trained outputs: the loss is the
        mean of the objective over exits (or window iterates), times ``weight``."""
        outs = self.trained_outputs
        return [(weight / len(outs), o) for o in outs]
