"""Docstring -> function retrieval on the standard library (``code_search``).

Pairs come from :mod:`anyformer.tasks.code_corpus`: every function with a docstring whose
first paragraph has at least ``min_query_chars`` characters. The **query** is that first
paragraph (whitespace collapsed); the **key** is the function without its docstring
(signature, then body), so the answer is not in the key. A query or key text seen
before (in training first, then ``id``, then ``ood``) is skipped, so no text is in two
splits.

Splits are by module with ``stdlib_lm``'s rule (:func:`~anyformer.tasks.text.module_split`):
training pairs from ``train`` modules, ``id`` from the held-out modules, ``ood`` from the
test suites (functions of ``test/`` with docstrings: the same language, another kind of
code and of docstring). With ``long_only`` every split keeps only functions longer than
``code_len`` tokens (SEA's setting: the code a truncating encoder cannot see whole).

Long keys (``long_code``): ``truncate`` keeps the first ``code_len`` tokens; ``split``
(SEA, split-encode-aggregate) cuts the function at line boundaries into blocks of at
most ``code_len`` tokens (a longer line is cut inside), up to ``max_blocks`` blocks, and
the key's embedding is the mean of its blocks' embeddings.

Batches: ``n`` queries, then the key rows (``extras["owner"]`` = the pair of each key
row), padded to ``max(query_len, code_len)`` with a ``padding_mask``; the model is an
encoder with a pooled ``embed`` head and the objective ``info_nce`` (in-batch negatives).
An evaluation set of ``size`` pairs is one pool: every query is ranked against every key
of the pool (:mod:`anyformer.tasks.retrieval`: ``mrr@10`` headline, ``mrr``,
``recall@1/5/10``), beside the lexical ``tfidf`` and ``bm25`` baselines on the same pool
(both read the key's text whole, with no length limit).

Papers: UniXcoder (Guo et al., 2022) for contrastive docstring-code search; SEA (Split,
Encode and Aggregate for Long Code Search) for ``long_code=split``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.code_corpus import CodeFunction, library_functions
from anyformer.tasks.retrieval import bm25_scores, ranks, retrieval_metrics, tfidf_scores
from anyformer.tasks.text import module_split
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
    texts_digest,
)

SEA = Paper("SEA: Split, Encode and Aggregate for Long Code Search", 2022, "Hu et al.")
#: Pairs per evaluation batch.
EVAL_PAIRS = 64
#: Data order seed (fixed: every run ranks the same pools).
DATA_SEED = 0


class CodeSearchParams(TokenizerFields):
    """Parameters of ``code_search``.

    - ``query_len``, ``code_len``: tokens of a query and of a key row (block).
    - ``long_code``: ``truncate`` or ``split`` (SEA); ``max_blocks``: blocks per key.
    - ``long_only``: keep only functions longer than ``code_len`` tokens.
    - ``min_query_chars``: shortest docstring paragraph kept as a query.
    - ``embed_dim``: the embedding size (``model.n_outputs``).
    - ``val_fraction``: share of library modules held out as ``id``.
    - ``root``: a library folder instead of this interpreter's standard library.
    - ``tokenizer`` (default ``bpe``), ``vocab_size`` (2048), ``min_frequency``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokenizer: Literal["bytes", "bpe", "unigram"] = "bpe"
    vocab_size: int = Field(2048, ge=257, le=65536)
    query_len: int = Field(32, ge=4)
    code_len: int = Field(128, ge=8)
    long_code: Literal["truncate", "split"] = "truncate"
    max_blocks: int = Field(4, ge=1, le=64)
    long_only: bool = False
    min_query_chars: int = Field(16, ge=1)
    embed_dim: int = Field(64, ge=2)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    root: str | None = None


def query_of(f: CodeFunction) -> str:
    """The first paragraph of the docstring, whitespace collapsed."""
    first = (f.docstring or "").strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def key_of(f: CodeFunction) -> str:
    """The function without its docstring: signature, then the indented body."""
    return f.signature + "\n" + textwrap.indent(f.body, "    ")


@register(
    "task",
    "code_search",
    paper=Paper(
        "UniXcoder: Unified Cross-Modal Pre-training for Code Representation", 2022, "Guo et al."
    ),
    summary="docstring -> function retrieval on the stdlib (bi-encoder, in-batch "
    "negatives); MRR@10 beside TF-IDF and BM25; ood = the test suites",
    params=CodeSearchParams,
    caps=Capabilities(),
)
class CodeSearch(TrainedTokenizer, Task):
    """Docstring-to-code retrieval; see the module docstring."""

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "info_nce"
    byte_level: ClassVar[bool] = True  # text in, text tokenizer
    headline: ClassVar[str] = "mrr@10"
    disjoint_splits: ClassVar[bool] = True  # by module, duplicates across splits dropped
    higher_is_better: ClassVar[bool] = True

    params: CodeSearchParams

    def __init__(self, params: CodeSearchParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._codec: Codec | None = None
        self._encoded: dict[str, list[tuple[int, list[int], list[list[int]]]]] = {}

    # ------------------------------------------------------------ data
    @cached_property
    def functions(self) -> tuple[CodeFunction, ...]:
        return library_functions(self.params.root)

    def _raw_pairs(self, split: str, seen_q: set[str], seen_k: set[str]) -> list[tuple[str, str]]:
        p = self.params
        out = []
        for f in self.functions:
            if f.docstring is None or module_split(f.path, p.val_fraction, 0.0) != split:
                continue
            q, k = query_of(f), key_of(f)
            if len(q) < p.min_query_chars or q in seen_q or k in seen_k:
                continue
            seen_q.add(q)
            seen_k.add(k)
            out.append((q, k))
        order = rng_for(DATA_SEED, SPLIT_IDS.get(split, 9)).permutation(len(out))
        return [out[i] for i in order]

    @cached_property
    def _pairs(self) -> dict[str, list[tuple[str, str]]]:
        """Pairs per split; a query or key already taken (by training first) is skipped,
        so no query or function text is in two splits."""
        seen_q: set[str] = set()
        seen_k: set[str] = set()
        return {s: self._raw_pairs(s, seen_q, seen_k) for s in ("train", "id", "ood")}

    # ------------------------------------------------------------ tokens
    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        train = self._pairs["train"]
        return texts_digest(t for pair in train for t in pair), lambda: (
            t for pair in train for t in pair
        )

    def forget_encodings(self) -> None:
        self._encoded.clear()

    def blocks(self, code: str) -> tuple[list[list[int]], int]:
        """The key rows of ``code`` and its length in tokens: its first ``code_len``
        tokens (``truncate``), or its line-aligned blocks (``split``: lines are packed
        into rows of at most ``code_len`` tokens; a longer line is cut into full rows),
        at most ``max_blocks``."""
        p = self.params
        ids = self.codec.encode(code)
        if p.long_code == "truncate":
            return [ids[: p.code_len] or [self.codec.separator]], len(ids)
        out: list[list[int]] = []
        current: list[int] = []
        for line in code.splitlines(keepends=True):
            piece = self.codec.encode(line)
            if current and len(current) + len(piece) > p.code_len:
                out.append(current)
                current = []
            while len(piece) > p.code_len:
                out.append(piece[: p.code_len])
                piece = piece[p.code_len :]
            current += piece
        if current:
            out.append(current)
        return out[: p.max_blocks] or [[self.codec.separator]], len(ids)

    def encoded(self, split: str) -> list[tuple[int, list[int], list[list[int]]]]:
        """``(pair index, query ids, key rows)`` of every pair of ``split`` in data order;
        with ``long_only`` only keys longer than ``code_len`` tokens."""
        if split not in self._encoded:
            p = self.params
            rows = []
            for i, (q, k) in enumerate(self._pairs[split]):
                blocks, n = self.blocks(k)
                if n > p.code_len or not p.long_only:
                    rows.append((i, self.codec.encode(q)[: p.query_len], blocks))
            if len(rows) < 2:
                raise ValueError(f"split '{split}' has {len(rows)} query-function pairs; need 2")
            self._encoded[split] = rows
        return self._encoded[split]

    # ------------------------------------------------------------ batches
    def model_io(self) -> dict[str, Any]:
        vocab = self.params.vocab_size if self.params.tokenizer != "bytes" else 256
        return {"kind": "encoder", "vocab_size": vocab, "embed": "tokens", "head": "embed",
                "n_outputs": self.params.embed_dim}  # fmt: skip

    def max_seq_len(self) -> int:
        return max(self.params.query_len, self.params.code_len)

    def _batch(self, items: list[tuple[int, list[int], list[list[int]]]], split: str) -> Batch:
        rows = [q or [self.codec.separator] for _, q, _ in items]
        owner = []
        for i, (_, _, blocks) in enumerate(items):
            rows += blocks
            owner += [i] * len(blocks)
        width = self.max_seq_len()
        inputs = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, ids in enumerate(rows):
            inputs[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = True
        n = len(rows)
        extras = {
            "owner": torch.tensor(owner, dtype=torch.long),
            "pair": torch.tensor([i for i, _, _ in items], dtype=torch.long),
            "split": torch.tensor(SPLIT_IDS[split]),
        }
        return Batch(inputs, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool),
                     padding_mask=mask, extras=extras)  # fmt: skip

    def train_batch(self, step: int, batch_size: int) -> Batch:
        items = self.encoded("train")
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        pick = rng.choice(len(items), size=min(batch_size, len(items)), replace=False)
        return self._batch([items[i] for i in pick], "train")

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 2:
            raise ValueError(f"eval size={size} must be >= 2 (a pool to rank)")
        items = self.encoded(split)[:size]
        return [
            self._batch(items[i : i + EVAL_PAIRS], split) for i in range(0, len(items), EVAL_PAIRS)
        ]

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Rank every query of the pool (all ``batches``) against every key of it."""
        from anyformer.objectives.contrastive import paired_embeddings

        qs, ks = zip(*(paired_embeddings(o, b) for o, b in zip(outputs, batches, strict=True)))
        q, k = torch.cat(qs), torch.cat(ks)
        metrics: dict[str, Any] = retrieval_metrics(ranks((q @ k.T).numpy()))
        metrics["pool"] = int(q.shape[0])
        metrics["baselines"] = self.lexical_baselines(batches)
        return metrics

    def lexical_baselines(self, batches: list[Batch]) -> dict[str, dict[str, float]]:
        """``tfidf`` and ``bm25`` on the pool of ``batches``: each pair's query text and
        its key's full text (no length limit)."""
        names = {v: k for k, v in SPLIT_IDS.items()}
        pool = [
            self._pairs[names[int(b.extras["split"])]][int(i)]
            for b in batches
            for i in b.extras["pair"]
        ]
        queries, keys = [q for q, _ in pool], [k for _, k in pool]
        return {
            "tfidf": retrieval_metrics(ranks(tfidf_scores(queries, keys))),
            "bm25": retrieval_metrics(ranks(bm25_scores(queries, keys))),
        }
