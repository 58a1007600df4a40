"""Byte-level English text from the standard library's documentation (no download).

The corpus is ``pydoc_data.topics.topics``, the help texts ``help()`` prints for the
language's keywords and topics (``assert``, ``async``, ``atom-literals``, ...; about
0.5 MB of English prose with code examples in the running interpreter's version), read
through :mod:`importlib`. Each topic is UTF-8 encoded, and every split's topics, sorted
by name, are concatenated with a ``0`` byte after each (as ``stdlib_lm`` does with
modules).

Splits:

- ``train``: the topics not held out;
- ``id``: topics held out by a deterministic hash of their name
  (:func:`~anyformer.tasks.text.path_bucket` of the name ``< val_fraction * 10000``): the
  same kind of text, never trained on;
- ``ood``: held-out Python source of the standard library: the modules ``stdlib_lm``
  holds out as its ``id`` split when its ``val_fraction`` is ``ood_fraction``
  (:func:`~anyformer.tasks.text.module_split`; test suites never used). The same
  characters, another language. With ``source: true`` the training stream also holds
  the standard library's other modules (``stdlib_lm``'s ``train`` split), so ``ood``
  is then held-out modules of a trained-on kind of text.

Examples are windows of ``seq_len + 1`` bytes (inputs the first ``seq_len``, targets the
last ``seq_len``; every position scored, ``padding_mask`` None), at offsets drawn from
``(seed, step)`` in training and evenly spaced over the whole split in evaluation (see
:class:`~anyformer.tasks.text.StdlibLM`, whose windows, batches and metrics this task
shares). The default objective is ``causal_lm``; the masked objectives (``mlm``,
``span_corruption``, ``masked_diffusion``) corrupt these plain rows themselves.

Metrics: ``bits_per_byte`` (headline), next-byte ``accuracy`` and the objective's
``loss``. Baselines on the same windows, fitted on the training stream: ``unigram``
(byte frequencies, add-one smoothed) and ``bigram`` (the next byte given the last one,
``P(b | a) = (count(a, b) + P_unigram(b)) / (count(a) + 1)``); each reports
``bits_per_byte`` and ``accuracy`` (its most likely byte).

Paper: Wang et al., "What Language Model Architecture and Pretraining Objective Work Best
for Zero-Shot Generalization?" (2022), whose causal, prefix and masked objectives this
corpus is for (at toy scale: no C4, no multitask fine-tuning data).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch, Task
from anyformer.tasks.text import (
    HASH_BUCKETS,
    SEPARATOR,
    StdlibLM,
    path_bucket,
    split_stream,
    stdlib_root,
)
from anyformer.tasks.tokenizer import TokenizerFields

WANG = Paper(
    "What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot "
    "Generalization?",
    2022,
    "Wang et al.",
)
#: The module holding the help topics, and its dict of ``name -> text``.
TOPICS_MODULE = "pydoc_data.topics"


@functools.lru_cache(maxsize=1)
def topics() -> tuple[tuple[str, bytes], ...]:
    """``(name, UTF-8 text)`` of every help topic, sorted by name (cached)."""
    found = importlib.import_module(TOPICS_MODULE).topics
    return tuple((name, found[name].encode("utf-8")) for name in sorted(found))


def topic_split(name: str, val_fraction: float) -> str:
    """``id`` (held out) or ``train`` for a topic name."""
    return "id" if path_bucket(name) < round(val_fraction * HASH_BUCKETS) else "train"


@functools.lru_cache(maxsize=8)
def topic_stream(split: str, val_fraction: float) -> tuple[np.ndarray, tuple[str, ...]]:
    """The byte stream of the topics of ``split`` and their names (cached)."""
    chosen = [(n, t) for n, t in topics() if topic_split(n, val_fraction) == split]
    data = b"".join(t + bytes([SEPARATOR]) for _, t in chosen)
    return np.frombuffer(data, dtype=np.uint8), tuple(n for n, _ in chosen)


class TextCorpusParams(TokenizerFields):
    """Parameters of ``text_corpus``.

    - ``seq_len``: tokens per example (the model's ``max_len`` must cover it).
    - ``tokenizer``, ``vocab_size``, ``min_frequency``: UTF-8 bytes (default) or a
      subword tokenizer trained on the training split
      (:class:`~anyformer.tasks.tokenizer.TokenizerFields`).
    - ``val_fraction``: share of help topics held out as ``id``, by name hash, in (0, 1).
    - ``ood_fraction``: share of standard-library modules held out as ``ood``, by path
      hash (``stdlib_lm``'s rule), in (0, 1).
    - ``source``: also train on the other standard-library modules (not test suites).
    - ``root``: the source folder to read instead of the interpreter's standard library.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    seq_len: int = Field(128, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    ood_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    source: bool = False
    root: str | None = None


class TokenModels:
    """Add-one unigram and unigram-smoothed bigram next-token models over ``vocab`` ids,
    stored sparsely (a subword vocabulary's pairs would not fit a dense table)."""

    def __init__(self, unigram: np.ndarray, pairs: np.ndarray, counts: np.ndarray, vocab: int):
        self.unigram, self.pairs, self.counts, self.vocab = unigram, pairs, counts, vocab
        prev = pairs // vocab
        self.row_total = np.bincount(prev, weights=counts, minlength=vocab)
        # each previous token's likeliest next token (the bigram's argmax): its most
        # frequent successor, ties to the likelier unigram, then the smaller id; a token
        # never seen before another falls back to the unigram's argmax
        self.guess = np.full(vocab, int(unigram.argmax()), dtype=np.int64)
        nxt = pairs % vocab
        order = np.lexsort((nxt, -unigram[nxt], -counts, prev))
        first = order[np.r_[True, prev[order][1:] != prev[order][:-1]]] if len(order) else order
        self.guess[prev[first]] = nxt[first]

    @classmethod
    def fit(cls, data: np.ndarray, vocab: int) -> TokenModels:
        data = data.astype(np.int64)
        unigram = (np.bincount(data, minlength=vocab) + 1.0) / (len(data) + float(vocab))
        pairs, counts = np.unique(data[:-1] * vocab + data[1:], return_counts=True)
        return cls(unigram, pairs, counts.astype(np.float64), vocab)

    def bigram(self, prev: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``P(target | prev) = (count(prev, target) + P_unigram(target)) / (count(prev) + 1)``."""
        code = prev.astype(np.int64) * self.vocab + target
        at = np.clip(np.searchsorted(self.pairs, code), 0, max(len(self.pairs) - 1, 0))
        found = self.pairs[at] == code if len(self.pairs) else np.zeros(len(code), bool)
        joint = np.where(found, self.counts[at] if len(self.counts) else 0.0, 0.0)
        return (joint + self.unigram[target]) / (self.row_total[prev] + 1.0)

    def score(
        self, prev: np.ndarray, target: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per model: (probability of each target, the model's guess of each target)."""
        return {
            "unigram": (self.unigram[target], np.full(len(target), int(self.unigram.argmax()))),
            "bigram": (self.bigram(prev, target), self.guess[prev]),
        }


@register(
    "task",
    "text_corpus",
    paper=WANG,
    summary="byte-level English (the stdlib's pydoc help topics); id = held-out topics, "
    "ood = held-out stdlib source",
    params=TextCorpusParams,
    caps=Capabilities(),
)
class TextCorpus(StdlibLM):
    """Next-byte prediction on the help topics; see the module docstring for the
    splits and baselines.

    Paper: Wang et al., "What Language Model Architecture and Pretraining Objective Work
    Best for Zero-Shot Generalization?" (2022).
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")

    params: TextCorpusParams  # type: ignore[assignment]

    def __init__(self, params: TextCorpusParams, seed: int = 0) -> None:
        Task.__init__(self, params, seed)
        self.root = str(Path(params.root) if params.root else stdlib_root())
        if not Path(self.root).is_dir():
            raise ValueError(f"root='{self.root}' is not a folder")
        self._fitted: TokenModels | None = None
        self._codec = None
        self._tokens = {}

    def _source(self, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """The standard-library modules of ``split`` (``stdlib_lm``'s module split with
        ``val_fraction = ood_fraction`` and no test split)."""
        return split_stream(self.root, split, self.params.ood_fraction, 0.0)

    def stream(self, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """The byte stream of ``split`` (``train``, ``id``, ``ood``) and the names of its
        topics (``topic:NAME``) and modules (their paths)."""
        p = self.params
        if split == "ood":
            data, names = self._source("id")
        else:
            data, topic_names = topic_stream(split, p.val_fraction)
            names = tuple(f"topic:{n}" for n in topic_names)
            if split == "train" and p.source:
                code, paths = self._source("train")
                data, names = np.concatenate([data, code]), names + paths
        if len(data) < p.seq_len + 1:
            raise ValueError(
                f"split '{split}' holds {len(data)} bytes, fewer than seq_len + 1 = "
                f"{p.seq_len + 1}; lower seq_len or raise the split's fraction"
            )
        return data, names

    # ------------------------------------------------------------ baselines
    def token_models(self) -> TokenModels:
        """Next-token ``unigram`` and ``bigram`` models fitted on the training stream
        (its bytes, or its subword ids; see the module docstring for the smoothing)."""
        if self._fitted is None:
            self._fitted = TokenModels.fit(self.tokens("train"), self.model_io()["vocab_size"])
        return self._fitted

    def trivial_baselines(self, batches: list[Batch]) -> dict[str, dict[str, float]]:
        """``unigram`` and ``bigram`` scored on ``batches`` at their scored positions
        (``loss_mask``): ``bits_per_byte`` (bits of the scored tokens over the bytes they
        stand for) and ``accuracy``."""
        models = self.token_models()
        totals = {"unigram": [0.0, 0], "bigram": [0.0, 0]}
        n_bytes = count = 0
        for batch in batches:
            scored = batch.loss_mask.reshape(-1).numpy()  # all of the task's own windows
            prev = batch.inputs.reshape(-1).numpy()[scored]
            target = batch.targets.reshape(-1).numpy()[scored]
            sizes = batch.extras.get("target_bytes")
            n_bytes += (
                int(sizes.reshape(-1).numpy()[scored].sum()) if sizes is not None else target.size
            )
            count += target.size
            for name, (p, guess) in models.score(prev, target).items():
                totals[name][0] += float(-np.log2(p).sum())
                totals[name][1] += int((guess == target).sum())
        return {
            name: {"bits_per_byte": bits / max(n_bytes, 1), "accuracy": right / max(count, 1)}
            for name, (bits, right) in totals.items()
        }

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``bits_per_byte`` and ``accuracy`` of the model (:meth:`StdlibLM.score`) and
        the ``unigram`` and ``bigram`` ``baselines`` on the same windows."""
        metrics = super().score(outputs, batches)
        metrics["baselines"] = self.trivial_baselines(batches)
        return metrics

    def corpus_info(self) -> dict[str, dict[str, int]]:
        """Topics or modules and bytes per split (to check two runs saw the same corpus)."""
        out = {}
        for split in ("train", "id", "ood"):
            data, names = self.stream(split)
            out[split] = {"documents": len(names), "bytes": len(data)}
        return out
