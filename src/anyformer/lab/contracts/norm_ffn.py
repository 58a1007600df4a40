"""Contract checks of the ``norm`` and ``ffn`` slots: per-token maps ``forward(x)`` that
keep the shape, mix nothing across tokens, and pass gradient to every parameter."""

from __future__ import annotations

import torch
from torch import nn

from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.lab.contracts._common import close, finite, no_dead_parameters, shape
from anyformer.registry import Dims, Entry

B, T, D = 2, 6, 16


def _build(entry: Entry) -> nn.Module:
    # a variant that is not causal_safe is built as for an encoder (decoders refuse it)
    dims = Dims(d_model=D, n_heads=2, max_len=32, causal=entry.caps.causal_safe)
    params = entry.make_params()
    problem = entry.check(params, dims)
    if problem:
        raise CheckFailure(f"it refuses d_model={D}: {problem}")
    return entry.build(params, dims)


def output_shape(entry: Entry) -> None:
    """forward(x [B, T, D]) returns finite [B, T, D] in training and evaluation mode"""
    module = _build(entry)
    x = torch.randn(B, T, D)
    for training in (True, False):
        y = module.train(training)(x)
        what = f"the output ({'training' if training else 'evaluation'} mode)"
        shape(y, (B, T, D), what)
        finite(y, what)


def per_token(entry: Entry) -> None:
    """changing token j changes output j and no other (in training mode too when causal_safe)"""
    module = _build(entry)
    x = torch.randn(B, T, D)
    j = 3
    y = x.clone()
    y[:, j] = torch.randn(B, D)
    modes = (False, True) if entry.caps.causal_safe else (False,)
    for training in modes:
        module.train(training)
        with torch.no_grad():
            a, b = module(x), module(y)
        others = [i for i in range(T) if i != j]
        mode = "training" if training else "evaluation"
        close(
            a[:, others],
            b[:, others],
            f"changing token {j} changed other tokens' outputs "
            f"({mode} mode): it mixes across tokens",
        )
        if not entry.caps.empty and torch.allclose(a[:, j], b[:, j]):
            raise CheckFailure(f"changing token {j} did not change its own output ({mode} mode)")


def gradients(entry: Entry) -> None:
    """a backward pass through it reaches every parameter"""
    module = _build(entry).train()
    x = torch.randn(B, T, D, requires_grad=True)
    y = module(x)
    if not y.requires_grad:
        if entry.caps.empty and not any(p.requires_grad for p in module.parameters()):
            return  # computes nothing: no parameter, no gradient
        raise CheckFailure("its output does not depend on its input or parameters")
    (y * torch.randn(B, T, D)).sum().backward()
    no_dead_parameters(module, "loss = sum(output * random weights)")
    if not entry.caps.empty and (x.grad is None or not bool(x.grad.abs().sum() > 0)):
        raise CheckFailure("no gradient reaches its input")


for _slot in ("norm", "ffn"):
    contract_check(_slot, "shape")(output_shape)
    contract_check(_slot, "per_token")(per_token)
    contract_check(_slot, "gradients")(gradients)
