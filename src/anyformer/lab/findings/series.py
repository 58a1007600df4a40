"""Findings about time-series tokenisations on the ``forecast`` task.

Every model here is a small pre-norm encoder with RevIN (Kim et al., 2022) and the
``forecast`` head; the checks read the ``id`` split's ``mse`` (normalised scale, every
test window) and the task's baselines on the same windows (``baselines.<name>.mse``:
``last_value``, ``seasonal_naive``, ``linear``, ``optimal``). A comparison decides only
when its models learned something: the better model's MSE is below ``LEARNED`` (90%)
of a trivial forecast's (the last value; for seasonal data the seasonal naive one).
"""

from __future__ import annotations

from typing import Any

from anyformer.components.embedders.series import ITRANSFORMER, PATCHTST
from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train
from anyformer.registry import NoParams, register

#: a comparison learned something when its better model is below this fraction of the
#: trivial forecast's MSE
LEARNED = 0.9


def _forecast(
    name: str, task: dict[str, Any], quick: bool, steps: int = 400, d_model: int = 32
) -> dict[str, Any]:
    """A base experiment on ``forecast`` (one training thread, RevIN, learned positions)."""
    model = {"kind": "encoder", "embedder": {"name": "points", "revin": True},
             "position": "learned", "d_model": d_model, "n_layers": 2, "n_heads": 4,
             "max_len": task["lookback"], "head": "forecast"}  # fmt: skip
    train = {"steps": steps, "batch_size": 32, "lr": 1e-3, "warmup_steps": 30, "eval_size": 32,
             "threads": 1}  # fmt: skip
    if quick:
        model |= {"d_model": 16, "n_layers": 1, "n_heads": 2}
        train = quick_train(lr=1e-3, threads=1)
    train |= {"eval_every": 100000, "checkpoint_every": 100000}
    return {"name": name, "model": model, "task": {"name": "forecast", **task}, "train": train}


def _mse(r: CompareResult, label: str, baseline: str | None = None) -> float:
    return r.mean(label, "mse" if baseline is None else f"baselines.{baseline}.mse")


def _lead(ahead: float, behind: float) -> float:
    """How much lower ``ahead``'s MSE is than ``behind``'s, relative: ``1 - ahead / behind``."""
    return 1.0 - ahead / behind if behind > 0 else 0.0


POINTS = "{name: points, revin: true}:learned"
VARIATES = "{name: variates, revin: true}:none"


@register(
    "finding",
    "inverted_variate_tokens",
    paper=ITRANSFORMER,
    summary="one token per variate (iTransformer) forecasts multivariate series with "
    "cross-variate structure better than one token per time step",
    params=NoParams,
)
class InvertedVariateTokens(Finding):
    """Two small encoders (d_model 32, 2 layers, RevIN, ``forecast`` head) that differ only
    in the tokens: ``points`` (one token per time step, a linear map of its C values,
    learned positions, flatten head) and ``variates`` (iTransformer: one token per variate,
    a linear map of its whole lookback, no positions, one projection per variate token).
    Two comparisons: ``var``, a generated 8-variate VAR(2) (10,000 steps, lookback 32,
    horizon 8) whose random coefficients are mostly cross-variate (56 of each lag's 64),
    and ``macrodata``, statsmodels' 6 US macro series (quarterly growth rates and
    inflation, lookback 12, horizon 4; about 130 training and 40 test windows). Holds when
    ``variates``' mean ``id`` MSE over the seeds is at least ``lead`` (5%) below
    ``points``' on both. Inconclusive when a comparison's better model is not below 90%
    of the last value's MSE (nothing learned), or when the VAR has too little
    cross-variate structure to show (the per-variate ``linear`` baseline within 5% of the
    ``optimal`` forecast: a variate's own past then predicts it as well as all of them)."""

    claim = (
        "On multivariate series with cross-variate structure, inverted tokens (one token per "
        "variate over the whole lookback, iTransformer) forecast better than one token per "
        "time step."
    )
    lead = 0.05
    #: the VAR shows cross-variate structure when linear / optimal MSE - 1 is at least this
    structure = 0.05

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        seeds = 1 if quick else 2
        axes = [("model.embedder,model.position", [POINTS, VARIATES])]
        var = {"data": "var", "variates": 8, "order": 2, "length": 1000 if quick else 10000,
               "lookback": 32, "horizon": 8}  # fmt: skip
        macro = {"data": "macrodata", "lookback": 12, "horizon": 4}
        return {
            "var": Comparison(_forecast("inverted_variate_tokens", var, quick), axes, seeds),
            "macrodata": Comparison(
                _forecast("inverted_variate_tokens", macro, quick), axes, seeds
            ),
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        numbers: dict[str, float] = {}
        leads, undecided = {}, []
        for key in ("var", "macrodata"):
            r = results[key]
            points, variates = (v.label for v in r.variants)
            p, v = _mse(r, points), _mse(r, variates)
            last, linear = _mse(r, points, "last_value"), _mse(r, points, "linear")
            numbers |= {f"{key} points mse": p, f"{key} variates mse": v,
                        f"{key} last_value mse": last, f"{key} linear mse": linear}  # fmt: skip
            leads[key] = _lead(v, p)
            numbers[f"{key} variates lead"] = leads[key]
            if min(p, v) > LEARNED * last:
                undecided.append(f"on {key} neither model is below 90% of the last value's mse")
        optimal = _mse(results["var"], results["var"].variants[0].label, "optimal")
        numbers["var optimal mse"] = optimal
        structure = numbers["var linear mse"] / optimal - 1.0 if optimal > 0 else 0.0
        numbers["var linear over optimal"] = structure
        if structure < self.structure:
            undecided.append(f"the VAR's per-variate linear forecast is within {structure:.1%} "
                             "of the optimal one (too little cross-variate structure)")  # fmt: skip
        reason = "; ".join(
            f"{k}: mse variates {numbers[f'{k} variates mse']:.4f} vs points "
            f"{numbers[f'{k} points mse']:.4f} (lead {leads[k]:+.1%}, needs >= {self.lead:.0%}; "
            f"last value {numbers[f'{k} last_value mse']:.4f}, linear "
            f"{numbers[f'{k} linear mse']:.4f}"
            + (f", optimal {optimal:.4f})" if k == "var" else ")")
            for k in leads
        )
        return Verdict.decide(
            all(lead >= self.lead for lead in leads.values()),
            numbers,
            reason,
            not undecided,
            "; ".join(undecided),
        )


PATCHES = "{name: patches_1d, patch_len: 16, stride: 8, revin: true}"


@register(
    "finding",
    "patching_needs_long_lookback",
    paper=PATCHTST,
    summary="patch tokens (PatchTST) beat point tokens at a long lookback, not at a short one",
    params=NoParams,
)
class PatchingNeedsLongLookback(Finding):
    """Two small encoders (d_model 32, 2 layers, RevIN, learned positions, flatten
    ``forecast`` head) that differ only in the tokens: ``points`` (one token per time
    step) and ``patches_1d`` (PatchTST: patches of 16 steps every 8, channel-independent),
    on a generated ``seasonal`` series (2 variates, period 24, trend + two harmonics +
    noise 0.3, 4,000 steps), horizon 24, at lookback 48 (5 patches) and 336 (41 patches),
    the lookbacks of PatchTST's study. Holds when ``patches_1d``'s mean ``id`` MSE over
    the seeds is at least ``lead`` (5%) below ``points``' at lookback 336 and less than
    that at lookback 48 (patching helps at the long lookback and not at the short one).
    Inconclusive when at either lookback the better model is not below 90% of the seasonal
    naive forecast's MSE (nothing learned)."""

    claim = (
        "Patching a series into subseries tokens (PatchTST) helps a Transformer forecaster at a "
        "long lookback and not at a short one."
    )
    lead = 0.05
    lookbacks = ("48", "336")

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"data": "seasonal", "variates": 2, "length": 1200 if quick else 4000,
                "lookback": 336, "horizon": 24}  # fmt: skip
        base = _forecast("patching_needs_long_lookback", task, quick, steps=300)
        axes = [("task.lookback", list(self.lookbacks)),
                ("model.embedder", ["{name: points, revin: true}", PATCHES])]  # fmt: skip
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        labels = [v.label for v in r.variants]  # lookback slowest: 48 points, 48 patches, ...
        numbers: dict[str, float] = {}
        leads, undecided = {}, []
        for i, lookback in enumerate(self.lookbacks):
            points, patches = labels[2 * i], labels[2 * i + 1]
            p, q = _mse(r, points), _mse(r, patches)
            naive = _mse(r, points, "seasonal_naive")
            numbers |= {f"lookback {lookback} points mse": p,
                        f"lookback {lookback} patches mse": q,
                        f"lookback {lookback} seasonal_naive mse": naive,
                        f"lookback {lookback} linear mse": _mse(r, points, "linear"),
                        f"lookback {lookback} optimal mse": _mse(r, points, "optimal")}  # fmt: skip
            leads[lookback] = _lead(q, p)
            numbers[f"lookback {lookback} patches lead"] = leads[lookback]
            if min(p, q) > LEARNED * naive:
                undecided.append(
                    f"at lookback {lookback} neither model is below 90% of the seasonal naive mse"
                )
        short, long = self.lookbacks
        reason = "; ".join(
            f"lookback {lb}: mse patches {numbers[f'lookback {lb} patches mse']:.4f} vs points "
            f"{numbers[f'lookback {lb} points mse']:.4f} (lead {leads[lb]:+.1%}; seasonal naive "
            f"{numbers[f'lookback {lb} seasonal_naive mse']:.4f}, linear "
            f"{numbers[f'lookback {lb} linear mse']:.4f}, optimal "
            f"{numbers[f'lookback {lb} optimal mse']:.4f})"
            for lb in self.lookbacks
        )
        reason += f"; needs a lead >= {self.lead:.0%} at {long} and < {self.lead:.0%} at {short}"
        return Verdict.decide(
            leads[long] >= self.lead and leads[short] < self.lead,
            numbers,
            reason,
            not undecided,
            "; ".join(undecided),
        )
