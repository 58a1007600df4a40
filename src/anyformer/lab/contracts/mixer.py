"""Contract checks of the ``attention`` slot (token mixers): ``forward(x, ctx)`` keeps the
shape, a causal decoder never reads the future, an encoder ignores padding, gradient
reaches every parameter, and cached decoding equals recomputation."""

from __future__ import annotations

import torch

from anyformer import registry
from anyformer.components.base import Cache, Context
from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts._common import (
    T,
    V,
    close,
    decoder_never_reads_the_future,
    encoder_ignores_padding,
    finite,
    no_dead_parameters,
    shape,
    tokens,
    toy_model,
    try_spec,
)
from anyformer.registry import Dims, Entry

SLOT = "attention"


@contract_check(SLOT, "shape")
def output_shape(entry: Entry) -> None:
    """forward(x [B, T, D], ctx) returns finite [B, T, D] in every mode it declares"""
    modes = [
        c for c, ok in ((True, entry.caps.causal_safe), (False, entry.caps.bidirectional)) if ok
    ]
    if not modes:
        raise CheckFailure("its capabilities allow neither decoders nor encoders")
    for causal in modes:
        dims = Dims(d_model=32, n_heads=4, max_len=32, causal=causal)
        params = entry.make_params()
        problem = entry.check(params, dims)
        if problem:
            raise CheckFailure(f"it refuses d_model=32, n_heads=4: {problem}")
        mixer = entry.build(params, dims)
        position = registry.get("position", "none").build(None, dims)
        x = torch.randn(2, T, 32)
        y = mixer(x, Context(torch.arange(T), causal, position))
        what = f"the {'causal' if causal else 'bidirectional'} output"
        if not isinstance(y, torch.Tensor):
            raise CheckFailure(f"{what} is a {type(y).__name__}, not a tensor")
        shape(y, (2, T, 32), what)
        finite(y, what)


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """in a causal decoder, changing token t changes no earlier output (every position scheme)

    A position scheme whose mode the mixer does not honour, or any decoder for a mixer
    that is not ``causal_safe``, must be refused by validation instead."""
    for position in registry.components("position"):  # also: refused where excluded
        decoder_never_reads_the_future(entry.name, position)
    if not entry.caps.causal_safe:
        raise NotApplicable("not causal_safe (encoders only); decoders refuse it")


@contract_check(SLOT, "encoder_padding")
def encoder_padding(entry: Entry) -> None:
    """in an encoder, padded tokens change no real token's output"""
    if not entry.caps.bidirectional:
        if try_spec("encoder", entry.name, "learned")[0] is not None:
            raise CheckFailure("validation accepted a causal-only mixer in an encoder")
        raise NotApplicable("not bidirectional (decoders only); encoders refuse it")
    encoder_ignores_padding(entry.name, "learned")


@contract_check(SLOT, "gradients")
def gradients(entry: Entry) -> None:
    """a backward pass through a model with it reaches every parameter"""
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
    if not entry.caps.causal_safe:
        raise CheckFailure("declares kv_cache but is not causal_safe")
    for position in ("none", "rope", "alibi", "learned"):
        mode = registry.get("position", position).caps.position_mode or "none"
        if mode in entry.caps.position_modes:
            cached_decoding_equals_recomputation(entry.name, position)


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
