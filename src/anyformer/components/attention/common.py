"""What the attention variants share: the ``impl`` vocabulary, head reshaping, the masks
a context asks for (causal, key padding, packed documents), additive score biases, the
key/value cache helpers and softmax attention itself, fused or written out.

Registers nothing. The q/k/v projection the variants share is in
:mod:`~anyformer.components.attention.qkv`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator

from anyformer.components.base import Context
from anyformer.nn import causal_mask, combine_masks, padding_to_key_mask
from anyformer.nn.kv_cache import KVBuffer, cached_key_mask
from anyformer.nn.packing import segment_mask
from anyformer.registry import Dims

#: What a recording softmax attention passes on each forward: ``q``, ``k``, ``v``
#: ``[B, H, T, d_head]`` (rotated by the position scheme, key/value heads repeated to the
#: query heads), the additive score bias ``[B or 1, H or 1, T, T]`` (position bias and
#: masks; ``None`` when there is none) and whether the causal mask is still to be applied.
QKVRecorder = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool], None
]


@contextlib.contextmanager
def recording(mixer: Any, record: QKVRecorder) -> Iterator[None]:
    """Inside the block, ``mixer`` (a softmax attention: one with a ``record`` attribute)
    passes its q/k/v and score bias to ``record`` on every forward. Refuses a mixer that
    cannot (attention-free mixers and kernels that never form softmax attention)."""
    if not hasattr(mixer, "record"):
        raise ValueError(f"{type(mixer).__name__} does not record q/k/v")
    mixer.record = record
    try:
        yield
    finally:
        mixer.record = None


# --------------------------------------------------------------------------- impl
#: The two ways a mixer with an ``impl`` parameter can compute the same function:
#: ``fast`` (fused kernels, chunked or FFT forms; the default) and ``reference`` (the
#: readable, obviously correct form). The registry-generated tests hold every ``fast``
#: path equal to its ``reference`` in outputs and in gradients.
ImplName = Literal["fast", "reference"]

#: Names each mixer family used before the ``fast``/``reference`` pair; still accepted
#: (old specs and run folders validate) and mapped to the new name, which is the one
#: written back.
DEPRECATED_IMPLS: dict[str, ImplName] = {
    "sdpa": "fast",
    "chunked": "fast",
    "blocked": "fast",
    "sampled": "fast",
    "parallel": "fast",
    "fft": "fast",
    "recurrent": "reference",
    "masked": "reference",
    "direct": "reference",
}


def canonical_impl(value: Any) -> Any:
    """Map a deprecated ``impl`` name (``sdpa``, ``chunked``, ``recurrent``, ...) to
    ``fast`` or ``reference``; any other value is left for validation to judge."""
    return DEPRECATED_IMPLS.get(value, value) if isinstance(value, str) else value


#: The type of every mixer's ``impl`` field: ``fast`` or ``reference``, the old names
#: accepted as aliases (:data:`DEPRECATED_IMPLS`).
Impl = Annotated[ImplName, BeforeValidator(canonical_impl)]


#: The ``IMPL_CHECK`` class attribute a mixer's params class may set: parameter
#: overrides, one set per entry, under which the registry-generated test compares each
#: ``impl`` with ``reference`` (a small chunk or window, so that the fast form's blocks
#: are exercised on short test sequences; options that change the computed path). It
#: defaults to ``({},)``, the default parameters.
ImplCheck = tuple[dict[str, Any], ...]


# --------------------------------------------------------------------------- heads
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, H*D]`` -> ``[B, H, T, D]``."""
    b, t, _ = x.shape
    return x.reshape(b, t, n_heads, -1).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, T, H*D]``."""
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d)


# --------------------------------------------------------------------------- masks
def masked_bias(
    bias: torch.Tensor | None, allowed: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """Fold a boolean ``allowed`` mask into an additive float bias (very negative where not
    allowed; finite, so a row with nothing allowed is uniform, never NaN)."""
    if allowed is None:
        return bias
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    blocked = blocked.masked_fill(~allowed, torch.finfo(dtype).min / 2)
    return blocked if bias is None else bias.to(dtype) + blocked


def key_mask(ctx: Context) -> torch.Tensor | None:
    """Boolean mask of the keys each query may see besides causality: real (unpadded) keys
    ``[B, 1, 1, T]`` and, in packed rows, keys of the same document ``[B, 1, T, T]``."""
    keys = padding_to_key_mask(ctx.padding_mask) if ctx.padding_mask is not None else None
    docs = segment_mask(ctx.segments) if ctx.segments is not None else None
    return combine_masks(keys, docs)


def causal_part(ctx: Context, t: int, device: torch.device) -> torch.Tensor | None:
    """The causal part of the mask a context asks for over ``t`` tokens (no cache):
    ``None`` when ``ctx.causal`` is False; the ``[T, T]`` causal mask; or, for a prefix
    LM (``ctx.prefix_len`` ``[B]``), ``[B, 1, T, T]``: query i sees key j iff ``j <= i``
    or ``j < prefix_len[b]`` (bidirectional inside each row's prefix, causal after it;
    "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer", Raffel et al., 2020)."""
    if not ctx.causal:
        return None
    mask = causal_mask(t, device=device)
    if ctx.prefix_len is None:
        return mask
    return mask | prefix_keys(ctx.prefix_len, torch.arange(t, device=device))


def prefix_keys(prefix_len: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 1, Tk]``: True at the keys inside each row's prefix (``position <
    prefix_len[b]``; negative positions, empty cache slots, are outside)."""
    keys = key_positions.to(prefix_len.device)
    inside = (keys[None, :] < prefix_len[:, None]) & (keys[None, :] >= 0)
    return inside[:, None, None, :]


def allowed_mask(ctx: Context, t: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = query may see key), broadcastable to ``[B, H, T, T]``:
    the causal mask when ``ctx.causal`` (relaxed inside a prefix LM's prefix,
    :func:`causal_part`), AND the key-padding mask, AND (packed rows) the
    same-document mask; ``None`` if none applies."""
    return combine_masks(causal_part(ctx, t, device), key_mask(ctx))


def context_bias(
    ctx: Context, t: int, dtype: torch.dtype, device: torch.device, position_bias: bool = True
) -> torch.Tensor | None:
    """Additive score bias: the positional scheme's ``score_bias`` (if ``position_bias``)
    plus a very negative value where :func:`allowed_mask` forbids attention."""
    pos = ctx.bias_positions()
    bias = ctx.position.score_bias(pos, pos) if position_bias else None
    return masked_bias(bias, allowed_mask(ctx, t, device), dtype)


def attention_bias(
    ctx: Context, t: int, dtype: torch.dtype, device: torch.device, position_bias: bool = True
) -> tuple[torch.Tensor | None, bool]:
    """``(bias, is_causal)`` for self-attention over ``t`` tokens without a cache.

    ``bias`` is the positional score bias (if ``position_bias``) plus a very negative
    value where the causal, padding or document mask forbids attention; when there is
    nothing but (possibly) causality it is ``None`` and ``is_causal`` says whether the
    causal mask still has to be applied (so SDPA can use its fused causal path).
    """
    pos = ctx.bias_positions()
    bias = ctx.position.score_bias(pos, pos) if position_bias else None
    keys = key_mask(ctx)
    if bias is None and keys is None and ctx.prefix_len is None:
        return None, ctx.causal
    allowed = combine_masks(causal_part(ctx, t, device), keys)
    return masked_bias(bias, allowed, dtype), False


# --------------------------------------------------------------------------- cache
def extend_cache(
    ctx: Context, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the new keys/values ``[B, G, T, D]`` (already rotated) to this call's slot of
    ``ctx.cache``; returns all keys, values and key positions the new queries may see."""
    if not ctx.causal:
        raise ValueError("a KV cache is for causal decoding; this attention is bidirectional")
    if ctx.padding_mask is not None or ctx.segments is not None:
        raise ValueError("cached decoding takes unpadded, unpacked rows (no padding_mask/segments)")
    slot = ctx.cache.slot()  # type: ignore[union-attr]
    if slot.state is None:
        slot.state = KVBuffer(window, capacity=ctx.cache.capacity)  # type: ignore[union-attr]
    return slot.state.extend(k, v, ctx.positions)


def cached_bias(
    ctx: Context,
    key_positions: torch.Tensor,
    dtype: torch.dtype,
    window: int | None = None,
    position_bias: bool = True,
) -> torch.Tensor | None:
    """Additive bias of the new queries over cached keys: score bias plus the causal (and
    window) mask from absolute positions, relaxed inside a prefix LM's prefix
    (``ctx.prefix_len``: keys at positions below it are seen by every query, so the
    prompt's prefill is one bidirectional pass over the prefix), and the cache's
    ``key_mask`` of padded rows ``[B, 1, Tq, Tk]``; ``None`` when nothing needs masking."""
    bias = ctx.position.score_bias(ctx.positions, key_positions) if position_bias else None
    allowed = cached_key_mask(ctx.positions, key_positions, window)
    if allowed is not None and ctx.prefix_len is not None:
        # (with one query and no window every cached key is already allowed)
        allowed = allowed | prefix_keys(ctx.prefix_len, key_positions)
    cache = ctx.cache
    if cache is not None and cache.key_mask is not None:  # rows padded at the front
        real = cache.key_mask[:, key_positions.clamp(min=0)][:, None, None, :]  # [B,1,1,Tk]
        allowed = real if allowed is None else allowed & real
        cache.masked()
    return masked_bias(bias, allowed, dtype)


# --------------------------------------------------------------------------- softmax
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, written out; q/k/v ``[B, H, T, D]``."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    if dropout and training:
        probs = F.dropout(probs, dropout)
    return probs @ v


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: Context,
    impl: ImplName = "fast",
    dropout: float = 0.0,
    training: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T + position bias + masks) v on ``[B, H, T, D]`` tensors.

    ``scale`` defaults to ``1/sqrt(q.shape[-1])``. ``impl='fast'`` uses the fused
    kernel (``F.scaled_dot_product_attention``), ``'reference'`` the explicit
    :func:`reference_attention`; they agree. With ``ctx.cache`` the keys and values
    (``k``/``v`` already rotated) are appended to this call's cache slot and the new
    queries attend over all cached ones.
    """
    t = q.shape[-2]
    if scale is not None:
        q = q * (scale * math.sqrt(q.shape[-1]))
    drop = dropout if training else 0.0
    if ctx.cache is not None:
        k, v, key_positions = extend_cache(ctx, k, v)
        full = cached_bias(ctx, key_positions, q.dtype)
    else:
        pos = ctx.bias_positions()
        bias = ctx.position.score_bias(pos, pos)
        plain = ctx.padding_mask is None and ctx.segments is None and ctx.prefix_len is None
        if impl == "fast" and bias is None and plain:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=ctx.causal)
        full = masked_bias(bias, allowed_mask(ctx, t, q.device), q.dtype)
    if impl == "fast":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=drop)
    return reference_attention(q, k, v, full, dropout, training)


# --------------------------------------------------------------------------- grids
def grid_problem(dims: Dims) -> str | None:
    """Why a mixer over a 2-D grid of tokens cannot be built with ``dims`` (``None`` when
    it can): the model's embedder must lay its tokens out on a grid."""
    if dims.grid is None:
        return (
            "needs a 2-D grid of tokens (an image embedder such as model.embedder=patches); "
            "this model's embedder makes a 1-D sequence (no grid)"
        )
    return None


def check_grid_length(name: str, t: int, n_prefix: int, grid: tuple[int, int]) -> None:
    """Refuse an input whose length is not ``n_prefix + H * W``."""
    h, w = grid
    if t != n_prefix + h * w:
        raise ValueError(
            f"{name}: {t} tokens do not form the model's layout of {n_prefix} prefix "
            f"tokens and a {h}x{w} grid ({n_prefix + h * w} tokens)"
        )


def split_grid(
    x: torch.Tensor, n_prefix: int, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, T, C]`` -> prefix tokens ``[B, P, C]`` and the grid as an image
    ``[B, C, H, W]`` (tokens after the prefix are row-major grid cells)."""
    h, w = grid
    prefix, cells = x[:, :n_prefix], x[:, n_prefix:]
    return prefix, cells.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def merge_grid(prefix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_grid`: ``[B, P, C]`` and ``[B, C, H, W]`` -> ``[B, P + H W, C]``."""
    return torch.cat((prefix, image.flatten(2).transpose(1, 2)), dim=1)
