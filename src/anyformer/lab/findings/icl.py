"""Findings about in-context learning of regression."""

from __future__ import annotations

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train, tiny_model
from anyformer.registry import NoParams, Paper, register


@register(
    "finding",
    "icl_tracks_least_squares",
    paper=Paper(
        "What Can Transformers Learn In-Context? A Case Study of Simple Function Classes",
        2022,
        "Garg et al.",
    ),  # fmt: skip
    summary="ICL regression error falls with examples like least squares; covariate shift hurts more than task shift",
    params=NoParams,
)
class ICLTracksLeastSquares(Finding):
    """A decoder trained on noiseless linear-regression prompts (d=5, 11 pairs).

    Holds when (a) its error at the last in-context example is below a quarter of its
    error with one example and below the one-step-GD baseline's (it keeps improving
    with examples, past a weak learner), and (b) scaling the inputs x by 2 (covariate
    shift) costs it more, relative to the zero predictor on the same prompts, than
    scaling the weights w by 2 (task shift). Garg et al. 2022; Akyürek et al. 2022;
    Zhang, Frei & Bartlett 2023.
    """

    claim = (
        "A Transformer trained on in-context linear regression tracks least squares as the "
        "number of in-context examples grows, and degrades more under covariate shift than "
        "under task shift."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_linear_regression", "dims": 5, "ood": "covariate", "ood_scale": 2.0}
        model = {"d_model": 64, "n_layers": 3, "n_heads": 4, "position": "none", "max_len": 64}
        train = {"steps": 2500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "eval_size": 512}
        if quick:
            model, train = tiny_model(position="none", max_len=64), quick_train()
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "icl_tracks_least_squares", "model": model, "task": task, "train": train}
        return {
            "main": Comparison(base, [("task.ood", ["covariate", "task"])], seeds=1 if quick else 2)
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = "ood=covariate"
        ks = sorted(int(k.split(".")[1]) for k in r.summary[label]["id"] if k.startswith("by_k."))
        first, last = r.mean(label, f"by_k.{ks[0]}"), r.mean(label, f"by_k.{ks[-1]}")
        gd_last = r.mean(label, f"baselines.gd_one_step.by_k.{ks[-1]}")
        ls_last = r.mean(label, f"baselines.least_squares.by_k.{ks[-1]}")
        shifted = {}
        for shift in ("covariate", "task"):
            model = r.mean(f"ood={shift}", "mse", "ood")
            zero = r.mean(f"ood={shift}", "baselines.zero.mse", "ood")
            shifted[shift] = model / zero
        numbers = {
            "model mse, 1 example": first,
            f"model mse, {ks[-1]} examples": last,
            f"one-step GD mse, {ks[-1]} examples": gd_last,
            f"least squares mse, {ks[-1]} examples": ls_last,
            "covariate shift: model / zero": shifted["covariate"],
            "task shift: model / zero": shifted["task"],
        }
        tracks = last < 0.25 * first and last < gd_last
        shift_order = shifted["covariate"] > shifted["task"]
        reason = (
            f"tracks least squares: {tracks} (last {last:.3f} vs first {first:.3f}, one-step GD {gd_last:.3f}); "
            f"covariate shift hurts more: {shift_order} ({shifted['covariate']:.3f} vs {shifted['task']:.3f})"
        )
        return Verdict(tracks and shift_order, numbers, reason)


#: One layer of norm-free linear self-attention with linear read-in/read-out (von Oswald et al.).
LSA_MODEL = {
    "d_model": 32, "n_layers": 1, "n_heads": 1, "position": "none", "norm": "none", "ffn": "none",
    "attention": {"name": "linear", "feature_map": "identity", "normalize": False}, "max_len": 128,
}  # fmt: skip


@register(
    "finding",
    "lsa_is_one_step_gd",
    paper=Paper("Transformers Learn In-Context by Gradient Descent", 2023, "von Oswald et al."),
    summary="one trained linear self-attention layer predicts like one step of gradient descent",
    params=NoParams,
)
class LSAIsOneStepGD(Finding):
    """One norm-free linear self-attention layer trained on noiseless in-context
    regression (d=5). Holds when, averaged over the number of examples, its error is
    within 15% of the best one-step-GD predictor's and more than twice the least-squares
    error from d+1 examples on (it matches GD, not the optimal learner)."""

    claim = (
        "A single linear self-attention layer trained on in-context linear regression "
        "implements one step of gradient descent: its predictions match the best one-step-GD "
        "predictor rather than least squares."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_linear_regression", "dims": 5, "n_points": 20}
        train = {"steps": 3000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "eval_size": 512,
                 "weight_decay": 0.0}  # fmt: skip
        if quick:
            train = quick_train()
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "lsa_is_one_step_gd", "model": LSA_MODEL, "task": task, "train": train}
        return {
            "main": Comparison(
                base, [("model.attention.feature_map", ["identity"])], seeds=1 if quick else 2
            )
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = r.variants[0].label
        ks = sorted(int(k.split(".")[1]) for k in r.summary[label]["id"] if k.startswith("by_k."))
        model = [r.mean(label, f"by_k.{k}") for k in ks]
        gd = [r.mean(label, f"baselines.gd_one_step.by_k.{k}") for k in ks]
        ls = [r.mean(label, f"baselines.least_squares.by_k.{k}") for k in ks]
        rel_gd = sum(abs(m - g) / g for m, g in zip(model, gd)) / len(ks)
        posed = [i for i, k in enumerate(ks) if k > 6]
        model_posed = sum(model[i] for i in posed) / len(posed)
        ls_posed = sum(ls[i] for i in posed) / len(posed)
        numbers = {"mean |model - GD| / GD over k": rel_gd, "model mse (k > d+1)": model_posed,
                   "least squares mse (k > d+1)": ls_posed, "one-step GD mse (all k)": sum(gd) / len(gd)}  # fmt: skip
        holds = rel_gd <= 0.15 and model_posed > 2 * ls_posed
        return Verdict(holds, numbers, f"model is {rel_gd:.1%} from one-step GD on average; "
                       f"{model_posed:.3f} vs least squares {ls_posed:.3g} once k > d+1")  # fmt: skip


@register(
    "finding",
    "icl_boolean_conjunction_vs_parity",
    paper=Paper(
        "Understanding In-Context Learning in Transformers and LLMs by Learning to Learn Discrete Functions",
        2023,
        "Bhattamishra et al.",
    ),  # fmt: skip
    summary="in-context learning is near-optimal for conjunctions and far from optimal for sparse parities",
    params=NoParams,
)
class ICLBoolean(Finding):
    """A decoder trained in context on conjunctions or on sparse parities (8 bits,
    parities of 2 bits). Holds when the gap to the optimal learner (elimination /
    Gaussian elimination over GF(2)) is at most 0.1 for conjunctions and at least 0.2
    for parities."""

    claim = (
        "Transformers learn conjunctions in context almost as well as the optimal learner, "
        "but stay far from optimal on sparse parities."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"d_model": 64, "n_layers": 3, "n_heads": 4, "position": "none", "max_len": 128}
        train = {"steps": 2000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "eval_size": 512}
        if quick:
            model, train = tiny_model(position="none", max_len=128), quick_train()
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        tasks = {
            "conjunction": {"name": "icl_boolean", "n_bits": 8, "n_points": 32,
                            "function_class": "conjunction"},
            "parity": {"name": "icl_boolean", "n_bits": 8, "n_points": 32,
                       "function_class": "sparse_parity", "sparsity": 2},
        }  # fmt: skip
        seeds = 1 if quick else 2
        return {
            key: Comparison({"name": f"icl_boolean_{key}", "model": model, "task": task, "train": train},
                            [("task.function_class", [task["function_class"]])], seeds=seeds)
            for key, task in tasks.items()
        }  # fmt: skip

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        c, p = results["conjunction"], results["parity"]
        cl, pl = c.variants[0].label, p.variants[0].label
        conj = c.mean(cl, "gap_to_optimal")
        par = p.mean(pl, "gap_to_optimal")
        numbers = {
            "conjunction: model accuracy": c.mean(cl, "accuracy"),
            "conjunction: elimination accuracy": c.mean(cl, "baselines.elimination.accuracy"),
            "parity: model accuracy": p.mean(pl, "accuracy"),
            "parity: GF(2) elimination accuracy": p.mean(pl, "baselines.gf2_elimination.accuracy"),
            "conjunction gap to optimal": conj,
            "parity gap to optimal": par,
        }
        return Verdict(
            conj <= 0.1 and par >= 0.2,
            numbers,
            f"gap to optimal: conjunctions {conj:.3f}, parities {par:.3f}",
        )


@register(
    "finding",
    "icl_ar_least_squares",
    paper=Paper("Why Do Transformers Fail to Forecast Time Series In-Context?", 2025),
    summary="linear self-attention does not beat the least-squares AR(p) fit on the same context",
    params=NoParams,
)
class ICLAutoregression(Finding):
    """One layer of linear self-attention trained to forecast random stable AR(2) series
    in context. Holds when, once the least-squares AR(2) fit is well posed, the model's
    error is not lower than that fit's (ratio ≥ 0.95)."""

    claim = (
        "For in-context forecasting of AR(p) series, linear self-attention does not beat the "
        "least-squares AR(p) predictor fitted on the same context."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_ar", "order": 2, "n_points": 40}
        train = {"steps": 3000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "eval_size": 512,
                 "weight_decay": 0.0}  # fmt: skip
        if quick:
            train = quick_train()
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "icl_ar_least_squares", "model": LSA_MODEL, "task": task, "train": train}
        return {"main": Comparison(base, [("model.n_layers", ["1"])], seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = r.variants[0].label
        ratio = r.mean(label, "relative_to_least_squares")
        numbers = {"model / least squares (posed)": ratio, "model mse": r.mean(label, "mse"),
                   "least squares mse": r.mean(label, "baselines.least_squares.mse"),
                   "oracle mse": r.mean(label, "baselines.oracle.mse")}  # fmt: skip
        return Verdict(ratio >= 0.95, numbers, f"model / least-squares AR fit = {ratio:.3f}")
