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

``level`` is the target coverage (``0.9`` for 90%, i.e. ``1 - alpha``). Each function
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
