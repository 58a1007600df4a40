"""Contract checks of the ``layout`` slot (residual layouts): a block built with the
layout keeps a decoder causal and an encoder blind to padding, and passes gradient to
every parameter."""

from __future__ import annotations

from anyformer.lab.contracts import contract_check
from anyformer.lab.contracts._common import (
    decoder_never_reads_the_future,
    encoder_ignores_padding,
    no_dead_parameters,
    tokens,
    toy_model,
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
