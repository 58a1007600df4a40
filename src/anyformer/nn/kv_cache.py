"""Key/value buffers for incremental decoding (pure tensor code).

:class:`KVBuffer` keeps the keys and values of every past token of one attention call,
``[B, G, n, D]``, with their absolute positions ``[n]``; it is allocated once at
the cache's ``capacity`` when that is known, else grows by doubling, so that appending
one token costs a copy of one token, not of the whole history. With a
``window`` it is a rolling buffer of ``window`` slots (token at position p lives in slot
``p % window``), so sliding-window attention decodes in constant memory.

A cache starts at position 0 and tokens arrive in order, so a full buffer's token i is at
position i (its positions are ``arange`` and need no writes); a rolling buffer stores the
position of each slot (-1 while empty).
"""

from __future__ import annotations

import torch


class KVBuffer:
    """Past keys and values of one attention call, appended to as tokens arrive."""

    def __init__(self, window: int | None = None, capacity: int | None = None) -> None:
        self.window = window
        self.capacity = capacity  # first allocation size when known (no window only)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.length = 0

    def _allocate(self, k: torch.Tensor, v: torch.Tensor, capacity: int) -> None:
        b, g, _, _ = k.shape
        keys = k.new_zeros(b, g, capacity, k.shape[-1])
        values = v.new_zeros(b, g, capacity, v.shape[-1])
        if self.window is None:
            positions = torch.arange(capacity, device=k.device)
        else:
            positions = torch.full((capacity,), -1, dtype=torch.long, device=k.device)
        if self.keys is not None:
            n = self.length
            keys[:, :, :n] = self.keys[:, :, :n]
            values[:, :, :n] = self.values[:, :, :n]  # type: ignore[index]
        self.keys, self.values, self.positions = keys, values, positions

    def extend(
        self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add new keys/values ``[B, G, T, D]`` at ``positions [T]``; return the keys,
        values and key positions a query among the new tokens may need to see.

        Without a window that is every token so far. With a window it is the previous
        buffer contents followed by the new tokens (so a multi-token prefill sees its own
        keys); empty slots have position -1 and must be masked (:func:`cached_key_mask`).
        """
        if self.window is None:
            need = self.length + k.shape[2]
            if self.keys is None or need > self.keys.shape[2]:
                grown = 2 * self.keys.shape[2] if self.keys is not None else self.capacity or 0
                self._allocate(k, v, max(need, grown))
            n = self.length
            self.keys[:, :, n:need] = k  # type: ignore[index]
            self.values[:, :, n:need] = v  # type: ignore[index]
            self.length = need
            return self.keys[:, :, :need], self.values[:, :, :need], self.positions[:need]  # type: ignore[index]
        w = self.window
        if self.keys is None:
            self._allocate(k, v, w)
        keys = torch.cat((self.keys, k), dim=2)  # type: ignore[arg-type]
        values = torch.cat((self.values, v), dim=2)  # type: ignore[arg-type]
        key_pos = torch.cat((self.positions, positions))  # type: ignore[arg-type]
        m = min(k.shape[2], w)
        slots = positions[-m:] % w
        self.keys.index_copy_(2, slots, k[:, :, -m:])  # type: ignore[union-attr]
        self.values.index_copy_(2, slots, v[:, :, -m:])  # type: ignore[union-attr]
        self.positions.index_copy_(0, slots, positions[-m:])  # type: ignore[union-attr]
        self.length = min(self.length + k.shape[2], w)
        return keys, values, key_pos


def cached_key_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None
) -> torch.Tensor | None:
    """Boolean ``[Tq, Tk]`` mask (True = allowed) of a causal query at ``q_pos`` over
    cached keys at ``k_pos``: ``0 <= k <= q`` and, with a window, ``q - k < window``.

    ``None`` when everything is allowed: one query and no window (the buffer then holds
    only earlier or equal positions), which lets attention take its unmasked fast path.
    """
    if window is None and q_pos.numel() == 1:
        return None
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = (k <= q) & (k >= 0)
    if window is not None:
        allowed = allowed & (q - k < window)
    return allowed


__all__ = ["KVBuffer", "cached_key_mask"]
