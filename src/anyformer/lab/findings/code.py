"""Findings about Transformers on code (the standard-library code corpus).

The checks read ``code_search``'s ``mrr@10`` on the ``id`` split (held-out library
modules) and the size of its pool; a model counts as having learned the retrieval when
its ``mrr@10`` is at least ``LEARNED_FACTOR`` times that of a random ranking of the same
pool (:func:`chance_mrr10`).
"""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train
from anyformer.registry import NoParams, register
from anyformer.tasks.code_search import SEA
from anyformer.tasks.text import stdlib_root

#: a model learned the retrieval when its mrr@10 is this many times a random ranking's
LEARNED_FACTOR = 3.0


def chance_mrr10(pool: float) -> float:
    """``mrr@10`` of a uniformly random ranking of ``pool`` keys: ``sum_{r<=10} 1/r / pool``."""
    n = max(int(round(pool)), 1)
    return sum(1.0 / r for r in range(1, min(n, 10) + 1)) / n


def quick_library() -> str | None:
    """A small library folder for quick mode: the standard library's ``unittest``
    package (its own modules, and its test suite as ``ood``), when it has one."""
    folder = stdlib_root() / "unittest"
    return str(folder) if (folder / "test").is_dir() else None


@register(
    "finding",
    "split_encode_aggregate_long_code",
    paper=SEA,
    summary="for functions longer than the window, split-encode-aggregate (mean of line-"
    "aligned blocks) retrieves better than truncation",
    params=NoParams,
)
class SplitEncodeAggregateLongCode(Finding):
    """Two bi-encoders on ``code_search`` restricted to functions longer than the window
    (``long_only``: more than ``code_len`` = 64 BPE tokens; byte-level BPE of 2,048 ids),
    identical but for how a long function becomes its embedding: ``truncate`` (its first
    64 tokens) or ``split`` (SEA: line-aligned blocks of at most 64 tokens, up to 8, each
    encoded, embeddings averaged). Encoder of width 64, 2 layers, mean pooling into a
    64-d ``embed`` head, ``info_nce`` over in-batch negatives, 600 steps of 64 pairs, 2
    seeds; every query ranked against the whole ``id`` pool (held-out modules).
    Holds when ``split``'s mean ``mrr@10`` is at least ``lead`` (0.02) above
    ``truncate``'s. Inconclusive when neither model learned the retrieval (``mrr@10``
    below three times a random ranking's on the same pool)."""

    claim = (
        "For code longer than the encoder's window, splitting it into blocks, encoding "
        "each and aggregating their embeddings (SEA) retrieves it from its docstring "
        "better than truncating it to the window."
    )
    lead = 0.02

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 64}
        task: dict[str, Any] = {"name": "code_search", "long_only": True, "code_len": 64,
                                "query_len": 32, "max_blocks": 8}  # fmt: skip
        train = {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30,
                 "eval_size": 400, "threads": 1}  # fmt: skip
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
            task |= {"tokenizer": "bytes", "val_fraction": 0.3, "min_query_chars": 8}
            root = quick_library()
            if root is not None:
                task["root"] = root
            train = quick_train(lr=2e-3, threads=1)
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "split_encode_aggregate_long_code", "model": model, "task": task,
                "train": train}  # fmt: skip
        axes = [("task.long_code", ["truncate", "split"])]
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        truncate, split = (v.label for v in r.variants)
        numbers = {
            "truncate id mrr@10": r.mean(truncate, "mrr@10"),
            "split id mrr@10": r.mean(split, "mrr@10"),
            "truncate ood mrr@10": r.mean(truncate, "mrr@10", "ood"),
            "split ood mrr@10": r.mean(split, "mrr@10", "ood"),
            "bm25 id mrr@10": r.mean(truncate, "baselines.bm25.mrr@10"),
            "tfidf id mrr@10": r.mean(truncate, "baselines.tfidf.mrr@10"),
            "id pool": r.mean(truncate, "pool"),
        }
        numbers["chance id mrr@10"] = chance_mrr10(numbers["id pool"])
        lead = numbers["split id mrr@10"] - numbers["truncate id mrr@10"]
        best = max(numbers["split id mrr@10"], numbers["truncate id mrr@10"])
        bar = LEARNED_FACTOR * numbers["chance id mrr@10"]
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"split − truncate id mrr@10 {lead:+.3f} (needs >= {self.lead:+.2f}); BM25 "
            f"{numbers['bm25 id mrr@10']:.3f}, TF-IDF {numbers['tfidf id mrr@10']:.3f} on "
            f"the same pool of {numbers['id pool']:.0f}",
            best >= bar,
            f"neither model learned the retrieval (best id mrr@10 {best:.3f}, needs >= "
            f"{bar:.3f}, three times a random ranking's)",
        )
