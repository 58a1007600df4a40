"""Contract checks of the ``head`` slot on the head alone (those through a toy model
live in :mod:`.io`, imported here so the slot gets both): each head is built through the registry
(``Entry.build(params, spec)``) on a toy spec and must give outputs of the shape its
``pooled`` capability promises, ignore padding tokens, pass a gradient to every
parameter and stay finite.

The toy spec is a real :class:`~anyformer.spec.ModelSpec` (d_model 16, ``n_outputs`` 3,
vocabulary 11) seen through :class:`GridSpec`, which adds an image input ``[3, 8, 8]``
and, for heads whose capabilities say ``grid``, a 2x2 grid of patch tokens after one
prefix token (``dims().grid`` / ``dims().n_prefix``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts import io as _io  # noqa: F401 - the through-model checks
from anyformer.lab.contracts._common import close, finite, no_dead_parameters
from anyformer.registry import Dims, Entry
from anyformer.spec import ModelSpec

SLOT = "head"
D, B = 16, 3
#: Grid heads read a 2x2 grid of patches after one prefix token.
GRID, N_PREFIX = (2, 2), 1


class GridSpec:
    """A model spec with an image input and a token grid: attributes come from the
    wrapped spec except ``input_shape`` and ``dims()``, which add ``grid``/``n_prefix``."""

    def __init__(
        self,
        spec: Any,
        input_shape: tuple[int, ...] | None,
        grid: tuple[int, int] | None,
        n_prefix: int = 0,
    ) -> None:
        self._spec = spec
        self.input_shape = input_shape
        self._grid, self._n_prefix = grid, n_prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)

    def dims(self, layer: int = 0) -> Dims:
        return replace(self._spec.dims(layer), grid=self._grid, n_prefix=self._n_prefix)


def toy_spec(entry: Entry, pool: str = "mean") -> GridSpec:
    spec = ModelSpec(
        kind="encoder", d_model=D, n_heads=2, n_layers=1, vocab_size=11, n_outputs=3, pool=pool
    )
    if entry.caps.grid:
        return GridSpec(spec, (3, 8, 8), GRID, N_PREFIX)
    return GridSpec(spec, (3, 8, 8), None)


def build(entry: Entry, pool: str = "mean") -> torch.nn.Module:
    return entry.build(entry.make_params(), toy_spec(entry, pool))


def length(entry: Entry, t: int = 7) -> int:
    """Tokens fed to the head: the grid and its prefix for a grid head, else ``t``."""
    return N_PREFIX + GRID[0] * GRID[1] if entry.caps.grid else t


def pooled(entry: Entry, head: torch.nn.Module) -> bool:
    """Whether the head pools: its registry capability, which its class attribute
    ``pooled``, where it has one, must agree with."""
    own = getattr(head, "pooled", entry.caps.pooled)
    if bool(own) != entry.caps.pooled:
        raise CheckFailure(
            f"the head's pooled={own} disagrees with its registry capability "
            f"pooled={entry.caps.pooled}"
        )
    return entry.caps.pooled


def hidden(t: int, seed: int = 0, b: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D, generator=g)


@contract_check(SLOT, "output_shape")
def output_shape(entry: Entry) -> None:
    """pooled heads give one output per example whatever the length; the others one per token"""
    head = build(entry)
    t = length(entry)
    out = head(hidden(t), None)
    if not isinstance(out, torch.Tensor) or out.shape[0] != B:
        raise CheckFailure(f"the output is not a tensor with the batch ({B}) first")
    if entry.caps.grid:
        return
    other = head(hidden(t + 4, seed=1), None)
    if pooled(entry, head):
        if out.shape != other.shape:
            raise CheckFailure(
                f"a pooled head's output depends on the length: {tuple(out.shape)} for "
                f"{t} tokens, {tuple(other.shape)} for {t + 4}"
            )
    elif out.shape[1] != t or other.shape[1] != t + 4:
        raise CheckFailure(
            f"a per-token head gives {tuple(out.shape)} for {t} tokens, expected [B, T, ...]"
        )


@contract_check(SLOT, "padding_invariant")
def padding_invariant(entry: Entry) -> None:
    """padding tokens change nothing: a padded row gives the outputs of the unpadded row"""
    if entry.caps.grid:
        raise NotApplicable("a grid head reads a fixed grid of image patches (no padding)")
    t, pad = 5, 3
    for pool in ("mean", "first", "last"):
        head = build(entry, pool)
        if not pooled(entry, head) and pool != "mean":
            continue
        x = hidden(t + pad)
        mask = torch.ones(B, t + pad, dtype=torch.bool)
        mask[:, t:] = False
        out = head(x, mask)
        noisy = x.clone()
        noisy[:, t:] = 100.0 * torch.randn(B, pad, D)
        out_noisy = head(noisy, mask)
        short = head(x[:, :t], None)
        if pooled(entry, head):
            close(out_noisy, out, f"with model.pool={pool} the padding tokens changed the output")
            close(out, short, f"with model.pool={pool} a padded row differs from the unpadded one")
        elif getattr(head, "pairwise", False):  # [B, T, T, ...]: pairs of real tokens
            close(out_noisy[:, :t, :t], out[:, :t, :t], "the padding tokens changed real pairs")
            close(out[:, :t, :t], short, "a padded row's real pairs differ from the unpadded row's")
        else:
            close(out_noisy[:, :t], out[:, :t], "the padding tokens changed real tokens' outputs")
            close(out[:, :t], short, "a padded row's real tokens differ from the unpadded row's")


@contract_check(SLOT, "gradient_reaches_every_parameter")
def gradient_reaches_every_parameter(entry: Entry) -> None:
    """every trainable parameter gets a non-zero gradient and the input does too"""
    head = build(entry)
    x = hidden(length(entry)).requires_grad_(True)
    out = head(x, None)
    (out.float() ** 2).sum().backward()
    no_dead_parameters(head, "squared outputs")
    if x.grad is None or not bool(x.grad.abs().sum() > 0):
        raise CheckFailure("no gradient reaches the hidden states")


@contract_check(SLOT, "finite_outputs")
def finite_outputs(entry: Entry) -> None:
    """outputs stay finite for large hidden states"""
    head = build(entry)
    finite(head(30.0 * hidden(length(entry)), None), "the output for large hidden states")
