"""Depth schedules (slot ``depth``): which of a model's distinct blocks run, how often
and in what order.

The base class and its helpers are in :mod:`~anyformer.model.depth.base`; the variants,
one family per module: ``stack`` and ``recursive`` (:mod:`.stack`), ``looped`` and
``algoformer`` (:mod:`.looped`), ``early_exit`` (:mod:`.early_exit`) and
``continuous_thought`` (:mod:`.thought`). Importing this package registers them all
(the registry imports it when the ``depth`` slot is first looked up).
"""

from anyformer.model.depth.base import DepthSchedule, frozen, layers_total
from anyformer.model.depth.early_exit import ECO_M2F, EarlyExit, EarlyExitParams
from anyformer.model.depth.looped import (
    ALGOFORMER,
    YANG,
    AlgoFormer,
    AlgoFormerParams,
    Looped,
    LoopedParams,
)
from anyformer.model.depth.stack import SRET, Recursive, RecursiveParams, Stack
from anyformer.model.depth.thought import (
    SUPERPOSITION,
    ContinuousThought,
    ContinuousThoughtParams,
)

__all__ = [
    "ALGOFORMER",
    "ECO_M2F",
    "SRET",
    "SUPERPOSITION",
    "YANG",
    "AlgoFormer",
    "AlgoFormerParams",
    "ContinuousThought",
    "ContinuousThoughtParams",
    "DepthSchedule",
    "EarlyExit",
    "EarlyExitParams",
    "Looped",
    "LoopedParams",
    "Recursive",
    "RecursiveParams",
    "Stack",
    "frozen",
    "layers_total",
]
