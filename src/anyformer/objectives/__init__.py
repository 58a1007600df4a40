"""Losses (layer 3). Importing this package registers the built-in objectives."""

from anyformer.objectives import (  # noqa: F401
    extra,
    losses,
    masked_patches,
    quantile,
    rtd,
    self_distillation,
    vicreg,
)
