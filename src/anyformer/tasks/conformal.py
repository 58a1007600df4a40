"""Split-conformal prediction intervals (pure functions on arrays).

A model is calibrated on ``n`` held-out points by a non-conformity score ``s(x, y)``;
with ``k = ceil((n + 1) * level)`` and ``q`` the ``k``-th smallest calibration score,
the interval ``{y : s(x, y) <= q}`` covers a fresh exchangeable point with probability
at least ``level`` (Vovk et al. 2005; Lei et al., "Distribution-Free Predictive Inference
for Regression", 2018). ``k > n`` gives an infinite interval. Three scores:

- :func:`absolute`: ``|y - mu|`` of a point regressor; interval ``mu +- q``.
- :func:`normalized`: ``|y - mu| / sigma`` of a Gaussian (mean, log-variance) head;
  interval ``mu +- q sigma``, so its width follows the predicted noise.
- :func:`cqr`: conformalised quantile regression (Romano, Patterson & Candes, 2019):
  ``max(lo - y, y - hi)`` of a quantile head's lower and upper quantiles; interval
  ``[lo - q, hi + q]``.

:func:`calibrate_by_group` calibrates within each group of the points (Mondrian
conformal), for coverage per group. ``level`` is the target coverage (``0.9`` for 90%, i.e. ``1 - alpha``). Each function
returns a :class:`Calibrated` whose :meth:`~Calibrated.interval` maps test predictions
to bounds and :meth:`~Calibrated.evaluate` reports empirical coverage and mean width.
:func:`predictions` turns a head's outputs into the arrays the scores read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["absolute", "normalized", "cqr"]


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def check_level(level: float) -> float:
    """``level`` when strictly between 0 and 1; else ``ValueError`` naming it."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"conformal level={level} must lie strictly between 0 and 1 (e.g. 0.9)")
    return float(level)


def rank(n: int, level: float) -> int:
    """``ceil((n + 1) * level)``: which smallest calibration score is the threshold
    (robust to the rounding of ``(n + 1) * level`` in floating point)."""
    x = (n + 1) * check_level(level)
    return math.ceil(x - 1e-9 * max(1.0, x))


def score_quantile(scores: Any, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest of ``n`` scores (``inf`` when that exceeds
    ``n``: too few calibration points for the level)."""
    s = np.sort(_array(scores).reshape(-1))
    if s.size == 0:
        raise ValueError("conformal calibration needs at least one calibration point")
    if not np.isfinite(s).all():
        raise ValueError("conformal calibration scores contain NaN or infinite values")
    k = rank(s.size, level)
    return float(s[k - 1]) if k <= s.size else math.inf


@dataclass(frozen=True)
class Calibrated:
    """A calibrated interval rule: ``kind`` of score, its threshold ``q`` at ``level``
    from ``n`` calibration points."""

    kind: Kind
    level: float
    q: float
    n: int

    def interval(self, *preds: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` for test predictions: ``mu`` (absolute), ``mu, sigma``
        (normalized) or ``lo, hi`` (cqr)."""
        a, b = _preds(self.kind, preds)
        if self.kind == "absolute":
            return a - self.q, a + self.q
        if self.kind == "normalized":
            return a - self.q * b, a + self.q * b
        return a - self.q, b + self.q

    def evaluate(self, y: Any, *preds: Any) -> dict[str, float]:
        """Empirical ``coverage`` (fraction of ``y`` inside its interval) and mean
        ``width`` on test points, beside the ``level``."""
        lo, hi = self.interval(*preds)
        y = _array(y)
        if y.shape != lo.shape:
            raise ValueError(f"targets {y.shape} and predictions {lo.shape} differ in shape")
        inside = (y >= lo) & (y <= hi)
        return {
            "level": self.level,
            "coverage": float(inside.mean()),
            "width": float((hi - lo).mean()),
        }


def _preds(kind: Kind, preds: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    want = 1 if kind == "absolute" else 2
    if len(preds) != want:
        raise ValueError(
            f"{kind} conformal intervals read {want} prediction arrays, got {len(preds)}"
        )
    a = _array(preds[0])
    b = _array(preds[1]) if want == 2 else a
    if a.shape != b.shape:
        raise ValueError(f"{kind}: prediction arrays differ in shape, {a.shape} vs {b.shape}")
    if kind == "normalized" and (b <= 0).any():
        raise ValueError("normalized conformal scores need sigma > 0")
    return a, b


def scores(kind: Kind, y: Any, *preds: Any) -> np.ndarray:
    """The non-conformity score of each point (see the module docstring)."""
    a, b = _preds(kind, preds)
    y = _array(y)
    if y.shape != a.shape:
        raise ValueError(f"targets {y.shape} and predictions {a.shape} differ in shape")
    if kind == "absolute":
        return np.abs(y - a)
    if kind == "normalized":
        return np.abs(y - a) / b
    return np.maximum(a - y, y - b)


def calibrate(kind: Kind, y: Any, *preds: Any, level: float) -> Calibrated:
    """Calibrate a ``kind`` score on calibration targets ``y`` and predictions."""
    s = scores(kind, y, *preds)
    return Calibrated(kind, check_level(level), score_quantile(s, level), int(s.size))


def absolute(mu: Any, y: Any, level: float) -> Calibrated:
    """Split conformal for a point regressor: ``|y - mu|``, interval ``mu +- q``."""
    return calibrate("absolute", y, mu, level=level)


def normalized(mu: Any, sigma: Any, y: Any, level: float) -> Calibrated:
    """Split conformal for a Gaussian head: ``|y - mu| / sigma``, interval ``mu +- q sigma``."""
    return calibrate("normalized", y, mu, sigma, level=level)


def cqr(lo: Any, hi: Any, y: Any, level: float) -> Calibrated:
    """Conformalised quantile regression: ``max(lo - y, y - hi)``, interval
    ``[lo - q, hi + q]`` (``q`` may be negative, shrinking too wide quantiles)."""
    return calibrate("cqr", y, lo, hi, level=level)


def predictions(kind: Kind, outputs: Any) -> tuple[np.ndarray, ...]:
    """The prediction arrays a score reads from a head's outputs: a point regressor's
    values ``[...]`` or ``[..., 1]`` -> ``(mu,)``; a ``gaussian`` head's ``[..., 2]``
    (mean, log-variance) -> ``(mu, sigma)``; a ``quantile`` head's ``[..., L]`` -> its
    lowest and highest quantiles ``(lo, hi)`` (for level ``1 - alpha`` train it at
    ``alpha / 2`` and ``1 - alpha / 2``)."""
    out = _array(outputs)
    if kind == "absolute":
        return (out[..., 0] if out.ndim and out.shape[-1] == 1 else out,)
    if kind == "normalized":
        if out.shape[-1] != 2:
            raise ValueError(f"gaussian outputs are [..., 2] (mean, log-variance), got {out.shape}")
        return out[..., 0], np.exp(0.5 * out[..., 1])
    if out.shape[-1] < 2:
        raise ValueError(f"cqr needs at least two quantiles per target, got {out.shape}")
    return out[..., 0], out[..., -1]


@dataclass(frozen=True)
class GroupCalibrated:
    """Group-conditional (Mondrian) split conformal: one :class:`Calibrated` rule per
    group of the calibration points (Vovk et al. 2005), so coverage holds within each
    group, not only on average ("Can Transformers Do Enumerative Geometry?" calibrates
    per partition of its inputs this way). A test point of a group
    without calibration points is refused."""

    rules: dict[Any, Calibrated]

    def _split(self, groups: Any) -> list[tuple[Calibrated, np.ndarray]]:
        g = np.asarray(groups)
        unknown = sorted(set(g.reshape(-1).tolist()) - set(self.rules), key=str)
        if unknown:
            raise ValueError(
                f"groups {unknown} have no calibration points (calibrated: "
                f"{sorted(self.rules, key=str)})"
            )
        return [(rule, g == key) for key, rule in self.rules.items()]

    def interval(self, groups: Any, *preds: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``: each point's bounds from its group's rule."""
        arrays = [_array(p) for p in preds]
        lo, hi = np.empty_like(arrays[0]), np.empty_like(arrays[0])
        for rule, where in self._split(groups):
            a, b = rule.interval(*(p[where] for p in arrays))
            lo[where], hi[where] = a, b
        return lo, hi

    def evaluate(self, y: Any, groups: Any, *preds: Any) -> dict[str, Any]:
        """Overall ``coverage`` and ``width``, and the same per group (``groups``)."""
        y = _array(y)
        lo, hi = self.interval(groups, *preds)
        inside, width = (y >= lo) & (y <= hi), hi - lo
        per = {
            key: {"coverage": float(inside[w].mean()), "width": float(width[w].mean())}
            for key, w in ((k, np.asarray(groups) == k) for k in self.rules)
            if w.any()
        }
        level = next(iter(self.rules.values())).level
        return {
            "level": level,
            "coverage": float(inside.mean()),
            "width": float(width.mean()),
            "groups": per,
        }


def calibrate_by_group(
    kind: Kind, y: Any, groups: Any, *preds: Any, level: float
) -> GroupCalibrated:
    """Calibrate a ``kind`` score separately within each value of ``groups``."""
    g = np.asarray(groups)
    arrays = [_array(y), *(_array(p) for p in preds)]
    if g.shape != arrays[0].shape:
        raise ValueError(f"groups {g.shape} and targets {arrays[0].shape} differ in shape")
    rules = {
        key: calibrate(kind, *(a[g == key] for a in arrays), level=level)
        for key in np.unique(g).tolist()
    }
    return GroupCalibrated(rules)


#: The score that fits each head's outputs.
HEAD_KINDS: dict[str, Kind] = {
    "regress": "absolute",
    "token_regress": "absolute",
    "gaussian": "normalized",
    "token_gaussian": "normalized",
    "quantile": "cqr",
    "token_quantile": "cqr",
}


def kind_for_head(head: str) -> Kind:
    """The conformal score for outputs of ``head``; ``ValueError`` naming the heads that
    have one."""
    if head not in HEAD_KINDS:
        raise ValueError(
            f"no conformal score for head '{head}' (conformal intervals are for heads: "
            f"{', '.join(HEAD_KINDS)})"
        )
    return HEAD_KINDS[head]


def head_report(
    head: str,
    calibration: tuple[Any, Any],
    tests: dict[str, tuple[Any, Any]],
    level: float,
) -> dict[str, Any]:
    """Calibrate on ``calibration = (outputs, targets)`` of a ``head`` and report, per
    test split ``name -> (outputs, targets)``, the empirical coverage and mean width
    beside the ``level``; outputs in the head's layout (:func:`predictions`), targets
    of the outputs' shape less the values axis, only counted positions."""
    kind = kind_for_head(head)
    outputs, y = calibration
    cal = calibrate(kind, y, *predictions(kind, outputs), level=level)
    report: dict[str, Any] = {"kind": kind, "level": cal.level, "q": cal.q, "n_calibration": cal.n}
    for name, (out, target) in tests.items():
        metrics = cal.evaluate(target, *predictions(kind, out))
        report[name] = {"coverage": metrics["coverage"], "width": metrics["width"]}
    return report
