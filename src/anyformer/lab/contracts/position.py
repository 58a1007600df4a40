"""Contract checks of the ``position`` slot: through a toy model with a mixer that
honours the scheme's mode, outputs are finite, a decoder stays causal, and an encoder
ignores padding."""

from __future__ import annotations

import torch

from anyformer import registry
from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.lab.contracts._common import (
    V,
    decoder_never_reads_the_future,
    encoder_ignores_padding,
    finite,
    shape,
    tokens,
    toy_model,
)
from anyformer.registry import Entry

SLOT = "position"


def compatible_mixer(entry: Entry, kind: str = "decoder") -> str:
    """``softmax`` when it honours the scheme's mode, else the first mixer that does."""
    mode = entry.caps.position_mode or "none"
    names = ["softmax", *registry.components("attention")]
    for name in names:
        caps = registry.get("attention", name).caps
        if mode in caps.position_modes and (
            caps.causal_safe if kind == "decoder" else caps.bidirectional
        ):
            return name
    raise CheckFailure(f"no registered {kind} mixer honours position mode '{mode}'")


@contract_check(SLOT, "shape")
def output_shape(entry: Entry) -> None:
    """a toy decoder with it returns finite [B, T, V] logits"""
    model = toy_model("decoder", compatible_mixer(entry), entry.name)
    out = model(tokens())
    shape(out, (2, 12, V), "the logits")
    finite(out, "the logits")
    out.float().pow(2).mean().backward()
    for name, p in model.position.named_parameters():
        if p.grad is None or not torch.isfinite(p.grad).all():
            raise CheckFailure(f"its parameter {name} gets no finite gradient")


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """a causal decoder with it never reads the future"""
    decoder_never_reads_the_future(compatible_mixer(entry), entry.name)


@contract_check(SLOT, "encoder_padding")
def encoder_padding(entry: Entry) -> None:
    """an encoder with it ignores padded tokens"""
    encoder_ignores_padding(compatible_mixer(entry, "encoder"), entry.name)
