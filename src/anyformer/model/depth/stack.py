"""Depth schedules that run a fixed sequence of the distinct blocks: ``stack`` (each
block once) and ``recursive`` (each block ``k`` times in a row, SReT)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from anyformer.model.depth.base import DepthSchedule, frozen
from anyformer.registry import Capabilities, NoParams, Paper, register

SRET = Paper("Sliced Recursive Transformer", 2022, "Shen, Liu & Xing")


@register(
    "depth",
    "stack",
    paper=None,
    summary="the usual stack: each of the n_layers distinct blocks once, in order",
    params=NoParams,
    caps=Capabilities(complexity="O(L)", kv_cache=True, packing=True),
)
class Stack(DepthSchedule):
    """x -> block_0 -> block_1 -> ... -> block_{L-1} -> readout (``L = n_layers``)."""


class RecursiveParams(BaseModel):
    """- ``k``: times each block is applied in a row (its weights shared); ``k = 1`` is
    ``stack``."""

    model_config = frozen()
    k: int = Field(2, ge=1)


@register(
    "depth",
    "recursive",
    paper=SRET,
    summary="SReT recursion: each block applied k times in a row with shared weights",
    params=RecursiveParams,
    caps=Capabilities(complexity="O(L k)", kv_cache=True, packing=True),
)
class Recursive(DepthSchedule):
    """block_0^k -> block_1^k -> ... (each block applied ``k`` times in sequence).

    Paper: "Sliced Recursive Transformer", Shen, Liu & Xing, 2022 (the naive recursion
    that shares weights across depth). Not supported: SReT's sliced group
    self-attention across recursions and its learnable residual scaling.
    """

    params: RecursiveParams

    def order(self, training: bool) -> list[int]:
        return [i for i in range(self.n_layers) for _ in range(self.params.k)]
