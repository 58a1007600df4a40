"""Padding-free batches from padded ones (ByteTransformer, Zhai et al., 2023).

:func:`pack_batch` takes a padded :class:`~anyformer.tasks.base.Batch` (rows of real
tokens followed by padding) and packs the real tokens of its rows, whole, into as few
rows as fit (see :func:`anyformer.nn.packing.pack`). The packed batch carries
``extras["segments"]`` (document id per token, 0 in row tails) and
``extras["positions"]`` (position inside the document), which
:func:`model_inputs` turns into the model's keyword arguments::

    packed, packing = pack_batch(batch)
    outputs = model(packed.inputs, **model_inputs(packed))
    loss = objective(outputs, packed)          # the same loss as on the padded batch
    per_row = packing.unpack(outputs)          # outputs of each original row
    padded = packing.unpack_padded(outputs, batch.inputs.shape[1])  # as the padded rows

Targets and loss masks move with their tokens, so per-token losses and metrics are
those of the padded batch. Row tails are marked as padding (``padding_mask`` False,
``loss_mask`` False). A graph batch's ``extras["adjacency"]`` ``[B, N, N]`` becomes the
packed rows' ``[R, L, L]``: each graph's adjacency on the diagonal block of its nodes,
nothing between graphs (:meth:`~anyformer.nn.packing.Packed.pack_pairs`). Other
``extras`` are kept as they are (per original row), so scores that read them must be
computed on the padded batch with unpacked outputs, as the Trainer does with
``train.packing``.
"""

from __future__ import annotations

from typing import Any

import torch

from anyformer.nn.packing import Packed, pack
from anyformer.tasks.base import Batch

PACKING_EXTRAS = ("segments", "positions")
#: Batch extras that are model inputs of other kinds: an encoder–decoder's ``source``
#: and ``source_mask``, a prefix LM's ``prefix_len`` (see ``docs/architecture.md``).
KIND_EXTRAS = ("source", "source_mask", "prefix_len", "adjacency", "edge_attr")
#: Batch extras that choose what the model reads out: ``readout_mask`` (the head runs at
#: those positions alone; an objective sets it for its training forward, never a task).
READOUT_EXTRAS = ("readout_mask",)


def row_lengths(batch: Batch) -> list[int]:
    """Real tokens per row: the count of ``padding_mask`` (every position when ``None``).

    Padding must trail: a row whose real tokens are not a prefix is an error.
    """
    b, t = batch.inputs.shape[:2]
    if batch.padding_mask is None:
        return [t] * b
    mask = batch.padding_mask.bool()
    lengths = mask.sum(dim=1)
    prefix = torch.arange(t, device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("pack_batch: padding must trail the real tokens of every row")
    return [int(n) for n in lengths]


def pack_batch(batch: Batch, row_len: int | None = None) -> tuple[Batch, Packed]:
    """Pack the real tokens of ``batch`` into rows of ``row_len`` (default: its row length).

    Returns the packed batch and the :class:`~anyformer.nn.packing.Packed` layout (use
    its ``unpack`` to map per-token outputs back to the original rows).
    """
    lengths = row_lengths(batch)
    if min(lengths) < 1:
        raise ValueError("pack_batch: every row needs at least one real token")
    rows = range(len(lengths))
    layout = pack(
        [batch.inputs[i, : lengths[i]] for i in rows],
        row_len or int(batch.inputs.shape[1]),
    )
    targets = layout.pack_like([batch.targets[i, : lengths[i]] for i in rows])
    loss_mask = layout.pack_like([batch.loss_mask[i, : lengths[i]] for i in rows], False)
    extras = {k: v for k, v in batch.extras.items() if k not in PACKING_EXTRAS}
    extras.update(segments=layout.segments, positions=layout.positions)
    if "adjacency" in extras:  # pairwise per row: each graph's block on the diagonal
        adj = extras["adjacency"]
        extras["adjacency"] = layout.pack_pairs([adj[i, : lengths[i], : lengths[i]] for i in rows])
    packed = Batch(
        inputs=layout.inputs,
        targets=targets,
        loss_mask=loss_mask,
        padding_mask=layout.real,
        group=batch.group,
        extras=extras,
    )
    return packed, layout


def model_inputs(batch: Batch) -> dict[str, Any]:
    """Keyword arguments of ``Transformer.forward`` for ``batch`` besides its inputs:
    ``padding_mask``; for a packed batch, ``segments`` and ``positions``; and those of
    the batch's extras that other model kinds read: ``source`` and ``source_mask`` (an
    encoder–decoder), ``prefix_len`` (a prefix LM), ``adjacency`` and ``edge_attr`` (graphs), ``readout_mask`` (the positions the
    head reads, set by an objective for its training forward)."""
    kwargs: dict[str, Any] = {"padding_mask": batch.padding_mask}
    for key in (*PACKING_EXTRAS, *KIND_EXTRAS, *READOUT_EXTRAS):
        if key in batch.extras:
            kwargs[key] = batch.extras[key]
    return kwargs


def random_padded_batch(
    lengths: list[int], vocab: int, generator: torch.Generator | None = None
) -> Batch:
    """Rows of random tokens and targets (ids ``1..vocab-1``; 0 pads) of the given
    lengths, padding trailing, every real target scored: the skewed batches that packing
    is tested and benchmarked on. Draws row by row, inputs then targets, from
    ``generator`` (torch's global generator when ``None``)."""
    t = max(lengths)
    inputs = torch.zeros(len(lengths), t, dtype=torch.long)
    targets = torch.zeros_like(inputs)
    real = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        inputs[i, :n] = torch.randint(1, vocab, (n,), generator=generator)
        targets[i, :n] = torch.randint(1, vocab, (n,), generator=generator)
        real[i, :n] = True
    return Batch(inputs, targets, real.clone(), padding_mask=real)


__all__ = ["model_inputs", "pack_batch", "random_padded_batch", "row_lengths"]
