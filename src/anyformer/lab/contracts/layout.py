"""Contract checks of the ``layout`` slot (residual layouts): a block built with the
layout keeps a decoder causal and an encoder blind to padding, and passes gradient to
every parameter; with the capability ``cross`` it also serves an encoder–decoder's
decoder (causal, blind to source padding, gradient to every parameter), without it an
encoder–decoder is refused naming the layout."""

from __future__ import annotations

from anyformer.lab.contracts import CheckFailure, NotApplicable, contract_check
from anyformer.lab.contracts._common import (
    decoder_never_reads_the_future,
    encoder_decoder_is_causal,
    encoder_ignores_padding,
    no_dead_parameters,
    source_padding_is_ignored,
    source_tokens,
    tokens,
    toy_model,
    try_spec,
)
from anyformer.registry import Entry

SLOT = "layout"


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """a decoder of blocks with this layout never reads the future"""
    decoder_never_reads_the_future("softmax", "rope", norm_placement=entry.name)


@contract_check(SLOT, "encoder_padding")
def encoder_padding(entry: Entry) -> None:
    """an encoder of blocks with this layout ignores padded tokens"""
    encoder_ignores_padding("softmax", "rope", norm_placement=entry.name)


@contract_check(SLOT, "gradients")
def gradients(entry: Entry) -> None:
    """a backward pass reaches every parameter of a model with this layout"""
    model = toy_model("decoder", "softmax", "rope", norm_placement=entry.name)
    model(tokens()).float().pow(2).mean().backward()
    no_dead_parameters(model, f"norm_placement={entry.name}")


@contract_check(SLOT, "cross")
def cross(entry: Entry) -> None:
    """an encoder-decoder's decoder with this layout (a cross-attention sublayer) is
    causal, ignores padded source tokens and passes gradient to every parameter; or
    the layout lacks the capability cross and validation refuses it, naming it"""
    if not entry.caps.cross:
        spec, why = try_spec("encoder_decoder", "softmax", "rope", norm_placement=entry.name)
        if spec is not None:
            raise CheckFailure("validation accepted an encoder_decoder with a layout without cross")
        if entry.name not in why:
            raise CheckFailure(f"the refusal does not name the layout: {why}")
        raise NotApplicable("no cross capability; encoder-decoders refuse it")
    model = toy_model("encoder_decoder", "softmax", "rope", norm_placement=entry.name)
    what = f"norm_placement={entry.name}"
    encoder_decoder_is_causal(model.eval(), what)
    source_padding_is_ignored(model, what)
    model.train()
    model(tokens(), source=source_tokens()).float().pow(2).mean().backward()
    no_dead_parameters(model, f"an encoder_decoder with {what}")
    if not any(name.endswith("cross.q.weight") for name, _ in model.named_parameters()):
        raise CheckFailure("the decoder blocks hold no cross-attention (parts.cross() unused)")
