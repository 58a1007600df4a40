"""Contract checks of the ``attention`` slot (token mixers): ``forward(x, ctx)`` keeps the
shape, a causal decoder never reads the future, an encoder ignores padding, gradient
reaches every parameter, and cached decoding equals recomputation.

A mixer whose capabilities say ``grid`` reads a 2-D grid of tokens: the checks build it
with :func:`mixer_dims` (prefix tokens and a grid that make up the test length), check
that validation refuses it in a model without a grid, and check padding as masked grid
cells whose values reach no real token. A mixer whose capabilities say ``branches``
(CrossViT's ``cross_branch``) reads branches of tokens, each starting with its CLS token:
it is built with two branches that make up the test length, and validation must refuse it
in a model without branches, saying so."""

from __future__ import annotations

from typing import Any

import torch

from anyformer import registry
from anyformer.components.base import Cache, Context
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts._common import (
    T,
    V,
    cached_encoder_decoder_equals_recomputation,
    close,
    decoder_never_reads_the_future,
    encoder_decoder_is_causal,
    encoder_ignores_padding,
    finite,
    no_dead_parameters,
    prefix_lm_visibility,
    shape,
    source_padding_is_ignored,
    source_tokens,
    tokens,
    toy_model,
    try_spec,
)
from anyformer.registry import Dims, Entry

SLOT = "attention"


def grid_for(t: int) -> tuple[int, int, int]:
    """``(n_prefix, H, W)`` with ``n_prefix + H * W = t``: the fewest prefix tokens (at
    least one where possible, so prefix handling is exercised) and the squarest grid
    with both sides at least 2."""
    for n_prefix in (1, 2, 3, 0):
        cells = t - n_prefix
        sides = [(h, cells // h) for h in range(2, cells + 1) if cells % h == 0]
        sides = [(h, w) for h, w in sides if h <= w and h >= 2]
        if sides:
            h, w = sides[-1]
            return n_prefix, h, w
    raise ValueError(f"no grid of at least 2x2 cells fits {t} tokens")


def mixer_dims(entry: Entry, d_model: int, n_heads: int, t: int, causal: bool, **kw: Any) -> Dims:
    """The ``Dims`` a check builds ``entry`` with for inputs of ``t`` tokens: a grid
    mixer (``caps.grid``) gets prefix tokens and a grid of :func:`grid_for` ``(t)``, a
    branch mixer (``caps.branches``) two branches of ``t - t // 2`` and ``t // 2``
    tokens; ``max_len`` defaults to ``t``."""
    kw.setdefault("max_len", t)
    if entry.caps.branches:
        kw.update(branches=(t - t // 2, t // 2))
    if entry.caps.grid:
        n_prefix, h, w = grid_for(t)
        kw.update(grid=(h, w), n_prefix=n_prefix)
    return Dims(d_model=d_model, n_heads=n_heads, causal=causal, **kw)


@contract_check(SLOT, "shape")
def output_shape(entry: Entry) -> None:
    """forward(x [B, T, D], ctx) returns finite [B, T, D] in every mode it declares"""
    if entry.caps.memory:
        memory_output_shape(entry)
        return
    modes = [
        c for c, ok in ((True, entry.caps.causal_safe), (False, entry.caps.bidirectional)) if ok
    ]
    if not modes:
        raise CheckFailure("its capabilities allow neither decoders nor encoders")
    for causal in modes:
        dims = mixer_dims(entry, 32, 4, T, causal, max_len=32)
        params = entry.make_params()
        problem = entry.check(params, dims)
        if problem:
            raise CheckFailure(f"it refuses d_model=32, n_heads=4: {problem}")
        mixer = entry.build(params, dims)
        position = registry.get("position", "none").build(None, dims)
        x = torch.randn(2, T, 32)
        y = mixer(x, Context(torch.arange(T), causal, position, adjacency=graph_for(entry)))
        what = f"the {'causal' if causal else 'bidirectional'} output"
        if not isinstance(y, torch.Tensor):
            raise CheckFailure(f"{what} is a {type(y).__name__}, not a tensor")
        shape(y, (2, T, 32), what)
        finite(y, what)
    if entry.caps.graph:
        refuses_a_context_without_adjacency(entry)


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """in a causal decoder, changing token t changes no earlier output (every position scheme)

    A position scheme whose mode the mixer does not honour, or any decoder for a mixer
    that is not ``causal_safe``, must be refused by validation instead. A ``memory``
    mixer: the decoder of an encoder–decoder with it as cross-attention."""
    if entry.caps.memory:
        refused_as_self_attention(entry)
        encoder_decoder_is_causal(cross_model(entry), f"cross_attention={entry.name}")
        return
    for position in registry.components("position"):  # also: refused where excluded
        decoder_never_reads_the_future(entry.name, position)
    if not entry.caps.causal_safe:
        raise NotApplicable("not causal_safe (encoders only); decoders refuse it")


@contract_check(SLOT, "encoder_padding")
def encoder_padding(entry: Entry) -> None:
    """in an encoder, padded tokens change no real token's output (a grid mixer: padded
    grid cells; and a model without a grid is refused with the reason)"""
    if entry.caps.memory:  # padded source tokens, not padded self-attention keys
        source_padding_is_ignored(cross_model(entry), f"cross_attention={entry.name}")
        return
    if entry.caps.grid:
        refuses_a_model_without_a_grid(entry)
    if entry.caps.branches:
        refuses_a_model_without_branches(entry)
    if entry.caps.graph:
        refuses_a_model_without_graph_inputs(entry)
    if not entry.caps.bidirectional:
        if try_spec("encoder", entry.name, "learned")[0] is not None:
            raise CheckFailure("validation accepted a causal-only mixer in an encoder")
        raise NotApplicable("not bidirectional (decoders only); encoders refuse it")
    if entry.caps.graph:
        padded_nodes_are_ignored(entry)
    elif entry.caps.grid or entry.caps.branches:
        grid_cells_ignore_padding(entry)
    else:
        encoder_ignores_padding(entry.name, "learned")


@contract_check(SLOT, "gradients")
def gradients(entry: Entry) -> None:
    """a backward pass through a model with it reaches every parameter"""
    if entry.caps.memory:
        model = cross_model(entry)
        model(tokens(), source=source_tokens()).float().pow(2).mean().backward()
        no_dead_parameters(model, f"in an encoder_decoder, cross_attention={entry.name}")
        return
    if entry.caps.grid or entry.caps.branches or entry.caps.graph:
        mixer = entry.build(entry.make_params(), mixer_dims(entry, 32, 4, T, False))
        position = registry.get("position", "none").build(None, mixer_dims(entry, 32, 4, T, False))
        ctx = Context(torch.arange(T), False, position, adjacency=graph_for(entry))
        if entry.caps.graph:  # edge states too: an edge stream's parameters act on them
            ctx.edges = torch.randn(2, T, T, 32)
        loss = mixer(torch.randn(2, T, 32), ctx).pow(2).mean()
        if ctx.edges is not None:
            loss = loss + ctx.edges.pow(2).mean()
        loss.backward()
        no_dead_parameters(
            mixer, "on a graph with edge states" if entry.caps.graph else "on a grid"
        )
        return
    kind = "decoder" if entry.caps.causal_safe else "encoder"
    extra = {} if kind == "decoder" else {"n_outputs": V}
    model = toy_model(kind, entry.name, "none", **extra)
    model(tokens()).float().pow(2).mean().backward()
    no_dead_parameters(model, f"in a {kind}")


@contract_check(SLOT, "kv_cache")
def kv_cache(entry: Entry) -> None:
    """greedy decoding with a cache gives the tokens and logits of full recomputation"""
    if not entry.caps.kv_cache:
        raise NotApplicable("no kv_cache capability (generation recomputes)")
    if entry.caps.memory:
        model = cross_model(entry, init_std=0.2).eval()
        cached_encoder_decoder_equals_recomputation(model, f"cross_attention={entry.name}")
        return
    if not entry.caps.causal_safe:
        raise CheckFailure("declares kv_cache but is not causal_safe")
    for position in ("none", "rope", "alibi", "learned"):
        mode = registry.get("position", position).caps.position_mode or "none"
        if mode in entry.caps.position_modes:
            cached_decoding_equals_recomputation(entry.name, position)


@contract_check(SLOT, "prefix")
def prefix(entry: Entry) -> None:
    """in a prefix LM: bidirectional inside the prefix, causal after it, a decoder at
    prefix_len=0, cached decoding after the prefix equals recomputation (or the prefix
    LM is refused, naming the mixer)"""
    if not entry.caps.prefix:
        spec, why = try_spec("prefix_lm", entry.name, "none")
        if spec is not None:
            raise CheckFailure("validation accepted a prefix LM with a mixer without prefix")
        if entry.name not in why:
            raise CheckFailure(f"the refusal of a prefix LM does not name the mixer: {why}")
        raise NotApplicable("no prefix capability; prefix LMs refuse it")
    for position in ("none", "rope", "alibi", "learned"):
        mode = registry.get("position", position).caps.position_mode or "none"
        if mode in entry.caps.position_modes:
            prefix_lm_visibility(entry.name, position)


def cross_model(entry: Entry, **extra: object) -> torch.nn.Module:
    """A toy encoder–decoder with ``entry`` as its cross-attention."""
    return toy_model("encoder_decoder", "softmax", "rope", cross_attention=entry.name, **extra)


def refused_as_self_attention(entry: Entry) -> None:
    """Validation refuses a ``memory`` mixer as a decoder's or encoder's self-attention."""
    for kind in ("decoder", "encoder"):
        spec, why = try_spec(kind, entry.name, "none")
        if spec is not None:
            raise CheckFailure(f"validation accepted it as the self-attention of a {kind}")
        if entry.name not in why:
            raise CheckFailure(f"the refusal does not name the mixer: {why}")


def memory_output_shape(entry: Entry) -> None:
    """A ``memory`` mixer maps ``x [B, T, D]`` over a memory ``[B, S, D]`` (its padding
    masked) to finite ``[B, T, D]``, and fails with a message without a memory."""
    dims = mixer_dims(entry, 32, 4, T, True, max_len=32)
    mixer = entry.build(entry.make_params(), dims)
    position = registry.get("position", "none").build(None, dims)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    ctx = Context(torch.arange(T), True, position, memory=torch.randn(2, 9, 32), memory_mask=mask)
    y = mixer(torch.randn(2, T, 32), ctx)
    shape(y, (2, T, 32), "the output over a memory")
    finite(y, "the output over a memory")
    try:
        mixer(torch.randn(2, T, 32), Context(torch.arange(T), True, position))
    except ValueError:
        return
    raise CheckFailure("it ran without a memory (ctx.memory=None) instead of refusing")


def graph_for(entry: Entry, b: int = 2, t: int = T, seed: int = 0) -> torch.Tensor | None:
    """For a graph mixer (``caps.graph``): a random symmetric adjacency ``[b, t, t]``
    without self-loops (about a third of the pairs joined); ``None`` for other mixers."""
    if not entry.caps.graph:
        return None
    g = torch.Generator().manual_seed(seed)
    upper = torch.rand(b, t, t, generator=g).triu(1) > 2 / 3
    return upper | upper.transpose(1, 2)


def refuses_a_context_without_adjacency(entry: Entry) -> None:
    """A graph mixer called without ``ctx.adjacency`` raises ValueError naming it."""
    dims = mixer_dims(entry, 32, 4, T, False)
    mixer = entry.build(entry.make_params(), dims)
    position = registry.get("position", "none").build(None, dims)
    try:
        mixer(torch.randn(2, T, 32), Context(torch.arange(T), False, position))
    except ValueError as exc:
        if "adjacency" not in str(exc):
            raise CheckFailure(f"its refusal without a graph does not say why: {exc}") from None
        return
    raise CheckFailure("it ran without a graph (ctx.adjacency=None) instead of refusing")


def _refused_in_a_token_model(entry: Entry, kind: str, lacking: str, reason: str) -> None:
    """Validation refuses the ``kind`` mixer ``entry`` in a plain token encoder (which has
    no ``lacking``), and its message names ``reason``."""
    spec, why = try_spec("encoder", entry.name, "none")
    if spec is not None:
        raise CheckFailure(f"validation accepted a {kind} mixer in a model without {lacking}")
    if reason not in why:
        raise CheckFailure(f"the refusal of a model without {lacking} does not say why: {why}")


def refuses_a_model_without_graph_inputs(entry: Entry) -> None:
    """Validation refuses a graph mixer in a token model (no graph embedder), saying why."""
    _refused_in_a_token_model(entry, "graph", "graph inputs", "graph")


def padded_nodes_are_ignored(entry: Entry) -> None:
    """Padded nodes (``padding_mask`` False), whatever their values and edges, change no
    real node's output."""
    dims = mixer_dims(entry, 32, 4, T, False)
    mixer = entry.build(entry.make_params(), dims).eval()
    position = registry.get("position", "none").build(None, dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, 32, generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, -3:] = False
    mask[1, 2] = False
    adj = graph_for(entry)
    assert adj is not None
    adj = adj & mask[:, :, None] & mask[:, None, :]
    other = torch.where(mask[..., None], x, torch.randn(2, T, 32, generator=g) * 3)
    with torch.no_grad():
        a = mixer(x, Context(torch.arange(T), False, position, mask, adjacency=adj))
        b = mixer(other, Context(torch.arange(T), False, position, mask, adjacency=adj))
    close(a[mask], b[mask], "padded nodes changed the outputs of real nodes")


def refuses_a_model_without_a_grid(entry: Entry) -> None:
    """Validation refuses a grid mixer in a token model (a 1-D sequence), saying why."""
    _refused_in_a_token_model(entry, "grid", "a grid", "grid")


def refuses_a_model_without_branches(entry: Entry) -> None:
    """Validation refuses a branch mixer in a model of one sequence, saying why."""
    _refused_in_a_token_model(entry, "branch", "branches", "branches")


def grid_cells_ignore_padding(entry: Entry) -> None:
    """Padded grid cells and prefix tokens (``padding_mask`` False) change no real token's
    output, whatever their values."""
    dims = mixer_dims(entry, 32, 4, T, False)
    mixer = entry.build(entry.make_params(), dims).eval()
    position = registry.get("position", "none").build(None, dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, 32, generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, -3:] = False
    mask[1, dims.n_prefix + 1] = False
    mask[1, 0] = dims.n_prefix == 0
    other = torch.where(mask[..., None], x, torch.randn(2, T, 32, generator=g) * 3)
    ctx = Context(torch.arange(T), False, position, padding_mask=mask)
    with torch.no_grad():
        a, b = mixer(x, ctx), mixer(other, ctx)
    close(a[mask], b[mask], "padded grid cells changed the outputs of real tokens", rtol=1e-4)


def cached_decoding_equals_recomputation(
    attention: object, position: str, prompt: int = 5, new: int = 10
) -> None:
    """Greedy decoding token by token with a :class:`Cache` (a prefill, then one token per
    forward) chooses the tokens, and computes the logits, of recomputing the whole
    sequence at every step. Weights are drawn large (``init_std=0.2``) so that the logits
    are far from uniform and a wrong cache changes them."""
    model = toy_model("decoder", attention, position, init_std=0.2, max_len=prompt + new).eval()
    x = tokens(t=prompt)
    cache, seq, step_in = Cache(), x, x
    with torch.no_grad():
        for i in range(new):
            cached = model(step_in, cache=cache)[:, -1]
            full = model(seq)[:, -1]
            close(
                cached,
                full,
                f"cached logits differ from recomputation at new token {i} (position={position})",
                atol=1e-4,
                rtol=0,
            )
            if float(full.std(dim=-1).min()) < 0.1:
                raise CheckFailure("logits are nearly uniform: the cache test would prove nothing")
            step_in = full.argmax(-1, keepdim=True)
            seq = torch.cat([seq, step_in], dim=1)
