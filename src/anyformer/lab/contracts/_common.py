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
    # a memory mixer (cross-attention) is never a layer's self-attention
    return ok_kind and mode_ok and not pos.caps.grid and not entry.caps.memory


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


# --------------------------------------------------------------------------- other kinds
def source_tokens(b: int = 2, s: int = 9, seed: int = 3) -> torch.Tensor:
    """Source token ids of an encoder–decoder's toy batch (as :func:`tokens`)."""
    return tokens(b, s, seed)


def changed_positions(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """``[B, T]`` bool: where the outputs ``a`` and ``b`` ``[B, T, ...]`` differ."""
    return (a - b).abs().flatten(2).amax(-1) > atol


def encoder_decoder_is_causal(model: nn.Module, what: str) -> None:
    """In an encoder–decoder, changing target token ``t`` leaves every output before
    ``t`` unchanged and changes the outputs from ``t`` on (the source held fixed)."""
    x, src = tokens(), source_tokens()
    y = x.clone()
    t = 7
    y[:, t] = (x[:, t] + 5) % (V - 4) + 4
    with torch.no_grad():
        a, b = model(x, source=src), model(y, source=src)
    close(a[:, :t], b[:, :t], f"causality: changing target token {t} changed earlier outputs "
          f"({what})")  # fmt: skip
    if torch.allclose(a[:, t:], b[:, t:]):
        raise CheckFailure(f"changing target token {t} changed no output from {t} on ({what})")
    z = src.clone()
    z[:, 0] = (src[:, 0] + 5) % (V - 4) + 4
    with torch.no_grad():
        c = model(x, source=z)
    if changed_positions(a, c).sum() < a.shape[0] * a.shape[1]:
        raise CheckFailure(f"changing source token 0 left some target outputs unchanged ({what})")


def source_padding_is_ignored(model: nn.Module, what: str) -> None:
    """In an encoder–decoder, padded source tokens (``source_mask`` False) change no
    output: a row padded with junk gives the outputs of the row alone."""
    x, src = tokens(), source_tokens(s=6)
    junk = source_tokens(s=3, seed=4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 6:] = False
    with torch.no_grad():
        alone = model(x, source=src)
        padded = model(x, source=torch.cat([src, junk], dim=1), source_mask=mask)
    close(alone, padded, f"padded source tokens changed the outputs ({what})", rtol=1e-4)


def cached_encoder_decoder_equals_recomputation(model: nn.Module, what: str, new: int = 8) -> None:
    """Greedy decoding of an encoder–decoder with a cache (the source encoded once, each
    layer's memory keys/values computed on the first step) gives the logits of
    recomputing the whole target at every step; the source rows are ragged."""
    from anyformer.components.base import Cache

    x = tokens(t=3)
    src = source_tokens()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    cache, seq, step_in = Cache(), x, x
    with torch.no_grad():
        memory = model.encode(src, mask)
        for i in range(new):
            cached = model(step_in, memory=memory, source_mask=mask, cache=cache)[:, -1]
            full = model(seq, source=src, source_mask=mask)[:, -1]
            close(cached, full, f"cached logits differ from recomputation at new token {i} "
                  f"({what})", atol=1e-4, rtol=0)  # fmt: skip
            if float(full.std(dim=-1).min()) < 0.1:
                raise CheckFailure("logits are nearly uniform: the cache test would prove nothing")
            step_in = full.argmax(-1, keepdim=True)
            seq = torch.cat([seq, step_in], dim=1)


def prefix_lm_visibility(attention: Any, position: str, **extra: Any) -> None:
    """A prefix LM is bidirectional inside each row's prefix and causal after it: changing
    token ``k < prefix_len`` changes the outputs at every position (earlier prefix
    positions too); changing token ``k >= prefix_len`` changes none before ``k`` and
    those from ``k`` on; ``prefix_len = 0`` gives a decoder's outputs (same weights),
    and, for a cache-capable mixer, decoding after a prefilled prefix equals
    recomputation."""
    name = attention if isinstance(attention, str) else attention["name"]
    extra.setdefault("init_std", 0.2)
    model = toy_model("prefix_lm", attention, position, **extra).eval()
    where = f"attention={name}, position={position}"
    x = tokens()
    prefix = torch.tensor([5, 8])
    with torch.no_grad():
        base = model(x, prefix_len=prefix)
        for k in (1, 4, 6, 9):
            y = x.clone()
            y[:, k] = (x[:, k] + 5) % (V - 4) + 4
            out = model(y, prefix_len=prefix)
            changed = changed_positions(base, out)
            for row, p in enumerate(prefix.tolist()):
                if k < p and not bool(changed[row].all()):
                    unchanged = (~changed[row]).nonzero().flatten().tolist()
                    raise CheckFailure(
                        f"changing token {k} inside the prefix (prefix_len={p}) left the "
                        f"outputs at positions {unchanged} unchanged ({where})"
                    )
                if k >= p:
                    close(base[row, :k], out[row, :k], f"changing token {k} after the prefix "
                          f"(prefix_len={p}) changed earlier outputs ({where})")  # fmt: skip
                    if not bool(changed[row, k:].any()):
                        raise CheckFailure(f"changing token {k} changed no output ({where})")
        decoder = toy_model("decoder", attention, position, **extra).eval()
        decoder.load_state_dict(model.state_dict())
        close(model(x, prefix_len=torch.zeros(2, dtype=torch.long)), decoder(x),
              f"prefix_len=0 differs from a decoder ({where})")  # fmt: skip
        if not torch.equal(model(x), decoder(x)):
            raise CheckFailure(f"prefix_len=None differs from a decoder ({where})")
    if registry.get("attention", name).caps.kv_cache:
        cached_prefix_equals_recomputation(model, where)


def cached_prefix_equals_recomputation(model: nn.Module, what: str, new: int = 6) -> None:
    """A prefix LM decoding with a cache (the prompt = the prefix, prefilled in one
    bidirectional pass) gives the logits of recomputing with ``prefix_len`` = the prompt."""
    from anyformer.components.base import Cache

    x = tokens(t=5)
    prefix = torch.full((2,), 5)
    cache, seq, step_in = Cache(), x, x
    with torch.no_grad():
        for i in range(new):
            cached = model(step_in, cache=cache, prefix_len=prefix)[:, -1]
            full = model(seq, prefix_len=prefix)[:, -1]
            close(cached, full, f"cached prefix-LM logits differ from recomputation at new "
                  f"token {i} ({what})", atol=1e-4, rtol=0)  # fmt: skip
            step_in = full.argmax(-1, keepdim=True)
            seq = torch.cat([seq, step_in], dim=1)
