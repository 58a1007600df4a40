"""Layer 1: one registered class per published variant, grouped by slot.

The registry imports the modules of a slot (``registry.CONTRACTS[slot].modules``) the
first time that slot is looked up; importing this package alone registers nothing.
"""

from anyformer.components.base import Context, PositionScheme

__all__ = ["Context", "PositionScheme"]
