"""Symbolic sequence tasks: selective copying, multiplication, Dyck languages and ListOps.

Every task here is a :class:`~anyformer.tasks.sequence.SequenceTask`: one example is
``BOS prompt SEP answer EOS`` over ``PAD=0, BOS=1, SEP=2, EOS=3`` and the task's own
tokens, the loss covers the answer and ``EOS``, the ``id`` split holds prompts whose
hash marks them as test members (never trained on) at the training sizes, and the
``ood`` split holds larger sizes. The "length" that sets a batch's size (its ``group``
and the x axis of the curve) is, per task: the prompt length (``selective_copy``,
``dyck``), digits per operand (``multiplication``) or nesting depth (``listops``).
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.algorithmic import LEE, _add_digits
from anyformer.tasks.base import at_least, range_validators, split_range
from anyformer.tasks.sequence import FIRST_SYMBOL, PAD, FormParams, LengthParams, SequenceTask

MAMBA = Paper("Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, "Gu & Dao")
DYCK_PAPER = Paper(
    "Self-Attention Networks Can Process Bounded Hierarchical Languages", 2021, "Yao et al."
)
LRA = Paper("Long Range Arena: A Benchmark for Efficient Transformers", 2020, "Tay et al.")
#: Hard corruptions tried per negative ``recognize`` string before flipping a bracket.
CORRUPT_TRIES = 10


# --------------------------------------------------------------------------- selective copy
class SelectiveCopyParams(LengthParams):
    """Selective copying: ``n_copy`` symbols scattered among noise tokens.

    - ``min_len``, ``max_len``, ``ood_min_len``, ``ood_max_len``, ``test_fraction``:
      as in :class:`LengthParams`, counted in prompt tokens (symbols + noise);
      defaults 8..16 for training and ``id``, 17..32 for ``ood``.
    - ``n_copy``: symbols to copy per example (at most ``min_len``).
    - ``n_symbols``: alphabet of the copied symbols (>= 2).
    """

    min_len: int = Field(8, ge=1)
    max_len: int = Field(16, ge=1)
    ood_min_len: int = Field(17, ge=1)
    ood_max_len: int = Field(32, ge=1)
    n_copy: int = Field(4, ge=1)
    n_symbols: int = Field(8, ge=2)

    @field_validator("n_copy")
    @classmethod
    def _fits(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_len")
        if lo is not None and v > lo:
            raise ValueError(f"n_copy={v} must be <= min_len={lo} (every prompt holds them)")
        return v


@register(
    "task",
    "selective_copy",
    paper=MAMBA,
    summary="copy the non-noise tokens of the prompt in order; train short, test long",
    params=SelectiveCopyParams,
    caps=Capabilities(),
)
class SelectiveCopy(SequenceTask):
    """Prompt = ``L`` tokens: ``n_copy`` uniform symbols at uniformly random positions,
    every other position the ``NOISE`` token; answer = those symbols in order.

    Unlike plain copying, where the symbols sit is random, so a model must select by
    content (the task Mamba's selection mechanism was designed for). Tokens: symbols
    ``FIRST_SYMBOL + s``, then ``NOISE``. Not supported: several noise tokens.
    Paper: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces" (2023).
    """

    params: SelectiveCopyParams
    enumerate_prompts: ClassVar[bool] = False
    extra_tokens: ClassVar[int] = 1

    @property
    def alphabet(self) -> int:
        return self.params.n_symbols

    @property
    def noise_token(self) -> int:
        return FIRST_SYMBOL + self.params.n_symbols

    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Raw rows ``[n, L]``: 0 = noise, ``s + 1`` = symbol ``s``."""
        k = self.params.n_copy
        positions = np.argsort(rng.random((n, length)), axis=1)[:, :k]
        raw = np.zeros((n, length), dtype=np.int64)
        np.put_along_axis(raw, positions, rng.integers(1, self.alphabet + 1, size=(n, k)), 1)
        return raw

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = np.where(raw == 0, self.noise_token, raw + FIRST_SYMBOL - 1)
        answer = (raw[raw > 0] + FIRST_SYMBOL - 1).reshape(raw.shape[0], self.params.n_copy)
        return prompt, answer

    def widths(self, length: int) -> tuple[int, int]:
        return length, self.params.n_copy


# --------------------------------------------------------------------------- multiplication
class MultiplicationParams(LengthParams):
    """Multiplication of two ``L``-digit numbers; the length ``L`` is digits per operand.

    - ``min_len``, ``max_len``, ``ood_min_len``, ``ood_max_len``, ``test_fraction``:
      as in :class:`LengthParams`, in digits per operand (defaults 1..3, 4..5).
    - ``format``: ``plain`` writes every number most-significant digit first;
      ``reversed`` writes operands and product least-significant digit first;
      ``reversed_answer`` reverses only the product (the "reverse" format of Lee et
      al.); ``scratchpad`` keeps plain numbers and writes the intermediate steps
      before the product (see :class:`Multiplication`).
    """

    min_len: int = Field(1, ge=1)
    max_len: int = Field(3, ge=1)
    ood_min_len: int = Field(4, ge=1)
    ood_max_len: int = Field(5, ge=1)
    format: Literal["plain", "reversed", "reversed_answer", "scratchpad"] = "plain"


@register(
    "task",
    "multiplication",
    paper=LEE,
    summary="multiply two L-digit numbers (plain, reversed or scratchpad); test more digits",
    params=MultiplicationParams,
    caps=Capabilities(),
)
class Multiplication(SequenceTask):
    """Prompt = ``a * b`` with both operands uniform in ``[0, 10^L)`` written with exactly
    ``L`` digits; answer = ``a * b`` with exactly ``2L`` digits (leading zeros kept).

    ``scratchpad`` answer: for each digit ``b_j`` of ``b``, least significant first
    (``j = 0 .. L-1``), the partial product ``P_j = a * b_j`` (``L + 1`` digits),
    ``;``, the running sum ``C_j = a * (b mod 10^(j+1))`` (``2L`` digits), ``;``; then
    ``=`` and the product (equal to ``C_(L-1)``). The loss covers the whole scratchpad;
    exact match and token accuracy count only the final product (and ``EOS``).
    Tokens: digits ``FIRST_SYMBOL + d``, then ``*``, ``;``, ``=``.
    Not supported: operands of different lengths.
    Paper: Lee et al., "Teaching Arithmetic to Small Transformers" (2023).
    """

    params: MultiplicationParams
    extra_tokens: ClassVar[int] = 3
    TIMES: ClassVar[int] = FIRST_SYMBOL + 10
    STEP: ClassVar[int] = FIRST_SYMBOL + 11
    EQUALS: ClassVar[int] = FIRST_SYMBOL + 12

    @property
    def alphabet(self) -> int:
        return 10

    def raw_len(self, length: int) -> int:
        return 2 * length

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        n = raw.shape[0]
        a, b = raw[:, :length], raw[:, length:]  # most-significant digit first
        steps: list[np.ndarray] = []
        running = np.zeros((n, 2 * length), dtype=np.int64)
        for j in range(length):
            partial = _times_digit(a, b[:, length - 1 - j])  # L + 1 digits
            shifted = np.zeros((n, 2 * length), dtype=np.int64)
            shifted[:, length - 1 - j : 2 * length - j] = partial
            running = _add_digits(running, shifted)[:, 1:]  # stays below 10^(2L)
            steps += [partial, np.full((n, 1), -1), running, np.full((n, 1), -1)]
        product = running
        fmt = self.params.format
        if fmt == "reversed":
            a, b = a[:, ::-1], b[:, ::-1]
        times = np.full((n, 1), self.TIMES)
        prompt = np.concatenate([_digits(a), times, _digits(b)], axis=1)
        if fmt == "scratchpad":
            pad = np.concatenate(steps, axis=1)
            scratch = np.where(pad < 0, self.STEP, pad + FIRST_SYMBOL)
            answer = np.concatenate([scratch, np.full((n, 1), self.EQUALS), _digits(product)], 1)
        elif fmt in ("reversed", "reversed_answer"):
            answer = _digits(product[:, ::-1])
        else:
            answer = _digits(product)
        return prompt, answer

    def scored_answer(self, answer: np.ndarray, length: int) -> np.ndarray | None:
        if self.params.format != "scratchpad":
            return None
        scored = np.zeros(answer.shape, dtype=bool)
        scored[:, -2 * length :] = True
        return scored


def _digits(d: np.ndarray) -> np.ndarray:
    return d + FIRST_SYMBOL


def _times_digit(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``a * d`` for digits ``a`` ``[N, L]`` (most-significant first) and ``d`` ``[N]``."""
    n, length = a.shape
    out = np.zeros((n, length + 1), dtype=np.int64)
    carry = np.zeros(n, dtype=np.int64)
    for j in range(length - 1, -1, -1):
        s = a[:, j] * d + carry
        out[:, j + 1] = s % 10
        carry = s // 10
    out[:, 0] = carry
    return out


# --------------------------------------------------------------------------- dyck
class DyckParams(LengthParams):
    """Dyck-k strings of bounded depth; the length is the prompt's number of brackets.

    - ``mode``: ``complete`` (the prompt is a prefix of a balanced string that leaves
      at least one bracket open; the answer is the shortest closing sequence) or
      ``recognize`` (the prompt is balanced or not, half each; the answer is one token
      ``TRUE``/``FALSE``; only even lengths are used, negatives are hard: same length,
      made by retyping or swapping brackets of a balanced string, or else by flipping
      one bracket).
    - ``min_len``, ``max_len``, ``ood_min_len``, ``ood_max_len``, ``test_fraction``:
      as in :class:`LengthParams` (defaults 8..20, 21..32).
    - ``k``: bracket types (>= 1).
    - ``max_depth``: the deepest nesting of training and ``id`` strings (>= 1; >= 2 for
      ``complete``).
    - ``ood_max_depth``: the deepest nesting of ``ood`` strings (default: ``max_depth``;
      at least ``max_depth``).
    """

    mode: Literal["complete", "recognize"] = "complete"
    min_len: int = Field(8, ge=1)
    max_len: int = Field(20, ge=1)
    ood_min_len: int = Field(21, ge=1)
    ood_max_len: int = Field(32, ge=1)
    k: int = Field(2, ge=1)
    max_depth: int = Field(4, ge=1)
    ood_max_depth: int | None = None

    @field_validator("max_depth")
    @classmethod
    def _deep_enough(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("mode") == "complete" and v < 2:
            raise ValueError(
                f"max_depth={v} must be >= 2 in mode 'complete' (a depth-1 prefix of even "
                f"length has nothing left to close)"
            )
        return v

    @field_validator("ood_max_depth")
    @classmethod
    def _ood_deeper(cls, v: int | None, info: ValidationInfo) -> int | None:
        lo = info.data.get("max_depth")
        if v is not None and lo is not None and v < lo:
            raise ValueError(f"ood_max_depth={v} must be >= max_depth={lo}")
        return v


@register(
    "task",
    "dyck",
    paper=DYCK_PAPER,
    summary="Dyck-k brackets: close an open prefix, or recognize balance; test longer/deeper",
    params=DyckParams,
    caps=Capabilities(),
)
class Dyck(SequenceTask):
    """Balanced brackets of ``k`` types with nesting depth at most ``max_depth``.

    ``complete``: prompt = a random prefix (a walk that opens or closes with equal
    odds where both are allowed); answer = the closing brackets of the still-open ones,
    innermost first (between 1 and ``max_depth`` tokens, so rows are right-padded).
    ``recognize``: prompt = a balanced string (a random walk forced to return to depth
    0) or a corrupted one; answer = ``TRUE`` if balanced else ``FALSE``, computed with a
    stack (a corruption that happens to stay balanced is labelled ``TRUE``).
    Tokens: opening brackets ``FIRST_SYMBOL + i``, closing ``FIRST_SYMBOL + k + i``,
    then ``TRUE``, ``FALSE``. Not supported: unbounded depth, Dyck strings sampled
    uniformly. Paper: Yao et al., "Self-Attention Networks Can Process Bounded
    Hierarchical Languages" (2021).
    """

    params: DyckParams
    enumerate_prompts: ClassVar[bool] = False
    extra_tokens: ClassVar[int] = 2

    def __init__(self, params: DyckParams, seed: int = 0) -> None:
        if params.mode == "recognize":
            for split in ("train", "ood"):
                if len(self.lengths_of(params, split)) == 0:
                    lo, hi = self.range_fields[2:] if split == "ood" else self.range_fields[:2]
                    raise ValueError(
                        f"mode 'recognize' needs an even length in {lo}..{hi} "
                        f"({getattr(params, lo)}..{getattr(params, hi)})"
                    )
        super().__init__(params, seed)

    @property
    def alphabet(self) -> int:
        return 2 * self.params.k

    def answer_classes(self) -> int | None:
        """``TRUE``/``FALSE`` in mode ``recognize``; none for a closing sequence."""
        return 2 if self.params.mode == "recognize" else None

    @property
    def true_token(self) -> int:
        return FIRST_SYMBOL + 2 * self.params.k

    @property
    def false_token(self) -> int:
        return self.true_token + 1

    @classmethod
    def lengths_of(cls, params: DyckParams, split: str) -> range:
        """The lengths of ``split``: the range of ``params``, even lengths only in mode
        ``recognize``."""
        lengths = split_range(params, split, cls.range_fields)
        if params.mode == "recognize":
            return range(lengths.start + lengths.start % 2, lengths.stop, 2)
        return lengths

    def lengths(self, split: str) -> range:
        return self.lengths_of(self.params, split)

    def depth_for(self, length: int) -> int:
        """The depth bound of strings of ``length`` (OOD lengths may nest deeper)."""
        p = self.params
        if length >= p.ood_min_len and p.ood_max_depth is not None:
            return p.ood_max_depth
        return p.max_depth

    def widths(self, length: int) -> tuple[int, int]:
        if self.params.mode == "recognize":
            return length, 1
        return length, min(self.depth_for(length), length)

    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Raw rows ``[n, L]`` of bracket ids: ``i`` opens type ``i``, ``k + i`` closes it."""
        if self.params.mode == "complete":
            return _dyck_walk(length, n, self.params.k, self.depth_for(length), rng, False)
        rows = _dyck_walk(length, n, self.params.k, self.depth_for(length), rng, True)
        negative = rng.random(n) < 0.5
        rows[negative] = _corrupt(rows[negative], self.params.k, rng)
        return rows

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.params.k
        ok, depth, stack = _dyck_stack(raw, k)
        prompt = raw + FIRST_SYMBOL
        if self.params.mode == "recognize":
            label = np.where(ok & (depth == 0), self.true_token, self.false_token)
            return prompt, label[:, None]
        width = min(self.depth_for(length), length)
        cols = np.arange(width)[None, :]
        inner = np.take_along_axis(stack, np.clip(depth[:, None] - 1 - cols, 0, None), axis=1)
        answer = np.where(cols < depth[:, None], inner + k + FIRST_SYMBOL, PAD)
        return prompt, answer


def _dyck_walk(
    length: int, n: int, k: int, max_depth: int, rng: np.random.Generator, balanced: bool
) -> np.ndarray:
    """``n`` bracket strings of ``length`` with depth <= ``max_depth``.

    ``balanced``: every string returns to depth 0 (``length`` must be even); else every
    string ends with at least one bracket open (needs ``max_depth >= 2`` or odd length).
    """
    rows = np.arange(n)
    out = np.zeros((n, length), dtype=np.int64)
    stack = np.zeros((n, max_depth + 1), dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    coin = rng.random((n, length)) < 0.5
    kinds = rng.integers(k, size=(n, length))
    for t in range(length):
        left = length - t  # brackets still to write, this one included
        can_open = depth < max_depth
        if balanced:
            can_open &= depth + 1 <= left - 1
        can_close = depth > 0
        if not balanced and left == 1:
            can_close &= depth >= 2  # end with something open
        do_open = np.where(can_open & can_close, coin[:, t], can_open)
        top = stack[rows, np.maximum(depth - 1, 0)]
        out[:, t] = np.where(do_open, kinds[:, t], top + k)
        stack[rows, depth] = np.where(do_open, kinds[:, t], stack[rows, depth])
        depth = np.where(do_open, depth + 1, depth - 1)
    return out


def _corrupt(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Unbalanced strings of the same length made from balanced ``rows`` ``[N, L]``.

    Each row gets up to ``CORRUPT_TRIES`` attempts at a hard corruption (retype one
    bracket, or swap two different brackets), keeping the counts of openings and
    closings; a row still balanced after them gets one bracket flipped instead.
    """
    n, length = rows.shape
    out = rows.copy()
    todo = np.arange(n)
    for _ in range(CORRUPT_TRIES):
        if todo.size == 0:
            return out
        bad = rows[todo].copy()
        idx = np.arange(todo.size)
        i = rng.integers(length, size=todo.size)
        j = (i + rng.integers(1, length, size=todo.size)) % length
        retype = (rng.random(todo.size) < 0.5) if k > 1 else np.zeros(todo.size, dtype=bool)
        kind, opening = bad[idx, i] % k, bad[idx, i] // k
        new_kind = (kind + rng.integers(1, max(k, 2), size=todo.size)) % k
        swapped_i, swapped_j = bad[idx, j], bad[idx, i]
        bad[idx, i] = np.where(retype, new_kind + opening * k, swapped_i)
        bad[idx, j] = np.where(retype, bad[idx, j], swapped_j)
        ok, depth, _ = _dyck_stack(bad, k)
        broken = ~(ok & (depth == 0))
        out[todo[broken]] = bad[broken]
        todo = todo[~broken]
    if todo.size:
        i = rng.integers(length, size=todo.size)
        out[todo, i] = (out[todo, i] + k) % (2 * k)  # flip direction: counts no longer match
    return out


def _dyck_stack(raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a stack over bracket rows ``[N, L]``.

    Returns ``ok`` (no closing bracket ever mismatched or closed nothing), the final
    depth, and the stack ``[N, L + 1]`` (types of open brackets, bottom first).
    """
    n, length = raw.shape
    rows = np.arange(n)
    stack = np.zeros((n, length + 1), dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    for t in range(length):
        tok = raw[:, t]
        opens = tok < k
        top = stack[rows, np.maximum(depth - 1, 0)]
        closes = ~opens & (depth > 0) & (top == tok - k)
        ok &= opens | closes
        stack[rows, depth] = np.where(opens, tok, stack[rows, depth])
        depth = np.where(opens, depth + 1, np.where(closes, depth - 1, depth))
    return ok, depth, stack


# --------------------------------------------------------------------------- listops
LISTOPS_OPS = ("MIN", "MAX", "MED", "SM")
#: The parameters bounding the ListOps depths: ``(min, max, ood_min, ood_max)``.
DEPTH_FIELDS = ("min_depth", "max_depth", "ood_min_depth", "ood_max_depth")


class ListOpsParams(FormParams):
    """Nested list operations; the "length" of an example is its nesting depth.

    - ``min_depth``, ``max_depth``: training (and ``id``) depths, inclusive (>= 1).
    - ``ood_min_depth``, ``ood_max_depth``: ``ood`` depths, all deeper than ``max_depth``.
    - ``min_args``, ``max_args``: arguments per operation (2 <= min_args <= max_args).
    - ``branch_prob``: chance that an argument off the deepest path is itself a flat
      operation rather than a digit (0 keeps every expression a single nested chain).
    - ``test_fraction``: share of expressions held out for ``id``, in (0, 0.5].
    - ``form``: the row layout (see :class:`~anyformer.tasks.sequence.FormParams`).
    """

    min_depth: int = Field(1, ge=1)
    max_depth: int = Field(3, ge=1)
    ood_min_depth: int = Field(4, ge=1)
    ood_max_depth: int = Field(5, ge=1)
    min_args: int = Field(2, ge=2)
    max_args: int = Field(4, ge=2)
    branch_prob: float = Field(0.25, ge=0.0, le=1.0)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)

    _max, _ood, _ood_max = range_validators(DEPTH_FIELDS)
    _args = field_validator("max_args")(at_least("min_args"))


@register(
    "task",
    "listops",
    paper=LRA,
    summary="evaluate nested MIN/MAX/MED/SM expressions to a digit; test deeper nesting",
    params=ListOpsParams,
    caps=Capabilities(),
)
class ListOps(SequenceTask):
    """Prompt = an expression like ``[MAX 4 [MIN 2 7 ] 1 ]`` over digits; answer = its
    value, one digit.

    ``MIN``/``MAX`` as usual, ``MED`` the lower median (``sorted(args)[(n - 1) // 2]``),
    ``SM`` the sum mod 10. An expression of depth ``d`` is an operation with
    ``min_args..max_args`` arguments, one of them (at a random place) of depth
    ``d - 1`` and the others digits or, with ``branch_prob`` when ``d >= 2``, flat
    operations on digits. Lengths differ per row (right-padded). Tokens: digits
    ``FIRST_SYMBOL + d``, then ``[MIN``, ``[MAX``, ``[MED``, ``[SM``, ``]``.
    Not supported: the long (up to 2,000 token) sequences of LRA.
    Paper: Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers"
    (2020), after Nangia & Bowman's ListOps (2018).
    """

    params: ListOpsParams  # type: ignore[assignment]
    enumerate_prompts: ClassVar[bool] = False
    extra_tokens: ClassVar[int] = 5
    CLOSE: ClassVar[int] = FIRST_SYMBOL + 14
    length_name: ClassVar[str] = "depth"
    range_fields: ClassVar[tuple[str, str, str, str]] = DEPTH_FIELDS

    @property
    def alphabet(self) -> int:
        return 10

    def answer_classes(self) -> int | None:
        return 10  # the value, a digit

    def width(self, depth: int) -> int:
        """The most tokens an expression of ``depth`` can have."""
        a = self.params.max_args
        w = 1
        for d in range(1, depth + 1):
            w = 2 + w + (a - 1) * (1 if d == 1 else 2 + a)
        return w

    def widths(self, length: int) -> tuple[int, int]:
        return self.width(length), 1

    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Raw rows ``[n, width + 1]``: the prompt tokens (PAD-padded), then the answer."""
        py = random.Random(int(rng.integers(1 << 62)))
        width = self.width(length)
        raw = np.full((n, width + 1), PAD, dtype=np.int64)
        for i in range(n):
            tokens, value = self._expression(length, py)
            raw[i, : len(tokens)] = tokens
            raw[i, width] = value + FIRST_SYMBOL
        return raw

    def _expression(self, depth: int, py: random.Random) -> tuple[list[int], int]:
        if depth == 0:
            digit = py.randrange(10)
            return [digit + FIRST_SYMBOL], digit
        p = self.params
        op = py.randrange(len(LISTOPS_OPS))
        n_args = py.randint(p.min_args, p.max_args)
        deep = py.randrange(n_args)
        tokens = [FIRST_SYMBOL + 10 + op]
        values = []
        for i in range(n_args):
            if i == deep:
                sub = self._expression(depth - 1, py)
            elif depth >= 2 and py.random() < p.branch_prob:
                sub = self._expression(1, py)
            else:
                sub = self._expression(0, py)
            tokens += sub[0]
            values.append(sub[1])
        tokens.append(self.CLOSE)
        return tokens, listops_value(LISTOPS_OPS[op], values)

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return raw[:, :-1], raw[:, -1:]


def listops_value(op: str, args: list[int]) -> int:
    """The value of one ListOps operation on digit arguments."""
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "MED":
        return sorted(args)[(len(args) - 1) // 2]
    if op == "SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operation '{op}' (valid: {', '.join(LISTOPS_OPS)})")
