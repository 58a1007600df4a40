"""Contract checks of the ``embedder`` and ``head`` slots, through a toy encoder built
around the component: finite outputs of the declared layout, rows computed apart from
each other, and gradient to every parameter."""

from __future__ import annotations

from typing import Any

import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts._common import close, finite, no_dead_parameters, shape
from anyformer.model.transformer import Transformer, build_model
from anyformer.registry import Entry
from anyformer.spec import ModelSpec, parse

B = 3
#: Per input kind: the spec fields a toy model needs and a batch of inputs for it.
INPUTS: dict[str, tuple[dict[str, Any], Any]] = {
    "tokens": ({"vocab_size": 17}, lambda: torch.randint(0, 17, (B, 8))),
    "vectors": ({"input_dim": 5}, lambda: torch.randn(B, 8, 5)),
    "image": ({"input_shape": [3, 8, 8]}, lambda: torch.rand(B, 3, 8, 8)),
    "table": ({"input_shape": [4]}, lambda: _table_rows()),
    "audio": ({"input_shape": [1024]}, lambda: torch.randn(B, 1024)),
    "series": ({"input_shape": [12, 3]}, lambda: torch.randn(B, 12, 3)),
}
#: The head of the toy model around an embedder, per input kind (``classify`` otherwise).
EMBEDDER_HEADS = {"series": "forecast"}


def _table_rows() -> torch.Tensor:
    """Table rows with one missing value (NaN), as table tasks give them."""
    x = torch.randn(B, 4)
    x[0, -1] = float("nan")
    return x


def _model(embedder: str = "tokens", head: str = "token_classify", **extra: Any) -> Transformer:
    kind = registry.get("embedder", embedder).caps.input_kind or "tokens"
    fields, _ = INPUTS[kind]
    data = dict(
        kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=64, position="none",
        embedder=embedder, head=head, n_outputs=3, **fields, **extra,
    )  # fmt: skip
    try:
        spec = parse(ModelSpec, data)
    except SpecError as exc:
        raise CheckFailure(f"a toy encoder around it is refused: {exc}") from None
    torch.manual_seed(0)
    return build_model(spec)


def _inputs(model: Transformer) -> torch.Tensor:
    return INPUTS[model.spec.input_kind][1]()


def _embedder_model(entry: Entry) -> Transformer:
    if entry.caps.input_kind not in INPUTS:
        raise NotApplicable(f"no toy inputs for input_kind={entry.caps.input_kind!r}")
    return _model(embedder=entry.name, head=EMBEDDER_HEADS.get(entry.caps.input_kind, "classify"))


@contract_check("embedder", "tokens")
def embedder_tokens(entry: Entry) -> None:
    """forward(inputs) gives finite [B * rows, T, d_model] with T and rows (1 unless the
    embedder folds several rows per example into the batch) as layout() says"""
    model = _embedder_model(entry)
    x = _inputs(model)
    tokens = model.embed(x)
    layout = model.spec.token_layout
    length = layout.length if layout.length is not None else x.shape[1]
    shape(tokens, (B * layout.rows, length, model.spec.d_model), "the embedder's tokens")
    finite(tokens, "the embedder's tokens")


@contract_check("embedder", "rows_apart")
def embedder_rows_apart(entry: Entry) -> None:
    """changing one example changes no other example's tokens (example i's tokens are
    rows ``i * rows .. (i + 1) * rows - 1`` when the embedder folds rows into the batch)"""
    model = _embedder_model(entry).eval()
    x = _inputs(model)
    y = x.clone()
    y[0] = _inputs(model)[0]
    rows = model.spec.token_layout.rows
    with torch.no_grad():
        a, b = model.embed(x), model.embed(y)
    close(a[rows:], b[rows:], "changing example 0 changed the tokens of other examples")


@contract_check("embedder", "gradients")
def embedder_gradients(entry: Entry) -> None:
    """a loss on the model's outputs reaches every parameter of the embedder"""
    model = _embedder_model(entry).train()
    model(_inputs(model)).square().sum().backward()
    no_dead_parameters(model.embed, "the embedder")


def _head_model(entry: Entry) -> Transformer:
    if not entry.caps.grid:
        return _model(embedder="tokens", head=entry.name)
    grids = [
        e.name for e in registry.entries("embedder") if e.caps.grid and e.caps.input_kind == "image"
    ]
    if not grids:
        raise NotApplicable(f"head '{entry.name}' needs a grid and no image embedder makes one")
    return _model(embedder=grids[0], head=entry.name)


@contract_check("head", "outputs")
def head_outputs(entry: Entry) -> None:
    """outputs are finite, one per example when pooled and one per token otherwise"""
    model = _head_model(entry).eval()
    x = _inputs(model)
    with torch.no_grad():
        out = model(x)
    finite(out, "the head's outputs")
    lead = tuple(out.shape[:2]) if not entry.caps.pooled else tuple(out.shape[:1])
    want = (B,) if entry.caps.pooled else (B, x.shape[1])
    if lead != want:
        raise CheckFailure(f"outputs {tuple(out.shape)} should start with {want}")


@contract_check("head", "padding")
def head_padding(entry: Entry) -> None:
    """padding tokens change no output at a real token (or of a pooled row)"""
    if entry.caps.grid:
        raise NotApplicable("a grid head reads a fixed grid of image patches (no padding)")
    model = _head_model(entry).eval()
    x = _inputs(model)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[:, -3:] = False
    y = x.clone()
    y[:, -3:] = (y[:, -3:] + 1) % model.spec.vocab_size
    with torch.no_grad():
        a, b = model(x, mask), model(y, mask)
    if getattr(model.head, "pairwise", False):  # [B, T, T, ...]: pairs of real tokens
        a, b = a[:, :-3, :-3], b[:, :-3, :-3]
    elif not entry.caps.pooled:
        a, b = a[:, :-3], b[:, :-3]
    close(a, b, "changing padding tokens changed the outputs")


@contract_check("head", "gradients")
def head_gradients(entry: Entry) -> None:
    """a loss on the outputs reaches every parameter of the head"""
    model = _head_model(entry).train()
    model(_inputs(model)).float().square().sum().backward()
    no_dead_parameters(model.head, "the head")
