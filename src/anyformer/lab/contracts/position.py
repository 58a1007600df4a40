"""Contract checks of the ``position`` slot: through a toy model with a mixer that
honours the scheme's mode, outputs are finite, a decoder stays causal, and an encoder
ignores padding.

A scheme that needs a 2-D token grid (``caps.grid``) is checked the same way on a grid:
the scheme and a compatible mixer are built with ``Dims(grid=(3, 4), n_prefix=1)`` and
run on 13 token vectors (one prefix token, then the grid); and a token model without a
grid must be refused by validation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from anyformer import registry
from anyformer.components.base import Context
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts._common import (
    V,
    close,
    decoder_never_reads_the_future,
    encoder_ignores_padding,
    finite,
    shape,
    tokens,
    toy_model,
    try_spec,
)
from anyformer.registry import Dims, Entry

SLOT = "position"

#: The grid the checks of a grid scheme use: one prefix token, then 3 x 4 cells.
GRID, N_PREFIX = (3, 4), 1
GRID_T = N_PREFIX + GRID[0] * GRID[1]


def compatible_mixer(entry: Entry, kind: str = "decoder") -> str:
    """``softmax`` when it honours the scheme's mode, else the first mixer that does."""
    mode = entry.caps.position_mode or "none"
    names = ["softmax", *registry.components("attention")]
    for name in names:
        caps = registry.get("attention", name).caps
        if (
            mode in caps.position_modes
            and not caps.memory
            and (caps.causal_safe if kind == "decoder" else caps.bidirectional)
        ):
            return name
    raise CheckFailure(f"no registered {kind} mixer honours position mode '{mode}'")


def grid_layer(entry: Entry, causal: bool) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
    """The scheme built on a grid and ``run(x, padding_mask=None)``: the scheme's
    embedding, then a compatible mixer with the scheme in its context."""
    dims = Dims(d_model=32, n_heads=4, max_len=32, causal=causal, grid=GRID, n_prefix=N_PREFIX)
    params = entry.make_params()
    problem = entry.check(params, dims)
    if problem:
        raise CheckFailure(f"it refuses a {GRID[0]}x{GRID[1]} grid with d_model=32: {problem}")
    scheme = entry.build(params, dims)
    mixer_name = compatible_mixer(entry, "decoder" if causal else "encoder")
    mixer = registry.get("attention", mixer_name).build(None, dims)

    def run(x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(x.shape[1])
        ctx = Context(positions, causal, scheme, padding_mask=padding_mask)
        return mixer(scheme.embed(x, positions), ctx)

    return scheme, run


@contract_check(SLOT, "shape")
def output_shape(entry: Entry) -> None:
    """a toy decoder with it returns finite [B, T, V] logits"""
    if entry.caps.grid:
        scheme, run = grid_layer(entry, causal=False)
        out = run(torch.randn(2, GRID_T, 32))
        shape(out, (2, GRID_T, 32), "the output on a grid")
        finite(out, "the output on a grid")
        out.float().pow(2).mean().backward()
        parameters = scheme.named_parameters()
    else:
        model = toy_model("decoder", compatible_mixer(entry), entry.name)
        out = model(tokens())
        shape(out, (2, 12, V), "the logits")
        finite(out, "the logits")
        out.float().pow(2).mean().backward()
        parameters = model.position.named_parameters()
    for name, p in parameters:
        if p.grad is None or not torch.isfinite(p.grad).all():
            raise CheckFailure(f"its parameter {name} gets no finite gradient")


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """a causal decoder with it never reads the future"""
    if not entry.caps.grid:
        decoder_never_reads_the_future(compatible_mixer(entry), entry.name)
        return
    _, run = grid_layer(entry, causal=True)
    x = torch.randn(2, GRID_T, 32)
    y = x.clone()
    t = 7
    y[:, t] += 1.0
    with torch.no_grad():
        a, b = run(x), run(y)
    close(a[:, :t], b[:, :t], f"causality on a grid: changing token {t} changed earlier outputs")
    if torch.allclose(a[:, t:], b[:, t:]):
        raise CheckFailure(f"changing token {t} changed no output from {t} on")


@contract_check(SLOT, "encoder_padding")
def encoder_padding(entry: Entry) -> None:
    """an encoder with it ignores padded tokens"""
    if not entry.caps.grid:
        encoder_ignores_padding(compatible_mixer(entry, "encoder"), entry.name)
        return
    _, run = grid_layer(entry, causal=False)
    real = torch.randn(2, GRID_T, 32)
    padded = torch.cat([real, torch.randn(2, 3, 32)], dim=1)
    mask = torch.zeros(2, GRID_T + 3, dtype=torch.bool)
    mask[:, :GRID_T] = True
    with torch.no_grad():
        a = run(real, torch.ones(2, GRID_T, dtype=torch.bool))
        b = run(padded, mask)
    close(a, b[:, :GRID_T], "padding changed the outputs of real tokens on a grid", rtol=1e-4)


@contract_check(SLOT, "needs_grid")
def needs_grid(entry: Entry) -> None:
    """a scheme that needs a 2-D grid is refused in a token model, naming the grid"""
    if not entry.caps.grid:
        raise NotApplicable("works on 1-D sequences (caps.grid is False)")
    spec, why = try_spec("decoder", compatible_mixer(entry), entry.name)
    if spec is not None:
        raise CheckFailure("validation accepted it in a token model, which has no grid")
    if "grid" not in why:
        raise CheckFailure(f"the refusal does not name the missing grid: {why}")
