"""A translation-like task between two generated languages (a synchronous grammar).

Both languages share one set of word meanings: nouns, adjectives, transitive and
intransitive verbs and a relativizer. Every source word has exactly one target word (a
bijective word-for-word lexicon: word ``w`` is token ``FIRST_SYMBOL + w`` in the source
and ``FIRST_SYMBOL + W + w`` in the target, ``W`` words in all), and the two languages
order the same tree differently:

- source (head-initial, SVO, adjectives after the noun, relative clauses after it)::

      S      -> NP Vi | NP Vt NP
      NP(0)  -> N A*
      NP(d)  -> N A* REL Vt NP(d-1)         ("dog big that sees cat")

- target (head-final, SOV, adjectives before the noun in mirror order, relative
  clauses before it)::

      S      -> NP' Vi' | NP' NP' Vt'
      NP'(0) -> A'* N'                      (source ``N A1 A2`` is ``A2' A1' N'``)
      NP'(d) -> NP'(d-1) Vt' REL' A'* N'    ("cat' sees' that' big' dog'")

So the target is a permutation of the word-for-word translation of the source; only the
sentences ``N Vi`` keep their word order. The *depth* of a sentence is the deepest
nesting of relative clauses in it (its subject or object carries a chain of exactly that
many, the other noun phrase a chain of 0..depth). Each noun phrase has 0..
``max_adjectives`` adjectives; a sentence is transitive with ``transitive_prob``.

Splits (:class:`~anyformer.tasks.sequence.SequenceTask`, the "length" is the depth):
training and ``id`` depths ``min_depth..max_depth``, ``id`` sentences held out by the
hash of the source sentence; ``ood`` depths ``ood_min_depth..ood_max_depth`` (deeper
nesting, so longer sentences). Every :class:`~anyformer.tasks.sequence.FormParams` form
works (``encoder_decoder``: the source sentence is the encoder's input).

Metrics: teacher-forced exact match (headline) and token accuracy. Baselines on the same
sentences: ``lexicon`` (word-for-word substitution without reordering, right exactly on
the ``N Vi`` sentences) and ``copy`` (the source sentence itself, every token wrong: the
languages share no word).

Paper: Zhou et al., "Data Factors for Better Compositional Generalization" (2023), on
synthetic translation-like datasets (SCAN, COGS) whose longer and deeper test sentences
models trained from scratch fail on. Not supported: their datasets themselves, ambiguity,
morphology and many-to-one lexicons.
"""

from __future__ import annotations

import random
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import range_validators
from anyformer.tasks.sequence import FIRST_SYMBOL, PAD, FormParams, SequenceTask
from anyformer.tasks.symbolic import DEPTH_FIELDS

ZHOU = Paper("Data Factors for Better Compositional Generalization", 2023, "Zhou et al.")


class TranslationParams(FormParams):
    """Parameters of ``translation``.

    - ``min_depth``, ``max_depth``: relative-clause nesting depths of training and ``id``
      sentences, inclusive (>= 0).
    - ``ood_min_depth``, ``ood_max_depth``: ``ood`` depths, all deeper than ``max_depth``.
    - ``n_nouns``, ``n_adjectives``, ``n_transitive``, ``n_intransitive``: words of each
      class (>= 1 each); the lexicon maps each to one target word.
    - ``max_adjectives``: the most adjectives a noun phrase carries (>= 0).
    - ``transitive_prob``: the chance that a sentence has an object, in [0, 1].
    - ``test_fraction``: share of source sentences held out for ``id``, in (0, 0.5].
    - ``form``: the row layout (see :class:`~anyformer.tasks.sequence.FormParams`).
    """

    min_depth: int = Field(0, ge=0)
    max_depth: int = Field(2, ge=0)
    ood_min_depth: int = Field(3, ge=0)
    ood_max_depth: int = Field(4, ge=0)
    n_nouns: int = Field(8, ge=1)
    n_adjectives: int = Field(4, ge=1)
    n_transitive: int = Field(4, ge=1)
    n_intransitive: int = Field(3, ge=1)
    max_adjectives: int = Field(2, ge=0)
    transitive_prob: float = Field(0.5, ge=0.0, le=1.0)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)

    _max, _ood, _ood_max = range_validators(DEPTH_FIELDS, why="OOD sentences nest deeper")


@register(
    "task",
    "translation",
    paper=ZHOU,
    summary="translate between two generated languages (SVO to SOV, reordered, new words); "
    "ood = deeper relative clauses",
    params=TranslationParams,
    caps=Capabilities(),
)
class Translation(SequenceTask):
    """Source sentence -> target sentence of a synchronous grammar; see the module
    docstring for the grammar, splits and baselines.

    Paper: Zhou et al., "Data Factors for Better Compositional Generalization" (2023).
    """

    params: TranslationParams  # type: ignore[assignment]
    enumerate_prompts: ClassVar[bool] = False
    length_name: ClassVar[str] = "depth"
    range_fields: ClassVar[tuple[str, str, str, str]] = DEPTH_FIELDS
    guesses: ClassVar[tuple[str, ...]] = ("lexicon", "copy")

    # ------------------------------------------------------------ words
    @property
    def n_words(self) -> int:
        """Words per language: every noun, adjective and verb, and the relativizer."""
        p = self.params
        return p.n_nouns + p.n_adjectives + p.n_transitive + p.n_intransitive + 1

    @property
    def alphabet(self) -> int:
        return 2 * self.n_words  # source words, then target words

    def word_ids(self) -> dict[str, range]:
        """Source-language token ids of each word class (``rel`` is one token)."""
        p = self.params
        start = FIRST_SYMBOL
        out = {}
        for name, count in (
            ("noun", p.n_nouns),
            ("adjective", p.n_adjectives),
            ("transitive", p.n_transitive),
            ("intransitive", p.n_intransitive),
            ("rel", 1),
        ):
            out[name] = range(start, start + count)
            start += count
        return out

    def lexicon(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """The target word of each source token (special tokens unchanged)."""
        source = (tokens >= FIRST_SYMBOL) & (tokens < FIRST_SYMBOL + self.n_words)
        return tokens + source * self.n_words

    # ------------------------------------------------------------ sizes
    def np_width(self, depth: int) -> int:
        """The most words of a noun phrase of ``depth``."""
        head = 1 + self.params.max_adjectives
        return head + depth * (2 + head)

    def widths(self, length: int) -> tuple[int, int]:
        sentence = 2 * self.np_width(length) + 1
        return sentence, sentence

    # ------------------------------------------------------------ data
    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Raw rows ``[n, 2 W]``: the source sentence, then its translation, each
        ``PAD``-padded to ``W``, the most words of a sentence of depth ``length``."""
        py = random.Random(int(rng.integers(1 << 62)))
        width = self.widths(length)[0]
        raw = np.full((n, 2 * width), PAD, dtype=np.int64)
        for i in range(n):
            source, target = self.sentence(length, py)
            raw[i, : len(source)] = source
            raw[i, width : width + len(target)] = target
        return raw

    def sentence(self, depth: int, py: random.Random) -> tuple[list[int], list[int]]:
        """(source tokens, target tokens) of one sentence of exactly ``depth``."""
        p, words = self.params, self.word_ids()
        if py.random() < p.transitive_prob:
            other = py.randint(0, depth)
            deep_subject = py.random() < 0.5
            subj, subj_order = self.noun_phrase(depth if deep_subject else other, py)
            obj, obj_order = self.noun_phrase(other if deep_subject else depth, py)
            verb = py.choice(words["transitive"])
            source, order = [*subj, verb, *obj], [*subj_order, *obj_order, verb]
        else:
            subj, subj_order = self.noun_phrase(depth, py)
            verb = py.choice(words["intransitive"])
            source, order = [*subj, verb], [*subj_order, verb]
        return source, self.lexicon(np.asarray(order, dtype=np.int64)).tolist()

    def noun_phrase(self, depth: int, py: random.Random) -> tuple[list[int], list[int]]:
        """A noun phrase with a relative-clause chain of exactly ``depth``: its source
        tokens, and the same source words in the target's order."""
        words = self.word_ids()
        noun = py.choice(words["noun"])
        n_adjectives = py.randint(0, self.params.max_adjectives)
        adjectives = [py.choice(words["adjective"]) for _ in range(n_adjectives)]
        source, order = [noun, *adjectives], [*adjectives[::-1], noun]
        if depth > 0:
            verb, rel = py.choice(words["transitive"]), words["rel"][0]
            inner, inner_order = self.noun_phrase(depth - 1, py)
            source, order = [*source, rel, verb, *inner], [*inner_order, verb, rel, *order]
        return source, order

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        width = raw.shape[1] // 2
        return raw[:, :width], raw[:, width:]

    # ------------------------------------------------------------ baselines
    def guess_answer(self, name: str, prompt: torch.Tensor) -> torch.Tensor:
        """``lexicon``: each source word's target word, in source order; ``copy``: the
        source sentence itself."""
        if name == "lexicon":
            return self.lexicon(prompt)  # type: ignore[return-value]
        if name == "copy":
            return prompt
        return super().guess_answer(name, prompt)
