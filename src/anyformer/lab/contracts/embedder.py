"""Contract checks of the ``embedder`` slot beyond those it shares with the head slot
(:mod:`anyformer.lab.contracts.io`: finite tokens of the declared length, rows computed
apart, gradient to every parameter): the tokens depend on the example they embed, the
layout's grid agrees with the capabilities and fits in the tokens, an image or table
embedder refuses inputs of another kind naming ``model.input_shape``, and a grid
embedder works with every 2-D position scheme."""

from __future__ import annotations

import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts import io as _io  # registers the checks shared with heads
from anyformer.lab.contracts._common import finite, shape
from anyformer.model.transformer import build_model
from anyformer.registry import Entry
from anyformer.spec import ModelSpec, parse

SLOT = "embedder"

#: An ``input_shape`` of the wrong kind for each kind of input that has one.
OTHER_SHAPES = {"image": [5], "table": [3, 8, 8], "audio": [3, 8, 8]}


@contract_check(SLOT, "reads_its_example")
def reads_its_example(entry: Entry) -> None:
    """changing one example changes that example's tokens"""
    model = _io._embedder_model(entry).eval()
    x = _io._inputs(model)
    y = x.clone()
    y[0] = _io._inputs(model)[0]  # another draw
    if torch.equal(x[0], y[0]):
        raise NotApplicable("two draws gave the same example")
    with torch.no_grad():
        a, b = model.embed(x), model.embed(y)
    if torch.allclose(a[0], b[0]):
        raise CheckFailure("changing example 0 left its own tokens unchanged")


@contract_check(SLOT, "layout")
def layout(entry: Entry) -> None:
    """layout() makes a grid (branches) exactly when caps.grid (caps.branches) says, and
    they fit in the tokens"""
    model = _io._embedder_model(entry)
    tokens = model.spec.token_layout
    if entry.caps.grid != (tokens.grid is not None):
        raise CheckFailure(f"caps.grid={entry.caps.grid} but layout() gives grid={tokens.grid}")
    if not 0 <= tokens.n_prefix <= (tokens.length or 0) or (
        tokens.length is None and tokens.n_prefix
    ):
        raise CheckFailure(f"layout() gives n_prefix={tokens.n_prefix} of {tokens.length} tokens")
    branches = getattr(tokens, "branches", None)
    if entry.caps.branches != (branches is not None):
        raise CheckFailure(f"caps.branches={entry.caps.branches} but layout() gives {branches}")
    if branches is not None and (sum(branches) != tokens.length or min(branches) < 1):
        raise CheckFailure(f"layout() gives branches {branches} of {tokens.length} tokens")
    if tokens.grid is not None:
        h, w = tokens.grid
        if h < 1 or w < 1 or tokens.length is None or tokens.n_prefix + h * w > tokens.length:
            raise CheckFailure(
                f"layout() gives {tokens.n_prefix} prefix tokens and a {h}x{w} grid, which do "
                f"not fit in {tokens.length} tokens"
            )


@contract_check(SLOT, "refuses_other_inputs")
def refuses_other_inputs(entry: Entry) -> None:
    """refuses an input_shape of another kind, naming model.input_shape"""
    kind = entry.caps.input_kind
    if kind not in OTHER_SHAPES:
        raise NotApplicable(f"reads {kind}: model.input_shape does not concern it")
    data = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, position="none",
                embedder=entry.name, input_shape=OTHER_SHAPES[kind], n_outputs=3)  # fmt: skip
    try:
        parse(ModelSpec, data)
    except SpecError as exc:
        if "input_shape" not in str(exc):
            raise CheckFailure(f"the refusal does not name model.input_shape: {exc}") from None
        return
    raise CheckFailure(f"a model reading {kind} accepted input_shape={OTHER_SHAPES[kind]}")


@contract_check(SLOT, "grid_positions")
def grid_positions(entry: Entry) -> None:
    """a grid embedder works with every position scheme that needs a grid"""
    if not entry.caps.grid:
        raise NotApplicable("makes no grid")
    for pos in registry.entries("position"):
        if not pos.caps.grid:
            continue
        fields, draw = _io.INPUTS[entry.caps.input_kind or "image"]
        data = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=64,
                    position=pos.name, embedder=entry.name, head="classify", n_outputs=3,
                    **fields)  # fmt: skip
        try:
            model = build_model(parse(ModelSpec, data))
        except SpecError as exc:
            raise CheckFailure(f"a model with position={pos.name} is refused: {exc}") from None
        x = draw()
        out = model(x)
        shape(out, (x.shape[0], 3), f"the outputs with position={pos.name}")
        finite(out, f"the outputs with position={pos.name}")
