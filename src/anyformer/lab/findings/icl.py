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

    Holds when (a) it tracks least squares: at the largest number of in-context
    examples its error leaves at most 10% (``tolerance``) of the gap between the zero
    predictor's error and least squares' (``(model - LS) / (zero - LS) <= 0.1``; with
    more examples than dimensions least squares is exact, so this asks for 90% of the
    way from predicting 0 to the optimal learner), and (b) scaling the inputs x by 2
    (covariate shift) costs it more, relative to the zero predictor on the same prompts,
    than scaling the weights w by 2 (task shift). Inconclusive when the model learned
    nothing: its in-distribution error is not at least 10% below the zero predictor's.
    Its error with one example and the one-step-GD baseline's are reported beside.
    Garg et al. 2022; Akyürek et al. 2022; Zhang, Frei & Bartlett 2023.

    Paired tokens (token i holds x_i and the previous pair): with interleaved x and y
    tokens, models of this size stayed at the zero predictor's error within the CPU
    budget, which would make the check say nothing about the claim.
    """

    claim = (
        "A Transformer trained on in-context linear regression tracks least squares as the "
        "number of in-context examples grows, and degrades more under covariate shift than "
        "under task shift."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_linear_regression", "dims": 5, "ood": "covariate", "ood_scale": 2.0,
                "tokens": "paired"}  # fmt: skip
        model = {"d_model": 64, "n_layers": 3, "n_heads": 4, "position": "none", "max_len": 64}
        train = {"steps": 2500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "eval_size": 512}
        if quick:
            model, train = tiny_model(position="none", max_len=64), quick_train()
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "icl_tracks_least_squares", "model": model, "task": task, "train": train}
        # 4 seeds: the covariate-vs-task comparison was 0.448 vs 0.397 on 2
        return {
            "main": Comparison(base, [("task.ood", ["covariate", "task"])], seeds=1 if quick else 4)
        }

    #: Share of the zero predictor's excess error over least squares the model may keep
    #: at the largest number of examples.
    tolerance = 0.1
    #: The model learned when its id error is at most this fraction of the zero predictor's.
    learned_below = 0.9

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = "ood=covariate"
        ks = sorted(int(k.split(".")[1]) for k in r.summary[label]["id"] if k.startswith("by_k."))
        k = ks[-1]
        first, last = r.mean(label, f"by_k.{ks[0]}"), r.mean(label, f"by_k.{k}")
        gd_last = r.mean(label, f"baselines.gd_one_step.by_k.{k}")
        ls_last = r.mean(label, f"baselines.least_squares.by_k.{k}")
        zero_last = r.mean(label, f"baselines.zero.by_k.{k}")
        mse, zero = r.mean(label, "mse"), r.mean(label, "baselines.zero.mse")
        shifted = {}
        for shift in ("covariate", "task"):
            model = r.mean(f"ood={shift}", "mse", "ood")
            zero_shift = r.mean(f"ood={shift}", "baselines.zero.mse", "ood")
            shifted[shift] = model / zero_shift
        room = zero_last - ls_last  # what the optimal learner gains over predicting 0
        left = (last - ls_last) / room if room > 0 else float("inf")
        numbers = {
            "model mse, 1 example": first,
            f"model mse, {k} examples": last,
            f"least squares mse, {k} examples": ls_last,
            f"zero predictor mse, {k} examples": zero_last,
            f"share of the zero-to-least-squares gap left, {k} examples": left,
            f"one-step GD mse, {k} examples": gd_last,
            "model mse (all k)": mse,
            "zero predictor mse (all k)": zero,
            "covariate shift: model / zero": shifted["covariate"],
            "task shift: model / zero": shifted["task"],
        }
        tracks = left <= self.tolerance
        shift_order = shifted["covariate"] > shifted["task"]
        learned = mse <= self.learned_below * zero
        reason = (
            f"tracks least squares: {tracks} (at {k} examples the model's mse {last:.3f} "
            f"leaves {left:.1%} of the gap from the zero predictor's {zero_last:.3f} to least "
            f"squares' {ls_last:.3f}, needs <= {self.tolerance:.0%}; 1 example {first:.3f}, "
            f"one-step GD {gd_last:.3f}); covariate shift hurts more: {shift_order} "
            f"({shifted['covariate']:.3f} vs {shifted['task']:.3f} of the zero predictor's error)"
        )
        return Verdict.decide(
            tracks and shift_order, numbers, reason, learned and room > 0,
            f"the model did not learn (mse {mse:.3f} vs the zero predictor's {zero:.3f}; "
            f"needs <= {self.learned_below} x) or least squares is no better than 0",
        )  # fmt: skip


#: One layer of norm-free linear self-attention with linear read-in/read-out (von Oswald et al.).
#: It is trained on *paired* tokens (``tokens: paired``): each key/value comes from one
#: token, so only a token that holds a whole regression pair lets one layer form the
#: products ``x_j y_j`` of a gradient step (tests/tasks/conftest.py sets its weights by
#: hand to compute that step exactly). ``init_std`` 0.1 rather than the default 0.02: from
#: the smaller start, about one seed in three of ``lsa_is_one_step_gd`` settled in a local
#: minimum that routes the step the other way (key on ``y_{j-1}``, value on ``x_{j-1}``),
#: which with one head is a GD step of rank one (error ~0.87 against ~0.50); from 0.1,
#: nine seeds of nine reached the full-rank step.
LSA_MODEL = {
    "d_model": 32, "n_layers": 1, "n_heads": 1, "position": "none", "norm": "none", "ffn": "none",
    "attention": {"name": "linear", "feature_map": "identity", "normalize": False}, "max_len": 128,
    "init_std": 0.1,
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
    regression (d=5, 20 pairs) written as paired tokens ``[x_i, x_{i-1}, y_{i-1}]``, so
    that, as in von Oswald et al., a token carries a whole ``(x, y)`` pair and the
    prediction of ``y_i`` is read at the token of ``x_i``.

    Which GD step is the reference. Von Oswald et al. (and Mahankali et al.) train at one
    context size N and compare with GD at the learning rate best for that N. Here the
    model is trained causally on every prefix at once (0 to 19 context pairs), and an
    un-normalised LSA has one fixed product ``W_K^T W_Q`` for all of them: it can compute
    ``eta * sum_{j<i} (x_i . x_j) y_j`` with one ``eta``, not the per-n optimal step
    ``1 / (n + d + 1)`` of the task's ``gd_one_step`` baseline (which it therefore
    cannot match at every n, and which would make the check fail for a reason outside
    the claim). The faithful reference is the same statement for this training
    objective: one GD step with the single learning rate that is best on the training
    loss, the task's ``gd_fixed_step`` baseline (``eta = sum_n n / sum_n n (n + d + 1)``
    over the training prefixes), compared at every number of examples. (Exactly: the
    paired layout also lets the layer give the latest pair its own weight, through the
    query token's copy of it; the best such predictor is 0.8% better on the training
    loss than the fixed-step one and within about 1% of its predictions, well inside
    the tolerances below.)

    Holds when (a) averaged over k = 1..20 the model's error is within 10% of the
    fixed-step GD error at the same k, (b) the model predicts *like* that GD step: the
    mean squared difference of their predictions is at most 10% of the GD step's own
    error (von Oswald et al. compare predictions, not only losses), and (c) its
    predictions are closer to the GD step's than to least squares' (it implements GD,
    not the optimal learner). The per-n tuned GD and least-squares errors are reported
    beside them. Inconclusive when the layer learned nothing (its error is not at least
    10% below the zero predictor's).
    """

    claim = (
        "A single linear self-attention layer trained on in-context linear regression "
        "implements one step of gradient descent: its predictions match the best one-step-GD "
        "predictor rather than least squares."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_linear_regression", "dims": 5, "n_points": 20, "tokens": "paired"}
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
        gd = [r.mean(label, f"baselines.gd_fixed_step.by_k.{k}") for k in ks]
        rel_gd = sum(abs(m - g) / g for m, g in zip(model, gd)) / len(ks)
        gd_mse = r.mean(label, "baselines.gd_fixed_step.mse")
        gap_gd = r.mean(label, "baselines.gd_fixed_step.gap")
        gap_ls = r.mean(label, "baselines.least_squares.gap")
        numbers = {
            "mean |model - fixed-step GD| / fixed-step GD over k": rel_gd,
            "prediction gap to fixed-step GD / its mse": gap_gd / gd_mse,
            "prediction gap to fixed-step GD": gap_gd,
            "prediction gap to least squares": gap_ls,
            "model mse": r.mean(label, "mse"),
            "fixed-step GD mse": gd_mse,
            "per-n tuned GD mse": r.mean(label, "baselines.gd_one_step.mse"),
            "least squares mse": r.mean(label, "baselines.least_squares.mse"),
        }
        mse, zero = numbers["model mse"], r.mean(label, "baselines.zero.mse")
        numbers["zero predictor mse"] = zero
        holds = rel_gd <= 0.10 and gap_gd <= 0.10 * gd_mse and gap_gd < gap_ls
        return Verdict.decide(holds, numbers, (
            f"error {rel_gd:.1%} from fixed-step GD on average over k; prediction gap "
            f"{gap_gd:.4f} = {gap_gd / gd_mse:.1%} of GD's mse {gd_mse:.3f}; gap to least "
            f"squares {gap_ls:.3f}"
        ), mse <= 0.9 * zero, f"the layer did not learn (mse {mse:.3f} vs the zero "
           f"predictor's {zero:.3f}; needs <= 0.9 x)")  # fmt: skip


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
    for parities. Inconclusive when the conjunction model is not at least 0.1 more
    accurate than always answering the majority label: a setup that learns nothing is
    also "far from optimal" on parities."""

    #: Accuracy over the majority-label baseline that shows the conjunction model learned.
    learned_margin = 0.1

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
        majority = c.mean(cl, "baselines.majority.accuracy")
        numbers["conjunction: majority-label accuracy"] = majority
        numbers["parity: majority-label accuracy"] = p.mean(pl, "baselines.majority.accuracy")
        conj_acc = numbers["conjunction: model accuracy"]
        return Verdict.decide(
            conj <= 0.1 and par >= 0.2,
            numbers,
            f"gap to optimal: conjunctions {conj:.3f} (needs <= 0.1), parities {par:.3f} "
            f"(needs >= 0.2)",
            conj_acc >= majority + self.learned_margin,
            f"the conjunction model did not learn (accuracy {conj_acc:.3f} vs "
            f"{majority:.3f} for the majority label; needs +{self.learned_margin})",
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
    in context, on paired tokens ``[q_t, q_{t-1}, x_t]`` (the lag window ``q_t`` that
    forecasts ``x_{t+1}``, then the previous regression pair, i.e. the Hankel column
    ``(x_{t-2}, x_{t-1}, x_t)`` of Zhou et al.), so that one layer can regress on the
    lags at all (with scalar tokens it cannot form the products ``x_{s-i} x_s``). Holds
    when, once the least-squares AR(2) fit is well posed (``k >= 2p + 4`` values), the
    model's error is not lower than that fit's (ratio ≥ 0.95).

    A model that learned nothing does not beat least squares either, so the verdict
    needs evidence of learning: on the same positions the model must close at least
    half (``learned_share``) of the gap between the better trivial forecast (zero or
    the last value) and the oracle (the true coefficients), else the check is
    inconclusive. Measured at quick size with a 512-series evaluation: 1 step of
    training closes 9% of it, 30 steps (the quick run) 42-45%, 100 steps 56%; the last
    full run (3,000 steps) 69%."""

    #: Share of the trivial-to-oracle gap the model must close to count as trained.
    learned_share = 0.5

    claim = (
        "For in-context forecasting of AR(p) series, linear self-attention does not beat the "
        "least-squares AR(p) predictor fitted on the same context."
    )

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "icl_ar", "order": 2, "n_points": 40, "tokens": "paired"}
        train = {"steps": 3000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "eval_size": 512,
                 "weight_decay": 0.0}  # fmt: skip
        if quick:
            train = quick_train(eval_size=512)  # 32 series left its learning check at noise
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "icl_ar_least_squares", "model": LSA_MODEL, "task": task, "train": train}
        return {"main": Comparison(base, [("model.n_layers", ["1"])], seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = r.variants[0].label
        ratio = r.mean(label, "relative_to_least_squares")
        last = max(int(k.split(".")[1]) for k in r.summary[label]["id"] if k.startswith("by_k."))
        # the all-position least-squares mse is dominated by near-singular fits on the
        # first rows (see icl_series); the errors at the full context are the readable ones
        numbers = {"model / least squares (posed)": ratio, "model mse": r.mean(label, "mse"),
                   "least squares mse (all positions)": r.mean(label, "baselines.least_squares.mse"),
                   "oracle mse": r.mean(label, "baselines.oracle.mse"),
                   f"model mse, {last} values": r.mean(label, f"by_k.{last}"),
                   f"least squares mse, {last} values":
                       r.mean(label, f"baselines.least_squares.by_k.{last}"),
                   f"oracle mse, {last} values": r.mean(label, f"baselines.oracle.by_k.{last}")}  # fmt: skip
        p = int(r.base.task.params["order"])
        posed = [k for k in range(2 * p + 4, last + 1) if f"by_k.{k}" in r.summary[label]["id"]]

        def posed_mean(prefix: str) -> float:
            return sum(r.mean(label, f"{prefix}by_k.{k}") for k in posed) / len(posed)

        model = posed_mean("")
        trivial = min(posed_mean("baselines.zero."), posed_mean("baselines.last_value."))
        oracle = posed_mean("baselines.oracle.")
        closed = (trivial - model) / (trivial - oracle) if trivial > oracle else float("-inf")
        numbers |= {"model mse (posed)": model, "best trivial forecast mse (posed)": trivial,
                    "oracle mse (posed)": oracle,
                    "share of the trivial-to-oracle gap closed (posed)": closed}  # fmt: skip
        return Verdict.decide(
            ratio >= 0.95,
            numbers,
            f"model / least-squares AR fit = {ratio:.3f} (holds at >= 0.95); the model closes "
            f"{closed:.0%} of the gap from the best trivial forecast ({trivial:.3f}) to the "
            f"oracle ({oracle:.3f})",
            closed >= self.learned_share,
            f"the model did not learn (needs >= {self.learned_share:.0%} of that gap closed)",
        )
