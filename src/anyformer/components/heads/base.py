"""The head slot's base class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


class Head(nn.Module):
    """Base of the ``head`` slot: ``forward(x [B, T, D], padding_mask) -> outputs``.

    ``x`` are the final hidden states after the model's final norm; ``padding_mask``
    ``[B, T]`` is True at real tokens (``None``: all real). Built as ``cls(spec,
    params)``. A head whose capabilities say ``pooled`` returns one output per example
    ``[B, ...]`` (pooling over real tokens as its parameters choose); the others one
    per token ``[B, T, ...]``. :meth:`n_values` is the number of values per target the
    head writes (e.g. 2 for a Gaussian's mean and log-variance), which objectives read;
    :meth:`check` refuses a spec it cannot serve (the message names the field)."""

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check(cls, params: Any, spec: ModelSpec) -> str | None:
        """Why this head cannot serve the spec (``None`` when it can)."""
        return None


def build_head(spec: ModelSpec) -> nn.Module:
    """The head of ``spec`` built through its registry entry; a size the head needs but
    the spec lacks is refused by name (:class:`~anyformer.errors.SpecError`)."""
    from anyformer.errors import SpecError

    ref = spec.head_ref
    try:
        return ref.entry.build(ref.config, spec=spec)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
