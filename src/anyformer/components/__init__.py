"""Layer 1: one registered class per published variant, grouped by slot.

Importing this package registers every built-in component.
"""

from anyformer.components import (  # noqa: F401
    attention,
    ffn,
    ffn_extra,
    ffn_matformer,
    layout,
    mixers,
    norm,
    norm_extra,
    position,
)
from anyformer.components.base import Context, PositionScheme

__all__ = ["Context", "PositionScheme"]
