"""The embedder slot's base class and the token layout an embedder produces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


@dataclass(frozen=True)
class TokenLayout:
    """How an embedder lays out its tokens: ``length`` tokens in all, the first
    ``n_prefix`` of them prefix tokens (CLS, registers), the rest either a 1-D sequence
    (``grid=None``) or a row-major ``(H, W)`` grid. ``branches`` (when not ``None``) is
    the length of each of several branches laid out one after another, each starting
    with its own CLS token (CrossViT: ``[CLS_s, small patches..., CLS_l, large
    patches...]``); mixers that need it read it from ``Dims.branches``. ``rows``: how
    many rows of ``length`` tokens the embedder makes of each input, folded into the
    batch (``[B * rows, length, D]``, input b's rows ``b * rows .. (b + 1) * rows - 1``;
    PatchTST's channel independence: one row per variate); the blocks never mix rows and
    the head unfolds them."""

    length: int | None
    grid: tuple[int, int] | None = None
    n_prefix: int = 0
    branches: tuple[int, ...] | None = None
    rows: int = 1


class Embedder(nn.Module):
    """Base of the ``embedder`` slot: ``forward(inputs) -> [B, T, d_model]``.

    Built as ``cls(spec, params)``: ``spec`` is the :class:`~anyformer.spec.ModelSpec`
    (``d_model``, ``vocab_size``, ``input_dim``, ``input_shape``), ``params`` the
    variant's own parameters. Its registry capabilities state ``input_kind`` (what it
    reads) and ``grid`` (whether its tokens form a 2-D grid). :meth:`layout` says, from
    the spec alone, how many tokens it makes and how they are laid out, so positions
    and mixers can be built for the grid before any data is seen. :meth:`check` refuses
    a spec it cannot read (the message names the field)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T, d_model]`` (``[B * rows, T, d_model]`` when :meth:`layout` folds
        ``rows`` rows per input into the batch)."""
        raise NotImplementedError

    def readout_state(self, inputs: torch.Tensor) -> Any:
        """What the head needs of ``inputs`` besides the tokens (``None``: nothing); the
        model carries it to heads that read it (RevIN's statistics, which a forecasting
        head inverts)."""
        return None

    @classmethod
    def layout(cls, params: Any, spec: ModelSpec) -> TokenLayout:
        """The token layout for inputs of ``spec.input_shape`` (1-D of unknown length
        unless an embedder says otherwise)."""
        return TokenLayout(length=None)

    @classmethod
    def check(cls, params: Any, spec: ModelSpec) -> str | None:
        """Why this embedder cannot read the spec's inputs (``None`` when it can)."""
        return None
