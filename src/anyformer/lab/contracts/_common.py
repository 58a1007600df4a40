"""Small models and comparisons shared by the contract checks of several slots."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, parse

#: Vocabulary and length of the toy models the checks build.
V, T = 23, 12


def model_data(kind: str, attention: Any = "softmax", position: str = "none", **extra: Any) -> dict:
    """The dict of a toy model spec (2 layers, d_model 32, 4 heads); encoders get a
    per-token head unless ``extra`` says otherwise."""
    data: dict[str, Any] = dict(
        kind=kind,
        vocab_size=V,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=32,
        attention=attention,
        position=position,
    )
    if kind == "encoder":
        data.update(head="token_classify", n_outputs=3)
    data.update(extra)
    return data


def try_spec(
    kind: str, attention: Any = "softmax", position: str = "none", **extra: Any
) -> tuple[ModelSpec | None, str]:
    """``(spec, "")``, or ``(None, reason)`` when validation refuses the combination."""
    try:
        return parse(ModelSpec, model_data(kind, attention, position, **extra)), ""
    except SpecError as exc:
        return None, str(exc)


def allowed(kind: str, attention: str, position: str) -> bool:
    """Whether the capabilities allow ``attention`` with ``position`` in a ``kind`` toy
    model (a token model: a position scheme that needs a 2-D grid is excluded)."""
    entry, pos = registry.get("attention", attention), registry.get("position", position)
    ok_kind = entry.caps.causal_safe if kind == "decoder" else entry.caps.bidirectional
    mode_ok = (pos.caps.position_mode or "none") in entry.caps.position_modes
    return ok_kind and mode_ok and not pos.caps.grid


def toy_model(
    kind: str, attention: Any = "softmax", position: str = "none", **extra: Any
) -> Transformer:
    """A toy model; a refused spec fails the check with validation's message."""
    spec, why = try_spec(kind, attention, position, **extra)
    if spec is None:
        raise CheckFailure(f"a {kind} with {_label(attention, position, extra)} was refused: {why}")
    return build_model(spec)


def _label(attention: Any, position: str, extra: dict[str, Any]) -> str:
    name = attention if isinstance(attention, str) else attention.get("name")
    more = "".join(f", {k}={v}" for k, v in extra.items())
    return f"attention={name}, position={position}{more}"


def tokens(b: int = 2, t: int = T, seed: int = 0) -> torch.Tensor:
    """Token ids in ``[4, V)`` (ids 0-3 are left free for special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, V, (b, t), generator=g)


def close(
    a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Raise :class:`CheckFailure` naming ``what`` and the largest difference unless close."""
    if a.shape != b.shape:
        raise CheckFailure(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        diff = float((a - b).detach().abs().max())
        raise CheckFailure(f"{what} (largest difference {diff:.3g})")


def finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise CheckFailure(f"{what} has NaN or infinite values")


def shape(x: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != expected:
        raise CheckFailure(f"{what} has shape {tuple(x.shape)}, expected {expected}")


def dead_parameters(module: nn.Module) -> list[str]:
    """Trainable parameters that received no (or an all-zero) gradient."""
    return [
        name
        for name, p in module.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]


def no_dead_parameters(module: nn.Module, what: str) -> None:
    dead = dead_parameters(module)
    if dead:
        shown = ", ".join(dead[:6]) + (f" and {len(dead) - 6} more" if len(dead) > 6 else "")
        raise CheckFailure(f"no gradient reaches {shown} ({what})")


def decoder_never_reads_the_future(attention: Any, position: str, **extra: Any) -> None:
    """In a causal decoder, changing token ``t`` leaves every output before ``t`` unchanged
    and changes the outputs from ``t`` on. A combination the capabilities exclude must be
    refused by validation instead."""
    name = attention if isinstance(attention, str) else attention["name"]
    spec, _ = try_spec("decoder", attention, position, **extra)
    if not allowed("decoder", name, position):
        if spec is not None:
            raise CheckFailure(
                f"validation accepted a decoder with attention={name}, position={position}, "
                f"which the capabilities exclude"
            )
        return
    model = toy_model("decoder", attention, position, **extra).eval()
    x = tokens()
    y = x.clone()
    t = 7
    y[:, t] = (x[:, t] + 5) % (V - 4) + 4
    with torch.no_grad():
        a, b = model(x), model(y)
    where = f"position={position}"
    close(a[:, :t], b[:, :t], f"causality: changing token {t} changed earlier outputs ({where})")
    if torch.allclose(a[:, t:], b[:, t:]):
        raise CheckFailure(f"changing token {t} changed no output from {t} on ({where})")


def encoder_ignores_padding(attention: Any, position: str, **extra: Any) -> None:
    """In an encoder, appending padded tokens (masked out) leaves the real tokens' outputs
    unchanged."""
    model = toy_model("encoder", attention, position, **extra).eval()
    real = tokens(t=8)
    padded = torch.cat([real, tokens(t=4, seed=1)], dim=1)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :8] = True
    with torch.no_grad():
        a = model(real, padding_mask=torch.ones(2, 8, dtype=torch.bool))
        b = model(padded, padding_mask=mask)
    close(
        a, b[:, :8], f"padding changed the outputs of real tokens (position={position})", rtol=1e-4
    )
