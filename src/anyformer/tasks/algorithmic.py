"""Algorithmic sequence tasks for length generalization: copy, reverse, sort, parity, addition.

Each is a :class:`~anyformer.tasks.sequence.SequenceTask` (``BOS prompt SEP answer EOS``
examples, training and ``id`` lengths ``min_len..max_len`` with the ``id`` prompts held
out by hash, ``ood`` lengths ``ood_min_len..ood_max_len``; see
:mod:`anyformer.tasks.sequence`). The task's symbols follow the special tokens
(``addition`` adds a ``+`` token after its ten digits).

Papers: Kazemnejad et al., "The Impact of Positional Encoding on Length Generalization
in Transformers" (2023) for copy, reverse and parity; Awasthi & Gupta, "Improving
Length-Generalization in Transformers via Task Hinting" (2023) for sort; Lee et al.,
"Teaching Arithmetic to Small Transformers" (2023) for addition and its reversed format.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch
from anyformer.tasks.sequence import (  # noqa: F401  (re-exported: the names' old home)
    BOS,
    ENUMERATE_LIMIT,
    EOS,
    EVAL_BATCH_ROWS,
    FIRST_SYMBOL,
    HASH_BUCKETS,
    MAX_ROUNDS,
    PAD,
    SEP,
    LengthParams,
    SequenceTask,
    is_test_member,
    prompt_hash,
)
from anyformer.tasks.sequence import symbols as _symbols

KAZEMNEJAD = Paper(
    "The Impact of Positional Encoding on Length Generalization in Transformers",
    2023,
    "Kazemnejad et al.",
)
AWASTHI = Paper(
    "Improving Length-Generalization in Transformers via Task Hinting", 2023, "Awasthi & Gupta"
)
LEE = Paper("Teaching Arithmetic to Small Transformers", 2023, "Lee et al.")


# --------------------------------------------------------------------------- params
class SymbolParams(LengthParams):
    """Lengths (see :class:`LengthParams`) and ``n_symbols``: the alphabet size (>= 2)."""

    n_symbols: int = Field(10, ge=2)


class SortParams(SymbolParams):
    """Sorting, optionally trained beside an auxiliary hint task in the same model.

    - ``min_len``, ``max_len``, ``ood_min_len``, ``ood_max_len``, ``test_fraction``,
      ``n_symbols``: as in :class:`SymbolParams`.
    - ``hint``: the auxiliary task mixed into training: ``none`` (plain sorting),
      ``successor`` (for each prompt element, the element that follows it in the
      stable sorted order, or an end token for the last one) or ``rank`` (for each
      prompt element, its 0-based position in the stable sorted order).
    - ``hint_fraction``: the share of training rows that are hint examples, in [0, 1)
      (used only when ``hint`` is not ``none``).
    """

    hint: Literal["none", "successor", "rank"] = "none"
    hint_fraction: float = Field(0.5, ge=0.0, lt=1.0)


class ParityParams(LengthParams):
    """Lengths of the bit strings (see :class:`LengthParams`); the alphabet is {0, 1}."""


class AdditionParams(LengthParams):
    """Addition of two ``L``-digit numbers; the length ``L`` is digits per operand.

    - ``min_len``, ``max_len``, ``ood_min_len``, ``ood_max_len``, ``test_fraction``:
      as in :class:`LengthParams`, counted in digits per operand (defaults 1..5, 6..8).
    - ``format``: ``plain`` writes every number most-significant digit first;
      ``reversed`` writes operands and answer least-significant digit first;
      ``reversed_answer`` keeps the operands plain and reverses only the answer, which
      is the "reverse" format of Lee et al. (2023).
    """

    min_len: int = Field(1, ge=1)
    max_len: int = Field(5, ge=1)
    ood_min_len: int = Field(6, ge=1)
    ood_max_len: int = Field(8, ge=1)
    format: Literal["plain", "reversed", "reversed_answer"] = "plain"


# --------------------------------------------------------------------------- tasks
@register(
    "task",
    "copy",
    paper=KAZEMNEJAD,
    summary="repeat the prompt; train on short lengths, test on longer ones",
    params=SymbolParams,
    caps=Capabilities(),
)
class Copy(SequenceTask):
    """Answer = the prompt, a string of ``L`` uniform symbols.

    Paper: Kazemnejad et al., "The Impact of Positional Encoding on Length
    Generalization in Transformers" (2023).
    """

    params: SymbolParams

    @property
    def alphabet(self) -> int:
        return self.params.n_symbols

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = _symbols(raw)
        return prompt, prompt.copy()


@register(
    "task",
    "reverse",
    paper=KAZEMNEJAD,
    summary="write the prompt backwards; train on short lengths, test on longer ones",
    params=SymbolParams,
    caps=Capabilities(),
)
class Reverse(Copy):
    """Answer = the prompt reversed.

    Paper: Kazemnejad et al., "The Impact of Positional Encoding on Length
    Generalization in Transformers" (2023).
    """

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = _symbols(raw)
        return prompt, prompt[:, ::-1].copy()


@register(
    "task",
    "sort",
    paper=AWASTHI,
    summary="sort the prompt's symbols ascending; train short, test long",
    params=SortParams,
    caps=Capabilities(),
)
class Sort(Copy):
    """Answer = the prompt's symbols in ascending order (symbols may repeat).

    With ``hint`` other than ``none`` (task hinting), every prompt starts with a task
    token after ``BOS``: ``SORT`` for the main task, ``HINT`` for the auxiliary one, and
    a share ``hint_fraction`` of each training batch are hint examples built from the
    same drawn strings (so a held-out test string never appears in a hint either).
    The hint answers one token per prompt element: its successor in the stable sorted
    order (``END`` after the largest) or its rank (``RANK_0 + r``). Evaluation sets hold
    sort examples only. Tokens after the symbols: ``SORT``, ``HINT``, then ``END``
    (successor) or ``max_len`` rank tokens (rank).

    Paper: Awasthi & Gupta, "Improving Length-Generalization in Transformers via Task
    Hinting" (2023). Not supported: their length-dependent extra parameters and hint
    tasks other than successor and rank.
    """

    params: SortParams

    @property
    def sort_token(self) -> int:
        return FIRST_SYMBOL + self.params.n_symbols

    @property
    def hint_token(self) -> int:
        return self.sort_token + 1

    @property
    def vocab_size(self) -> int:
        hint = self.params.hint
        if hint == "none":
            return FIRST_SYMBOL + self.alphabet
        return self.hint_token + 1 + (1 if hint == "successor" else self.params.max_len)

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = _symbols(raw)
        answer = np.sort(prompt, axis=1)
        if self.params.hint != "none":
            prompt = np.concatenate([np.full((raw.shape[0], 1), self.sort_token), prompt], 1)
        return prompt, answer

    def render_hint(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the hint examples (prompt ``[N, 1 + L]``, answer ``[N, L]``)."""
        n, m = raw.shape
        symbols = _symbols(raw)
        order = np.argsort(raw, axis=1, kind="stable")  # sorted position -> prompt index
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(m), (n, m)), axis=1)
        if self.params.hint == "successor":
            ordered = np.take_along_axis(symbols, order, axis=1)
            end = np.full((n, 1), self.hint_token + 1)
            following = np.concatenate([ordered[:, 1:], end], axis=1)
            answer = np.take_along_axis(following, rank, axis=1)
        else:
            answer = self.hint_token + 1 + rank
        prompt = np.concatenate([np.full((n, 1), self.hint_token), symbols], axis=1)
        return prompt, answer

    def make_train_batch(self, raw: np.ndarray, length: int, rng: np.random.Generator) -> Batch:
        if self.params.hint == "none":
            return self.make_batch(raw, length)
        is_hint = (rng.random(raw.shape[0]) < self.params.hint_fraction)[:, None]
        sort_prompt, sort_answer = self.render(raw, length)
        hint_prompt, hint_answer = self.render_hint(raw, length)
        prompt = np.where(is_hint, hint_prompt, sort_prompt)
        answer = np.where(is_hint, hint_answer, sort_answer)
        return self.batch_from_tokens(prompt, answer, length)


@register(
    "task",
    "parity",
    paper=KAZEMNEJAD,
    summary="the parity of a bit string as one answer token; train short, test long",
    params=ParityParams,
    caps=Capabilities(),
)
class Parity(SequenceTask):
    """Prompt = ``L`` uniform bits (symbols 0/1); answer = one symbol, their sum mod 2.

    Paper: Kazemnejad et al., "The Impact of Positional Encoding on Length
    Generalization in Transformers" (2023).
    """

    params: ParityParams

    @property
    def alphabet(self) -> int:
        return 2

    def answer_classes(self) -> int | None:
        return 2

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return _symbols(raw), _symbols(raw.sum(axis=1, keepdims=True) % 2)


@register(
    "task",
    "addition",
    paper=LEE,
    summary="add two L-digit numbers (plain or reversed digits); train short, test long",
    params=AdditionParams,
    caps=Capabilities(),
)
class Addition(SequenceTask):
    """Prompt = ``a + b`` with both operands uniform in ``[0, 10^L)`` written with exactly
    ``L`` digits (leading zeros kept); answer = ``a + b`` with exactly ``L + 1`` digits.

    Digit ``k`` is token ``FIRST_SYMBOL + k``; ``+`` is token ``FIRST_SYMBOL + 10``.
    ``format`` chooses the digit order (see :class:`AdditionParams`). Not supported:
    operands of different lengths, and the scratchpad formats of the paper.
    Paper: Lee et al., "Teaching Arithmetic to Small Transformers" (2023).
    """

    params: AdditionParams
    extra_tokens: ClassVar[int] = 1
    PLUS: ClassVar[int] = FIRST_SYMBOL + 10

    @property
    def alphabet(self) -> int:
        return 10

    def raw_len(self, length: int) -> int:
        return 2 * length

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = raw[:, :length], raw[:, length:]  # most-significant digit first
        total = _add_digits(a, b)  # L + 1 digits, most-significant first
        fmt = self.params.format
        if fmt == "reversed":
            a, b = a[:, ::-1], b[:, ::-1]
        if fmt in ("reversed", "reversed_answer"):
            total = total[:, ::-1]
        plus = np.full((raw.shape[0], 1), self.PLUS)
        prompt = np.concatenate([_symbols(a), plus, _symbols(b)], axis=1)
        return prompt, _symbols(total).copy()


def _add_digits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Digit-wise sum of two ``[N, L]`` digit arrays (most-significant first) -> ``[N, L+1]``."""
    n, length = a.shape
    out = np.zeros((n, length + 1), dtype=np.int64)
    carry = np.zeros(n, dtype=np.int64)
    for j in range(length - 1, -1, -1):
        s = a[:, j] + b[:, j] + carry
        out[:, j + 1] = s % 10
        carry = s // 10
    out[:, 0] = carry
    return out
