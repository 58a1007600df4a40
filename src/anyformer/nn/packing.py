"""Padding-free batches: pack variable-length sequences into rows with document ids.

"ByteTransformer: A High-Performance Transformer Boosted for Variable-Length Inputs",
Zhai et al., 2023, removes padding so that no compute is spent on it. Here sequences
are packed, whole, into rows of a fixed capacity (first-fit decreasing), and each token
carries the id of its document (``segments``, 1, 2, ... within a row; 0 marks the
padding that fills a row's tail). A model given ``segments`` lets a token attend only
within its document (a block-diagonal mask, :func:`segment_mask`) and restarts
positions at every document (:func:`positions_from_segments`), so each token's output
equals that of the same sequence alone in a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """Packed rows and where each input sequence went.

    - ``inputs``: ``[R, L]`` (or ``[R, L, D]``) packed tokens, tails filled with ``pad``;
    - ``positions``: ``[R, L]`` position of each token inside its document (0 in the tail);
    - ``segments``: ``[R, L]`` document id within the row (1, 2, ...; 0 in the tail);
    - ``places``: per input sequence, ``(row, start, length)``.

    ``unpack`` / ``unpack_padded`` map per-token outputs of the packed rows back to the
    input sequences (one tensor each, or the rows of a padded batch).
    """

    inputs: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    places: list[tuple[int, int, int]]

    @property
    def real(self) -> torch.Tensor:
        """``[R, L]`` boolean, True at tokens of a document (False in row tails)."""
        return self.segments > 0

    def pack_like(self, sequences: list[torch.Tensor], pad: float | int = 0) -> torch.Tensor:
        """Pack other per-token tensors (targets, loss masks) into the same places."""
        rows, length = self.segments.shape
        first = sequences[0]
        out = first.new_full((rows, length, *first.shape[1:]), pad)
        for seq, (row, start, n) in zip(sequences, self.places, strict=True):
            out[row, start : start + n] = seq
        return out

    def pack_pairs(self, matrices: list[torch.Tensor], pad: float | int = 0) -> torch.Tensor:
        """Pack per-sequence pairwise tensors (each ``[n_i, n_i, ...]``: a graph's adjacency
        over its nodes) into ``[R, L, L, ...]``: sequence ``i``'s matrix on the diagonal
        block of its place, ``pad`` everywhere else (so no pair crosses documents)."""
        rows, length = self.segments.shape
        first = matrices[0]
        out = first.new_full((rows, length, length, *first.shape[2:]), pad)
        for m, (row, start, n) in zip(matrices, self.places, strict=True):
            out[row, start : start + n, start : start + n] = m
        return out

    def unpack(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-token ``values [R, L, ...]`` back to one tensor per input sequence, in order."""
        return [values[row, start : start + n] for row, start, n in self.places]

    def unpack_padded(
        self, values: torch.Tensor, row_len: int, pad: float | int = 0
    ) -> torch.Tensor:
        """Per-token ``values [R, L, ...]`` back to the rows of a padded batch:
        ``[N, row_len, ...]`` with sequence ``i`` at the start of row ``i`` and ``pad`` after it."""
        out = values.new_full((len(self.places), row_len, *values.shape[2:]), pad)
        for i, seq in enumerate(self.unpack(values)):
            out[i, : seq.shape[0]] = seq
        return out


def pack(sequences: list[torch.Tensor], row_len: int | None = None, pad: float | int = 0) -> Packed:
    """Pack ``sequences`` (each ``[n_i]`` or ``[n_i, D]``) into rows of ``row_len`` tokens.

    Sequences are placed whole, longest first, each into the first row with room
    (first-fit decreasing); ``row_len=None`` puts everything in one row. A sequence
    longer than ``row_len`` is an error (split it first).
    """
    if not sequences:
        raise ValueError("pack: no sequences given")
    lengths = [int(s.shape[0]) for s in sequences]
    if min(lengths) < 1:
        raise ValueError("pack: every sequence needs at least one token")
    capacity = sum(lengths) if row_len is None else row_len
    if max(lengths) > capacity:
        raise ValueError(
            f"pack: a sequence of {max(lengths)} tokens does not fit row_len={capacity}"
        )
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
    used: list[int] = []
    places: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sequences)
    for i in order:
        row = next((r for r, u in enumerate(used) if u + lengths[i] <= capacity), None)
        if row is None:
            row = len(used)
            used.append(0)
        places[i] = (row, used[row], lengths[i])
        used[row] += lengths[i]
    first = sequences[0]
    shape = (len(used), capacity)
    inputs = first.new_full((*shape, *first.shape[1:]), pad)
    positions = torch.zeros(shape, dtype=torch.long, device=first.device)
    segments = torch.zeros(shape, dtype=torch.long, device=first.device)
    count = [0] * len(used)
    for i in sorted(range(len(sequences)), key=lambda i: places[i][:2]):
        row, start, n = places[i]
        count[row] += 1
        inputs[row, start : start + n] = sequences[i]
        positions[row, start : start + n] = torch.arange(n, device=first.device)
        segments[row, start : start + n] = count[row]
    return Packed(inputs, positions, segments, places)


def positions_from_segments(segments: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` positions that restart at 0 where the document id changes."""
    b, t = segments.shape
    index = torch.arange(t, device=segments.device).expand(b, t)
    start = torch.ones_like(segments, dtype=torch.bool)
    start[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(start, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[B, 1, T, T]`` boolean: True where query and key are in the same document."""
    return (segments[:, :, None] == segments[:, None, :]).unsqueeze(1)


__all__ = ["Packed", "pack", "positions_from_segments", "segment_mask"]
