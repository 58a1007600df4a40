"""Losses (layer 3). Importing this package registers the built-in objectives."""

from anyformer.objectives import (  # noqa: F401
    contrastive,
    ctc,
    diffusion,
    distill,
    extra,
    identifiers,
    losses,
    masked_patches,
    masking,
    multi_token,
    positions,
    quantile,
    rtd,
    self_distillation,
    spans,
    vicreg,
)
