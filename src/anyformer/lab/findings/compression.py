"""Findings about compressed Transformers: low-rank weights (Greenformers' Low-Rank
Transformer) against Linformer's sequence projection, by CPU forward time over sequence
lengths and by accuracy on ``digits``."""

from __future__ import annotations

import time
from typing import Any

import torch

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict
from anyformer.lab.findings.vision import _digits, learned_bar
from anyformer.registry import NoParams, Paper, register

GREENFORMERS = Paper(
    "Greenformers: Improving Computation and Memory Efficiency in Transformer Models via "
    "Low-Rank Approximation",
    2021,
    "Cahyawijaya",
)
#: the three models timed and trained: vanilla softmax, the Low-Rank Transformer, Linformer
MODELS = ("vanilla", "lrt", "linformer")


def lrt_ranks(d_model: int, n_layers: int, rank: int) -> dict[str, int]:
    """``model.factorized`` of a Low-Rank Transformer: every linear layer of the blocks
    (fused q/k/v, output projection, both FFN layers) at ``rank``."""
    parts = ("mixer.qkv", "mixer.out", "ffn.up", "ffn.down")
    return {f"blocks.{i}.{p}": rank for i in range(n_layers) for p in parts}


def timing_models(d_model: int, n_layers: int, max_len: int, rank: int, k: int) -> dict[str, Any]:
    """The three encoders timed (random weights; the time does not depend on them):
    ``d_model``, ``d_model / 64`` heads, GELU MLP of 4 d_model, learned positions, a
    10-class head; LRT at ``rank`` in every block linear layer, Linformer at ``k``."""
    from anyformer.model.transformer import build_model

    base = {"kind": "encoder", "vocab_size": 16, "d_model": d_model, "n_layers": n_layers,
            "n_heads": max(1, d_model // 64), "max_len": max_len, "position": "learned",
            "n_outputs": 10}  # fmt: skip
    specs = {
        "vanilla": base,
        "lrt": {**base, "factorized": lrt_ranks(d_model, n_layers, rank)},
        "linformer": {**base, "attention": {"name": "linformer", "k": k}},
    }
    torch.manual_seed(0)
    return {name: build_model(spec).eval() for name, spec in specs.items()}


def forward_ms_by_length(
    lengths: list[int],
    d_model: int = 256,
    n_layers: int = 2,
    rank: int = 64,
    k: int = 64,
    batch: int = 1,
    rounds: int = 3,
    reps: int = 2,
) -> dict[str, dict[int, float]]:
    """Mean CPU forward time in ms of each of :data:`MODELS` at each length, measured in
    one process, interleaved: after an untimed warm-up of every model at every length,
    each round times ``reps`` forwards of every model at every length, the models' order
    rotated by one each round (so a machine that slows down steadily adds the same time
    to each). On one thread (restored afterwards): a shared machine's other loads distort
    it less, and the claim is about CPU inference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _interleaved_ms(lengths, d_model, n_layers, rank, k, batch, rounds, reps)
    finally:
        torch.set_num_threads(threads)


def _interleaved_ms(
    lengths: list[int], d_model: int, n_layers: int, rank: int, k: int, batch: int,
    rounds: int, reps: int,
) -> dict[str, dict[int, float]]:  # fmt: skip
    models = timing_models(d_model, n_layers, max(lengths), rank, k)
    gen = torch.Generator().manual_seed(0)
    inputs = {n: torch.randint(0, 16, (batch, n), generator=gen) for n in lengths}
    total = {m: dict.fromkeys(lengths, 0.0) for m in MODELS}
    with torch.no_grad():
        for n in lengths:
            for m in MODELS:
                models[m](inputs[n])
        rounds = -(-rounds // len(MODELS)) * len(MODELS)
        for r in range(rounds):
            order = MODELS[r % 3 :] + MODELS[: r % 3]
            for n in lengths:
                for m in order:
                    start = time.perf_counter()
                    for _ in range(reps):
                        models[m](inputs[n])
                    total[m][n] += time.perf_counter() - start
    return {m: {n: 1000 * t / (rounds * reps) for n, t in by.items()} for m, by in total.items()}


@register(
    "finding",
    "lrt_short_linformer_long",
    paper=GREENFORMERS,
    summary="low-rank weights (LRT) are the faster choice for short sequences and Linformer "
    "for long ones, both near vanilla accuracy",
    params=NoParams,
)
class LRTShortLinformerLong(Finding):
    """Speed: three encoders of width 256 (4 heads, 2 layers, GELU MLP of 1024, random
    weights) — vanilla softmax attention, the Low-Rank Transformer (every linear layer of
    the blocks factorized at rank d/4 = 64, ``model.factorized``) and Linformer (keys and
    values projected along the sequence to k = 64) — timed forward at batch 1 and lengths
    64, 128, 256, 512, 1024 and 2048 in one process on one thread, interleaved
    (:func:`forward_ms_by_length`, 3 rounds of 2 forwards). Accuracy: the same three
    designs at width 64 (rank 16, k = 8 of 17 tokens) on ``digits`` read as 16 2x2
    patches and a CLS token, 400 steps, 2 seeds each.

    Holds when, at the shortest length, LRT is faster than both Linformer and vanilla,
    at the longest, Linformer is faster than both LRT and vanilla, and both LRT's and
    Linformer's mean ``id`` accuracy are at most ``cost`` (0.05) below vanilla's.
    Inconclusive when vanilla did not learn ``digits`` (below the logistic regression's
    accuracy minus 0.15 or the majority class plus 0.5): an accuracy cost against
    nothing says nothing. The crossover (the first length at which Linformer is faster
    than LRT) is reported, not checked; the paper places it near 512 tokens. Peak memory
    is not measured."""

    claim = (
        "The Low-Rank Transformer (weights factorized W ~ UV at rank d/4) is the more "
        "efficient choice for short sequences and Linformer (keys and values projected "
        "along the sequence) for long ones, both at close to vanilla accuracy."
    )
    cost = 0.05
    lengths = (64, 128, 256, 512, 1024, 2048)
    quick_lengths = (16, 64)

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        d, layers = 64, 2
        embedder = {"name": "patches", "patch_size": 2, "cls": True}
        model = {"kind": "encoder", "embedder": embedder, "position": "learned",
                 "d_model": d, "n_layers": layers, "n_heads": 4, "max_len": 17,
                 "head": "classify", "pool": "first"}  # fmt: skip
        base = _digits("lrt_short_linformer_long", model, quick)
        if quick:
            d, layers = base["model"]["d_model"], base["model"]["n_layers"]
        ranks = lrt_ranks(d, layers, d // 4)
        flow = "{" + ", ".join(f"{k}: {v}" for k, v in ranks.items()) + "}"
        seeds = 1 if quick else 2
        return {
            "lrt": Comparison(base, [("model.factorized", ["{}", flow])], seeds=seeds),
            "linformer": Comparison(
                base, [("model.attention", ["{name: linformer, k: 8}"])], seeds=seeds
            ),
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        lrt, lin = results["lrt"], results["linformer"]
        vanilla_label, lrt_label = (v.label for v in lrt.variants)
        lin_label = lin.variants[0].label
        acc = {
            "vanilla": lrt.mean(vanilla_label, "accuracy"),
            "lrt": lrt.mean(lrt_label, "accuracy"),
            "linformer": lin.mean(lin_label, "accuracy"),
        }
        bar = learned_bar(lrt, vanilla_label)
        quick = lrt.base.model.d_model < 64
        lengths = list(self.quick_lengths if quick else self.lengths)
        ms = (
            forward_ms_by_length(lengths, 32, 1, 8, 8, rounds=3, reps=1)
            if quick
            else forward_ms_by_length(lengths)
        )
        numbers = {f"{m} id accuracy": a for m, a in acc.items()}
        numbers["learned at"] = bar
        for m in MODELS:
            for n in lengths:
                numbers[f"{m} forward ms @ {n}"] = float(ms[m][n])
        for n in lengths:
            numbers[f"lrt / linformer time @ {n}"] = ms["lrt"][n] / ms["linformer"][n]
        short, long_ = lengths[0], lengths[-1]
        crossover = next((n for n in lengths if ms["linformer"][n] < ms["lrt"][n]), 0)
        numbers["crossover length (0: none)"] = float(crossover)
        fast_short = ms["lrt"][short] < min(ms["linformer"][short], ms["vanilla"][short])
        fast_long = ms["linformer"][long_] < min(ms["lrt"][long_], ms["vanilla"][long_])
        costs = {m: acc["vanilla"] - acc[m] for m in ("lrt", "linformer")}
        close = all(c <= self.cost for c in costs.values())
        ratios = ", ".join(
            f"{n}: {ms['lrt'][n] / ms['vanilla'][n]:.2f}/{ms['linformer'][n] / ms['vanilla'][n]:.2f}"
            for n in lengths
        )
        reason = (
            f"forward time / vanilla's (LRT/Linformer) by length {ratios}; at {short} LRT is "
            f"fastest: {fast_short}; at {long_} Linformer is fastest: {fast_long}; crossover "
            f"at {crossover or 'none'}; id accuracy vanilla {acc['vanilla']:.3f}, LRT "
            f"{acc['lrt']:.3f} ({-costs['lrt']:+.3f}), Linformer {acc['linformer']:.3f} "
            f"({-costs['linformer']:+.3f}; each needs >= -{self.cost})"
        )
        return Verdict.decide(
            fast_short and fast_long and close,
            numbers,
            reason,
            acc["vanilla"] >= bar,
            f"vanilla did not learn digits (id accuracy {acc['vanilla']:.3f}, needs >= {bar:.3f})",
        )


__all__ = ["LRTShortLinformerLong", "forward_ms_by_length", "lrt_ranks", "timing_models"]
