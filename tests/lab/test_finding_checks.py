"""Every finding's ``check()`` on synthetic results: claims that must hold, must not hold,
and experiments that cannot decide (models that learned nothing).

The results have the structure ``compare`` produces (a :class:`CompareResult` per
comparison, with the variant labels the finding's own full-size comparisons give), and
metrics written in by hand, so a threshold that points the wrong way, a label that no
longer matches its comparison or a missing "did it learn?" condition fails here. The
checks that score trained checkpoints at other settings (loops, widths) or time the
models get those numbers from the case instead (``elastic``, ``latency``).

The cases are looked up for every finding in the registry: a new finding without
synthetic cases fails :func:`test_check_decides_synthetic_results`.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from anyformer import registry
from anyformer.lab.compare import CompareResult, make_variants
from anyformer.lab.findings import Verdict
from anyformer.lab.findings import compression as compression_findings
from anyformer.lab.findings import depth as depth_findings
from anyformer.lab.findings import fusion as fusion_findings
from anyformer.lab.findings import generalization as generalization_findings
from anyformer.lab.findings import quantization as quantization_findings
from anyformer.lab.findings.base import STATUSES, Finding
from anyformer.lab.findings.reproduce import (
    Reproduction,
    findings_markdown,
    verdict_status,
    write_finding_report,
)

HOLDS, NOT, UNDECIDED = STATUSES
Results = dict[str, CompareResult]


@dataclass
class Case:
    """Synthetic results for one finding and the verdict they must get."""

    name: str
    expect: str
    fill: Callable[[Results], None]
    #: ``{comparison key: {setting name: value}}`` for ``elastic_metric``
    elastic: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``{variant label: ms}`` for ``forward_latency_ms``
    latency: dict[str, float] = field(default_factory=dict)
    #: ``{model: {length: ms}}`` for ``forward_ms_by_length``
    timings: dict[str, dict[int, float]] = field(default_factory=dict)
    #: ``{attention: profile}`` for ``quantization_profile``
    profile: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per seed pair ``{A, B, ot, ot units, average: id accuracy}`` for ``fused_accuracies``
    fused: list[dict[str, float]] = field(default_factory=list)


@functools.cache
def _skeleton(name: str) -> Results:
    """The finding's full-size comparisons as results without metrics."""
    finding = registry.get("finding", name).cls()
    out = {}
    for key, comp in finding.comparisons(quick=False).items():
        variants = make_variants(comp.spec(), comp.axes, comp.match_params)
        summary: dict[str, Any] = {v.label: {"id": {}, "ood": {}} for v in variants}
        out[key] = CompareResult(Path("synthetic") / key, comp.spec(), comp.axes, variants, summary)
    return out


def put(result: CompareResult, label: str, metrics: dict[str, float], split: str = "id") -> None:
    """Write metrics as ``aggregate`` would for one seed."""
    assert label in result.summary, (label, list(result.summary))
    for key, value in metrics.items():
        result.summary[label][split][key] = {"mean": value, "ci95": 0.0, "values": [value], "n": 1}


def only(result: CompareResult) -> str:
    (variant,) = result.variants
    return variant.label


# --------------------------------------------------------------------------- ICL
def _ls_curve(k: int, d: int) -> float:
    """Noiseless least squares with k - 1 examples in d dimensions (min-norm below d)."""
    return max(0.0, 1.0 - (k - 1) / d)


def icl_tracks(last: float, mse: float = 0.4, covariate: float = 0.48, task: float = 0.42) -> Callable[[Results], None]:  # fmt: skip
    def fill(results: Results) -> None:
        r = results["main"]
        d = r.variants[0].spec.task.params["dims"]
        n = r.variants[0].spec.task.params["n_points"] or 2 * d + 1  # the task's default
        for label in ("ood=covariate", "ood=task"):
            metrics = {"mse": mse, "baselines.zero.mse": 1.0}
            for k in range(1, n + 1):
                metrics[f"by_k.{k}"] = 1.0 + (last - 1.0) * (k - 1) / (n - 1)
                metrics[f"baselines.least_squares.by_k.{k}"] = _ls_curve(k, d)
                metrics[f"baselines.gd_one_step.by_k.{k}"] = 1.0 - 0.6 * (k - 1) / (n - 1)
                metrics[f"baselines.zero.by_k.{k}"] = 1.0
            put(r, label, metrics)
        put(r, "ood=covariate", {"mse": 4.0 * covariate, "baselines.zero.mse": 4.0}, "ood")
        put(r, "ood=task", {"mse": 4.0 * task, "baselines.zero.mse": 4.0}, "ood")

    return fill


def lsa(over_gd: float, gap_gd: float = 0.0015, gap_ls: float = 0.35, mse: float = 0.5) -> Callable[[Results], None]:  # fmt: skip
    def fill(results: Results) -> None:
        r = results["main"]
        metrics = {"mse": mse, "baselines.gd_fixed_step.mse": 0.5, "baselines.zero.mse": 1.0,
                   "baselines.gd_fixed_step.gap": gap_gd, "baselines.least_squares.gap": gap_ls,
                   "baselines.gd_one_step.mse": 0.46, "baselines.least_squares.mse": 0.15}  # fmt: skip
        for k in range(1, r.variants[0].spec.task.params["n_points"] + 1):
            gd = 1.0 - 0.5 * (k - 1) / 19
            metrics[f"baselines.gd_fixed_step.by_k.{k}"] = gd
            metrics[f"by_k.{k}"] = gd * (1 + over_gd)
        put(r, only(r), metrics)

    return fill


def boolean(conj: float, parity: float, conj_majority: float = 0.59) -> Callable[[Results], None]:
    """``conj``/``parity``: model accuracies; the optimal learners score 0.88 and 0.9."""

    def fill(results: Results) -> None:
        c, p = results["conjunction"], results["parity"]
        put(c, only(c), {"accuracy": conj, "baselines.elimination.accuracy": 0.88,
                         "baselines.majority.accuracy": conj_majority,
                         "gap_to_optimal": 0.88 - conj})  # fmt: skip
        put(p, only(p), {"accuracy": parity, "baselines.gf2_elimination.accuracy": 0.9,
                         "baselines.majority.accuracy": 0.5, "gap_to_optimal": 0.9 - parity})  # fmt: skip

    return fill


def ar(ratio: float, model: float) -> Callable[[Results], None]:
    """Model error ``model`` at every position; zero 1.0, last value 1.9, oracle 0.4."""

    def fill(results: Results) -> None:
        r = results["main"]
        metrics = {"relative_to_least_squares": ratio, "mse": model, "baselines.least_squares.mse": 20.0,
                   "baselines.oracle.mse": 0.4}  # fmt: skip
        for k in range(3, r.variants[0].spec.task.params["n_points"] + 1):
            metrics |= {f"by_k.{k}": model, f"baselines.least_squares.by_k.{k}": model / ratio,
                        f"baselines.oracle.by_k.{k}": 0.4, f"baselines.zero.by_k.{k}": 1.0,
                        f"baselines.last_value.by_k.{k}": 1.9}  # fmt: skip
        put(r, only(r), metrics)

    return fill


# --------------------------------------------------------------------------- algorithmic
def hinting(none_ood: float, successor_ood: float, in_dist: float = 0.96) -> Callable[[Results], None]:  # fmt: skip
    def fill(results: Results) -> None:
        r = results["main"]
        for hint, ood in (("none", none_ood), ("successor", successor_ood), ("rank", 0.01)):
            put(r, f"hint={hint}", {"exact_match": in_dist})
            put(r, f"hint={hint}", {"exact_match": ood, "token_accuracy": 0.5 + ood / 2}, "ood")

    return fill


def recall(softmax: float, linear: float, delta: float) -> Callable[[Results], None]:
    def fill(results: Results) -> None:
        for name, acc in (("softmax", softmax), ("linear", linear), ("delta", delta)):
            put(results[name], f"name={name}", {"accuracy": acc, "chance": 1 / 16})
            put(results[name], f"name={name}", {"accuracy": acc / 2, "chance": 1 / 16}, "ood")

    return fill


def search(
    acc: dict[tuple[int, int], list[float]], chance: float | None = None
) -> Callable[[Results], None]:
    """``acc[(vertices, width)]``: exact match per lookahead 1, 2, ...; ``chance``: the
    task's reported chance baseline (absent in results from before it was reported)."""

    def fill(results: Results) -> None:
        r = results["main"]
        for (n, width), per in acc.items():
            label = f"min_vertices={n},max_vertices={n},d_model={width}"
            metrics = {f"by_distance.{k}": a for k, a in enumerate(per, 1)}
            if chance is not None:
                metrics["baselines.chance.exact_match"] = chance
            put(r, label, metrics | {"exact_match": sum(per) / len(per)})
            put(r, label, {"exact_match": 0.05}, "ood")

    return fill


def search_sizes(small: list[float], large: list[float], wide_large: list[float] | None = None) -> Callable[[Results], None]:  # fmt: skip
    return search({(6, 32): small, (6, 96): small, (12, 32): large, (12, 96): wide_large or large})


#: 0.65 on small graphs at lookaheads 1-2, 0.3 on large ones
HALF_LEARNED = {
    (6, 32): [0.8, 0.5],
    (6, 96): [0.8, 0.5],
    (12, 32): [0.4, 0.2, 0.1, 0.1, 0.1],
    (12, 96): [0.4, 0.2, 0.1, 0.1, 0.1],
}


# --------------------------------------------------------------------------- generalization
POSITIONS = ("none", "t5_bias", "sinusoidal", "rope", "alibi")


def nope(ood: dict[str, float], in_dist: dict[str, float] | None = None) -> Callable[[Results], None]:  # fmt: skip
    def fill(results: Results) -> None:
        r = results["main"]
        for p in POSITIONS:
            put(r, f"position={p}", {"token_accuracy": (in_dist or {}).get(p, 0.99)})
            put(r, f"position={p}", {"token_accuracy": ood[p], "exact_match": ood[p] / 4}, "ood")

    return fill


def addition(plain: list[float], reversed_: list[float]) -> Callable[[Results], None]:
    def fill(results: Results) -> None:
        r = results["main"]
        for fmt, values in (("plain", plain), ("reversed_answer", reversed_)):
            for steps, em in zip(("300", "800", "2000"), values):
                put(r, f"format={fmt},steps={steps}", {"exact_match": em})

    return fill


def wide_deep(wide: float, deep: float) -> Callable[[Results], None]:
    def fill(results: Results) -> None:
        r = results["main"]
        put(r, "n_layers=1,n_heads=8", {"exact_match": wide})
        put(r, "n_layers=4,n_heads=2", {"exact_match": deep})

    return fill


WIDE_DEEP = ("n_layers=1,n_heads=8", "n_layers=4,n_heads=2")


# --------------------------------------------------------------------------- depth and width
def icl_mse(mse: dict[str, float], zero: float = 1.04) -> Callable[[Results], None]:
    """``mse[comparison key]`` for each one-variant comparison."""

    def fill(results: Results) -> None:
        for key, value in mse.items():
            r = results[key]
            put(r, only(r), {"mse": value, "baselines.zero.mse": zero,
                             "baselines.least_squares.mse": 0.28})  # fmt: skip

    return fill


def loops(values: list[float]) -> dict[str, float]:
    """Looped model's mse at 1..4 and 8 loops."""
    return {f"loops={t}": v for t, v in zip((1, 2, 3, 4, 8), values)}


def algo_curves(looped: float, algo: float) -> dict[str, dict[str, float]]:
    return {
        "looped": {f"loops={t}": looped * (1 + 0.5 / t) for t in range(1, 5)},
        "algoformer": {f"loops={t}": algo * (1 + 1 / t) for t in (1, 2, 3, 4, 8)}
        | {"loops=4": algo},
    }


def matformer(independent: list[float]) -> Callable[[Results], None]:
    """Independent validation losses at widths 1/8, 1/4, 1/2, 1."""

    def fill(results: Results) -> None:
        r = results["independent"]
        for mult, loss in zip(("0.5", "1", "2", "4"), independent):
            put(r, f"mult={mult}", {"loss": loss})
        put(results["matformer"], only(results["matformer"]), {"loss": independent[-1]})

    return fill


def nested(independent: list[float], over: list[float]) -> dict[str, dict[str, float]]:
    widths = ("0.125", "0.25", "0.5", "1")
    return {"matformer": {f"width={w}": i * (1 + o) for w, i, o in zip(widths, independent, over)}}


SEPARATE = [2.3, 2.1, 1.95, 1.8]  # widths 0.5 nats apart
PUBLISHED_MATFORMER = [1.8541, 1.8334, 1.7944, 1.8100]  # the last full run: 0.044 nats


# --------------------------------------------------------------------------- vision (digits)
def digits(accuracy: dict[str, float], logreg: float = 0.97, majority: float = 0.11,
           cost: dict[str, dict[str, float]] | None = None,
           params: dict[str, int] | None = None) -> Callable[[Results], None]:  # fmt: skip
    """``accuracy[label]`` on id (and 0.1 less on ood) beside the digits baselines;
    ``cost`` and ``params`` replace the comparison's cost columns and parameter counts."""

    def fill(results: Results) -> None:
        r = results["main"]
        for label, acc in accuracy.items():
            base = {"baselines.logreg.accuracy": logreg, "baselines.majority.accuracy": majority}
            put(r, label, {"accuracy": acc, **base})
            put(r, label, {"accuracy": acc - 0.1, **base}, "ood")
        r.cost = copy.deepcopy(cost or {})
        for v in r.variants:
            v.params = (params or {}).get(v.label, v.params)

    return fill


CONV = ("embedder=patches(patch_size=2;cls=True)", "embedder=conv_stem(kernel=3;stride=2;cls=True)")
ILLAMA = ("kind=encoder", "kind=decoder")
POOL = ("attention=softmax", "attention=pooling")
POOL_COST = {POOL[0]: {"params": 68000.0, "flops_per_token": 300000.0},
             POOL[1]: {"params": 51000.0, "flops_per_token": 200000.0}}  # fmt: skip


PATCHOUT = (
    "embedder=spectrogram_patches(patch_time=4;patch_freq=4;cls=True;positions=time_freq)",
    "embedder=spectrogram_patches(patch_time=4;patch_freq=4;cls=True;positions=time_freq;"
    "patchout=unstructured;patchout_tokens=32)",
)


def tones(accuracy: tuple[float, float], rates: tuple[float, float],
          majority: float = 0.17) -> Callable[[Results], None]:  # fmt: skip
    """``id`` accuracy and interleaved training rate without and with patchout."""

    def fill(results: Results) -> None:
        r = results["main"]
        base = {"baselines.logreg.accuracy": 0.7, "baselines.majority.accuracy": majority}
        for label, acc in zip(PATCHOUT, accuracy):
            put(r, label, {"accuracy": acc, **base})
            put(r, label, {"accuracy": acc - 0.2, **base}, "ood")
        r.cost = {label: {"tokens_per_s": rate} for label, rate in zip(PATCHOUT, rates)}

    return fill


# --------------------------------------------------------------------------- Greenformers
def lrt_linformer(vanilla: float, lrt: float, linformer: float, logreg: float = 0.95,
                  majority: float = 0.1) -> Callable[[Results], None]:  # fmt: skip
    """``id`` accuracy on digits of vanilla and LRT (comparison ``lrt``) and Linformer."""

    def fill(results: Results) -> None:
        base = {"baselines.logreg.accuracy": logreg, "baselines.majority.accuracy": majority}
        r = results["lrt"]
        for variant, acc in zip(r.variants, (vanilla, lrt)):
            put(r, variant.label, {"accuracy": acc, **base})
        put(results["linformer"], only(results["linformer"]), {"accuracy": linformer, **base})

    return fill


LENGTHS = (64, 128, 256, 512, 1024, 2048)
#: forward ms as measured on one thread at d_model 256: LRT fastest short, Linformer long
CROSSING = {
    "vanilla": dict(zip(LENGTHS, (19.0, 35.0, 60.0, 100.0, 250.0, 650.0))),
    "lrt": dict(zip(LENGTHS, (10.0, 20.0, 35.0, 64.0, 190.0, 560.0))),
    "linformer": dict(zip(LENGTHS, (19.0, 34.0, 45.0, 72.0, 150.0, 360.0))),
}
#: Linformer never pays off (its projections cost more than the attention they save)
NO_CROSSING = {**CROSSING, "linformer": {n: 1.2 * t for n, t in CROSSING["vanilla"].items()}}


# --------------------------------------------------------------------------- graphs (SBM)
GT = ("attention=graph_attention,lap_pe=8", "attention=graph_attention,lap_pe=0",
      "attention=softmax,lap_pe=8")  # fmt: skip


def sbm(accuracy: tuple[float, float, float], gin: float = 0.6) -> Callable[[Results], None]:
    """Weighted accuracies of (sparse + PE, sparse, full + PE), 0.05 less on ood, beside
    the GIN and the majority class (0.25, four communities)."""

    def fill(results: Results) -> None:
        r = results["main"]
        for label, acc in zip(GT, accuracy):
            for split, shift in (("id", 0.0), ("ood", 0.05)):
                put(r, label, {"accuracy": acc - shift, "baselines.gin.accuracy": gin - shift,
                               "baselines.majority.accuracy": 0.25}, split)  # fmt: skip

    return fill


# --------------------------------------------------------------------------- pretraining
MAE_FT = ("init_from=null", "init_from=@mae25", "init_from=@mae75")


def mae(scratch: float, low: float, high: float) -> Callable[[Results], None]:
    """Fine-tuned ``id`` accuracies: from scratch, after 25% and after 75% masking."""

    def fill(results: Results) -> None:
        r = results["finetune"]
        base = {"baselines.logreg.accuracy": 0.97, "baselines.majority.accuracy": 0.11}
        for label, acc in zip(MAE_FT, (scratch, low, high)):
            put(r, label, {"accuracy": acc, **base})
        for key in ("mae25", "mae75"):
            put(results[key], only(results[key]), {"loss": 0.5})

    return fill


def mp3(tuned: float, scratch: float) -> Callable[[Results], None]:
    """``id`` accuracy fine-tuned after MP3 and from scratch at equal total steps."""

    def fill(results: Results) -> None:
        base = {"baselines.logreg.accuracy": 0.97, "baselines.majority.accuracy": 0.11}
        put(results["finetune"], only(results["finetune"]), {"accuracy": tuned, **base})
        put(results["scratch"], only(results["scratch"]), {"accuracy": scratch, **base})
        put(results["mp3"], only(results["mp3"]), {"accuracy": 0.6})

    return fill


CODET5_FT = ("init_from=null", "init_from=@span", "init_from=@codet5")


def codet5(scratch: float, span: float, aware: float, pool: float = 100.0) -> Callable[[Results], None]:  # fmt: skip
    """Fine-tuned ``code_search`` ``id`` mrr@10: from scratch, after span corruption and
    after identifier-aware pretraining, on a pool of ``pool`` (chance mrr@10 0.029 at
    100: learned at 0.088)."""

    def fill(results: Results) -> None:
        r = results["finetune"]
        base = {"pool": pool, "baselines.bm25.mrr@10": 0.5, "baselines.tfidf.mrr@10": 0.55}
        for label, mrr in zip(CODET5_FT, (scratch, span, aware)):
            put(r, label, {"mrr@10": mrr, **base})
            put(r, label, {"mrr@10": mrr / 2}, "ood")
        for key in ("span", "codet5"):
            put(results[key], only(results[key]), {"loss": 1.5})

    return fill


MTP_LABELS = ("objective=causal_lm", "objective=multi_token(k=2)", "objective=multi_token(k=4)")


def mtp(next_byte: float, k2: float, k4: float, bigram: float = 3.3) -> Callable[[Results], None]:
    """Next-byte bits per byte of the three objectives beside the bigram baseline's."""

    def fill(results: Results) -> None:
        r = results["main"]
        for label, bpb in zip(MTP_LABELS, (next_byte, k2, k4)):
            put(r, label, {"bits_per_byte": bpb, "accuracy": 0.5,
                           "baselines.bigram.bits_per_byte": bigram})  # fmt: skip

    return fill


# --------------------------------------------------------------------------- time series
def variate_tokens(var: tuple[float, float], macro: tuple[float, float], last: float = 2.0,
                   linear: float = 0.85, optimal: float = 0.69) -> Callable[[Results], None]:  # fmt: skip
    """``id`` mse of (points, variates) on the VAR and on macrodata beside the baselines
    (``last`` and ``linear`` on both; ``optimal`` on the VAR)."""

    def fill(results: Results) -> None:
        for key, pair in (("var", var), ("macrodata", macro)):
            r = results[key]
            for variant, mse in zip(r.variants, pair, strict=True):
                metrics = {"mse": mse, "baselines.last_value.mse": last,
                           "baselines.linear.mse": linear}  # fmt: skip
                if key == "var":
                    metrics["baselines.optimal.mse"] = optimal
                put(r, variant.label, metrics)

    return fill


def patching(short: tuple[float, float], long: tuple[float, float],
             naive: float = 0.21) -> Callable[[Results], None]:  # fmt: skip
    """``id`` mse of (points, patches) at lookback 48 and 336 beside the baselines."""

    def fill(results: Results) -> None:
        r = results["main"]
        for variant, mse in zip(r.variants, (*short, *long), strict=True):
            put(r, variant.label, {"mse": mse, "baselines.seasonal_naive.mse": naive,
                                   "baselines.linear.mse": 0.12,
                                   "baselines.optimal.mse": 0.09})  # fmt: skip

    return fill


# --------------------------------------------------------------------------- code
def code_search(truncate: float, split: float, pool: float = 400.0) -> Callable[[Results], None]:
    """``id`` (and ood) mrr@10 of (truncate, split) on a pool beside BM25 and TF-IDF."""

    def fill(results: Results) -> None:
        r = results["main"]
        for variant, mrr in zip(r.variants, (truncate, split), strict=True):
            metrics = {"mrr@10": mrr, "pool": pool, "baselines.bm25.mrr@10": 0.4,
                       "baselines.tfidf.mrr@10": 0.45}  # fmt: skip
            put(r, variant.label, metrics)
            put(r, variant.label, {"mrr@10": mrr / 2}, "ood")

    return fill


def planning(plan: float, sample: float, pass_k: float = 0.3) -> Callable[[Results], None]:
    """Hidden-test pass of PG-TD and of sampling with filtering at equal calls (id, ood)."""

    def fill(results: Results) -> None:
        r = results["main"]
        label = only(r)
        for split, scale in (("id", 1.0), ("ood", 0.5)):
            put(r, label, {"plan_pass": plan * scale, "filter_pass": sample * scale,
                           "plan_test_rate": plan * scale, "filter_test_rate": sample * scale,
                           "plan_calls": 150.0, "filter_calls": 160.0, "pass@1": pass_k / 3,
                           "pass@5": pass_k, "baselines.return_none.pass@1": 0.0,
                           "baselines.most_common_body.pass@1": 0.02}, split)  # fmt: skip

    return fill


def prompt_tuning(fine: float, prompt: float, scratch: float = 0.4, majority: float = 0.35) -> Callable[[Results], None]:  # fmt: skip
    """``id`` accuracy of fine-tuning, prompt tuning and training from scratch with few
    labels, beside the majority class and bag-of-words logistic regression."""

    def fill(results: Results) -> None:
        base = {"baselines.majority.accuracy": majority, "baselines.bow_logreg.accuracy": 0.7}
        for key, acc in (("finetune", fine), ("prompt", prompt), ("scratch", scratch)):
            r = results[key]
            put(r, only(r), {"accuracy": acc, "macro_f1": acc / 2, **base})
            put(r, only(r), {"accuracy": acc - 0.1}, "ood")
        put(results["pretrain"], only(results["pretrain"]), {"loss": 2.0})

    return fill


ATLAS = ("attention=graph_attention", "attention=mpnn_vn")


def atlas(ood: dict[str, tuple[float, float]], majority: float = 0.3,
          gin: float = 0.6) -> Callable[[Results], None]:  # fmt: skip
    """Per target, the (graph transformer, mpnn_vn) ood accuracy (id: 0.05 more) beside
    the GIN and majority baselines."""

    def fill(results: Results) -> None:
        for target, accs in ood.items():
            r = results[target]
            for label, acc in zip(ATLAS, accs):
                for split, value in (("id", acc + 0.05), ("ood", acc)):
                    put(r, label, {"accuracy": value, "baselines.gin.accuracy": gin,
                                   "baselines.majority.accuracy": majority}, split)  # fmt: skip

    return fill


def qprofile(max_abs: float, kurtosis: float, static_drop: float, bpb: float = 2.5) -> dict[str, float]:  # fmt: skip
    """A ``quantization_profile`` (unigram entropy 4.6 bits per byte)."""
    return {"max_abs": max_abs, "kurtosis": kurtosis, "mean_kurtosis": kurtosis / 2, "bpb": bpb,
            "unigram": 4.6, "int8_static": bpb * (1 + static_drop), "int8_dynamic": bpb * 1.001,
            "static_drop": static_drop, "dynamic_drop": 0.001}  # fmt: skip


def no_metrics(results: Results) -> None:
    """For checks that read everything from their own measurement of the runs."""


def distill(
    teacher: float, scratch: float, logits: float, minilm: float, tokens: float = 0.9
) -> Callable[[Results], None]:
    """``id`` exact match of the teacher and of the three students."""
    from anyformer.lab.findings.distillation import STUDENTS, _label

    def fill(results: Results) -> None:
        put(results["teacher"], only(results["teacher"]), {"exact_match": teacher})
        r = results["students"]
        for key, value in zip(STUDENTS, (scratch, logits, minilm)):
            put(r, _label(r, STUDENTS[key]), {"exact_match": value, "token_accuracy": tokens})

    return fill


# --------------------------------------------------------------------------- fusion
def digits_parents(majority: float = 0.11) -> Callable[[Results], None]:
    """The digits baselines (logistic regression 0.97, ``majority``) of the one variant
    whose seed pairs are fused."""

    def fill(results: Results) -> None:
        r = results["main"]
        put(r, only(r), {"accuracy": 0.9, "baselines.logreg.accuracy": 0.97,
                         "baselines.majority.accuracy": majority})  # fmt: skip

    return fill


def pair(a: float, b: float, ot: float, units: float, average: float) -> dict[str, float]:
    return {"A": a, "B": b, "ot": ot, "ot units": units, "average": average}


CASES: dict[str, list[Case]] = {
    "ot_fusion_beats_averaging": [
        Case(
            "OT ahead by 0.06",
            HOLDS,
            digits_parents(),
            fused=[pair(0.9, 0.94, 0.24, 0.18, 0.18), pair(0.9, 0.94, 0.22, 0.2, 0.16)],
        ),
        Case(
            "OT ahead by only 0.01",
            NOT,
            digits_parents(),
            fused=[pair(0.9, 0.94, 0.20, 0.18, 0.19), pair(0.9, 0.94, 0.21, 0.2, 0.20)],
        ),
        Case(
            "parents did not learn",
            UNDECIDED,
            digits_parents(),
            fused=[pair(0.4, 0.5, 0.3, 0.2, 0.2)],
        ),
        Case(
            "neither fused model above majority + 0.05",
            UNDECIDED,
            digits_parents(),
            fused=[pair(0.9, 0.94, 0.14, 0.12, 0.11)],
        ),
    ],
    "quantizable_attention_fewer_outliers": [
        Case(
            "gated removes the outliers",
            HOLDS,
            no_metrics,
            profile={
                "softmax": qprofile(40.0, 60.0, 0.05),
                "clipped_softmax": qprofile(38.0, 55.0, 0.05),
                "gated": qprofile(12.0, 8.0, 0.01),
            },  # fmt: skip
        ),
        Case(
            "fewer outliers but no less degradation",
            NOT,
            no_metrics,
            profile={
                "softmax": qprofile(40.0, 60.0, 0.02),
                "clipped_softmax": qprofile(30.0, 20.0, 0.03),
                "gated": qprofile(39.0, 70.0, 0.01),
            },  # fmt: skip
        ),
        Case(
            "softmax did not learn",
            UNDECIDED,
            no_metrics,
            profile={
                "softmax": qprofile(4.0, 3.0, 0.05, bpb=4.5),
                "clipped_softmax": qprofile(3.0, 3.0, 0.01),
                "gated": qprofile(3.0, 3.0, 0.01),
            },  # fmt: skip
        ),
        Case(
            "softmax loses nothing to int8",
            UNDECIDED,
            no_metrics,
            profile={
                "softmax": qprofile(40.0, 60.0, 0.0005),
                "clipped_softmax": qprofile(10.0, 5.0, 0.0001),
                "gated": qprofile(10.0, 5.0, 0.0001),
            },  # fmt: skip
        ),
    ],
    "test_guided_planning_beats_sampling": [
        Case("planning ahead by 0.09", HOLDS, planning(0.50, 0.41)),
        Case("planning ahead by only 0.03", NOT, planning(0.50, 0.47)),
        Case("sampling ahead", NOT, planning(0.30, 0.40)),
        Case("nothing ever passes", UNDECIDED, planning(0.0, 0.0, pass_k=0.0)),
    ],
    "split_encode_aggregate_long_code": [
        Case("split ahead by 0.05", HOLDS, code_search(0.20, 0.25)),
        Case("split ahead by only 0.01", NOT, code_search(0.20, 0.21)),
        Case("truncation ahead", NOT, code_search(0.25, 0.20)),
        Case("neither above 3x chance (0.022)", UNDECIDED, code_search(0.005, 0.008)),
    ],
    "inverted_variate_tokens": [
        Case("variates ahead on both", HOLDS, variate_tokens((0.80, 0.72), (1.0, 0.9))),
        Case("variates ahead by 1% on the VAR", NOT, variate_tokens((0.80, 0.79), (1.0, 0.9))),
        Case("points ahead on macrodata", NOT, variate_tokens((0.80, 0.70), (0.9, 1.0), last=1.2)),
        Case("nothing learned on the VAR", UNDECIDED, variate_tokens((1.9, 1.85), (1.0, 0.9))),
        Case(
            "no cross-variate structure",
            UNDECIDED,
            variate_tokens((0.80, 0.70), (1.0, 0.9), linear=0.70),
        ),  # fmt: skip
    ],
    "patching_needs_long_lookback": [
        Case("helps at 336, not at 48", HOLDS, patching((0.12, 0.12), (0.15, 0.12))),
        Case("helps at both", NOT, patching((0.12, 0.10), (0.15, 0.12))),
        Case("helps at neither", NOT, patching((0.12, 0.12), (0.12, 0.12))),
        Case("nothing learned at 336", UNDECIDED, patching((0.12, 0.12), (0.20, 0.20))),
    ],
    "minilm_beats_logit_distillation": [
        Case("MiniLM ahead by 0.05", HOLDS, distill(0.95, 0.3, 0.5, 0.55)),
        Case("MiniLM ahead by only 0.01", NOT, distill(0.95, 0.3, 0.5, 0.51)),
        Case("logits ahead", NOT, distill(0.95, 0.3, 0.6, 0.5)),
        Case("teacher learned nothing", UNDECIDED, distill(0.2, 0.1, 0.1, 0.3)),
        Case(
            "published 400-step run: no student learned",
            UNDECIDED,
            distill(0.744, 0.029, 0.018, 0.008, tokens=0.26),
        ),  # fmt: skip
    ],
    "mae_high_mask_ratio": [
        Case("75% ahead by 0.02", HOLDS, mae(0.90, 0.91, 0.93)),
        Case("75% ahead by only 0.005", NOT, mae(0.90, 0.92, 0.925)),
        Case("25% ahead", NOT, mae(0.90, 0.94, 0.92)),
        Case("no fine-tuned model learned", UNDECIDED, mae(0.5, 0.5, 0.6)),
    ],
    "prompt_tuning_few_labels": [
        Case("prompt keeps 95% of the gain", HOLDS, prompt_tuning(0.55, 0.54)),
        Case("prompt ahead of fine-tuning", HOLDS, prompt_tuning(0.50, 0.56)),
        Case("prompt keeps half of the gain", NOT, prompt_tuning(0.55, 0.45)),
        Case("prompt at 0.9 x accuracy but 70% of the gain", NOT, prompt_tuning(0.65, 0.585)),
        Case("fine-tuning at the majority class", UNDECIDED, prompt_tuning(0.37, 0.37)),
    ],
    "mp3_pretraining_beats_scratch": [
        Case("fine-tuned ahead by 0.03", HOLDS, mp3(0.93, 0.90)),
        Case("fine-tuned behind", NOT, mp3(0.88, 0.90)),
        Case("neither learned", UNDECIDED, mp3(0.6, 0.5)),
    ],
    "identifier_aware_pretraining": [
        Case("identifier-aware ahead by 0.04", HOLDS, codet5(0.15, 0.18, 0.22)),
        Case("identifier-aware ahead by only 0.01", NOT, codet5(0.15, 0.18, 0.19)),
        Case("span corruption ahead", NOT, codet5(0.15, 0.22, 0.18)),
        Case("ahead, but nothing above 3x chance (0.088)", UNDECIDED, codet5(0.03, 0.04, 0.08)),
    ],
    "multi_token_next_byte": [
        Case("k=4 0.5% worse: inside 1%", HOLDS, mtp(2.40, 2.41, 2.412)),
        Case("k=4 better", HOLDS, mtp(2.40, 2.35, 2.30)),
        Case("k=4 5% worse", NOT, mtp(2.40, 2.45, 2.52)),
        Case("next-byte model no better than bigram", UNDECIDED, mtp(3.2, 3.3, 3.4)),
    ],
    "icl_tracks_least_squares": [
        Case("leaves 5% of the gap to least squares", HOLDS, icl_tracks(0.05)),
        Case("leaves 9%: inside the 10% tolerance", HOLDS, icl_tracks(0.09)),
        Case("published run: 0.114 leaves 11% of the gap", NOT, icl_tracks(0.114)),
        Case("beats GD but far from least squares", NOT, icl_tracks(0.3)),
        Case("task shift hurts more", NOT, icl_tracks(0.05, covariate=0.4, task=0.5)),
        Case("no learning (mse 0.95 of zero)", UNDECIDED, icl_tracks(0.9, mse=0.95)),
    ],
    "lsa_is_one_step_gd": [
        Case("within 1% of fixed-step GD", HOLDS, lsa(0.01)),
        Case("20% off GD", NOT, lsa(0.2)),
        Case("predictions differ from GD's", NOT, lsa(0.01, gap_gd=0.08)),
        Case("closer to least squares than to GD", NOT, lsa(0.01, gap_gd=0.04, gap_ls=0.03)),
        Case("no learning", UNDECIDED, lsa(0.9, mse=0.95)),
    ],
    "icl_boolean_conjunction_vs_parity": [
        Case("conjunctions near optimal, parities far", HOLDS, boolean(0.86, 0.57)),
        Case("conjunctions far from optimal", NOT, boolean(0.7, 0.57)),
        Case("parities near optimal too", NOT, boolean(0.86, 0.8)),
        Case("no learning: conjunctions at the majority label", UNDECIDED, boolean(0.62, 0.5)),
    ],
    "icl_ar_least_squares": [
        Case("trained, 25% worse than least squares", HOLDS, ar(1.25, 0.6)),
        Case("trained and beats least squares", NOT, ar(0.8, 0.5)),
        Case("ratio just under 0.95", NOT, ar(0.94, 0.5)),
        Case("30-step model of the issue: 45% of the gap closed", UNDECIDED, ar(1.45, 0.73)),
        Case("untrained: at the zero predictor", UNDECIDED, ar(2.1, 0.95)),
    ],
    "task_hinting": [
        Case("successor hint leads by 0.25", HOLDS, hinting(0.05, 0.3)),
        Case("published run: no lead", NOT, hinting(0.074, 0.088)),
        Case("hint hurts", NOT, hinting(0.3, 0.05)),
        Case("nothing sorts in distribution", UNDECIDED, hinting(0.0, 0.2, in_dist=0.2)),
    ],
    "associative_recall_gap": [
        Case("softmax recalls, delta narrows", HOLDS, recall(1.0, 0.29, 0.37)),
        Case("no recall gap", NOT, recall(0.35, 0.29, 0.34)),
        Case("delta does not narrow it", NOT, recall(1.0, 0.29, 0.30)),
        Case("nothing learned", UNDECIDED, recall(0.08, 0.07, 0.07)),
    ],
    "search_does_not_scale": [
        Case(
            "drop at matched lookahead, both widths",
            HOLDS,
            search_sizes([0.95, 0.85], [0.6, 0.4, 0.3, 0.2, 0.2]),
        ),
        Case(
            "drop only from the longer lookaheads of large graphs",
            NOT,
            search_sizes([0.95, 0.85], [0.95, 0.85, 0.2, 0.1, 0.1]),
        ),
        Case(
            "the wide model has no drop",
            NOT,
            search_sizes([0.95, 0.85], [0.6, 0.4, 0.3, 0.2, 0.2], [0.95, 0.8, 0.2, 0.2, 0.2]),
        ),
        Case(
            "0.65 at matched lookahead: 0.15 above the reported chance",
            HOLDS,
            search({**HALF_LEARNED}, chance=0.5),
        ),
        Case(
            "the same results against a reported chance of 0.6",
            UNDECIDED,
            search({**HALF_LEARNED}, chance=0.6),
        ),
        Case(
            "published run: small graphs at chance at matched lookahead",
            UNDECIDED,
            search(
                {
                    (6, 32): [0.9, 0.06],
                    (6, 96): [0.835, 0.245],
                    (12, 32): [0.124, 0.087, 0.053, 0.085, 0.107],
                    (12, 96): [0.398, 0.134, 0.086, 0.094, 0.124],
                }
            ),
        ),
    ],
    "nope_length_generalization": [
        Case(
            "NoPE and T5 extrapolate best",
            HOLDS,
            nope({"none": 0.8, "t5_bias": 0.7, "sinusoidal": 0.2, "rope": 0.4, "alibi": 0.6}),
        ),
        Case(
            "published run: ALiBi extrapolates best",
            NOT,
            nope(
                {"none": 0.6, "t5_bias": 0.49, "sinusoidal": 0.08, "rope": 0.36, "alibi": 0.94},
                {"none": 0.93, "t5_bias": 0.97, "sinusoidal": 0.19},
            ),
        ),
        Case(
            "RoPE ties T5",
            NOT,
            nope({"none": 0.8, "t5_bias": 0.7, "sinusoidal": 0.2, "rope": 0.7, "alibi": 0.6}),
        ),
        Case(
            "NoPE did not learn the task",
            UNDECIDED,
            nope(
                {"none": 0.8, "t5_bias": 0.7, "sinusoidal": 0.2, "rope": 0.4, "alibi": 0.6},
                {"none": 0.5},
            ),
        ),
        Case(
            "beats APE only because APE did not learn",
            UNDECIDED,
            nope(
                {"none": 0.8, "t5_bias": 0.7, "sinusoidal": 0.2, "rope": 0.4, "alibi": 0.6},
                {"sinusoidal": 0.19},
            ),
        ),
    ],
    "reversed_addition": [
        Case(
            "reversed ahead early, never behind", HOLDS, addition([0.0, 0.3, 0.8], [0.0, 0.6, 0.99])
        ),
        Case(
            "published run: reversed behind at 25.6k",
            NOT,
            addition([0.011, 0.43, 0.74], [0.003, 0.04, 0.998]),
        ),
        Case("reversed never ahead by 0.25", NOT, addition([0.0, 0.5, 0.9], [0.0, 0.6, 0.95])),
        Case("nothing learned", UNDECIDED, addition([0.0, 0.01, 0.02], [0.0, 0.05, 0.3])),
    ],
    "wide_vs_deep": [
        Case(
            "as accurate and faster",
            HOLDS,
            wide_deep(0.85, 0.87),
            latency=dict(zip(WIDE_DEEP, (1.0, 2.0))),
        ),
        Case(
            "published run: 0.17 less accurate",
            NOT,
            wide_deep(0.7, 0.87),
            latency=dict(zip(WIDE_DEEP, (1.0, 2.0))),
        ),
        Case(
            "as accurate but slower",
            NOT,
            wide_deep(0.85, 0.87),
            latency=dict(zip(WIDE_DEEP, (2.0, 1.0))),
        ),
        Case(
            "neither learned",
            UNDECIDED,
            wide_deep(0.0, 0.01),
            latency=dict(zip(WIDE_DEEP, (1.0, 2.0))),
        ),
    ],
    "looped_matches_deeper": [
        Case(
            "published run",
            HOLDS,
            icl_mse({"looped": 0.32, "stack": 0.34}),
            elastic={"looped": loops([2.47, 0.76, 0.42, 0.32, 0.41])},
        ),
        Case(
            "looped far worse than the stack",
            NOT,
            icl_mse({"looped": 0.5, "stack": 0.34}),
            elastic={"looped": loops([2.0, 1.0, 0.7, 0.5, 0.6])},
        ),
        Case(
            "error rises with loops",
            NOT,
            icl_mse({"looped": 0.32, "stack": 0.34}),
            elastic={"looped": loops([1.0, 0.4, 0.6, 0.32, 0.41])},
        ),
        Case(
            "error flat in loops",
            NOT,
            icl_mse({"looped": 0.32, "stack": 0.34}),
            elastic={"looped": loops([0.34, 0.33, 0.33, 0.32, 0.32])},
        ),
        Case(
            "the stack did not learn",
            UNDECIDED,
            icl_mse({"looped": 0.99, "stack": 1.0}),
            elastic={"looped": loops([2.0, 1.5, 1.2, 0.99, 1.0])},
        ),
    ],
    "algoformer_beats_looped_and_stack": [
        Case(
            "10% ahead of both",
            HOLDS,
            icl_mse({"stack": 0.35, "looped": 0.31, "algoformer": 0.27}),
            elastic=algo_curves(0.31, 0.27),
        ),
        Case(
            "published run: 2.4% ahead of looped",
            NOT,
            icl_mse({"stack": 0.3484, "looped": 0.3071, "algoformer": 0.2997}),
            elastic=algo_curves(0.3071, 0.2997),
        ),
        Case(
            "behind the stack",
            NOT,
            icl_mse({"stack": 0.25, "looped": 0.31, "algoformer": 0.27}),
            elastic=algo_curves(0.31, 0.27),
        ),
        Case(
            "none learned",
            UNDECIDED,
            icl_mse({"stack": 1.03, "looped": 1.02, "algoformer": 0.95}),
            elastic=algo_curves(1.02, 0.95),
        ),
    ],
    "matformer_granularities": [
        Case(
            "separated widths, nested within 2%",
            HOLDS,
            matformer(SEPARATE),
            elastic=nested(SEPARATE, [0.02, 0.02, 0.01, 0.0]),
        ),
        Case(
            "separated widths, smallest nested 8% worse",
            NOT,
            matformer(SEPARATE),
            elastic=nested(SEPARATE, [0.08, 0.02, 0.01, 0.0]),
        ),
        Case(
            "published run: widths 0.044 nats apart",
            UNDECIDED,
            matformer(PUBLISHED_MATFORMER),
            elastic=nested(PUBLISHED_MATFORMER, [0.031, 0.022, 0.035, 0.021]),
        ),
    ],
    "conv_embedding_beats_patches": [
        Case("conv stem ahead by 0.03", HOLDS, digits(dict(zip(CONV, (0.90, 0.93))))),
        Case("conv stem ahead by only 0.005", NOT, digits(dict(zip(CONV, (0.90, 0.905))))),
        Case("patches ahead", NOT, digits(dict(zip(CONV, (0.93, 0.90))))),
        Case("conv stem learned, patches did not", HOLDS, digits(dict(zip(CONV, (0.3, 0.9))))),
        Case(
            "neither learned (0.8 < logreg - 0.15)", UNDECIDED, digits(dict(zip(CONV, (0.7, 0.8))))
        ),  # fmt: skip
        Case(
            "barely above the majority class",
            UNDECIDED,
            digits(dict(zip(CONV, (0.5, 0.55))), logreg=0.5, majority=0.3),
        ),  # fmt: skip
        Case(
            "parameter counts 10% apart",
            UNDECIDED,
            digits(dict(zip(CONV, (0.90, 0.95))), params=dict(zip(CONV, (50000, 55000)))),
        ),  # fmt: skip
    ],
    "causal_vit_matches_bidirectional": [
        Case("causal 0.02 behind", HOLDS, digits(dict(zip(ILLAMA, (0.92, 0.90))))),
        Case("causal ahead", HOLDS, digits(dict(zip(ILLAMA, (0.90, 0.94))))),
        Case("causal 0.05 behind", NOT, digits(dict(zip(ILLAMA, (0.92, 0.87))))),
        Case("bidirectional did not learn", UNDECIDED, digits(dict(zip(ILLAMA, (0.6, 0.6))))),
    ],
    "patchout_speeds_audio": [
        Case("1.8x faster, 0.02 less accurate", HOLDS, tones((0.90, 0.88), (1000.0, 1800.0))),
        Case("faster and more accurate", HOLDS, tones((0.85, 0.88), (1000.0, 1300.0))),
        Case("1.8x faster, 0.08 less accurate", NOT, tones((0.90, 0.82), (1000.0, 1800.0))),
        Case("as accurate, only 1.1x faster", NOT, tones((0.90, 0.90), (1000.0, 1100.0))),
        Case("no patchout did not learn", UNDECIDED, tones((0.40, 0.40), (1000.0, 1800.0))),
    ],
    "lrt_short_linformer_long": [
        Case("crossover, both accurate", HOLDS, lrt_linformer(0.9, 0.88, 0.87), timings=CROSSING),
        Case("Linformer never faster", NOT, lrt_linformer(0.9, 0.88, 0.87), timings=NO_CROSSING),
        Case("Linformer 0.1 less accurate", NOT, lrt_linformer(0.9, 0.88, 0.8), timings=CROSSING),
        Case(
            "vanilla did not learn (0.5 < 0.8)",
            UNDECIDED,
            lrt_linformer(0.5, 0.5, 0.5),
            timings=CROSSING,
        ),  # fmt: skip
    ],
    "pooling_mixer_near_attention": [
        Case(
            "95% of attention, fewer FLOPs",
            HOLDS,
            digits(dict(zip(POOL, (0.90, 0.855))), cost=POOL_COST),
        ),  # fmt: skip
        Case("85% of attention", NOT, digits(dict(zip(POOL, (0.90, 0.765))), cost=POOL_COST)),
        Case(
            "as accurate but not cheaper",
            NOT,
            digits(
                dict(zip(POOL, (0.90, 0.90))),
                cost={POOL[0]: POOL_COST[POOL[1]], POOL[1]: POOL_COST[POOL[0]]},
            ),
        ),  # fmt: skip
        Case(
            "attention did not learn",
            UNDECIDED,
            digits(dict(zip(POOL, (0.4, 0.4))), cost=POOL_COST),
        ),  # fmt: skip
    ],
    "mpnn_vn_matches_graph_transformer": [
        Case(
            "equal on both targets", HOLDS, atlas({"diameter": (0.8, 0.8), "triangles": (0.6, 0.6)})
        ),  # fmt: skip
        Case("mpnn_vn ahead", HOLDS, atlas({"diameter": (0.7, 0.8), "triangles": (0.6, 0.65)})),
        Case(
            "mpnn_vn 0.02 behind", HOLDS, atlas({"diameter": (0.8, 0.78), "triangles": (0.6, 0.6)})
        ),  # fmt: skip
        Case(
            "mpnn_vn 0.05 behind on triangles",
            NOT,
            atlas({"diameter": (0.8, 0.8), "triangles": (0.6, 0.55)}),
        ),  # fmt: skip
        Case(
            "nothing learned on triangles",
            UNDECIDED,
            atlas({"diameter": (0.8, 0.8), "triangles": (0.32, 0.31)}),
        ),  # fmt: skip
    ],
    "graph_transformer_pe_and_sparsity": [
        Case("PE and sparsity both help", HOLDS, sbm((0.70, 0.62, 0.40))),
        Case("PE does not help", NOT, sbm((0.70, 0.70, 0.40))),
        Case("full attention as good", NOT, sbm((0.70, 0.62, 0.705))),
        Case("none learned (0.30 < 0.25 + 0.1)", UNDECIDED, sbm((0.30, 0.28, 0.27))),
    ],
}


def _params() -> list[Any]:
    params = []
    for name in registry.components("finding"):
        cases = CASES.get(name) or [None]
        params += [pytest.param(name, c, id=f"{name}:{c.name if c else 'no cases'}") for c in cases]
    return params


@pytest.mark.parametrize(("name", "case"), _params())
def test_check_decides_synthetic_results(
    name: str, case: Case | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case is None:
        pytest.fail(f"finding '{name}' has no synthetic cases in CASES of {__file__}")
    results = copy.deepcopy(_skeleton(name))
    case.fill(results)
    asked: list[str] = []

    def elastic_metric(result: CompareResult, label: str, settings: list[Any], metric: str,
                       split: str = "id") -> dict[str, float]:  # fmt: skip
        values = case.elastic[result.dir.name]
        asked.extend(s.name for s in settings)
        return {s.name: values[s.name] for s in settings}

    def latency(result: CompareResult, label: str, *args: Any) -> float:
        return case.latency[label]

    monkeypatch.setattr(depth_findings, "elastic_metric", elastic_metric)
    monkeypatch.setattr(generalization_findings, "forward_latency_ms", latency)
    monkeypatch.setattr(
        quantization_findings,
        "quantization_profile",
        lambda result, label: case.profile[label.split("=")[-1]],
    )
    monkeypatch.setattr(fusion_findings, "fused_accuracies", lambda result, label: case.fused)
    monkeypatch.setattr(
        compression_findings, "forward_ms_by_length", lambda lengths, *a, **k: case.timings
    )
    finding: Finding = registry.get("finding", name).cls()
    verdict = finding.check(results)
    assert verdict.status == case.expect, verdict.reason
    assert verdict.numbers and all(isinstance(v, float) for v in verdict.numbers.values())
    if case.expect == UNDECIDED:
        assert verdict.holds is None and "; " in verdict.reason  # why, then the numbers
    if case.elastic:
        assert asked, "the check never asked for the elastic settings the case gives"


def test_every_finding_has_cases_of_every_outcome() -> None:
    """Results that must hold, must not hold, and show no learning (or no resolution)."""
    for name in registry.components("finding"):
        assert {c.expect for c in CASES.get(name, [])} == set(STATUSES), name


# --------------------------------------------------------------------------- the verdict record
def test_verdict_states_and_decide() -> None:
    assert [Verdict(h).status for h in (True, False, None)] == list(STATUSES)
    assert Verdict(False).label == "does not hold"
    v = Verdict.decide(True, {"x": 1.0}, "numbers", decidable=False, undecided="no learning")
    assert v.holds is None and v.reason == "no learning; numbers"
    assert Verdict.decide(False, {}, "r").holds is False


def test_inconclusive_verdict_is_recorded_and_listed(tmp_path: Path) -> None:
    name = "matformer_granularities"
    finding = registry.get("finding", name).cls()
    verdict = Verdict(None, {"spread": 0.04}, "widths not apart")
    folder = tmp_path / "full" / name
    folder.mkdir(parents=True)
    write_finding_report(Reproduction(name, finding, verdict, {}, folder, quick=False))
    record = json.loads((folder / "verdict.json").read_text())
    assert record["holds"] is None and record["status"] == "inconclusive"
    report = (folder / "report.md").read_text()
    assert "**Verdict (full):** inconclusive — widths not apart" in report
    # the report states the whole check, including when it is inconclusive
    assert "Inconclusive when the independent models do not separate the widths" in report
    assert f"| `{name}` |" in findings_markdown(tmp_path)
    assert "| inconclusive (" in findings_markdown(tmp_path)


def test_every_check_says_when_it_is_inconclusive() -> None:
    """The docstring (printed in the report as what is checked) names the holding rule
    and the inconclusive case."""
    for name in registry.components("finding"):
        doc = " ".join((registry.get("finding", name).cls.__doc__ or "").split())
        assert "Holds when" in doc or "holds when" in doc, name
        assert "nconclusive" in doc, name


def test_records_written_before_inconclusive_verdicts_still_read() -> None:
    assert verdict_status({"holds": True}) == "holds"
    assert verdict_status({"holds": False}) == "does not hold"
    assert verdict_status({"holds": None, "status": "inconclusive"}) == "inconclusive"
    assert verdict_status({"holds": False, "status": "does not hold"}) == "does not hold"


def test_conv_embedding_comparison_is_at_equal_parameters() -> None:
    """The full-size CvT comparison differs only in the embedding: parameter counts
    within 1%, the same 16-token grid, so ``check`` decides (the 5% guard never fires)."""
    r = _skeleton("conv_embedding_beats_patches")["main"]
    patches, conv = (v.params for v in r.variants)
    assert abs(conv - patches) / patches < 0.01, (patches, conv)
    grids = {v.label: v.spec.model.dims().grid for v in r.variants}
    assert set(grids.values()) == {(4, 4)}, grids
