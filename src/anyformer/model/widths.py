"""Elastic width: choosing and training MatFormer granularities (extraction is in
:mod:`anyformer.model.elastic`).

A nested FFN (``ffn: matformer``) exposes ``nested_units()``, ``set_width(fraction)``,
``active_units``, ``widths`` and ``hidden`` (duck-typed here, so this module needs no
component import). Widths are given per *distinct block* (``model.blocks[i]``, the index
of ``model.layers`` overrides), either one fraction for every block or a list with one
per block (Mix'n'Match); every nested FFN of a block (macaron and sandwich layouts have
several) runs at that block's width.

- :func:`set_widths` / :func:`widths_set`: run a model at some widths (for evaluation);
- :func:`training_widths`: the widths a training step runs (``train: sum`` or ``sample``);
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from torch import nn

from anyformer.errors import SpecError

Widths = float | Sequence[float]


def nested_ffns(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """``(block index, nested FFN)`` for every MatFormer FFN of ``model``, in block order."""
    found = []
    for i, block in enumerate(getattr(model, "blocks", [])):
        for module in block.modules():
            if callable(getattr(module, "nested_units", None)):
                found.append((i, module))
    return found


def _per_block(model: nn.Module, widths: Widths) -> list[float]:
    n = len(model.blocks)  # type: ignore[arg-type]
    if isinstance(widths, (int, float)):
        return [float(widths)] * n
    widths = [float(w) for w in widths]
    if len(widths) != n:
        raise SpecError(
            f"widths has {len(widths)} entries but the model has {n} distinct blocks; "
            f"give one width per block or a single width for all"
        )
    return widths


def current_widths(model: nn.Module) -> list[int]:
    """The active hidden units of every nested FFN, in :func:`nested_ffns` order."""
    return [ffn.active_units for _, ffn in nested_ffns(model)]


def set_widths(model: nn.Module, widths: Widths) -> None:
    """Run every nested FFN of block ``i`` at fraction ``widths[i]`` (or ``widths``)."""
    ffns = nested_ffns(model)
    if not ffns:
        raise SpecError("the model has no nested FFN (ffn: matformer) whose width could be set")
    per = _per_block(model, widths)
    for i, ffn in ffns:
        ffn.set_width(per[i])


@contextlib.contextmanager
def widths_set(model: nn.Module, widths: Widths | None) -> Iterator[None]:
    """Run inside the block at ``widths`` (``None``: unchanged); restore afterwards."""
    if widths is None:
        yield
        return
    saved = current_widths(model)
    set_widths(model, widths)
    try:
        yield
    finally:
        for (_, ffn), m in zip(nested_ffns(model), saved):
            ffn.active_units = m


def granularities(model: nn.Module) -> tuple[float, ...]:
    """The trained width fractions shared by every nested FFN (``()`` when none)."""
    ffns = nested_ffns(model)
    if not ffns:
        return ()
    first = ffns[0][1]
    for _, ffn in ffns[1:]:
        if ffn.widths != first.widths or ffn.params.train != first.params.train:
            raise SpecError(
                "every ffn: matformer layer must use the same widths and train mode "
                f"(found widths={list(first.widths)}, train={first.params.train} and "
                f"widths={list(ffn.widths)}, train={ffn.params.train})"
            )
    return tuple(first.widths)


def training_widths(model: nn.Module, step: int) -> list[tuple[float, Widths | None]]:
    """``[(loss weight, widths)]`` of one training step.

    Without nested FFNs: ``[(1.0, None)]`` (the model as it is). ``train: sum``: every
    granularity with weight 1 (the loss is the sum over granularities, as in MatFormer);
    ``train: sample``: one granularity drawn uniformly by a generator seeded by ``step``
    (so a resumed run draws the same ones).
    """
    widths = granularities(model)
    if not widths:
        return [(1.0, None)]
    mode = nested_ffns(model)[0][1].params.train
    if mode == "sum":
        return [(1.0, w) for w in widths]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x3A7F, step])))
    return [(1.0, widths[int(rng.integers(len(widths)))])]
