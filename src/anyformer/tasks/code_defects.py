"""Synthesized bugs on the standard library: ``defect_detection`` and ``repair``.

Both tasks read the functions of :mod:`anyformer.tasks.code_corpus` without their
docstrings (:func:`~anyformer.tasks.code_search.key_of`) and mutate them with
:func:`~anyformer.tasks.code_mutations.mutate`. Every function is rendered by
``ast.unparse`` (the original too), so an original and its mutant differ only in the
mutation, never in formatting or comments a model could read the label from. For each
function the mutation kind is chosen by a generator seeded with the function's path and
qualified name (the kinds are tried in that seeded order; the first that applies is
taken), so the data does not depend on the run's seed. Every example records its
mutation (kind, line, detail).

Splits are by module (:func:`~anyformer.tasks.text.module_split`, as ``code_search``):
``train`` and ``id`` from library modules, ``ood`` from the test suites; an evaluation
example whose code also occurs in training (a duplicated helper) is dropped, so no
evaluation row is ever trained on. ``max_functions`` caps the functions per split (the
first in a fixed shuffled order), which bounds the time mutating the library takes;
the pairs are cached on disk (verified JSON, keyed by the library's files and the
settings), so a second run reads them.

``defect_detection`` (AIBugHunter's setting, with its CWE-type classification replaced
by the five mutation kinds): each function gives two examples, the original (``none``)
and its mutant, so the classes are balanced 50/50. ``output: buggy`` classifies buggy
or not (``accuracy``, ``f1`` of the buggy class); ``output: kind`` classifies among
``none`` and the five kinds (``accuracy``, ``macro_f1``, and ``f1`` of "buggy" read off
the kind: any kind but ``none``). With ``verify: true`` only functions whose doctests
pass and whose mutant fails them (run in the sandbox,
:func:`~anyformer.tasks.code_mutations.behaviour_changed`) are kept: slow, and only the
few functions with doctests remain. Baselines on the same examples: ``majority`` (the
most common training class) and ``bow_logreg`` (logistic regression on counts of the
code's words, numbers and punctuation, unigrams and bigrams, scikit-learn), fitted on
the training examples. The model is an encoder with a ``classify`` head.

``repair`` (MultiMend's setting): an encoder–decoder reads the mutant and writes the
original. With ``context: true`` the source starts with a short context, a simple
stand-in for MultiMend's context augmentation (which retrieves relevant lines by
embedding them; here the context is fixed): the enclosing class's name and the
signatures of the module's
other top-level functions, the whole lines that fit in ``context_len`` tokens, then
the separator. Only pairs whose mutation lies within the first ``code_len`` tokens
are used (:attr:`Repair.usable`): a mutant cut before its change is its original, and
copying it would count as a repair. Metrics are teacher-forced:
``exact_match`` (every target token is the argmax; under teacher forcing this is exactly
the case where greedy decoding reproduces the original), ``token_accuracy``, and
``edit_distance``, the normalized token Levenshtein distance of the teacher-forced
argmax sequence to the original (a proxy for the greedy output's distance, not the
same). Baselines: ``copy`` (the buggy input as the answer: its edit distance to the
original, and its exact match, 0 by construction).

Papers: AIBugHunter (Fu et al., 2023) for detection with bug-type classification;
MultiMend (Gharibi et al., 2025) for repair with context augmentation.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for, train_rows
from anyformer.tasks.cache import cache_dir, read_verified, write_verified
from anyformer.tasks.cache import key_of as cache_key
from anyformer.tasks.code_corpus import CodeFunction, corpus_key, library_functions
from anyformer.tasks.code_mutations import KINDS, behaviour_changed, mutate
from anyformer.tasks.code_search import key_of
from anyformer.tasks.text import module_paths, module_split, stdlib_root
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
    texts_digest,
)

AIBUGHUNTER = Paper(
    "AIBugHunter: A Practical Tool for Predicting, Classifying and Repairing Software "
    "Vulnerabilities",
    2023,
    "Fu et al.",
)
MULTIMEND = Paper(
    "MultiMend: Multilingual Program Repair with Context Augmentation and Multi-Hunk "
    "Patch Generation",
    2025,
    "Gharibi et al.",
)
#: The classes of ``output: kind``: no bug, then the mutation kinds.
LABELS = ("none", *KINDS)
#: Examples per evaluation batch.
EVAL_ROWS = 64
#: Data order seed (fixed: every run sees the same examples).
DATA_SEED = 0
#: Bumped when what :meth:`CodeDefectTask.pairs` computes changes (part of the cache key).
PAIRS_VERSION = 1


@dataclass(frozen=True)
class CodeExample:
    """One example: the code the model reads, the original it came from, its label."""

    code: str  # what the model reads (the mutant, or the original itself)
    original: str  # the original function, normalized by ast.unparse
    kind: str  # "none" or the mutation kind
    lineno: int  # line of the change in the original (0 for "none")
    detail: str  # the mutation's description ("" for "none")
    path: str
    qualname: str

    @property
    def buggy(self) -> bool:
        return self.kind != "none"


def normalized(f: CodeFunction) -> str | None:
    """The function without its docstring, as ``ast.unparse`` writes it (None when the
    text does not parse alone, e.g. a body that was only a docstring)."""
    try:
        return ast.unparse(ast.parse(key_of(f))) + "\n"
    except (SyntaxError, ValueError, RecursionError):
        return None


def mutant_of(f: CodeFunction, code: str) -> CodeExample | None:
    """The mutant of one function: kinds tried in an order seeded by the function's path
    and qualified name, the first that applies taken (None when none applies)."""
    name = f"{f.path}:{f.qualname}"
    kinds = list(KINDS)
    random.Random(f"{DATA_SEED}:{name}").shuffle(kinds)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    for kind in kinds:
        try:
            m = mutate(code, kind, seed)
        except (SyntaxError, ValueError, RecursionError):
            return None
        if m is not None:
            return CodeExample(m.source, code, kind, m.lineno, m.detail, f.path, f.qualname)
    return None


class CodeDefectParams(TokenizerFields):
    """Fields shared by ``defect_detection`` and ``repair``.

    - ``code_len``: tokens of the code the model reads (longer code is cut).
    - ``max_functions``: functions per split (the first of a fixed shuffled order).
    - ``val_fraction``: share of library modules held out as ``id``.
    - ``root``: a library folder instead of this interpreter's standard library.
    - ``tokenizer`` (default ``bpe``), ``vocab_size`` (2048), ``min_frequency``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokenizer: Literal["bytes", "bpe", "unigram"] = "bpe"
    vocab_size: int = Field(2048, ge=257, le=65536)
    code_len: int = Field(256, ge=8)
    max_functions: int = Field(2000, ge=2)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    root: str | None = None


class CodeDefectTask(TrainedTokenizer, Task):
    """What both tasks share: functions by split, their mutants, the tokenizer."""

    disjoint_splits: ClassVar[bool] = True
    byte_level: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    params: CodeDefectParams

    def __init__(self, params: CodeDefectParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._codec: Codec | None = None

    # ------------------------------------------------------------ data
    @cached_property
    def functions(self) -> tuple[CodeFunction, ...]:
        return library_functions(self.params.root)

    def split_functions(self, split: str) -> list[CodeFunction]:
        """The functions of ``split``'s modules in a fixed shuffled order."""
        p = self.params
        out = [f for f in self.functions if module_split(f.path, p.val_fraction, 0.0) == split]
        order = rng_for(DATA_SEED, SPLIT_IDS.get(split, 9)).permutation(len(out))
        return [out[i] for i in order]

    def pairs(self, split: str) -> list[tuple[CodeFunction, CodeExample]]:
        """``(function, mutant)`` of up to ``max_functions`` functions of ``split`` (in
        :meth:`split_functions`' order, distinct normalized codes only) that a mutation
        applies to; only as many functions are read as it takes."""
        out, seen = [], set()
        for f in self.split_functions(split):
            code = normalized(f)
            if code is None or code in seen:
                continue
            seen.add(code)
            m = mutant_of(f, code)
            if m is not None and self.keep(f, m):
                out.append((f, m))
                if len(out) >= self.params.max_functions:
                    break
        return out

    def keep(self, f: CodeFunction, m: CodeExample) -> bool:
        """Whether the pair is used (every pair by default)."""
        return True

    def cached_pairs(self, split: str) -> list[tuple[CodeFunction, CodeExample]]:
        """:meth:`pairs`, read from the verified cache (:mod:`anyformer.tasks.cache`,
        keyed by the library's files, the split's settings and :data:`PAIRS_VERSION`)
        when an entry is there, else computed and cached."""
        p = self.params
        folder = Path(p.root) if p.root else stdlib_root()
        key = cache_key({"corpus": corpus_key(folder, module_paths(folder)), "split": split,
                      "task": type(self).__name__, "max": p.max_functions,
                      "val": p.val_fraction, "verify": getattr(p, "verify", False),
                      "v": PAIRS_VERSION})  # fmt: skip
        entry = cache_dir("code_defects") / f"{key}.json"
        text = read_verified(entry)
        by_name = {(f.path, f.qualname): f for f in self.functions}
        if text is not None:
            try:
                rows = [CodeExample(**r) for r in json.loads(text)]
                return [(by_name[(m.path, m.qualname)], m) for m in rows]
            except (ValueError, TypeError, KeyError):
                pass  # another layout: compute again
        pairs = self.pairs(split)
        write_verified(entry, json.dumps([dataclasses.asdict(m) for _, m in pairs]))
        return pairs

    @cached_property
    def _pairs(self) -> dict[str, list[tuple[CodeFunction, CodeExample]]]:
        out = {"train": self.cached_pairs("train")}
        trained = {m.original for _, m in out["train"]} | {m.code for _, m in out["train"]}
        for split in ("id", "ood"):
            kept = [
                (f, m) for f, m in self.cached_pairs(split) if not {m.original, m.code} & trained
            ]
            out[split] = kept
            trained |= {m.original for _, m in kept} | {m.code for _, m in kept}
        for split, kept in out.items():
            if not kept:
                raise ValueError(f"split '{split}' has no function a mutation applies to")
        return out

    # ------------------------------------------------------------ tokens
    def corpus_texts(self) -> list[str]:
        return [t for _, m in self._pairs["train"] for t in (m.original, m.code)]

    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        texts = self.corpus_texts()
        return texts_digest(texts), lambda: iter(texts)

    @property
    def vocab(self) -> int:
        return self.params.vocab_size if self.params.tokenizer != "bytes" else 256

    def ids(self, text: str, limit: int) -> list[int]:
        return self.codec.encode(text)[:limit] or [self.codec.separator]


def pad(rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows right-padded with 0 to ``width`` (default the longest), and the mask of real
    tokens."""
    width = width or max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def binary_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of the positive class (True): ``2 tp / (2 tp + fp + fn)`` (0 when there is no
    positive in either)."""
    tp = int(np.sum(pred & truth))
    denom = 2 * tp + int(np.sum(pred & ~truth)) + int(np.sum(~pred & truth))
    return 2 * tp / denom if denom else 0.0


def classification_metrics(
    pred: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, float]:
    """``accuracy`` and ``f1`` of the buggy class (any label but 0); with more than two
    classes also ``macro_f1`` (mean one-vs-rest F1 over the classes present in the
    labels or the predictions)."""
    out = {
        "accuracy": float(np.mean(pred == labels)),
        "f1": binary_f1(pred != 0, labels != 0),
    }
    if n_classes > 2:
        present = sorted(set(labels.tolist()) | set(pred.tolist()))
        out["macro_f1"] = float(np.mean([binary_f1(pred == c, labels == c) for c in present]))
    return out


def bow_logreg() -> Any:
    """An unfitted scikit-learn pipeline: counts of a code's words, numbers and
    punctuation marks (unigrams and bigrams, case kept, at most 20,000), then logistic
    regression; the bag-of-words baseline of the code classification tasks."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        CountVectorizer(token_pattern=r"[A-Za-z_]\w*|\d+|[^\sA-Za-z0-9_]",
                        ngram_range=(1, 2), lowercase=False, max_features=20000),
        LogisticRegression(max_iter=300),
    )  # fmt: skip


class DefectDetectionParams(CodeDefectParams):
    """Parameters of ``defect_detection`` (and :class:`CodeDefectParams`).

    - ``output``: ``buggy`` (2 classes) or ``kind`` (``none`` and the five kinds).
    - ``verify``: keep only mutants whose doctests show a change of behaviour (slow).
    """

    output: Literal["buggy", "kind"] = "buggy"
    verify: bool = False


@register(
    "task",
    "defect_detection",
    paper=AIBUGHUNTER,
    summary="stdlib functions against their synthesized-bug mutants (balanced): buggy or "
    "not, or the bug kind; beside majority and bag-of-words logistic regression",
    params=DefectDetectionParams,
    caps=Capabilities(),
)
class DefectDetection(CodeDefectTask):
    """Buggy-or-not (or bug kind) classification of functions; see the module docstring."""

    default_objective: ClassVar[str] = "causal_lm"  # cross-entropy of [B, classes] logits
    headline: ClassVar[str] = "accuracy"
    params: DefectDetectionParams

    def __init__(self, params: DefectDetectionParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._baselines: dict[str, Any] | None = None

    @property
    def n_classes(self) -> int:
        return 2 if self.params.output == "buggy" else len(LABELS)

    def keep(self, f: CodeFunction, m: CodeExample) -> bool:
        if not self.params.verify:
            return True
        if not f.doctests:
            return False
        return bool(behaviour_changed(m.original, m.code, f.module, f.doctests))

    @cached_property
    def examples(self) -> dict[str, list[CodeExample]]:
        """Each split's examples: every function's original, then its mutant."""
        out = {}
        for split, pairs in self._pairs.items():
            rows = []
            for f, m in pairs:
                rows.append(CodeExample(m.original, m.original, "none", 0, "", f.path, f.qualname))
                rows.append(m)
            out[split] = rows
        return out

    def label(self, e: CodeExample) -> int:
        if self.params.output == "buggy":
            return int(e.buggy)
        return LABELS.index(e.kind)

    def model_io(self) -> dict[str, Any]:
        return {"kind": "encoder", "vocab_size": self.vocab, "embed": "tokens",
                "head": "classify", "n_outputs": self.n_classes}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.params.code_len

    def _batch(self, split: str, index: list[int]) -> Batch:
        rows = self.examples[split]
        ids, mask = pad([self.ids(rows[i].code, self.params.code_len) for i in index])
        targets = torch.tensor([self.label(rows[i]) for i in index], dtype=torch.long)
        return Batch(ids, targets, torch.ones(len(index), dtype=torch.bool), padding_mask=mask,
                     extras={"example": torch.tensor(index, dtype=torch.long),
                             "split": torch.tensor(SPLIT_IDS[split])})  # fmt: skip

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self._batch(
            "train", train_rows(self.seed, step, batch_size, len(self.examples["train"]))
        )

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        n = min(size, len(self.examples[split]))
        # the first n in a fixed order (originals and mutants of the same functions)
        order = [int(i) for i in rng_for(DATA_SEED, 5, SPLIT_IDS[split]).permutation(n)]
        return [self._batch(split, order[i : i + EVAL_ROWS]) for i in range(0, n, EVAL_ROWS)]

    # ------------------------------------------------------------ baselines
    def fitted_baselines(self) -> dict[str, Any]:
        """``majority`` (most common training label) and ``bow_logreg`` (a scikit-learn
        pipeline: counts of words, numbers and punctuation marks, unigrams and bigrams,
        then logistic regression), fitted on the training examples."""
        if self._baselines is None:
            train = self.examples["train"]
            y = np.array([self.label(e) for e in train])
            model = bow_logreg()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit([e.code for e in train], y)
            counts = np.bincount(y, minlength=self.n_classes)
            self._baselines = {"majority": int(counts.argmax()), "bow_logreg": model}
        return self._baselines

    def baseline_predictions(self, batch: Batch) -> dict[str, np.ndarray]:
        """Each baseline's class per example of ``batch``."""
        names = {v: k for k, v in SPLIT_IDS.items()}
        rows = self.examples[names[int(batch.extras["split"])]]
        codes = [rows[int(i)].code for i in batch.extras["example"]]
        fitted = self.fitted_baselines()
        return {
            "majority": np.full(len(codes), fitted["majority"]),
            "bow_logreg": np.asarray(fitted["bow_logreg"].predict(codes)),
        }

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        """A baseline's answers as one-hot logits ``[B, n_classes]``."""
        return [
            torch.nn.functional.one_hot(
                torch.from_numpy(self.baseline_predictions(b)[name]).long(), self.n_classes
            ).float()
            for b in batches
        ]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``accuracy``, ``f1`` (buggy class) and with ``output: kind`` ``macro_f1`` of
        the argmax of the logits, beside the baselines on the same examples, and the
        accuracy per mutation kind (``by_kind``: the share of each kind's examples
        classified right)."""
        labels = torch.cat([b.targets for b in batches]).numpy()
        pred = torch.cat([o.reshape(o.shape[0], -1).argmax(-1) for o in outputs]).numpy()
        metrics: dict[str, Any] = classification_metrics(pred, labels, self.n_classes)
        metrics["examples"] = int(labels.shape[0])
        names = {v: k for k, v in SPLIT_IDS.items()}
        kinds = np.array([
            self.examples[names[int(b.extras["split"])]][int(i)].kind
            for b in batches for i in b.extras["example"]
        ])  # fmt: skip
        metrics["by_kind"] = {
            k: float(np.mean(pred[kinds == k] == labels[kinds == k]))
            for k in LABELS
            if np.any(kinds == k)
        }
        base: dict[str, list[np.ndarray]] = {}
        for b in batches:
            for name, p in self.baseline_predictions(b).items():
                base.setdefault(name, []).append(p)
        metrics["baselines"] = {
            name: classification_metrics(np.concatenate(ps), labels, self.n_classes)
            for name, ps in base.items()
        }
        return metrics


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance of two token sequences (insert, delete, substitute: 1 each)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def normalized_edit_distance(a: list[int], b: list[int]) -> float:
    """:func:`edit_distance` over the longer length (0 for two empty sequences)."""
    longest = max(len(a), len(b))
    return edit_distance(a, b) / longest if longest else 0.0


def context_of(f: CodeFunction, functions: tuple[CodeFunction, ...]) -> str:
    """MultiMend-style context of ``f``: its enclosing class (when a method) and the
    signatures of the other top-level functions of its module, one per line."""
    lines = []
    if "." in f.qualname and "<locals>" not in f.qualname:
        lines.append(f"# class {f.qualname.rsplit('.', 1)[0]}")
    lines += [
        "# " + " ".join(g.signature.split())
        for g in functions
        if g.path == f.path and "." not in g.qualname and g.qualname != f.qualname
    ]
    return "\n".join(lines) + "\n" if lines else ""


class RepairParams(CodeDefectParams):
    """Parameters of ``repair`` (and :class:`CodeDefectParams`).

    - ``context``: prepend the enclosing class and the module's other signatures.
    - ``context_len``: tokens of that context at most.
    """

    context: bool = False
    context_len: int = Field(64, ge=1)


@register(
    "task",
    "repair",
    paper=MULTIMEND,
    summary="encoder-decoder maps a synthesized-bug mutant of a stdlib function back to "
    "the original (optional class/module context); exact match and edit distance "
    "beside copying the input",
    params=RepairParams,
    caps=Capabilities(),
)
class Repair(CodeDefectTask):
    """Mutant -> original function; see the module docstring."""

    default_objective: ClassVar[str] = "causal_lm"
    headline: ClassVar[str] = "exact_match"
    params: RepairParams

    def model_io(self) -> dict[str, Any]:
        return {"kind": "encoder_decoder", "vocab_size": self.vocab, "embed": "tokens",
                "head": "lm"}  # fmt: skip

    def source_len(self) -> int:
        p = self.params
        return p.code_len + (p.context_len + 1 if p.context else 0) + 1

    def max_seq_len(self) -> int:
        return max(self.source_len(), self.params.code_len + 1)

    def source_ids(self, f: CodeFunction, m: CodeExample) -> list[int]:
        """With ``context``: the context's whole lines that fit in ``context_len`` tokens
        and the separator; then the mutant's tokens (cut to ``code_len``) and the
        separator."""
        p = self.params
        ids: list[int] = []
        if p.context:
            for line in context_of(f, self.functions).splitlines(keepends=True):
                piece = self.codec.encode(line)
                if len(ids) + len(piece) > p.context_len:
                    break
                ids += piece
            ids.append(self.codec.separator)
        return ids + self.codec.encode(m.code)[: p.code_len] + [self.codec.separator]

    def target_ids(self, m: CodeExample) -> list[int]:
        """The original's tokens, cut to ``code_len`` (the separator follows them)."""
        return self.codec.encode(m.original)[: self.params.code_len]

    @cached_property
    def usable(self) -> dict[str, list[int]]:
        """Each split's pairs (indices into its pairs) whose mutation falls inside the
        window: the mutant's first ``code_len`` tokens differ from the original's. A
        pair changed only past the cut would ask the model to copy its input, and copying
        would score an exact match; those pairs are left out (the tokenizer is still
        trained on every training pair)."""
        cut = self.params.code_len
        out = {}
        for split, pairs in self._pairs.items():
            out[split] = [
                i for i, (_, m) in enumerate(pairs)
                if self.codec.encode(m.code)[:cut] != self.codec.encode(m.original)[:cut]
            ]  # fmt: skip
            if not out[split]:
                raise ValueError(
                    f"split '{split}' has no mutant changed within code_len={cut} tokens"
                )
        return out

    def _batch(self, split: str, index: list[int]) -> Batch:
        """``extras['source']`` = the source ids; decoder ``inputs`` = ``sep original``,
        ``targets`` = ``original sep`` (the separator is BOS and EOS), every real target
        scored."""
        pairs = self._pairs[split]
        sep = self.codec.separator
        source, source_mask = pad([self.source_ids(*pairs[i]) for i in index])
        answers = [self.target_ids(pairs[i][1]) for i in index]
        inputs, mask = pad([[sep, *a] for a in answers])
        targets, _ = pad([[*a, sep] for a in answers])
        return Batch(inputs, targets, mask, padding_mask=mask,
                     extras={"source": source, "source_mask": source_mask,
                             "example": torch.tensor(index, dtype=torch.long),
                             "split": torch.tensor(SPLIT_IDS[split])})  # fmt: skip

    def train_batch(self, step: int, batch_size: int) -> Batch:
        usable = self.usable["train"]
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        pick = rng.choice(len(usable), size=min(batch_size, len(usable)), replace=False)
        return self._batch("train", [usable[int(i)] for i in pick])

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        usable = self.usable[split][:size]
        return [self._batch(split, usable[i : i + EVAL_ROWS])
                for i in range(0, len(usable), EVAL_ROWS)]  # fmt: skip

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Teacher-forced ``exact_match`` (all of an example's target tokens are the
        argmax), ``token_accuracy`` and ``edit_distance`` (normalized, of the argmax
        sequence up to the target's length), beside ``copy`` (the mutant's own tokens
        as the answer) on the same examples."""
        exact, right, count, dist, copy_dist, copy_exact = 0, 0, 0, [], [], 0
        names = {v: k for k, v in SPLIT_IDS.items()}
        for out, b in zip(outputs, batches):
            pred = out.argmax(-1)
            pairs = self._pairs[names[int(b.extras["split"])]]
            for r, i in enumerate(b.extras["example"].tolist()):
                n = int(b.loss_mask[r].sum())
                truth, guess = b.targets[r, :n].tolist(), pred[r, :n].tolist()
                hits = sum(x == y for x, y in zip(truth, guess))
                right, count = right + hits, count + n
                exact += hits == n
                dist.append(normalized_edit_distance(guess, truth))
                copy = self.codec.encode(pairs[i][1].code)[: self.params.code_len]
                copy_dist.append(normalized_edit_distance([*copy, truth[-1]], truth))
                copy_exact += [*copy, truth[-1]] == truth
        n_ex = len(dist)
        return {
            "exact_match": exact / max(n_ex, 1),
            "token_accuracy": right / max(count, 1),
            "edit_distance": float(np.mean(dist)) if dist else 0.0,
            "examples": n_ex,
            "baselines": {
                "copy": {
                    "exact_match": copy_exact / max(n_ex, 1),
                    "edit_distance": float(np.mean(copy_dist)) if copy_dist else 0.0,
                }
            },
        }
