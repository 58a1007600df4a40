"""Losses (layer 3). Importing this package registers the built-in objectives."""

from anyformer.objectives import extra, losses, quantile  # noqa: F401
