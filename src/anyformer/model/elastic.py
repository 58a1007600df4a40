"""Elastic width: choosing, training and extracting MatFormer granularities.

The width controls (:func:`set_widths`, :func:`widths_set`, :func:`training_widths`,
...) live in :mod:`anyformer.model.widths`, which the model itself uses, and are
re-exported here; this module adds :func:`extract`: a standalone ``mlp`` model equal to
the nested one at given widths.
"""

from __future__ import annotations

from typing import Any

import torch

from anyformer.model.transformer import Transformer, build_model
from anyformer.model.widths import (
    Widths,
    current_widths,
    granularities,
    nested_ffns,
    set_widths,
    training_widths,
    widths_set,
)
from anyformer.spec import ModelSpec

__all__ = [
    "Widths",
    "current_widths",
    "extract",
    "extracted_spec",
    "granularities",
    "nested_ffns",
    "set_widths",
    "training_widths",
    "widths_set",
]


def extracted_spec(model: Transformer, widths: Widths) -> ModelSpec:
    """The spec of the standalone model at ``widths``: each nested FFN becomes an ``mlp``
    with exactly its active hidden units (``mult = units / d_model``)."""
    spec = model.spec
    with widths_set(model, widths):  # one entry per block: a block shares one width
        active = {i: (ffn.active_units, ffn.params.activation) for i, ffn in nested_ffns(model)}
    data = spec.model_dump(mode="json")
    layers: dict[int, Any] = {int(k): dict(v) for k, v in data.get("layers", {}).items()}
    new_ffn: dict[int, dict[str, Any]] = {}
    for i, (hidden, activation) in active.items():
        mult = hidden / spec.d_model  # mlp's hidden size round(mult d) is exactly `hidden`
        new_ffn[i] = {"name": "mlp", "activation": activation, "mult": mult}
    every_block = len(new_ffn) == spec.n_layers and not any(
        "ffn" in layers.get(i, {}) for i in range(spec.n_layers)
    )
    if every_block and all(f == new_ffn[0] for f in new_ffn.values()):
        data["ffn"] = new_ffn[0]
    else:
        for i, f in new_ffn.items():
            layers.setdefault(i, {})["ffn"] = f
    data["layers"] = layers
    return ModelSpec.model_validate(data)


@torch.no_grad()
def extract(model: Transformer, widths: Widths) -> tuple[Transformer, ModelSpec]:
    """A standalone, smaller model whose outputs equal ``model``'s at ``widths``.

    Every nested FFN is cut to its first ``round(w H)`` hidden units (rows of ``up``,
    columns of ``down``); every other weight is copied. Returns the model (in the mode of
    ``model``) and its spec.
    """
    spec = extracted_spec(model, widths)
    small = build_model(spec)
    source = model.state_dict()
    target = small.state_dict()
    for name, value in target.items():
        src = source[name]
        if src.shape != value.shape:  # only the nested FFNs' up/down differ: take the prefix
            src = src[tuple(slice(0, n) for n in value.shape)]
        value.copy_(src)
    small.train(model.training)
    return small, spec
