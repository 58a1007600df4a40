"""Interfaces shared by components: the runtime context and the positional-scheme base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    """The identity, standing in for ``nn.Dropout(0)``: a plain function call instead of a
    module call, which matters when decoding one token at a time."""
    return x


def dropout_or_identity(p: float) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """``nn.Dropout(p)`` when ``p > 0``, else :func:`no_dropout`."""
    return nn.Dropout(p) if p > 0 else no_dropout


class PositionScheme(nn.Module):
    """A positional scheme acts at one of three points; the defaults do nothing.

    - :meth:`embed` adds position information to the token embeddings;
    - :meth:`rotate` rotates queries and keys (``[B, H, T, D]``);
    - :meth:`score_bias` returns an additive bias ``[H, Tq, Tk]`` for attention scores.

    ``q_pos``/``k_pos`` are absolute positions, shape ``[T]``.
    """

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None


class CacheSlot:
    """The decoding state of one mixer *call*; the mixer reads and replaces ``state``."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = None


class UnmaskedPaddingError(RuntimeError):
    """A forward over padded rows reached a mixer that cannot hide the padding."""


class Cache:
    """Decoding state for incremental generation, one :class:`CacheSlot` per mixer call.

    Slots are keyed by **call order** within one forward pass, not by module identity:
    a mixer that supports caching asks ``ctx.cache.slot()`` once per call and gets the
    next slot in order. So a weight-tied block applied several times in one pass (a
    looped depth schedule) gets one slot per application. The model calls
    :meth:`begin` at the start of every forward and :meth:`end` after it, which
    advances ``offset`` (the absolute position of the next new token) and checks that
    every forward made the same number of calls as the first (a depth that changes from
    step to step, e.g. early exit, cannot reuse a cache and is refused with an error).

    Rows padded at the front (prompts of different lengths, aligned at their ends) pass
    ``key_mask`` ``[B, capacity]``, True at the indices that hold real tokens, and
    ``position_shift`` ``[B]``, the padding before each row's first token. Attention
    hides the masked keys (:func:`~anyformer.components.attention.common.cached_bias`
    applies the mask and reports it with :meth:`masked`), absolute position embeddings
    count from each row's first token, and relative schemes see unchanged distances,
    so every row computes what it would alone. A mixer that keeps other state (a
    recurrent one) cannot hide padding: :meth:`end` then refuses the pass with
    :class:`UnmaskedPaddingError`.
    """

    def __init__(
        self,
        capacity: int | None = None,
        key_mask: torch.Tensor | None = None,
        position_shift: torch.Tensor | None = None,
    ) -> None:
        #: tokens the cache will hold in all (prompt + new), when known: key/value
        #: buffers are then allocated once at that size instead of growing by doubling
        self.capacity = capacity
        self.key_mask = key_mask
        self.position_shift = position_shift
        self.offset = 0
        self._slots: list[CacheSlot] = []
        self._cursor = 0
        self._calls: int | None = None
        self._masked = 0

    def begin(self) -> None:
        """Start a forward pass: the next :meth:`slot` is the first one again."""
        self._cursor = 0
        self._masked = 0

    def masked(self) -> None:
        """Called by a mixer that hid ``key_mask``'s padded keys in this pass."""
        self._masked += 1

    def slot(self) -> CacheSlot:
        """The state of the next mixer call of this forward pass."""
        if self._cursor == len(self._slots):
            if self._calls is not None:
                raise RuntimeError(
                    f"a forward pass made more cached mixer calls than the first one "
                    f"({self._calls}); a cache needs the same calls in every step"
                )
            self._slots.append(CacheSlot())
        slot = self._slots[self._cursor]
        self._cursor += 1
        return slot

    def end(self, n_new: int) -> None:
        """Finish a forward pass over ``n_new`` new tokens."""
        if self.key_mask is not None and self._masked != self._cursor:
            raise UnmaskedPaddingError(
                f"padded rows need every cached mixer to hide the padded keys, but "
                f"{self._cursor - self._masked} of the {self._cursor} cached mixer calls "
                f"keep a state that padding would enter (a recurrent mixer)"
            )
        if self._calls is None:
            self._calls = self._cursor
        elif self._cursor != self._calls:
            raise RuntimeError(
                f"a forward pass made {self._cursor} cached mixer calls, the first made "
                f"{self._calls}; a cache needs the same calls in every step"
            )
        self.offset += n_new


@dataclass
class Context:
    """What a mixer sees besides its input.

    - ``positions``: absolute positions of the tokens, ``[T]``, or ``[B, T]`` in packed
      rows (positions restart at 0 in every document); with a cache they start at
      ``cache.offset``;
    - ``causal``: whether token i may only see tokens j <= i;
    - ``padding_mask``: ``[B, T]`` boolean, True at real tokens (``None``: all real);
    - ``position``: the model's positional scheme, for rotation or score bias;
    - ``segments``: ``[B, T]`` integer document ids of packed rows (``None``: one document
      per row); a token may attend only within its document. Only mixers whose class
      has the capability ``packing`` receive it (the model rejects the others);
    - ``cache``: a :class:`Cache` during incremental decoding (``None`` otherwise); the
      model accepts one only when every mixer's registry capabilities say ``kv_cache``;
    - ``last_only``: the model's head reads the last position alone (generation asks for
      this); it concerns the readout after the blocks, mixers ignore it;
    - ``prefix_len``: ``[B]`` long, a prefix LM's prefix per row (``None``: none): query i
      may see key j iff ``j <= i`` or ``j < prefix_len[b]`` (bidirectional inside the
      prefix, causal after it), and the key is real. ``causal`` stays True. Only mixers
      with the capability ``prefix`` receive it (validation refuses the others);
    - ``memory``: ``[B, S, D]``, an encoder's output that cross-attention
      (capability ``memory``) attends over; ``memory_mask`` ``[B, S]`` bool, True at real
      source tokens (``None``: all real). Self-attention mixers ignore both;
    - ``readout_mask``: ``[B, T]`` bool, the positions the head reads (``None``: all); the
      outputs are then ``[N, ...]`` for the N selected positions, in row-major order (an
      MLM scores 15% of the tokens: the head over a large vocabulary need not run on the
      rest). Like ``last_only`` it concerns the readout only; mixers ignore it;
    - ``adjacency``: ``[B, T, T]`` bool, a batch of graphs' dense adjacency over node
      tokens (``adjacency[b, i, j]``: an edge from node j to node i; padded nodes have
      no edges), from the batch extras of a graph task (``None``: not a graph). Mixers
      with the capability ``graph`` read it (validation refuses them in a model whose
      embedder makes no graph node tokens); other mixers ignore it.
    - ``edges``: ``[B, T, T, D]`` float, the edge states of those graphs in the model's
      width (``edges[b, i, j]``: the edge from node j to node i; meaningful on the
      adjacency's edges only), or ``None`` (no edge features). The model fills it by
      embedding the batch's ``edge_attr`` ``[B, T, T, E]`` (``model.edge_dim = E``) and
      a graph mixer with an edge stream (``graph_attention``, as Dwivedi & Bresson)
      replaces it with its updated edge states for the next layer
      (:meth:`set_edges`); message-passing mixers (``gps``, ``mpnn_vn``) read it.
    - ``embed_state``: what the embedder hands the head besides its tokens
      (``Embedder.readout_state``: RevIN's statistics of a series embedder), passed to
      heads whose class sets ``reads_state``; mixers ignore it.
    """

    positions: torch.Tensor
    causal: bool
    position: PositionScheme
    padding_mask: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    cache: Cache | None = None
    last_only: bool = False
    prefix_len: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    readout_mask: torch.Tensor | None = None
    adjacency: torch.Tensor | None = None
    embed_state: Any = None
    edges: torch.Tensor | None = None

    def set_edges(self, edges: torch.Tensor) -> None:
        """Hand the next layers updated edge states ``[B, T, T, D]`` (an edge stream)."""
        self.edges = edges

    def bias_positions(self) -> torch.Tensor:
        """1-D positions ``[T]`` for :meth:`PositionScheme.score_bias`.

        ``positions`` when they are shared by the batch. In packed rows (``[B, T]``
        positions that restart per document) the row index: query-key distances inside
        a document are the same, and attention across documents is masked anyway.
        """
        if self.positions.dim() == 1:
            return self.positions
        return torch.arange(self.positions.shape[-1], device=self.positions.device)


def step_through(mixer: nn.Module, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Run a recurrent mixer's ``step(x_t, state) -> (y_t, state)`` over ``x [B, T, D]``,
    starting from (and storing back) the state in the context's next cache slot.

    The forward of a mixer with a constant-size recurrent state delegates here when
    ``ctx.cache`` is set: prefill and decoding both go token by token.
    """
    if not ctx.causal:
        raise ValueError(f"{type(mixer).__name__}: a cache is for causal decoding")
    if ctx.padding_mask is not None or ctx.segments is not None:
        raise ValueError(
            f"{type(mixer).__name__}: cached decoding takes unpadded, unpacked rows "
            f"(padding_mask and segments must be None)"
        )
    slot = ctx.cache.slot()  # type: ignore[union-attr]
    state, outputs = slot.state, []
    for x_t in x.unbind(1):
        y_t, state = mixer.step(x_t, state)  # type: ignore[operator]
        outputs.append(y_t)
    slot.state = state
    return torch.stack(outputs, dim=1)
