"""In-context forecasting of random stable AR(p) series.

Each prompt is one series of a random stationary autoregressive process of order
``p = order``::

    x_t = a_1 x_{t-1} + ... + a_p x_{t-p} + sigma * eps_t,   eps_t ~ N(0, 1).

The coefficients come from random roots: the characteristic polynomial
``z^p - a_1 z^{p-1} - ... - a_p`` has ``p // 2`` complex-conjugate pairs
``r e^{+-i theta}`` (``theta ~ U(0, pi)``) and, for odd ``p``, one real root ``+-r``, each
modulus ``r ~ U(root_min, root_max)``; every root inside the unit circle makes the
process stationary. ``sigma`` is chosen per series so that the stationary variance is
exactly 1 (from the Yule-Walker equations), and the series starts from (numerically)
the stationary distribution after a burn-in of ``ceil(log(1e-6) / log(r_max))`` steps
(at least 50) from zero, discarded.

Position ``t`` forecasts ``x_{t+1}``: ``targets`` ``[B, T]`` hold ``x_1 .. x_T``
(``targets[t] = x_{t+1}``), and ``loss_mask`` counts positions ``t >= p``, where at
least one full lag window has been seen besides the current value (so the
least-squares fit has at least one row). ``T = n_points``. The parameter ``tokens``
chooses the inputs:

- ``values`` (default): scalar tokens, ``inputs`` ``[B, T, 1]`` hold ``x_0 .. x_{T-1}``;
- ``paired``: ``inputs`` ``[B, T, 2p + 1]``, token ``t`` =
  ``[q_t, q_{t-1}, x_t]`` with the lag window ``q_t = (x_t, x_{t-1}, ..., x_{t-p+1})``
  (the regressors of the target ``x_{t+1}``, zeros before ``x_0``) followed by the
  previous completed regression pair: the lags of ``x_t`` and ``x_t`` itself, i.e. the
  Hankel column ``(x_{t-p}, ..., x_t)`` of Zhou et al. The pair part is zero while its
  lag window is incomplete (``t < p``), so the pairs in a prefix are exactly the rows of
  the least-squares fit below (see :func:`~anyformer.tasks.icl_common.pair_tokens`).
  With scalar tokens each key/value of a linear-attention layer holds one value, so
  one layer cannot form the products ``x_{s-i} x_s`` that a regression on the lags needs;
  with paired tokens it can.

Both layouts hold the same series for the same seed, so baselines and metrics are the
same numbers.

Baselines (``Batch.extras['baseline_<name>']``, ``[B, T]``, 0 at uncounted positions):

- ``least_squares``: the AR(p) coefficients fitted by least squares (no intercept: the
  process has mean 0) on ``x_0 .. x_t``, i.e. regressing ``x_s`` on
  ``(x_{s-1}, ..., x_{s-p})`` for ``s = p .. t``, then applied to the last ``p`` values;
  the minimum-norm solution while fewer than ``p`` rows exist;
- ``oracle``: the true coefficients (its error is the innovation variance
  ``sigma^2``, the floor);
- ``last_value``: ``x_t``; ``zero``: the mean, 0.

Metrics: ``mse`` / ``by_k`` (``k`` = number of values seen, ``t + 1``) of the model and
the baselines, ``relative_to_least_squares`` (the model's mean ``by_k`` over positions
where least squares has at least ``p + 4`` rows, ``t >= 2p + 3``, over least squares'
mean there; with fewer rows the error of an unregularised fit is heavy-tailed, with
infinite mean at ``p`` or ``p + 1`` rows, so short-context averages are dominated by
a few near-singular fits), ``relative_to_oracle``, and a curve of MSE against the
context length.

Splits: training series depend only on ``(seed, step)``; ``id`` from the same process
distribution by its own stream; ``ood`` shifts ``length`` (``ood_points`` values,
default ``2 * n_points``) or ``roots`` (moduli ``~ U(root_max, ood_root_max)``: more
persistent series, longer memory).

Paper: Zhou, Wang, Goel & Zhang, "Why Do Transformers Fail to Forecast Time Series
In-Context?" (2025): linear self-attention cannot beat the classical linear
(least-squares AR) predictor in expected MSE.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch
from anyformer.tasks.icl import least_squares_predict
from anyformer.tasks.icl_common import (
    PerK,
    PromptTask,
    check_ood_points,
    make_curve,
    ood_prompt_length,
    pair_tokens,
    scalar_output,
    vector_io,
)

TSF_ICL = Paper(
    "Why Do Transformers Fail to Forecast Time Series In-Context?",
    2025,
    "Zhou, Wang, Goel & Zhang",
)
BASELINES = ("least_squares", "oracle", "last_value", "zero")


# --------------------------------------------------------------------------- process
def coefficients_from_roots(
    modulus: torch.Tensor, angle: torch.Tensor, real_root: torch.Tensor | None
) -> torch.Tensor:
    """AR coefficients ``a`` ``[B, p]`` whose characteristic polynomial has these roots.

    ``modulus``/``angle`` ``[B, p // 2]``: conjugate pairs ``r e^{+-i theta}``;
    ``real_root`` ``[B]`` or None (odd ``p``). The polynomial is
    ``prod (z^2 - 2 r cos(theta) z + r^2) * (z - rho)`` ``= z^p + c_1 z^{p-1} + ...``
    and ``a_j = -c_j``.
    """
    b = modulus.shape[0]
    poly = torch.ones(b, 1, dtype=torch.float64)
    factors = [
        torch.stack([torch.ones_like(r), -2 * r * torch.cos(th), r**2], -1)
        for r, th in zip(modulus.double().unbind(1), angle.double().unbind(1))
    ]
    if real_root is not None:
        factors.append(torch.stack([torch.ones_like(real_root), -real_root], -1).double())
    for f in factors:
        out = torch.zeros(b, poly.shape[1] + f.shape[1] - 1, dtype=torch.float64)
        for j in range(f.shape[1]):
            out[:, j : j + poly.shape[1]] += f[:, j : j + 1] * poly
        poly = out
    return -poly[:, 1:]


def stationary_variance(coef: torch.Tensor) -> torch.Tensor:
    """``[B]``: ``Var(x_t)`` of the stationary AR process with unit innovation variance.

    Solves the Yule-Walker system ``gamma_h - sum_j a_j gamma_{|h-j|} = [h = 0]``,
    ``h = 0 .. p``, for the autocovariances ``gamma_0 .. gamma_p``.
    """
    b, p = coef.shape
    m = torch.eye(p + 1, dtype=torch.float64).expand(b, p + 1, p + 1).clone()
    for h in range(p + 1):
        for j in range(1, p + 1):
            m[:, h, abs(h - j)] -= coef[:, j - 1].double()
    rhs = torch.zeros(b, p + 1, 1, dtype=torch.float64)
    rhs[:, 0] = 1.0
    return torch.linalg.solve(m, rhs)[:, 0, 0]


def simulate(
    coef: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, burn_in: int
) -> torch.Tensor:
    """``[B, L - burn_in]``: ``x_t = a . (x_{t-1}, ..., x_{t-p}) + sigma eps_t`` from zeros.

    ``eps`` ``[B, L]`` drives all ``L`` steps; the first ``burn_in`` are dropped.
    """
    b, p = coef.shape
    coef = coef.double()
    lags = torch.zeros(b, p, dtype=torch.float64)  # (x_{t-1}, ..., x_{t-p})
    out = []
    for t in range(eps.shape[1]):
        x = (coef * lags).sum(-1) + sigma.double() * eps[:, t].double()
        lags = torch.cat([x.unsqueeze(-1), lags[:, :-1]], -1)
        out.append(x)
    return torch.stack(out, 1)[:, burn_in:]


def lag_matrix(series: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, T, p]``: row ``t`` is ``(x_t, x_{t-1}, ..., x_{t-p+1})`` (zeros before 0)."""
    padded = torch.nn.functional.pad(series, (p - 1, 0))
    return torch.stack([padded[:, p - 1 - j : p - 1 - j + series.shape[1]] for j in range(p)], -1)


def ar_least_squares_predict(series: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, T]``: entry ``t >= p`` predicts ``x_{t+1}`` with the AR(p) least-squares fit
    on ``x_0 .. x_t`` (min-norm while underdetermined); entries ``t < p`` are 0.

    ``series`` ``[B, T]`` holds ``x_0 .. x_{T-1}``. The fit regresses ``x_s`` on
    ``(x_{s-1}, ..., x_{s-p})`` for ``s = p .. t``: with at least ``p`` rows it solves
    the normal equations (accumulated Gram matrix), before that it uses the
    pseudo-inverse.
    """
    series = series.double()
    b, length = series.shape
    lags = lag_matrix(series, p)  # lags[t] = (x_t .. x_{t-p+1}) predicts x_{t+1}
    out = torch.zeros_like(series)
    gram = torch.zeros(b, p, p, dtype=torch.float64)
    moment = torch.zeros(b, p, dtype=torch.float64)
    for t in range(p, length):
        row = lags[:, t - 1]  # the regressors of target x_t (row s = t)
        gram = gram + row.unsqueeze(-1) * row.unsqueeze(-2)
        moment = moment + row * series[:, t].unsqueeze(-1)
        if t - p + 1 >= p:
            coef = torch.linalg.solve(gram, moment.unsqueeze(-1))[..., 0]
            out[:, t] = (coef * lags[:, t]).sum(-1)
        else:
            xs, ys = lags[:, p - 1 : t], series[:, p : t + 1]
            out[:, t] = least_squares_predict(xs, ys, lags[:, t])
    return out


# --------------------------------------------------------------------------- params
class ICLARParams(BaseModel):
    """Parameters of in-context AR(p) forecasting.

    - ``order``: ``p``, the AR order (also the order of the least-squares baseline).
    - ``n_points``: values per training and ``id`` series (``T``).
    - ``root_min``, ``root_max``: range of the root moduli (``root_max < 1``).
    - ``ood``: what the ``ood`` split shifts: ``length`` or ``roots``.
    - ``ood_points``: values per ``ood`` series (``ood='length'`` only); None means
      ``2 * n_points``.
    - ``ood_root_max``: roots of ``ood`` series have moduli in
      ``(root_max, ood_root_max)`` (``ood='roots'`` only); None means 0.98.
    - ``tokens``: the input layout, ``values`` (one scalar per token) or ``paired``
      (lag window and previous regression pair per token); see the module docstring.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: int = Field(2, ge=1, le=16)
    n_points: int = Field(40, ge=2)
    root_min: float = Field(0.5, ge=0.0, lt=1.0)
    root_max: float = Field(0.9, gt=0.0, le=0.99, validate_default=True)
    ood: Literal["length", "roots"] = "length"
    ood_points: int | None = Field(None, ge=3)
    ood_root_max: float | None = Field(None, gt=0.0, le=0.995)
    tokens: Literal["values", "paired"] = "values"

    @field_validator("n_points")
    @classmethod
    def _n_points(cls, v: int, info: ValidationInfo) -> int:
        p = info.data.get("order")
        if p is not None and v <= p:
            raise ValueError(f"n_points={v} must be > order={p} (nothing to forecast)")
        return v

    @field_validator("root_max")
    @classmethod
    def _root_max(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("root_min")
        if lo is not None and v <= lo:
            raise ValueError(f"root_max={v} must be > root_min={lo}")
        return v

    @field_validator("ood_points")
    @classmethod
    def _ood_points(cls, v: int | None, info: ValidationInfo) -> int | None:
        return check_ood_points(v, info.data.get("ood"), info.data.get("n_points"), "series")

    @field_validator("ood_root_max")
    @classmethod
    def _ood_root_max(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return v
        if info.data.get("ood") != "roots":
            raise ValueError(f"ood_root_max={v} applies only with ood='roots'")
        hi = info.data.get("root_max")
        if hi is not None and v <= hi:
            raise ValueError(f"ood_root_max={v} must be > root_max={hi}")
        return v

    @property
    def ood_length(self) -> int:
        return ood_prompt_length(self.ood, self.ood_points, self.n_points)

    @property
    def ood_roots(self) -> tuple[float, float]:
        """Root modulus range of ``ood`` series."""
        if self.ood != "roots":
            return (self.root_min, self.root_max)
        hi = self.ood_root_max if self.ood_root_max is not None else 0.98
        return (self.root_max, hi)


# --------------------------------------------------------------------------- task
@register(
    "task",
    "icl_ar",
    paper=TSF_ICL,
    summary="in-context forecasting of random stable AR(p) series beside least-squares AR fit",
    params=ICLARParams,
    caps=Capabilities(),
)
class ICLAR(PromptTask):
    """Forecast ``x_{t+1}`` from ``x_0 .. x_t`` of a random stationary AR(p) series.

    Metrics (:meth:`score`): ``mse``, ``by_k`` (``{str(t + 1): mse}``), ``baselines``
    (``{name: {"mse", "by_k"}}``), ``relative_to_least_squares``, ``relative_to_oracle``
    and ``curve`` (see the module docstring). ``extras`` hold ``coef`` ``[B, p]`` and
    ``sigma`` ``[B]`` of each series.
    """

    headline: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    params: ICLARParams

    def __init__(self, params: ICLARParams, seed: int = 0) -> None:
        lo, hi = params.ood_roots
        if params.ood == "roots" and hi <= lo:
            raise ValueError(
                f"ood='roots' needs ood_root_max > root_max={params.root_max}; "
                f"the default ood_root_max is 0.98, set it explicitly (at most 0.995)"
            )
        super().__init__(params, seed)

    def model_io(self) -> dict[str, Any]:
        p = self.params
        return vector_io(2 * p.order + 1 if p.tokens == "paired" else 1)

    def max_seq_len(self) -> int:
        return max(self.params.n_points, self.params.ood_length)

    # ------------------------------------------------------------ data
    def sample(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        p = self.params
        length = p.ood_length if split == "ood" else p.n_points
        lo, hi = p.ood_roots if split == "ood" else (p.root_min, p.root_max)
        pairs = p.order // 2

        def moduli(*shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

        modulus = moduli(n, pairs)
        angle = math.pi * torch.rand(n, pairs, generator=gen, dtype=torch.float64)
        real = None
        if p.order % 2:
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
            real = sign * moduli(n)
        coef = coefficients_from_roots(modulus, angle, real)
        sigma = stationary_variance(coef).rsqrt()
        burn = max(50, math.ceil(math.log(1e-6) / math.log(hi)))
        eps = torch.randn(n, burn + length + 1, generator=gen, dtype=torch.float64)
        series = simulate(coef, sigma, eps, burn)
        return {"series": series.float(), "coef": coef.float(), "sigma": sigma.float()}

    def to_batch(self, data: dict[str, torch.Tensor]) -> Batch:
        series = data["series"]
        p = self.params.order
        t = series.shape[1] - 1
        loss_mask = torch.zeros(series.shape[0], t, dtype=torch.bool)
        loss_mask[:, p:] = True
        if self.params.tokens == "paired":
            complete = torch.arange(t) >= p - 1  # the lag window q_t is full
            inputs = pair_tokens(lag_matrix(series[:, :t], p), series[:, 1:], complete)
        else:
            inputs = series[:, :t].unsqueeze(-1)
        return Batch(
            inputs=inputs,
            targets=series[:, 1:],
            loss_mask=loss_mask,
            extras={"coef": data["coef"], "sigma": data["sigma"]},
        )

    def unpack(self, batch: Batch) -> dict[str, torch.Tensor]:
        # channel 0 is x_t in both layouts
        series = torch.cat([batch.inputs[..., 0], batch.targets[:, -1:]], 1)
        return {"series": series, "coef": batch.extras["coef"], "sigma": batch.extras["sigma"]}

    def baselines(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: [B, T]}`` forecasts of ``x_{t+1}`` (float64), 0 at positions ``t < p``."""
        p = self.params.order
        x = data["series"][:, :-1].double()
        counted = torch.zeros_like(x, dtype=torch.bool)
        counted[:, p:] = True
        oracle = (lag_matrix(x, p) * data["coef"].double().unsqueeze(1)).sum(-1)
        return {
            "least_squares": ar_least_squares_predict(x, p),
            "oracle": torch.where(counted, oracle, 0.0),
            "last_value": torch.where(counted, x, 0.0),
            "zero": torch.zeros_like(x),
        }

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Squared forecast errors; ``outputs`` ``[B, T, 1]`` or ``[B, T]``."""
        p = self.params.order
        names = ("model", *BASELINES)
        acc = PerK()
        for out, batch in zip(outputs, batches):
            pred = scalar_output(out).cpu()
            y = batch.targets.double().cpu()
            mask = batch.loss_mask.cpu()
            preds = {"model": pred, **self.baselines_of(batch)}
            for name in names:
                acc.add(name, (preds[name].double() - y) ** 2, mask)
        posed = list(range(2 * p + 3, acc.size("model")))
        model_posed = acc.mean_over("model", posed)
        ls_posed = acc.mean_over("least_squares", posed)
        oracle = acc.mean("oracle")
        by_k = {n: acc.by_k(n) for n in names}
        return {
            **acc.summary("model", "mse"),
            "baselines": {n: acc.summary(n, "mse") for n in BASELINES},
            "relative_to_least_squares": (
                model_posed / ls_posed if math.isfinite(ls_posed) and ls_posed > 0 else None
            ),
            "relative_to_oracle": acc.mean("model") / oracle if oracle > 0 else None,
            "curve": make_curve("context length", "mse", by_k),
        }
