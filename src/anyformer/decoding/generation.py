"""Autoregressive generation with caches (or by full recomputation).

:func:`generate` continues a batch of prompts token by token: greedy at
``temperature=0``, otherwise sampled from ``softmax(logits / temperature)`` restricted
to the ``top_k`` most likely tokens and/or the smallest set whose probability reaches
``top_p`` (nucleus sampling), drawing only from the given ``torch.Generator``.

Caching. A :class:`~anyformer.components.base.Cache` is passed to the model's forward;
every mixer whose registry capabilities say ``kv_cache`` keeps its state there: the
keys/values of past tokens (softmax-family attention; a rolling buffer of ``window``
tokens for ``sliding_window``) or a constant-size recurrent state (``linear``,
``delta``, ``lmu``, ``binary_hash``: their ``step`` form). States are keyed by the order
of mixer calls within one forward pass, so a weight-tied block applied several times
gets one state per application. The prompt is processed in one forward (prefill), then
each new token in one forward of length 1 at position ``cache.offset``.

A model with any mixer that lacks the capability falls back to recomputing the whole
sequence for every new token (a one-line log notice says so); results are the same.

Weight layout. At batch 1 a decoding step is mostly matrix-vector products, whose cost
is streaming the weights from memory. On CPU, for a long enough generation,
:func:`column_major_linears` runs every ``nn.Linear`` that does not narrow (``out >= in``:
the q/k/v, output and MLP up-projections) from a column-major copy of its weight, made
once and kept until the weight changes, which BLAS streams faster; results equal the
plain layout's to float rounding.

Prompts of different lengths come as rows padded at the end with a ``padding_mask``.
With a cache they decode as one batch aligned at their ends: the cache hides the
padding in front from attention and absolute positions count from each row's first
token (:class:`~anyformer.components.base.Cache` ``key_mask``/``position_shift``). A
recurrent mixer cannot hide padding from its state; then (and without a cache) the rows
of each prompt length decode as one batch. Either way every row gets what it would
alone. Not supported: encoders and non-token models, sequences longer than
``model.max_len``.

Other kinds. A prefix LM (``kind: prefix_lm``) takes the prompt as its prefix: the
prompt's forward (prefill, or every recomputation) passes ``prefix_len`` = the prompt's
length, so attention is bidirectional over the prompt and causal over the new tokens.
An encoder–decoder (``kind: encoder_decoder``) continues the decoder prompts
``input_ids`` (usually ``BOS``) given ``source`` (and ``source_mask``): the source is
encoded once, and each forward gets its ``memory``; with a cache every layer's
cross-attention computes the memory's keys and values on the first step only.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.base import Cache, UnmaskedPaddingError
from anyformer.errors import SpecError, UserError
from anyformer.model.transformer import Transformer, cache_blockers

log = logging.getLogger(__name__)

#: What a decoding returns: the tokens, or the tokens and the logits they came from.
Decoded = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

#: Fewest new tokens for which ``generate`` (on CPU, ``column_major=None``) copies the
#: weights of the layers that do not narrow (unless copies are already kept): a copy
#: costs about as much as 10-20 decoding steps save.
COLUMN_MAJOR_MIN_TOKENS = 32


#: Column-major weight copies kept between calls, per layer: ``(data_ptr, version, copy)``.
#: An entry is reused only while the weight's storage and in-place version counter are
#: unchanged (an optimizer step or ``load_state_dict`` bumps the version), and dies with
#: its layer.
_COLUMN_MAJOR_COPIES: weakref.WeakKeyDictionary[nn.Linear, tuple[int, int, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def column_major_weight(linear: nn.Linear) -> torch.Tensor:
    """``linear.weight``'s values in column-major order (strides ``(1, out_features)``),
    copied on the first request and reused until the weight changes."""
    weight = linear.weight
    key = (weight.data_ptr(), weight._version)
    kept = _COLUMN_MAJOR_COPIES.get(linear)
    if kept is not None and kept[:2] == key:
        return kept[2]
    with torch.no_grad():
        copy = weight.detach().t().contiguous().t()
    _COLUMN_MAJOR_COPIES[linear] = (*key, copy)
    return copy


class _ColumnMajorForward:
    """The forward of one ``nn.Linear`` from the column-major copy of its weight
    (:func:`column_major_weight`), fetched on the first call (a layer whose module is never
    called, e.g. one whose weight a component slices itself, costs nothing). While
    autograd is recording it is the plain forward, so gradients still reach the weight."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear
        self.weight: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, *_: object) -> torch.Tensor:
        linear = self.linear
        if torch.is_grad_enabled():
            return F.linear(x, linear.weight, linear.bias)
        if self.weight is None:
            self.weight = column_major_weight(linear)
        return F.linear(x, self.weight, linear.bias)


def column_major_candidates(model: nn.Module) -> list[nn.Linear]:
    """The layers :func:`column_major_linears` runs from column-major copies: plain
    ``nn.Linear`` modules with a float32 CPU weight that do not narrow
    (``out_features >= in_features``) and have no instance ``forward`` of their own."""
    return [
        m
        for m in model.modules()
        if (type(m) is nn.Linear or getattr(type(m), "plain_linear", False))
        and isinstance(m, nn.Linear)
        and m.out_features >= m.in_features
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
        and "forward" not in m.__dict__
    ]


@contextmanager
def column_major_linears(model: nn.Module) -> Iterator[list[nn.Linear]]:
    """Within the block, every plain ``nn.Linear`` of ``model`` with a float32 weight on
    the CPU that does not narrow (``out_features >= in_features``) computes its forward
    from a column-major copy of its weight; on exit the layers are restored. The copies
    are kept between blocks (:func:`column_major_weight`) while the weights are
    unchanged. Yields the layers changed. Results equal the plain layout's up to float
    rounding (the sums run in another order).

    Why: ``F.linear(x, W)`` with a single input row is a matrix-vector product whose cost
    is streaming ``W [out, in]`` from memory. A row-major ``W`` is read as one short dot
    product per output; column-major, BLAS reads it as ``in`` rows of ``W^T`` each scaled
    by one input and summed, which streams faster unless the layer narrows. Measured here
    (MKL, one thread, the six blocks of a d=384 GPT-2 decoder streamed from memory as in
    decoding): the four products of a token take 4.5 ms all row-major, 3.7 ms with the
    q/k/v and MLP up-projections column-major, 3.1-3.3 ms with the square output
    projection too; the narrowing MLP down-projection gains nothing (3.6-4.1 ms when it
    is also column-major). A copy costs about as much as 10-20 of the products it speeds
    up, so it pays only when reused, as over a generation or across generations.

    The copies are made without autograd and only calls that do not record gradients
    use them (``generate`` runs under ``torch.inference_mode``); with gradients enabled
    a layer computes from its own weight. Subclasses of ``nn.Linear`` (e.g. parametrized
    ones) and modules with their own instance ``forward`` are left alone.
    """
    changed = column_major_candidates(model)
    try:
        for linear in changed:
            linear.forward = _ColumnMajorForward(linear)  # type: ignore[method-assign]
        yield changed
    finally:
        for linear in changed:
            linear.__dict__.pop("forward", None)


#: Per module class, the subclass :func:`direct_module_calls` gives its instances (made
#: on first use): the same class except that calling an instance runs ``forward`` at once.
_DIRECT_CALL_CLASSES: dict[type, type] = {}


def _direct_call_class(cls: type) -> type:
    direct = _DIRECT_CALL_CLASSES.get(cls)
    if direct is None:

        def __call__(self: nn.Module, *args: object, **kwargs: object) -> object:
            return self.forward(*args, **kwargs)

        attrs = {"__call__": __call__, "__module__": cls.__module__, "__doc__": cls.__doc__}
        direct = type(cls.__name__, (cls,), {**attrs, "__qualname__": cls.__qualname__})
        _DIRECT_CALL_CLASSES[cls] = direct
    return direct


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


@contextmanager
def direct_module_calls(model: nn.Module) -> Iterator[int]:
    """Within the block, calling a submodule of ``model`` runs its ``forward`` directly,
    without ``nn.Module.__call__``'s hook dispatch; on exit every module gets its own
    class back. Yields how many modules were switched.

    Why: a decoding step calls about ten modules per block, and in it every piece of
    Python runs with cold caches (each weight matrix streamed in between evicts the
    interpreter's working set), so the two extra Python frames of each module call cost
    several times what they cost in a tight loop: measured here, 17% of a step for a
    4x128 GPT-2 decoder at batch 1, 3-5% at 6x384.

    How: each module's class is swapped for a subclass (one per class, kept) that only
    adds a ``__call__`` running ``forward``, so ``isinstance`` checks, attributes and
    instance ``forward`` overrides behave as before. Left alone, so they keep the full
    call path: modules with hooks of their own, every module when global module hooks
    are registered, classes that define their own ``__call__``, modules compiled in
    place (``module.compile()``), and instances whose class cannot be swapped.
    """
    from torch.nn.modules import module as module_globals

    swapped: list[tuple[nn.Module, type]] = []
    global_hooks = (
        module_globals._global_forward_hooks,
        module_globals._global_forward_pre_hooks,
        module_globals._global_backward_hooks,
        module_globals._global_backward_pre_hooks,
    )
    try:
        if not any(global_hooks):
            for module in model.modules():
                cls = type(module)
                if (
                    cls.__call__ is not nn.Module.__call__
                    or _has_hooks(module)
                    or getattr(module, "_compiled_call_impl", None) is not None
                ):
                    continue
                try:
                    # object's setattr: nn.Module's would only pass it on, slowly
                    object.__setattr__(module, "__class__", _direct_call_class(cls))
                except TypeError:  # an incompatible instance layout (e.g. __slots__)
                    continue
                swapped.append((module, cls))
        yield len(swapped)
    finally:
        for module, cls in swapped:
            object.__setattr__(module, "__class__", cls)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ``[B]`` from logits ``[B, V]``: argmax at ``temperature=0``, else a
    draw from the tempered distribution cut to ``top_k`` tokens and the ``top_p`` nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the more likely ones before it already reach top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop).scatter(-1, order, drop)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        # draw where the generator lives: a CPU generator then gives the same draws
        # whichever device the model runs on
        draw = torch.multinomial(probs.to(generator.device), 1, generator=generator)
        return draw.squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    source: torch.Tensor | None = None,
    source_mask: torch.Tensor | None = None,
) -> None:
    kind = model.spec.kind
    if kind == "encoder_decoder" and source is None:
        raise UserError(
            "an encoder_decoder model generates from a source: pass source= (and "
            "source_mask= for padded source rows)"
        )
    if kind != "encoder_decoder" and (source is not None or source_mask is not None):
        raise UserError(f"source= is for encoder_decoder models; this model is kind={kind}")
    if source is not None and source.shape[0] != input_ids.shape[0]:
        raise UserError(
            f"source has {source.shape[0]} rows but input_ids {input_ids.shape[0]}; one "
            f"source per prompt"
        )
    if not model.causal or model.head_kind != "lm" or model.spec.input_kind != "tokens":
        raise SpecError(
            f"generate needs a token decoder with an lm head; this model is "
            f"kind={model.spec.kind}, head={model.head_kind}, "
            f"embedder={model.spec.embedder_ref.name}"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] < 1 or input_ids.is_floating_point():
        raise UserError(
            f"input_ids must be integer token ids [batch, length >= 1], got shape "
            f"{tuple(input_ids.shape)} and dtype {input_ids.dtype}"
        )
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise UserError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k={top_k} must be >= 1 (or None: no cut)")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p={top_p} must be in (0, 1] (or None: no cut)")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.spec.max_len:
        raise SpecError(
            f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds model.max_len={model.spec.max_len}"
        )


@torch.inference_mode()
def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool | None = None,
    return_logits: bool = False,
    column_major: bool | None = None,
    padding_mask: torch.Tensor | None = None,
    pad_id: int = 0,
    source: torch.Tensor | None = None,
    source_mask: torch.Tensor | None = None,
) -> Decoded:
    """Continue ``input_ids [B, T]``; returns ``[B, T + n]`` with ``n <= max_new_tokens``.

    - ``temperature``: 0 is greedy (argmax); otherwise sample (``top_k``, ``top_p`` cut
      the distribution first) with ``generator`` as the only source of randomness.
    - ``eos``: a row that emits this token is finished: it is padded with ``eos`` from
      then on, and generation stops early when every row has finished.
    - ``use_cache``: ``None`` uses a cache when every mixer supports one (else falls back
      with a log notice); ``False`` always recomputes the full sequence; ``True`` insists
      and raises if a mixer cannot.
    - ``return_logits``: also return the logits each new token was chosen from,
      ``[B, n, V]`` (before temperature).
    - ``column_major``: run the linear layers that do not narrow from column-major weight
      copies (:func:`column_major_linears`; faster at small batch on CPU). ``None`` does
      so on CPU when ``max_new_tokens >= COLUMN_MAJOR_MIN_TOKENS``.
    - ``padding_mask``: ``[B, T]`` booleans, True at real prompt tokens, for prompts of
      different lengths (padding trailing, as tasks pad). Every row continues its own
      prompt as it would alone. With a cache the batch decodes in one pass, the prompts
      aligned at their ends and the padding hidden (:func:`_decode_front_padded`); when
      a recurrent mixer cannot hide it, or without a cache, the rows of each prompt
      length decode as one batch (:func:`_decode_ragged`: k distinct lengths cost k
      generations, sampling draws group by group, and logits of steps after a row's
      group stopped are NaN). In the result each row's new tokens follow its prompt and
      the rest of the row is ``pad_id`` (``eos`` first, for finished rows).
    - ``source``, ``source_mask``: an encoder–decoder's source per row (``[B, S]`` token
      ids, or what its encoder's embedder reads) and its real tokens (``[B, S]`` bool);
      encoded once, the decoder continues ``input_ids``.

    A prefix LM's prompt is its prefix (bidirectional attention over it). The model is
    put in eval mode for the call and restored afterwards.
    """
    _check(model, input_ids, max_new_tokens, temperature, top_k, top_p, source, source_mask)
    lengths = _prompt_lengths(input_ids, padding_mask)
    blockers = cache_blockers(model)
    if use_cache is None:
        use_cache = not blockers
        if blockers:
            log.warning(
                "generate: no cache support in %s; recomputing the whole sequence for "
                "every new token",
                ", ".join(blockers),
            )
    elif use_cache and blockers:
        raise SpecError(f"use_cache=True, but {', '.join(blockers)} has no cache support")
    if column_major is None:
        column_major = input_ids.device.type == "cpu" and max_new_tokens >= COLUMN_MAJOR_MIN_TOKENS
    was_training = model.training
    # eval() and train() set an attribute on every module, slowly: only when needed
    switch = any(m.training for m in model.modules())
    if switch:
        model.eval()
    try:
        # column-major first: it picks layers by exact class, which the other swaps
        layout = column_major_linears(model) if column_major else nullcontext()
        with layout, direct_module_calls(model):
            rows_inputs: dict[str, torch.Tensor] = {}  # per row, for every forward
            if source is not None:
                memory = model.encode(source, source_mask)  # type: ignore[operator]
                rows_inputs["memory"] = memory
                if source_mask is not None:
                    rows_inputs["source_mask"] = source_mask

            def decode(
                prompts: torch.Tensor, cache: Cache | None = None, rows: torch.Tensor | None = None
            ) -> Decoded:
                extra = {k: v if rows is None else v[rows] for k, v in rows_inputs.items()}
                return _decode(
                    model, prompts, max_new_tokens, temperature, top_k, top_p, eos,
                    generator, use_cache, return_logits, cache, extra,
                )  # fmt: skip

            if lengths is None:
                return decode(input_ids)
            if use_cache:
                try:  # one batch, the prompts aligned at their ends, padding hidden
                    return _decode_front_padded(input_ids, lengths, max_new_tokens, pad_id, decode)
                except UnmaskedPaddingError:  # a recurrent mixer: one batch per length
                    pass
            return _decode_ragged(input_ids, lengths, decode, pad_id, eos, return_logits)
    finally:
        if switch:
            model.train(was_training)


def _prompt_lengths(
    input_ids: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Real tokens per row ``[B]`` from a trailing ``padding_mask``; ``None`` when there is
    no mask or every row is full."""
    if padding_mask is None:
        return None
    if padding_mask.shape != input_ids.shape or padding_mask.dtype != torch.bool:
        raise UserError(
            f"padding_mask must be booleans of the shape of input_ids "
            f"{tuple(input_ids.shape)}, got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    lengths = padding_mask.sum(dim=1)
    columns = torch.arange(input_ids.shape[1], device=padding_mask.device)
    if not torch.equal(padding_mask, columns < lengths[:, None]):
        raise UserError(
            "padding_mask must mark each row's real tokens first and its padding after "
            "them (trailing padding, as tasks pad); got a row with padding before a real "
            "token"
        )
    if int(lengths.min()) < 1:
        raise UserError(
            f"padding_mask leaves row {int(lengths.argmin())} without a real token; every "
            f"prompt needs at least one"
        )
    return None if int(lengths.min()) == input_ids.shape[1] else lengths


def _decode_front_padded(
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    max_new_tokens: int,
    pad_id: int,
    decode: Callable[[torch.Tensor, Cache], Decoded],
) -> Decoded:
    """Prompts of different ``lengths`` (padding trailing) as one batch: each row is moved
    to end at the last column, the cache hides the padding in front (``key_mask``) and
    absolute positions count from each row's first token (``position_shift``), so a row
    decodes as it would alone. Raises :class:`UnmaskedPaddingError` (from the prompt's
    forward) when a mixer cannot hide padding. The result is laid out as
    :func:`_decode_ragged`'s."""
    batch, width = input_ids.shape
    shift = width - lengths
    source = torch.arange(width, device=input_ids.device) - shift[:, None]
    real = source >= 0
    # the padding in front holds token 0: any id will do, attention never reads it
    prompts = input_ids.gather(1, source.clamp(min=0)).masked_fill(~real, 0)
    key_mask = torch.cat((real, real.new_ones(batch, max_new_tokens)), dim=1)
    cache = Cache(width + max_new_tokens, key_mask=key_mask, position_shift=shift)
    result = decode(prompts, cache)
    tokens, scores = result if isinstance(result, tuple) else (result, None)
    made = tokens.shape[1] - width
    out = input_ids.new_full((batch, width + made), pad_id)
    for row, length in enumerate(lengths.tolist()):
        out[row, :length] = input_ids[row, :length]
        out[row, length : length + made] = tokens[row, width:]
    return out if scores is None else (out, scores)


def _decode_ragged(
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    decode: Callable[..., Decoded],
    pad_id: int,
    eos: int | None,
    return_logits: bool,
) -> Decoded:
    """Prompts of different ``lengths``: the rows of each length decode together (with
    ``decode``, an unpadded batch, so each row gets what it would alone), then every
    row's new tokens are put right after its prompt in one ``[B, T + n]`` result."""
    batch, width = input_ids.shape
    groups = []
    for length in sorted(set(lengths.tolist())):
        rows = (lengths == length).nonzero().squeeze(1)
        result = decode(input_ids[rows, :length], None, rows)
        tokens, scores = result if isinstance(result, tuple) else (result, None)
        groups.append((rows, length, tokens, scores))
    n = max(tokens.shape[1] - length for _, length, tokens, _ in groups)
    out = input_ids.new_full((batch, width + n), pad_id)
    logits: torch.Tensor | None = None
    for rows, length, tokens, scores in groups:
        made = tokens.shape[1] - length
        out[rows, : length + made] = tokens
        if eos is not None:  # a group that stopped early had finished every row
            out[rows, length + made : length + n] = eos
        if scores is not None:
            if logits is None:
                logits = scores.new_full((batch, n, scores.shape[-1]), float("nan"))
            logits[rows, :made] = scores
    if return_logits:
        assert logits is not None
        return out, logits
    return out


def _decode(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
    return_logits: bool,
    cache: Cache | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Decoded:
    """Decode one batch of equal-length prompts. ``extra``: keyword arguments of every
    forward (an encoder–decoder's ``memory`` and ``source_mask``); a prefix LM's
    forwards over the prompt get ``prefix_len`` = the prompt's length."""
    tokens = input_ids
    extra = dict(extra or {})
    if model.spec.kind == "prefix_lm":  # the prompt is the prefix
        extra["prefix_len"] = torch.full(
            (input_ids.shape[0],), input_ids.shape[1], dtype=torch.long, device=input_ids.device
        )
    if cache is None and use_cache:
        cache = Cache(input_ids.shape[1] + max_new_tokens)
    new: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_input = input_ids
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = model(step_input, cache=cache, last_only=True, **extra)[:, -1]
        else:
            logits = model(tokens, **extra)[:, -1]
        if return_logits:
            scores.append(logits)
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos is not None:
            token = torch.where(finished, torch.full_like(token, eos), token)
            finished = finished | (token == eos)
        new.append(token)
        step_input = token[:, None]
        if cache is None:
            tokens = torch.cat((tokens, step_input), dim=1)
        if eos is not None and bool(finished.all()):
            break
    out = torch.cat((input_ids, torch.stack(new, dim=1)), dim=1) if new else input_ids
    if return_logits:
        if not scores:
            empty = (input_ids.shape[0], 0, model.head.out_features)
            return out, torch.zeros(empty, device=input_ids.device)
        return out, torch.stack(scores, dim=1)
    return out


__all__ = [
    "COLUMN_MAJOR_MIN_TOKENS",
    "cache_blockers",
    "column_major_candidates",
    "column_major_linears",
    "column_major_weight",
    "direct_module_calls",
    "generate",
    "sample_next",
]
