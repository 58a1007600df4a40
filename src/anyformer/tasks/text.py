"""Byte-level language modelling on the Python standard library's source (no download).

The corpus is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (the running
interpreter's standard library; ``site-packages`` and ``__pycache__`` excluded). A
*module* is one file, named by its path relative to that folder (``json/decoder.py``).

Splits are by module, so no file contributes to two of them:

- the **test suites** — modules with a folder named ``test``, ``tests`` or
  ``idle_test`` in their path (``test/test_json/test_decode.py``, ``lib2to3/tests/...``)
  — form the ``ood`` split: the same language, but unittest code rather than library code;
- every other module goes to ``train``, ``id`` (validation) or ``test`` by a
  deterministic hash of its path: ``b = sha256(path) mod 10000``; ``id`` when
  ``b < val_fraction * 10000``, ``test`` when below ``(val_fraction + test_fraction) *
  10000``, else ``train``. Membership depends only on the path (not on the seed or the
  Python version), so every run holds out the same modules. ``test`` is evaluated only
  with ``report_test: true`` (keep it for final numbers).

Each split's modules, sorted by path, are concatenated into one byte stream with a
``0`` byte (which never occurs in Python source) after each module. A training example
is a window of ``seq_len + 1`` bytes at an offset drawn from ``(seed, step)``; inputs are
its first ``seq_len`` bytes and targets the last ``seq_len`` (every position is scored).
An evaluation set of ``size`` windows takes evenly spaced offsets over the whole
split, so it covers every module of the split and is the same in every run.

Metrics: ``bits_per_byte`` (headline: the mean next-byte cross-entropy in bits),
``accuracy`` (top-1 next byte) and ``loss`` (nats per byte, from the objective).
The corpus differs between Python versions: compare numbers only between equal corpora
(:meth:`StdlibLM.corpus_info` gives the modules and bytes of every split).
"""

from __future__ import annotations

import functools
import hashlib
import math
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
)

#: Folder names that mark a module as test-suite code (the ``ood`` split).
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
#: The byte written after every module.
SEPARATOR = 0
HASH_BUCKETS = 10_000
#: Evaluation windows per batch.
EVAL_BATCH_ROWS = 64


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def module_paths(root: Path) -> tuple[str, ...]:
    """Relative POSIX paths of every ``.py`` module under ``root``, sorted (cached)."""
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if {"site-packages", "dist-packages", "__pycache__"} & set(rel.parts):
            continue
        if path.is_file():
            out.append(rel.as_posix())
    return tuple(sorted(out))


def path_bucket(path: str) -> int:
    """A deterministic bucket ``0 .. 9999`` of a module path."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little") % HASH_BUCKETS


def module_split(path: str, val_fraction: float, test_fraction: float) -> str:
    """``ood`` (test suites), ``id`` (validation), ``test`` or ``train`` for a module path."""
    if TEST_DIRS & set(path.split("/")[:-1]):
        return "ood"
    bucket = path_bucket(path)
    if bucket < round(val_fraction * HASH_BUCKETS):
        return "id"
    if bucket < round((val_fraction + test_fraction) * HASH_BUCKETS):
        return "test"
    return "train"


@functools.lru_cache(maxsize=16)
def split_stream(
    root: str, split: str, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The byte stream of ``split`` (``uint8``) and its module paths, cached per process."""
    paths = tuple(
        p for p in module_paths(Path(root)) if module_split(p, val_fraction, test_fraction) == split
    )
    parts = []
    for p in paths:
        parts.append((Path(root) / p).read_bytes())
        parts.append(bytes([SEPARATOR]))
    return np.frombuffer(b"".join(parts), dtype=np.uint8), paths


def documents(data: np.ndarray) -> list[bytes]:
    """The documents of a byte stream, each ended by the ``SEPARATOR`` byte."""
    ends = np.flatnonzero(data == SEPARATOR)
    starts = np.concatenate([[0], ends[:-1] + 1])
    raw = data.tobytes()
    return [raw[a:b] for a, b in zip(starts, ends)]


class StdlibLMParams(TokenizerFields):
    """Parameters of ``stdlib_lm``.

    - ``seq_len``: tokens per example (the model's ``max_len`` must cover it).
    - ``tokenizer``, ``vocab_size``, ``min_frequency``: UTF-8 bytes (default) or a
      subword tokenizer trained on the training split
      (:class:`~anyformer.tasks.tokenizer.TokenizerFields`).
    - ``val_fraction``, ``test_fraction``: shares of the non-test modules held out as
      the ``id`` (validation) and ``test`` splits, by path hash.
    - ``report_test``: also evaluate the ``test`` split (otherwise kept unseen).
    - ``root``: the folder to read instead of the interpreter's standard library (None).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    seq_len: int = Field(256, ge=1)
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    report_test: bool = False
    root: str | None = None

    @model_validator(mode="after")
    def _fractions(self) -> StdlibLMParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction={self.val_fraction} + test_fraction={self.test_fraction} "
                f"must be < 1 (the rest is the training set)"
            )
        return self


@register(
    "task",
    "stdlib_lm",
    paper=Paper("MatFormer: Nested Transformer for Elastic Inference", 2023, "Devvrit et al."),
    summary="byte-level LM on the Python standard library source, split by module; "
    "ood = the test suites",
    params=StdlibLMParams,
    caps=Capabilities(),
)
class StdlibLM(TrainedTokenizer, Task):
    """Next-byte prediction on Python source; see the module docstring for the splits.

    The paper is where the catalogue proposes this corpus (a character-level MatFormer
    LM); the task itself is a plain byte-level language model.
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "causal_lm"
    byte_level: ClassVar[bool] = True  # token ids are the bytes 0-255, no special tokens
    headline: ClassVar[str] = "bits_per_byte"
    higher_is_better: ClassVar[bool] = False

    params: StdlibLMParams

    def __init__(self, params: StdlibLMParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        if params.report_test:
            self.splits = ("id", "test", "ood")  # type: ignore[misc]
        self.root = str(Path(params.root) if params.root else stdlib_root())
        if not Path(self.root).is_dir():
            raise ValueError(f"root='{self.root}' is not a folder")
        self._codec: Codec | None = None
        self._tokens: dict[str, np.ndarray] = {}

    def stream(self, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """The byte stream and module paths of ``split`` (``train``, ``id``, ``test``, ``ood``)."""
        p = self.params
        data, paths = split_stream(self.root, split, p.val_fraction, p.test_fraction)
        if len(data) < p.seq_len + 1:
            raise ValueError(
                f"split '{split}' holds {len(data)} bytes, fewer than seq_len + 1 = "
                f"{p.seq_len + 1}; lower seq_len or raise the split's fraction"
            )
        return data, paths

    # ------------------------------------------------------------ tokenizer
    @property
    def subword(self) -> bool:
        return self.params.tokenizer != "bytes"

    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        train = self.stream("train")[0]
        return hashlib.sha256(train.tobytes()).hexdigest(), lambda: (
            d.decode("utf-8", errors="replace") for d in documents(train)
        )

    def forget_encodings(self) -> None:
        self._tokens.clear()

    def tokens(self, split: str) -> np.ndarray:
        """The token stream of ``split``: its bytes, or its documents' subword ids, each
        document followed by the separator."""
        if not self.subword:
            return self.stream(split)[0]
        if split not in self._tokens:
            data = self.stream(split)[0]
            ids = self.codec.encode_documents(documents(data))
            if len(ids) < self.params.seq_len + 1:
                raise ValueError(
                    f"split '{split}' holds {len(ids)} tokens, fewer than seq_len + 1 = "
                    f"{self.params.seq_len + 1}; lower seq_len"
                )
            self._tokens[split] = ids
        return self._tokens[split]

    def model_io(self) -> dict[str, Any]:
        vocab = self.params.vocab_size if self.subword else 256
        return {"vocab_size": vocab, "embed": "tokens", "head": "lm"}

    def max_seq_len(self) -> int:
        return self.params.seq_len

    def windows(self, data: np.ndarray, offsets: np.ndarray) -> Batch:
        """The batch of windows starting at ``offsets``; a subword batch carries each
        target token's length in bytes (``extras["target_bytes"]``) for bits per byte."""
        n = self.params.seq_len + 1
        rows = data[offsets[:, None] + np.arange(n)[None, :]].astype(np.int64)
        seq = torch.from_numpy(rows)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        batch = Batch(inputs, targets, torch.ones_like(inputs, dtype=torch.bool))
        if self.subword:
            batch.extras["target_bytes"] = torch.from_numpy(self.codec.token_bytes()[rows[:, 1:]])
        return batch

    def train_batch(self, step: int, batch_size: int) -> Batch:
        data = self.tokens("train")
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        offsets = rng.integers(0, len(data) - self.params.seq_len, size=batch_size)
        return self.windows(data, offsets)

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        data = self.tokens(split)
        last = len(data) - self.params.seq_len - 1
        offsets = np.unique(np.linspace(0, last, num=size).round().astype(np.int64))
        return [
            self.windows(data, offsets[i : i + EVAL_BATCH_ROWS])
            for i in range(0, len(offsets), EVAL_BATCH_ROWS)
        ]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``bits_per_byte`` and ``accuracy`` over the scored positions (``loss_mask``:
        every window position of the task's own batches; the masked positions of a
        corrupting objective's, e.g. ``mlm``). With a subword tokenizer the bits of the
        scored tokens are divided by the bytes they stand for (comparable across
        tokenizers), and ``bits_per_token`` and ``tokens_per_byte`` are added."""
        nats, correct, count, n_bytes = 0.0, 0, 0, 0
        for out, batch in zip(outputs, batches):
            scored = batch.loss_mask.reshape(-1)
            logits = out.reshape(-1, out.shape[-1]).float()[scored]
            targets = batch.targets.reshape(-1)[scored]
            nats += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
            sizes = batch.extras.get("target_bytes")
            n_bytes += (
                int(sizes.reshape(-1)[scored].sum()) if sizes is not None else targets.numel()
            )
        metrics = {
            "bits_per_byte": nats / max(n_bytes, 1) / math.log(2),
            "accuracy": correct / max(count, 1),
        }
        if self.subword:
            metrics["bits_per_token"] = nats / max(count, 1) / math.log(2)
            metrics["tokens_per_byte"] = count / max(n_bytes, 1)
        return metrics

    def corpus_info(self) -> dict[str, dict[str, int]]:
        """Modules and bytes per split (to check that two runs saw the same corpus)."""
        out = {}
        for split in ("train", "id", "test", "ood"):
            data, paths = split_stream(
                self.root, split, self.params.val_fraction, self.params.test_fraction
            )
            out[split] = {"modules": len(paths), "bytes": len(data)}
        return out
