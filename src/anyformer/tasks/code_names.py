"""Method-name prediction in cloze form on the standard library (``method_name``).

Zecoler (Cui et al., 2022) casts code tasks into the cloze form of the pretraining and
predicts, among others, a method's name from its body with few or no labels. Here a
function of :mod:`anyformer.tasks.code_corpus`, without its docstring and rendered by
``ast.unparse`` (:func:`~anyformer.tasks.code_defects.normalized`), has its name
replaced by a blank (``def f(...)``; every use of the name in the body, as a variable or
an attribute, is blanked too, so a recursive call does not give it away), and the model
says the name's first word: the whole name for a dunder (``__init__``, ``__repr__``),
else its first ``_``- or camelCase-separated word, lower-cased, leading underscores
dropped (``_get_value`` and ``getValue`` are both ``get``). The classes are the
``n_classes`` most common first words among the training functions; only functions of
those classes are used (so the classes are the task, not an "other" bucket).

Few labels: ``train_functions`` keeps the first N training functions of a fixed
shuffled order (the data does not depend on the run's seed), the setting in which
prompt tuning of a frozen pretrained model is compared with fine-tuning
(:mod:`anyformer.lab.findings.code`). Splits by module
(:func:`~anyformer.tasks.text.module_split`, as ``code_lm`` with the same
``val_fraction``, so a model pretrained on ``code_lm`` never saw an ``id`` module):
``train`` and ``id`` from library modules, ``ood`` from the test suites; an evaluation
function whose code also occurs in training is dropped. Metrics: ``accuracy`` and
``macro_f1`` (mean one-vs-rest F1 over the classes), beside ``majority`` and
``bow_logreg`` (logistic regression on word, number and punctuation counts, unigrams and
bigrams) fitted on the same training functions. The model is an encoder with a
``classify`` head.

Paper: Zecoler, "Zero-Shot Code Representation Learning via Prompt Tuning" (Cui et
al., 2022). Zecoler also evaluates zero-shot transfer to another language (shell
scripts); that part is not built.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for, train_rows
from anyformer.tasks.code_corpus import CodeFunction, library_functions
from anyformer.tasks.code_defects import bow_logreg, normalized, pad
from anyformer.tasks.text import module_split
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
    texts_digest,
)

ZECOLER = Paper("Zero-Shot Code Representation Learning via Prompt Tuning", 2022, "Cui et al.")
#: The name a function's own name is replaced by.
BLANK = "f"
#: Examples per evaluation batch.
EVAL_ROWS = 64
#: Data order seed (fixed: every run sees the same functions).
DATA_SEED = 0
_WORD = re.compile(r"_|(?<=[a-z0-9])(?=[A-Z])")


def first_word(qualname: str) -> str:
    """The label of a function: a dunder name whole, else the first ``_``/camelCase word
    of its name (leading underscores dropped), lower-cased; ``""`` for a name of
    underscores only."""
    name = qualname.rsplit(".", 1)[-1]
    if len(name) > 4 and name.startswith("__") and name.endswith("__"):
        return name
    return _WORD.split(name.lstrip("_"))[0].lower()


class _Blank(ast.NodeTransformer):
    def __init__(self, name: str) -> None:
        self.name = name

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.name:
            node.id = BLANK
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr == self.name:
            node.attr = BLANK
        return node


def blanked(code: str, name: str) -> str | None:
    """``code`` (one function) with its name and every use of it as a variable or an
    attribute replaced by :data:`BLANK`, unparsed (None when it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return None
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    fn.name = BLANK
    try:
        return ast.unparse(_Blank(name).visit(tree)) + "\n"
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class NamedCode:
    """One example: the blanked function and its name's first word."""

    code: str
    word: str
    path: str
    qualname: str


class MethodNameParams(TokenizerFields):
    """Parameters of ``method_name``.

    - ``n_classes``: the most common first words among training functions that are the
      classes (functions of other words are not used).
    - ``train_functions``: training functions kept (the first of a fixed shuffled
      order); ``None`` = all.
    - ``eval_functions``: functions per evaluation split at most (``id``, ``ood``).
    - ``code_len``: tokens of the code the model reads (longer code is cut).
    - ``val_fraction``: share of library modules held out as ``id``.
    - ``root``: a library folder instead of this interpreter's standard library.
    - ``tokenizer`` (default ``bytes``, what a ``code_lm`` backbone reads), ``vocab_size``,
      ``min_frequency``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_classes: int = Field(5, ge=2, le=100)
    train_functions: int | None = Field(None, ge=2)
    eval_functions: int = Field(1000, ge=1)
    code_len: int = Field(256, ge=8)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    root: str | None = None


@register(
    "task",
    "method_name",
    paper=ZECOLER,
    summary="a stdlib function with its name blanked: the name's first word among the "
    "most common ones (cloze form, optionally few labels); beside majority and "
    "bag-of-words logistic regression",
    params=MethodNameParams,
    caps=Capabilities(),
)
class MethodName(TrainedTokenizer, Task):
    """Method-name prediction in cloze form; see the module docstring."""

    disjoint_splits: ClassVar[bool] = True
    byte_level: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    default_objective: ClassVar[str] = "causal_lm"  # cross-entropy of [B, classes] logits
    headline: ClassVar[str] = "accuracy"
    params: MethodNameParams

    def __init__(self, params: MethodNameParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._codec: Codec | None = None
        self._baselines: dict[str, Any] | None = None

    # ------------------------------------------------------------ data
    def split_functions(self, split: str) -> list[CodeFunction]:
        """The functions of ``split``'s modules in a fixed shuffled order."""
        p = self.params
        funcs = [f for f in library_functions(p.root)
                 if module_split(f.path, p.val_fraction, 0.0) == split]  # fmt: skip
        order = rng_for(DATA_SEED, SPLIT_IDS.get(split, 9)).permutation(len(funcs))
        return [funcs[int(i)] for i in order]

    @cached_property
    def labels(self) -> tuple[str, ...]:
        """The classes: the ``n_classes`` most common first words of the training
        split's functions (all of them, before ``train_functions`` cuts), ties by name."""
        counts = Counter(first_word(f.qualname) for f in self.split_functions("train"))
        ranked = sorted(((w, n) for w, n in counts.items() if w), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) < self.params.n_classes:
            raise ValueError(
                f"task.n_classes={self.params.n_classes}: the training functions have only "
                f"{len(ranked)} distinct first words"
            )
        return tuple(w for w, _ in ranked[: self.params.n_classes])

    def _examples(self, split: str, limit: int | None, skip: set[str]) -> list[NamedCode]:
        """Up to ``limit`` examples of the classes from ``split`` (in
        :meth:`split_functions`' order, distinct blanked codes not in ``skip``); only as
        many functions are parsed as it takes."""
        classes, out, seen = set(self.labels), [], set(skip)
        for f in self.split_functions(split):
            word = first_word(f.qualname)
            if word not in classes:
                continue
            code = normalized(f)
            text = None if code is None else blanked(code, f.qualname.rsplit(".", 1)[-1])
            if text is None or text in seen:
                continue
            seen.add(text)
            out.append(NamedCode(text, word, f.path, f.qualname))
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise ValueError(f"split '{split}' has no function of the classes {self.labels}")
        return out

    @cached_property
    def examples(self) -> dict[str, list[NamedCode]]:
        """Each split's examples: training cut to ``train_functions``, ``id`` and ``ood``
        to ``eval_functions``, an evaluation code that an earlier split holds left out."""
        p = self.params
        out = {"train": self._examples("train", p.train_functions, set())}
        seen = {e.code for e in out["train"]}
        for split in ("id", "ood"):
            out[split] = self._examples(split, p.eval_functions, seen)
            seen |= {e.code for e in out[split]}
        return out

    # ------------------------------------------------------------ tokens
    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        texts = [e.code for e in self.examples["train"]]
        return texts_digest(texts), lambda: iter(texts)

    def model_io(self) -> dict[str, Any]:
        vocab = self.params.vocab_size if self.params.tokenizer != "bytes" else 256
        return {"kind": "encoder", "vocab_size": vocab, "embed": "tokens",
                "head": "classify", "n_outputs": self.params.n_classes}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.params.code_len

    def _batch(self, split: str, index: list[int]) -> Batch:
        rows = self.examples[split]
        codes = [self.codec.encode(rows[i].code)[: self.params.code_len] for i in index]
        ids, mask = pad([c or [self.codec.separator] for c in codes])
        targets = torch.tensor([self.labels.index(rows[i].word) for i in index])
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
        return [self._batch(split, list(range(i, min(i + EVAL_ROWS, n))))
                for i in range(0, n, EVAL_ROWS)]  # fmt: skip

    # ------------------------------------------------------------ scoring
    def fitted_baselines(self) -> dict[str, Any]:
        """``majority`` (most common training class) and ``bow_logreg``, fitted on the
        training examples."""
        if self._baselines is None:
            train = self.examples["train"]
            y = np.array([self.labels.index(e.word) for e in train])
            model = bow_logreg()
            if len(set(y.tolist())) > 1:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit([e.code for e in train], y)
            else:
                model = None
            counts = np.bincount(y, minlength=self.params.n_classes)
            self._baselines = {"majority": int(counts.argmax()), "bow_logreg": model}
        return self._baselines

    def _baseline_predictions(self, batches: list[Batch]) -> dict[str, np.ndarray]:
        names = {v: k for k, v in SPLIT_IDS.items()}
        codes = [self.examples[names[int(b.extras["split"])]][int(i)].code
                 for b in batches for i in b.extras["example"]]  # fmt: skip
        fitted = self.fitted_baselines()
        majority = np.full(len(codes), fitted["majority"])
        logreg = fitted["bow_logreg"]
        return {"majority": majority,
                "bow_logreg": majority if logreg is None else np.asarray(logreg.predict(codes))}  # fmt: skip

    def _metrics(self, pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        f1s = []
        for c in range(self.params.n_classes):
            tp = int(np.sum((pred == c) & (labels == c)))
            denom = int(np.sum(pred == c)) + int(np.sum(labels == c))
            f1s.append(2 * tp / denom if denom else 0.0)
        return {"accuracy": float(np.mean(pred == labels)), "macro_f1": float(np.mean(f1s))}

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """``accuracy`` and ``macro_f1`` of the argmax of the logits, the accuracy per
        class (``by_class``), beside the baselines on the same examples."""
        labels = torch.cat([b.targets for b in batches]).numpy()
        pred = torch.cat([o.reshape(o.shape[0], -1).argmax(-1) for o in outputs]).numpy()
        out: dict[str, Any] = self._metrics(pred, labels)
        out["examples"] = int(labels.shape[0])
        out["by_class"] = {w: float(np.mean(pred[labels == c] == c))
                           for c, w in enumerate(self.labels) if np.any(labels == c)}  # fmt: skip
        out["baselines"] = {name: self._metrics(p, labels)
                            for name, p in self._baseline_predictions(batches).items()}  # fmt: skip
        return out
