"""Next-token modelling of functions, with their identifiers marked (``code_lm``).

Documents are the functions of :mod:`anyformer.tasks.code_corpus` (each one's whole
source, docstring included), split by module with ``stdlib_lm``'s rule
(:func:`~anyformer.tasks.text.module_split`: ``ood`` = the test suites), distinct
sources only. A row is one function after the separator: ``inputs`` the separator and
the function's first ``seq_len - 1`` tokens, ``targets`` the next token at each (the
separator after the last), padded at the end (``padding_mask``); every token of the
function is a target, whatever the tokenizer. Any tokenizer of :mod:`anyformer.tasks.tokenizer`; the headline is
``bits_per_byte`` (the summed cross-entropy over the scored targets in bits, over the
bytes those targets stand for), comparable across tokenizers, beside a ``unigram``
baseline (each token's add-one frequency in the training rows).

Identifiers (CodeT5's identifier-aware pretraining): Python's ``tokenize`` finds the
``NAME`` tokens that are not keywords; their byte spans are mapped to the tokenizer's
tokens by byte offsets (:func:`token_identifiers`), and each row carries
``extras["identifier"]`` (bool ``[B, T]``: the input token overlaps an identifier),
``extras["identifier_occurrence"]`` (``[B, T]``: 1 + the index of the occurrence it
belongs to, 0 elsewhere) and ``extras["identifier_name"]`` (``[B, T]``: 1 + the index of
its name in the row's order of first use, 0 elsewhere). The objectives
``identifier_tagging`` and ``masked_identifier`` (:mod:`anyformer.objectives.identifiers`)
read them.

Paper: CodeT5 (Wang et al., 2021).
"""

from __future__ import annotations

import io
import keyword
import math
import tokenize
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for, train_rows
from anyformer.tasks.code_corpus import library_functions
from anyformer.tasks.text import module_split
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
    texts_digest,
)

CODET5 = Paper(
    "CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code "
    "Understanding and Generation",
    2021,
    "Wang et al.",
)
#: Rows per evaluation batch.
EVAL_ROWS = 32
#: Data order seed (fixed: every run evaluates the same rows).
DATA_SEED = 0


def identifier_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start byte, end byte, name)`` of every ``NAME`` token of ``text`` that is not a
    keyword, in order (what tokenizes before an error, for text that does not)."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode("utf-8")))
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                (row, col), (_, end) = tok.start, tok.end
                line = lines[row - 1]
                a = starts[row - 1] + len(line[:col].encode("utf-8"))
                b = starts[row - 1] + len(line[:end].encode("utf-8"))
                out.append((a, b, tok.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def token_identifiers(
    codec: Codec, text: str
) -> tuple[list[int], list[bool], list[int], list[int]]:
    """``(ids, tag, occurrence, name)`` of ``text``: its token ids and, per token,
    whether it overlaps an identifier, 1 + the index of that occurrence (0: none) and 1 +
    the index of its name in order of first use (0: none). A token overlapping two
    occurrences (a subword joining ``a.b``) counts for the first."""
    ids = codec.encode(text)
    widths = codec.token_bytes()[np.asarray(ids, dtype=np.int64)] if ids else np.zeros(0)
    ends = np.cumsum(widths)
    starts = ends - widths
    spans = identifier_spans(text)
    names: dict[str, int] = {}
    tag, occ, name = [False] * len(ids), [0] * len(ids), [0] * len(ids)
    j = 0
    for i in range(len(ids)):
        while j < len(spans) and spans[j][1] <= starts[i]:
            j += 1
        if j < len(spans) and spans[j][0] < ends[i]:
            tag[i] = True
            occ[i] = j + 1
            name[i] = names.setdefault(spans[j][2], len(names) + 1)
    return ids, tag, occ, name


class CodeLMParams(TokenizerFields):
    """Parameters of ``code_lm``.

    - ``seq_len``: tokens of a row (a function's first ``seq_len`` tokens).
    - ``val_fraction``: share of library modules held out as ``id``.
    - ``root``: a library folder instead of this interpreter's standard library.
    - ``max_chars``: each function cut to its first ``max_chars`` characters before it is
      tokenized (``None``: whole). With ``seq_len`` large enough to hold them under every
      tokenizer, every tokenizer scores the same text, so their ``bits_per_byte`` compare
      over the same bytes (``seq_len`` alone cuts a row at a number of *tokens*, which
      covers more text under a subword tokenizer).
    - ``tokenizer`` (default ``bytes``), ``vocab_size``, ``min_frequency``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokenizer: Literal["bytes", "bpe", "unigram"] = "bytes"
    seq_len: int = Field(128, ge=4)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    root: str | None = None
    max_chars: int | None = Field(None, ge=1)


@register(
    "task",
    "code_lm",
    paper=CODET5,
    summary="next-token modelling of stdlib functions (split by module, any tokenizer, "
    "bits per byte beside a unigram model), identifiers marked for CodeT5's objectives",
    params=CodeLMParams,
    caps=Capabilities(),
)
class CodeLM(TrainedTokenizer, Task):
    """Functions as documents, identifiers marked; see the module docstring."""

    byte_level: ClassVar[bool] = True
    disjoint_splits: ClassVar[bool] = True
    headline: ClassVar[str] = "bits_per_byte"
    higher_is_better: ClassVar[bool] = False
    params: CodeLMParams

    def __init__(self, params: CodeLMParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._codec: Codec | None = None
        self._rows: dict[tuple[str, int], tuple[list[int], list[bool], list[int], list[int]]]
        self._rows = {}

    @cached_property
    def documents(self) -> dict[str, list[str]]:
        """Each split's function sources (cut to ``max_chars``) in a fixed shuffled order;
        a source that also occurs in an earlier split (train, id, ood) is left out."""
        p = self.params
        by_split: dict[str, list[str]] = {"train": [], "id": [], "ood": []}
        seen: set[str] = set()
        for f in library_functions(p.root):
            split = module_split(f.path, p.val_fraction, 0.0)
            if split in by_split:
                by_split[split].append(f.source[: p.max_chars])
        out = {}
        for split in ("train", "id", "ood"):
            docs = [d for d in dict.fromkeys(by_split[split]) if d not in seen]
            seen.update(docs)
            if not docs:
                raise ValueError(f"split '{split}' has no function")
            order = rng_for(DATA_SEED, SPLIT_IDS[split]).permutation(len(docs))
            out[split] = [docs[i] for i in order]
        return out

    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        train = self.documents["train"]
        return texts_digest(train), lambda: iter(train)

    def forget_encodings(self) -> None:
        self._rows.clear()

    def row(self, split: str, i: int) -> tuple[list[int], list[bool], list[int], list[int]]:
        """Document ``i`` of ``split`` as ``(separator + ids + separator, tag,
        occurrence, name)``, cut to ``seq_len + 1`` tokens (cached). The leading separator
        makes the function's first token a target too, so bits per byte cover all of its
        bytes under any tokenizer (not all but the first token's)."""
        if (split, i) not in self._rows:
            ids, tag, occ, name = token_identifiers(self.codec, self.documents[split][i])
            n, sep = self.params.seq_len + 1, self.codec.separator
            self._rows[(split, i)] = (
                [sep, *ids, sep][:n], [False, *tag, False][:n], [0, *occ, 0][:n],
                [0, *name, 0][:n],
            )  # fmt: skip
        return self._rows[(split, i)]

    def model_io(self) -> dict[str, Any]:
        vocab = self.params.vocab_size if self.params.tokenizer != "bytes" else 256
        return {"vocab_size": vocab, "embed": "tokens", "head": "lm"}

    def max_seq_len(self) -> int:
        return self.params.seq_len

    def _batch(self, split: str, index: list[int]) -> Batch:
        rows = [self.row(split, i) for i in index]
        width = max(len(r[0]) for r in rows) - 1
        shape = (len(rows), max(width, 1))
        inputs, targets = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
        real = torch.zeros(shape, dtype=torch.bool)
        tag = torch.zeros(shape, dtype=torch.bool)
        occ, name = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
        for r, (ids, t, o, m) in enumerate(rows):
            n = len(ids) - 1
            inputs[r, :n] = torch.tensor(ids[:-1])
            targets[r, :n] = torch.tensor(ids[1:])
            real[r, :n] = True
            tag[r, :n] = torch.tensor(t[:-1])
            occ[r, :n] = torch.tensor(o[:-1])
            name[r, :n] = torch.tensor(m[:-1])
        extras = {"identifier": tag, "identifier_occurrence": occ, "identifier_name": name,
                  "document": torch.tensor(index, dtype=torch.long)}  # fmt: skip
        return Batch(inputs, targets, real, padding_mask=real.clone(), extras=extras)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self._batch(
            "train", train_rows(self.seed, step, batch_size, len(self.documents["train"]))
        )

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        n = min(size, len(self.documents[split]))
        return [self._batch(split, list(range(i, min(i + EVAL_ROWS, n))))
                for i in range(0, n, EVAL_ROWS)]  # fmt: skip

    @cached_property
    def unigram(self) -> np.ndarray:
        """Add-one log2 probabilities of each id in the training rows (the baseline)."""
        counts = np.ones(self.model_io()["vocab_size"], dtype=np.float64)
        for i in range(len(self.documents["train"])):
            np.add.at(counts, np.asarray(self.row("train", i)[0][1:]), 1)
        return np.log2(counts / counts.sum())

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``bits_per_byte`` and ``bits_per_token`` of the logits on the scored targets,
        ``bytes_per_token``, and the ``unigram`` baseline's ``bits_per_byte`` (targets
        that are ids above the tokenizer's, an objective's sentinels, are left out). Outputs
        of two channels per token (a tagger trained by ``identifier_tagging``) are scored
        as tags instead: ``tag_accuracy`` and ``tag_f1`` (of the identifier class) over
        the real tokens, beside ``all_identifier``'s (every token tagged)."""
        if outputs and outputs[0].shape[-1] == 2:
            return self.tag_scores(outputs, batches)
        widths = torch.from_numpy(self.codec.token_bytes())
        bits, base, n_bytes, n_tokens = 0.0, 0.0, 0, 0
        for out, b in zip(outputs, batches):
            # a corrupting objective's reserved ids (sentinels) stand for no text
            mask = b.loss_mask.bool() & (b.targets < len(widths))
            logp = torch.log_softmax(out.float(), dim=-1)
            picked = logp.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)
            bits -= float(picked[mask].sum()) / math.log(2)
            targets = b.targets[mask]
            base -= float(self.unigram[targets.numpy()].sum())
            n_bytes += int(widths[targets].sum())
            n_tokens += int(mask.sum())
        return {
            "bits_per_byte": bits / max(n_bytes, 1),
            "bits_per_token": bits / max(n_tokens, 1),
            "bytes_per_token": n_bytes / max(n_tokens, 1),
            "tokens": n_tokens,
            "baselines": {"unigram": {"bits_per_byte": base / max(n_bytes, 1)}},
        }

    def tag_scores(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Identifier tags (argmax of two channels) against ``extras["identifier"]``."""
        from anyformer.tasks.code_defects import binary_f1

        pred = np.concatenate([o.argmax(-1)[b.loss_mask.bool()].numpy() == 1
                               for o, b in zip(outputs, batches)])  # fmt: skip
        truth = np.concatenate([b.extras["identifier"][b.loss_mask.bool()].numpy()
                                for b in batches])  # fmt: skip
        every = np.ones_like(truth)
        return {
            "tag_accuracy": float(np.mean(pred == truth)),
            "tag_f1": binary_f1(pred, truth),
            "tokens": int(truth.shape[0]),
            "baselines": {"all_identifier": {"tag_accuracy": float(np.mean(truth)),
                                             "tag_f1": binary_f1(every, truth)}},
        }  # fmt: skip
