"""Sequence tasks: ``BOS prompt SEP answer EOS`` examples split by length and prompt hash.

:class:`SequenceTask` is the base class of the algorithmic (:mod:`~anyformer.tasks.algorithmic`),
symbolic (:mod:`~anyformer.tasks.symbolic`), graph (:mod:`~anyformer.tasks.graphs`) and
knowledge (:mod:`~anyformer.tasks.knowledge`) tasks; this module also holds the prompt
hash that decides held-out membership (used by :mod:`~anyformer.tasks.recall` too) and
:class:`LengthParams`, the length fields most of them share.

Every task writes one example as a token sequence ``BOS prompt SEP answer EOS`` over the
vocabulary ``PAD=0, BOS=1, SEP=2, EOS=3`` followed by the task's symbols (``addition``
adds a ``+`` token after its ten digits). The model reads ``seq[:-1]`` and is trained to
emit ``seq[1:]``; ``loss_mask`` is True exactly where the target is an answer token or
the closing ``EOS``, so the prompt is context only.

Splits:

- training: lengths ``min_len..max_len``; each step draws ONE length for its whole batch,
  so no batch is ever padded. The data depend only on ``(seed, step)``.
- ``id``: the same lengths, but only prompts that are *test members*: a deterministic
  64-bit hash of the prompt tokens decides membership (member iff
  ``hash % 10000 < test_fraction * 10000``). Training batches reject members, so no
  training prompt can appear in the ID test set. Membership does not depend on the
  seed: every seed holds out the same prompts.
- ``ood``: the longer lengths ``ood_min_len..ood_max_len`` (disjoint by length).

Small prompt spaces (at most 65,536 prompts of one length, e.g. short parity strings or
one-digit addition) of tasks whose raw rows are uniform strings are enumerated: the ID
set then takes the test members without replacement, so it may hold fewer examples
than asked, or none at a length whose prompts all hashed to training (that length is
then absent from ``by_length``); training draws from the non-members of that length,
and a training length whose prompts all hashed to test is never trained on. Larger
spaces, and tasks with their own sampler, use rejection sampling; evaluation sets drop
duplicate prompts, and each round of sampling for them draws twice as many candidates
as the last; after a round of ``ENUMERATE_LIMIT`` candidates the set is taken as
complete (a small space may then give fewer examples than asked).

Forms (parameter ``form``, :class:`FormParams`; a run sets it from ``model.kind``):

- ``decoder`` (and ``None``, the default): the rows above;
- ``prefix_lm``: the same rows plus ``extras["prefix_len"]`` ``[N]`` = ``2 + prompt
  length`` (``BOS prompt SEP`` is the bidirectional prefix; the first answer token is
  still predicted at the ``SEP`` input);
- ``encoder_decoder``: ``extras["source"]`` = ``prompt EOS`` (``extras["source_mask"]``
  True at its real tokens), decoder ``inputs`` = ``BOS answer``, ``targets`` =
  ``answer EOS`` (see :func:`encoder_decoder_batch`).

``targets``, ``loss_mask`` and ``extras["score_mask"]`` mark the same answer tokens and
``EOS`` in every form, so scores and baselines are computed the same way.

Scores are teacher-forced: an example is an exact match when the argmax of the model's
logits is right at every scored position (the answer and the closing ``EOS``);
``token_accuracy`` is the share of answer tokens right (``EOS`` not counted) and
``eos_accuracy`` the share of examples whose closing ``EOS`` is predicted. A task whose
answer is one class (:meth:`SequenceTask.answer_classes`) also reports the ``chance`` and
``majority`` baselines of :mod:`anyformer.tasks.baselines` on the same examples.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from anyformer.tasks.base import (
    LENGTH_FIELDS,
    SPLIT_IDS,
    Batch,
    Task,
    eval_set_by_size,
    range_validators,
    rng_for,
    split_range,
)
from anyformer.tasks.baselines import class_baselines, majority_answer, with_baseline_series

PAD, BOS, SEP, EOS = 0, 1, 2, 3
#: Token id of symbol 0; symbol ``s`` is token ``FIRST_SYMBOL + s``.
FIRST_SYMBOL = 4
#: Membership resolution: a prompt is a test member iff ``hash % HASH_BUCKETS`` is small.
HASH_BUCKETS = 10_000
#: Prompt spaces up to this size are enumerated instead of sampled.
ENUMERATE_LIMIT = 1 << 16
#: Evaluation sets are cut into batches of at most this many rows.
EVAL_BATCH_ROWS = 512
#: Rejection sampling gives up after this many rounds (only reachable in tiny spaces).
MAX_ROUNDS = 1000


# --------------------------------------------------------------------------- hashing
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer, elementwise on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def prompt_hash(prompts: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of an integer array ``[N, P]`` (mixes the length too).

    ``PAD`` tokens are skipped, so a prompt hashes the same whatever trailing padding
    its row carries (rows without ``PAD`` hash as they always did).
    """
    real = prompts != PAD
    tokens = prompts.astype(np.uint64)
    h = _mix64(real.sum(axis=1).astype(np.uint64) + _GOLDEN)
    for j in range(prompts.shape[1]):
        h = np.where(real[:, j], _mix64((h + _GOLDEN) ^ tokens[:, j]), h)
    return h


def is_test_member(prompts: np.ndarray, test_fraction: float) -> np.ndarray:
    """Bool ``[N]``: which prompt rows belong to the held-out (ID test) set."""
    threshold = np.uint64(round(test_fraction * HASH_BUCKETS))
    return (prompt_hash(prompts) % np.uint64(HASH_BUCKETS)) < threshold


# --------------------------------------------------------------------------- params
#: The row layouts a sequence task can write (``None``: ``decoder``, the original rows).
FORMS = ("decoder", "prefix_lm", "encoder_decoder")
Form = Literal["decoder", "prefix_lm", "encoder_decoder"]


class FormParams(BaseModel):
    """The ``form`` parameter every sequence task has: how an example is laid out.

    - ``form``: ``decoder`` (one row ``BOS prompt SEP answer EOS``), ``prefix_lm`` (the
      same row plus ``extras["prefix_len"]`` = ``2 + prompt length``: ``BOS .. SEP`` is
      the prefix) or ``encoder_decoder`` (``extras["source"]`` = ``prompt EOS`` with
      ``extras["source_mask"]``; inputs ``BOS answer``, targets ``answer EOS``).
      ``None`` (the default) is ``decoder``; a run sets it from ``model.kind``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    form: Form | None = None


class LengthParams(FormParams):
    """Lengths, held-out fraction and row form shared by the algorithmic tasks.

    - ``form``: the row layout (see :class:`FormParams`).
    - ``min_len``, ``max_len``: training lengths (inclusive); also the ``id`` split's.
    - ``ood_min_len``, ``ood_max_len``: the ``ood`` split's lengths (inclusive), all
      longer than ``max_len``.
    - ``test_fraction``: share of prompts held out for the ``id`` test split, in (0, 0.5].
    """

    min_len: int = Field(4, ge=1)
    max_len: int = Field(12, ge=1)
    ood_min_len: int = Field(13, ge=1)
    ood_max_len: int = Field(20, ge=1)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)

    _max_len_order, _ood_len_order, _ood_max_len_order = range_validators(
        LENGTH_FIELDS, why="OOD lengths are longer than every training length"
    )


# --------------------------------------------------------------------------- base task
class SequenceTask(Task):
    """Shared machinery: splits by length and by prompt hash, batching and scoring.

    A subclass sets ``alphabet`` (number of raw symbols), ``extra_tokens`` and
    implements :meth:`raw_len` (raw symbols drawn for length ``L``) and :meth:`render`
    (raw symbols to prompt and answer tokens).

    Structured tasks (graphs, bracket strings, expressions) also override
    :meth:`sample` (how raw rows are drawn; by default uniform symbols), set
    ``enumerate_prompts = False`` (their raw rows are not uniform strings, so the
    small-space enumeration does not apply) and may:

    - return prompts and answers of different lengths per row from :meth:`render`,
      right-padded with ``PAD``; each row is then written ``BOS prompt SEP answer EOS``
      and right-padded with ``PAD`` (``padding_mask`` marks the real tokens when rows
      differ in length), and :meth:`widths` must be overridden with the most prompt and
      answer tokens of a length;
    - score only part of the answer (e.g. the final result after a scratchpad) by
      overriding :meth:`scored_answer`; the loss still covers the whole answer;
    - build training rows differently from evaluation rows (e.g. auxiliary tasks) by
      overriding :meth:`make_train_batch`;
    - use other names for the length range by setting ``range_fields``, or other
      lengths by overriding :meth:`lengths`.

    Every batch goes through :meth:`batch_from_tokens`, which writes it in the task's
    :attr:`form` (parameter ``form``, see :class:`FormParams`); a subclass that builds
    batches itself must call it (or refuse the forms it cannot write).
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "causal_lm"
    headline: ClassVar[str] = "exact_match"
    higher_is_better: ClassVar[bool] = True
    extra_tokens: ClassVar[int] = 0
    #: Whether small prompt spaces are enumerated (raw rows uniform over ``alphabet``).
    enumerate_prompts: ClassVar[bool] = True
    #: What a "length" counts, the x axis of the curve (e.g. ``depth``).
    length_name: ClassVar[str] = "length"
    disjoint_splits: ClassVar[bool] = True
    #: The parameters bounding the split lengths: ``(min, max, ood_min, ood_max)``.
    range_fields: ClassVar[tuple[str, str, str, str]] = LENGTH_FIELDS

    params: LengthParams

    def __init__(self, params: LengthParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._pools: dict[tuple[int, bool | None], np.ndarray] = {}
        train = self.lengths("train")
        self._train_lengths = [L for L in train if self._has_training_prompts(L)]
        if not self._train_lengths:
            raise ValueError(
                f"test_fraction={params.test_fraction} leaves no training prompts at lengths "
                f"{train.start}..{train.stop - 1}; use longer lengths or a smaller "
                f"test_fraction"
            )

    # ------------------------------------------------------------ subclass hooks
    @property
    def alphabet(self) -> int:
        raise NotImplementedError

    def raw_len(self, length: int) -> int:
        """How many raw symbols one example of ``length`` is drawn from."""
        return length

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of (prompt ``[N, P]``, answer ``[N, A]``) for raw symbols ``[N, m]``.

        Rows may be right-padded with ``PAD`` (see the class docstring).
        """
        raise NotImplementedError

    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` raw rows of ``length`` drawn from the task's distribution."""
        return rng.integers(self.alphabet, size=(n, self.raw_len(length)))

    def scored_answer(self, answer: np.ndarray, length: int) -> np.ndarray | None:
        """Bool ``[N, A]``: the answer tokens that scores count (None: all of them).

        The closing ``EOS`` always counts; the loss covers the whole answer regardless.
        """
        return None

    # ------------------------------------------------------------ interface
    @property
    def vocab_size(self) -> int:
        return FIRST_SYMBOL + self.alphabet + self.extra_tokens

    def model_io(self) -> dict[str, Any]:
        return {"embed": "tokens", "vocab_size": self.vocab_size}

    def lengths(self, split: str) -> range:
        """The lengths of a split (``train`` and ``id`` share theirs), read from the
        parameters named by ``range_fields``."""
        return split_range(self.params, split, self.range_fields)

    def split_sizes(self, split: str) -> range | None:
        return self.lengths(split)

    @property
    def form(self) -> str:
        """The row layout: the parameter ``form`` (``decoder`` when it is None or the
        task's parameters have none); see :class:`FormParams`."""
        return getattr(self.params, "form", None) or "decoder"

    def widths(self, length: int) -> tuple[int, int]:
        """The most prompt and answer tokens of an example of ``length``."""
        prompt, answer = self.render(np.zeros((1, self.raw_len(length)), np.int64), length)
        return prompt.shape[1], answer.shape[1]

    def input_len(self, length: int) -> int:
        """Model input length of a ``decoder``-form example of ``length`` (prompt +
        answer + 2: ``BOS prompt SEP answer``)."""
        prompt, answer = self.widths(length)
        return prompt + answer + 2

    def form_lens(self, length: int) -> tuple[int, int]:
        """(decoder positions, source positions) of an example of ``length`` in the
        task's form: ``encoder_decoder`` reads ``answer + 1`` (``BOS answer``) and
        ``prompt + 1`` source tokens (``prompt EOS``); the other forms read
        :meth:`input_len` and no source."""
        if self.form == "encoder_decoder":
            prompt, answer = self.widths(length)
            return answer + 1, prompt + 1
        return self.input_len(length), 0

    def all_lengths(self) -> list[int]:
        """Every length of the evaluated splits (training lengths are the ``id`` ones)."""
        return [L for s in ("id", "ood") for L in self.lengths(s)]

    def max_seq_len(self) -> int:
        """The longest row the model reads: decoder inputs and, in the
        ``encoder_decoder`` form, the source too (one ``max_len`` covers both sides)."""
        return max(max(self.form_lens(L)) for L in self.all_lengths())

    def max_source_len(self) -> int:
        """The longest source (``extras["source"]``) of any split; 0 unless the form is
        ``encoder_decoder``."""
        return max(self.form_lens(L)[1] for L in self.all_lengths())

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        length = int(self._train_lengths[rng.integers(len(self._train_lengths))])
        raw = self._draw(length, batch_size, rng, member=False, replace=True)
        return self.make_train_batch(raw, length, rng)

    def make_train_batch(self, raw: np.ndarray, length: int, rng: np.random.Generator) -> Batch:
        """The training batch of raw rows (``rng`` continues the step's stream)."""
        return self.make_batch(raw, length)

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        lengths = self.lengths(split)
        member = True if split == "id" else None
        return eval_set_by_size(
            self.seed, split, size, lengths,
            lambda length, n, rng: self._draw(length, n, rng, member=member, replace=False),
            self.make_batch, EVAL_BATCH_ROWS,
            f"split '{split}' has no test prompts at lengths {lengths.start}.."
            f"{lengths.stop - 1} (test_fraction={self.params.test_fraction} of a tiny "
            f"prompt space); use longer lengths or a larger test_fraction",
        )  # fmt: skip

    def make_batch(self, raw: np.ndarray, length: int) -> Batch:
        """The batch of raw symbols ``[N, m]`` drawn for ``length``."""
        prompt, answer = self.render(raw, length)
        return self.batch_from_tokens(prompt, answer, length, self.scored_answer(answer, length))

    def batch_from_tokens(
        self,
        prompt: np.ndarray,
        answer: np.ndarray,
        group: int | None,
        scored: np.ndarray | None = None,
    ) -> Batch:
        """The batch of prompts ``[N, P]`` and answers ``[N, A]`` (trailing ``PAD``
        allowed) in the task's :attr:`form`: :func:`decoder_batch` rows (``decoder``), the
        same rows with ``extras["prefix_len"]`` (``prefix_lm``) or
        :func:`encoder_decoder_batch` (``encoder_decoder``). ``scored`` (bool ``[N, A]``)
        marks the answer tokens that scores count (``extras["score_mask"]``)."""
        if self.form == "encoder_decoder":
            return encoder_decoder_batch(prompt, answer, group, scored)
        batch = decoder_batch(prompt, answer, group, scored)
        if self.form == "prefix_lm":
            batch.extras["prefix_len"] = torch.from_numpy(2 + (prompt != PAD).sum(axis=1))
        return batch

    @staticmethod
    def row_exact(out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int, int]:
        """(exact ``[N]`` bool, right answer tokens, answer tokens) of one batch's outputs.

        Scored positions are ``extras['score_mask']`` when present, else ``loss_mask``; a
        row is exact when every scored position is right, the closing ``EOS`` included;
        the token counts leave the ``EOS`` out (see :meth:`eos_right`).
        """
        pred = out.argmax(-1) if out.dim() == 3 else out
        mask = batch.extras.get("score_mask", batch.loss_mask)
        right = (pred.to(batch.targets.device) == batch.targets) & mask
        exact = (right | ~mask).all(dim=1)
        answer = mask & (batch.targets != EOS)
        return exact, int((right & answer).sum()), int(answer.sum())

    @staticmethod
    def eos_right(out: torch.Tensor, batch: Batch) -> tuple[int, int]:
        """(rows whose closing ``EOS`` is predicted, rows) of one batch's outputs."""
        pred = out.argmax(-1) if out.dim() == 3 else out
        eos = batch.loss_mask & (batch.targets == EOS)
        right = (pred.to(batch.targets.device) == batch.targets) & eos
        return int(right.sum()), int(eos.sum())

    # ------------------------------------------------------------ baselines
    def answer_classes(self) -> int | None:
        """How many answers a blind guess chooses from, when the scored answer of every
        example is one token besides ``EOS`` (a class); None (the default) when the
        answer is a sequence: the task then reports no baselines."""
        return None

    @staticmethod
    def answer_positions(batch: Batch) -> torch.Tensor:
        """Bool ``[N, T]``: the scored answer positions of a batch (``EOS`` left out)."""
        mask = batch.extras.get("score_mask", batch.loss_mask)
        return mask & (batch.targets != EOS)

    def answer_labels(self, batch: Batch) -> torch.Tensor:
        """``[N]``: the target token of each row's one scored answer position."""
        at = self.answer_positions(batch)
        if not bool((at.sum(dim=1) == 1).all()):
            raise ValueError(
                f"{type(self).__name__}.answer_classes() says the answer is one class, but "
                f"rows score {sorted(set(at.sum(dim=1).tolist()))} answer tokens"
            )
        return batch.targets[at]

    def trivial_baselines(self, batches: list[Batch]) -> dict[str, dict[str, Any]] | None:
        """The ``chance`` and ``majority`` baselines on ``batches``, with ``by_length``
        when the batches have groups (see :mod:`anyformer.tasks.baselines`); for an
        answer that is not a class, the task's :attr:`guesses` (None when it has none)."""
        classes = self.answer_classes()
        if not batches:
            return None
        if classes is None:
            return self.guess_baselines(batches)
        labels = torch.cat([self.answer_labels(b) for b in batches])
        groups = None
        if any(b.group is not None for b in batches):
            groups = torch.cat([torch.full((b.inputs.shape[0],), _group(b)) for b in batches])
        return class_baselines(labels, classes, groups, by="by_length")

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        """Predicted token ids ``[B, T]`` per batch of the deterministic baseline
        ``name``: ``majority`` (the targets, with every answer replaced by the set's most
        common one) or one of the task's :attr:`guesses`. Scored as a model, they
        reproduce the baseline's numbers."""
        if name in self.guesses:
            return [self.guessed_outputs(name, b) for b in batches]
        if name != "majority" or self.answer_classes() is None:
            raise ValueError(f"{type(self).__name__} has no deterministic baseline '{name}'")
        answer = majority_answer(torch.cat([self.answer_labels(b) for b in batches]))
        return [
            torch.where(self.answer_positions(b), torch.tensor(answer), b.targets) for b in batches
        ]

    def exact_metrics(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """The model part of :meth:`score`: exact match, token and ``EOS`` accuracy,
        exact match per length and its curve (no baselines)."""
        rows: dict[int, list[int]] = {}
        tokens_right = tokens_total = eos_right = eos_total = 0
        for out, batch in zip(outputs, batches):
            exact, right, total = self.row_exact(out, batch)
            tokens_right += right
            tokens_total += total
            eos = self.eos_right(out, batch)
            eos_right, eos_total = eos_right + eos[0], eos_total + eos[1]
            key = _group(batch)
            counts = rows.setdefault(key, [0, 0])
            counts[0] += int(exact.sum())
            counts[1] += int(exact.numel())
        n_right = sum(c[0] for c in rows.values())
        n_rows = sum(c[1] for c in rows.values())
        by_length = {str(k): rows[k][0] / rows[k][1] for k in sorted(rows) if rows[k][1]}
        metrics: dict[str, Any] = {
            "exact_match": n_right / max(n_rows, 1),
            "token_accuracy": tokens_right / max(tokens_total, 1),
            "eos_accuracy": eos_right / max(eos_total, 1),
            "by_length": by_length,
            "curve": {
                "x": self.length_name,
                "y": "exact_match",
                "series": {"model": dict(by_length)},
                "n": {str(k): rows[k][1] for k in sorted(rows) if rows[k][1]},  # examples
            },
        }
        return metrics

    # ------------------------------------------------------------ guessed answers
    #: Baselines that guess each answer from its prompt alone (:meth:`guess_answer`),
    #: reported by tasks whose answer is not a class (e.g. ``translation``'s word-for-word
    #: ``lexicon`` and ``copy``).
    guesses: ClassVar[tuple[str, ...]] = ()

    def guess_answer(self, name: str, prompt: torch.Tensor) -> torch.Tensor:
        """The answer tokens the baseline ``name`` (one of :attr:`guesses`) gives for one
        prompt (its real tokens, ``[P]``)."""
        raise ValueError(f"{type(self).__name__} has no guessing baseline '{name}'")

    @staticmethod
    def prompts_of(batch: Batch) -> list[torch.Tensor]:
        """The real prompt tokens of each row, in any form: ``source`` up to its ``EOS``
        (``encoder_decoder``), else the inputs between ``BOS`` and ``SEP``."""
        if "source" in batch.extras:
            lengths = batch.extras["source_mask"].sum(dim=1) - 1  # the EOS closes it
            return [row[: int(n)] for row, n in zip(batch.extras["source"], lengths)]
        sep = batch.loss_mask.int().argmax(dim=1)  # the first scored input is SEP
        return [row[1 : int(n)] for row, n in zip(batch.inputs, sep)]

    def guessed_outputs(self, name: str, batch: Batch) -> torch.Tensor:
        """Predicted ids ``[B, T]`` of the baseline ``name``: the targets, with the answer
        tokens replaced, in order, by :meth:`guess_answer` (``PAD``, wrong, where the
        guess is too short; ``EOS`` stays right)."""
        pred = batch.targets.clone()
        at = batch.loss_mask & (batch.targets != EOS)
        for i, prompt in enumerate(self.prompts_of(batch)):
            where = at[i].nonzero().squeeze(1)
            guess = self.guess_answer(name, prompt)[: len(where)]
            fill = torch.full((len(where),), PAD, dtype=pred.dtype)
            fill[: len(guess)] = guess
            pred[i, where] = fill
        return pred

    def guess_baselines(self, batches: list[Batch]) -> dict[str, dict[str, Any]] | None:
        """Each of :attr:`guesses` scored on ``batches`` as a model: ``exact_match``,
        ``token_accuracy`` and ``by_length`` (None when the task has none)."""
        if not self.guesses:
            return None
        out = {}
        for name in self.guesses:
            m = self.exact_metrics(self.baseline_outputs(name, batches), batches)
            out[name] = {k: m[k] for k in ("exact_match", "token_accuracy", "by_length")}
        return out

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Teacher-forced exact match, token accuracy (answer tokens) and ``EOS``
        accuracy, overall; exact match per length; and the ``baselines`` on the same
        batches: ``chance`` and ``majority`` for an answer that is a class, else the
        task's :attr:`guesses` (if any).

        ``outputs`` are logits ``[B, T, V]`` (or predicted ids ``[B, T]``). Only scored
        positions count (``extras['score_mask']`` when a batch has one).
        """
        metrics = self.exact_metrics(outputs, batches)
        baselines = self.trivial_baselines(batches)
        if baselines is not None:
            metrics["baselines"] = baselines
            metrics["curve"] = with_baseline_series(metrics["curve"], baselines, "by_length")
        return metrics

    # ------------------------------------------------------------ sampling
    def _space(self, length: int) -> int:
        return self.alphabet ** self.raw_len(length)

    def _pool(self, length: int, member: bool | None) -> np.ndarray:
        """Every raw example of ``length`` (of one membership), for small spaces."""
        key = (length, member)
        if key not in self._pools:
            m = self.raw_len(length)
            codes = np.arange(self._space(length), dtype=np.int64)
            powers = self.alphabet ** np.arange(m - 1, -1, -1, dtype=np.int64)
            raw = (codes[:, None] // powers[None, :]) % self.alphabet
            if member is not None:
                keep = is_test_member(self.render(raw, length)[0], self.params.test_fraction)
                raw = raw[keep if member else ~keep]
            self._pools[key] = raw
        return self._pools[key]

    def _enumerated(self, length: int) -> bool:
        return self.enumerate_prompts and self._space(length) <= ENUMERATE_LIMIT

    def _has_training_prompts(self, length: int) -> bool:
        if not self._enumerated(length):
            return True
        return self._pool(length, member=False).shape[0] > 0

    def _draw(
        self,
        length: int,
        n: int,
        rng: np.random.Generator,
        member: bool | None,
        replace: bool,
    ) -> np.ndarray:
        """``n`` raw examples of ``length`` (fewer in a small space without replacement).

        ``member``: True keeps only test members, False only non-members, None any.
        """
        if self._enumerated(length):
            pool = self._pool(length, member)
            if replace:
                return pool[rng.integers(pool.shape[0], size=n)]
            return pool[np.sort(rng.choice(pool.shape[0], size=min(n, len(pool)), replace=False))]
        kept: list[np.ndarray] = []
        have = 0
        share = self.params.test_fraction if member else 1 - self.params.test_fraction
        ask = int(n / share * 1.2) + 8 if member is not None else n
        for _ in range(MAX_ROUNDS):
            cand = self.sample(length, ask, rng)
            if member is not None:
                keep = is_test_member(self.render(cand, length)[0], self.params.test_fraction)
                cand = cand[keep == member]
            kept.append(cand)
            have += cand.shape[0]
            if not replace:
                merged = unique_rows(np.concatenate(kept))
                kept, have = [merged], merged.shape[0]
            if have >= n:
                break
            if not replace:  # a thin space: look wider, until a round at the limit
                if ask >= ENUMERATE_LIMIT:
                    break
                ask = min(2 * ask, ENUMERATE_LIMIT)
        return np.concatenate(kept)[:n]


def decoder_batch(
    prompt: np.ndarray,
    answer: np.ndarray,
    group: int | None,
    scored: np.ndarray | None = None,
) -> Batch:
    """Rows ``BOS prompt SEP answer EOS`` (right-padded with ``PAD``) as a batch.

    ``prompt`` ``[N, P]`` and ``answer`` ``[N, A]`` may carry trailing ``PAD``.
    ``loss_mask`` is True where the target is an answer token or ``EOS``;
    ``padding_mask`` is None when every row has the same length, else True at real
    inputs (up to the one whose target is ``EOS``). With
    ``scored`` (bool ``[N, A]``), ``extras['score_mask']`` marks the answer tokens
    scores count, plus ``EOS``.
    """
    p_len = (prompt != PAD).sum(axis=1)
    a_len = (answer != PAD).sum(axis=1)
    prompt = prompt[:, : int(p_len.max(initial=0))]  # drop columns of PAD only
    n, width = prompt.shape
    total = int((p_len + a_len).max(initial=0)) + 3
    rows = np.arange(n)
    seq = np.full((n, total), PAD, dtype=np.int64)
    seq[:, 0] = BOS
    seq[:, 1 : 1 + width] = prompt
    seq[rows, 1 + p_len] = SEP
    real = np.arange(answer.shape[1])[None, :] < a_len[:, None]
    r, j = np.nonzero(real)
    seq[r, 2 + p_len[r] + j] = answer[r, j]
    seq[rows, 2 + p_len + a_len] = EOS
    # targets[t] = seq[t + 1]: answer token j is the target at input 1 + p_len + j,
    # so the first one is predicted at the SEP input and EOS at 1 + p_len + a_len.
    seq_t = torch.from_numpy(seq)
    t = torch.arange(total - 1)
    start = torch.from_numpy(1 + p_len)[:, None]
    stop = torch.from_numpy(1 + p_len + a_len)[:, None]
    batch = Batch(
        inputs=seq_t[:, :-1].contiguous(),
        targets=seq_t[:, 1:].contiguous(),
        loss_mask=(t >= start) & (t <= stop),
        padding_mask=None if bool((stop == stop[0]).all()) else t <= stop,
        group=group,
    )
    if scored is not None:
        score_mask = np.zeros((n, total - 1), dtype=bool)
        r, j = np.nonzero(scored & real)
        score_mask[r, 1 + p_len[r] + j] = True
        score_mask[rows, 1 + p_len + a_len] = True
        batch.extras["score_mask"] = torch.from_numpy(score_mask)
    return batch


def encoder_decoder_batch(
    prompt: np.ndarray,
    answer: np.ndarray,
    group: int | None,
    scored: np.ndarray | None = None,
) -> Batch:
    """The ``encoder_decoder`` form of the rows of :func:`decoder_batch`.

    ``extras["source"]`` ``[N, S]`` holds ``prompt EOS`` (right-padded with ``PAD``) and
    ``extras["source_mask"]`` ``[N, S]`` is True at its real tokens (every row has one);
    the decoder reads ``inputs`` = ``BOS answer`` and is trained to emit ``targets`` =
    ``answer EOS``, every real target scored (``loss_mask``); ``padding_mask`` is None
    when every answer has the same length, else True at real inputs. With ``scored``,
    ``extras['score_mask']`` marks the scored answer tokens plus ``EOS``. Targets, loss
    and score masks mean what they mean in the decoder rows, so scoring is unchanged.
    """
    p_len = (prompt != PAD).sum(axis=1)
    a_len = (answer != PAD).sum(axis=1)
    n = prompt.shape[0]
    rows = np.arange(n)
    width = int(p_len.max(initial=0))
    source = np.full((n, width + 1), PAD, dtype=np.int64)
    source[:, :width] = prompt[:, :width]
    source[rows, p_len] = EOS
    total = int(a_len.max(initial=0)) + 2  # BOS answer EOS
    seq = np.full((n, total), PAD, dtype=np.int64)
    seq[:, 0] = BOS
    real = np.arange(answer.shape[1])[None, :] < a_len[:, None]
    r, j = np.nonzero(real)
    seq[r, 1 + j] = answer[r, j]
    seq[rows, 1 + a_len] = EOS
    # targets[t] = seq[t + 1]: answer token j is the target at input j, EOS at a_len
    seq_t = torch.from_numpy(seq)
    t = torch.arange(total - 1)
    stop = torch.from_numpy(a_len)[:, None]
    batch = Batch(
        inputs=seq_t[:, :-1].contiguous(),
        targets=seq_t[:, 1:].contiguous(),
        loss_mask=t <= stop,
        padding_mask=None if bool((stop == stop[0]).all()) else t <= stop,
        group=group,
    )
    batch.extras["source"] = torch.from_numpy(source)
    batch.extras["source_mask"] = torch.from_numpy(np.arange(width + 1)[None, :] <= p_len[:, None])
    if scored is not None:
        score_mask = np.zeros((n, total - 1), dtype=bool)
        r, j = np.nonzero(scored & real)
        score_mask[r, j] = True
        score_mask[rows, a_len] = True
        batch.extras["score_mask"] = torch.from_numpy(score_mask)
    return batch


def unique_rows(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` without repeats, in order of first appearance."""
    _, first = np.unique(a, axis=0, return_index=True)
    return a[np.sort(first)]


def _group(batch: Batch) -> int:
    """A batch's group as an int (-1 when it has none)."""
    return int(batch.group) if batch.group is not None else -1


def symbols(raw: np.ndarray) -> np.ndarray:
    """Token ids of raw symbols: symbol ``s`` is token ``FIRST_SYMBOL + s``."""
    return raw + FIRST_SYMBOL
