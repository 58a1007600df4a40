"""In-context linear regression, scored against the classical estimators on the same prompts.

A prompt holds ``k`` pairs ``(x_i, y_i)`` of one random linear function:
``w ~ N(0, I_d)``, ``x_i ~ N(0, I_d)``, ``y_i = w . x_i + noise * eps_i`` with
``eps_i ~ N(0, 1)``. A causal model predicts each ``y_i`` from the ``i - 1`` earlier
pairs and ``x_i``. The parameter ``tokens`` chooses how a prompt is written:

- ``interleaved`` (default): ``2k`` tokens of size ``d + 1``, an x-token ``[x_i, 0]``
  followed by a y-token ``[0, ..., 0, y_i]`` (Garg et al.); ``y_i`` is predicted at the
  x-token. Batch: ``inputs`` ``[B, 2k, d + 1]``; ``targets`` ``[B, 2k]`` with ``y_i`` at
  x-token positions ``2(i - 1)`` and 0 at y-tokens; ``loss_mask`` True at x-tokens only.
- ``paired``: ``k`` tokens of size ``2d + 1``, token ``i`` = ``[x_i, x_{i-1}, y_{i-1}]``
  (the query and the previous completed pair; zeros in the pair part of the first
  token, see :func:`~anyformer.tasks.icl_common.pair_tokens`); ``y_i`` is predicted at
  token ``i``. Batch: ``inputs`` ``[B, k, 2d + 1]``; ``targets`` ``[B, k]`` = ``y_i``;
  ``loss_mask`` all True. This is the layout under which one layer of linear
  self-attention can implement a gradient-descent step (von Oswald et al., 2023, whose
  tokens hold a whole pair): each key/value comes from one token, so with interleaved
  tokens no single layer can form the products ``x_j y_j`` that the step needs.

Both layouts hold the same prompts for the same seed (only the layout differs), so the
baselines and every metric are the same numbers; ``padding_mask`` and ``group`` are
None; ``extras`` (evaluation batches only) hold ``baseline_<name>``, ``[B, k]``, the
prediction of each baseline for ``y_1 .. y_k`` from the earlier pairs of the prompt.

Errors are reported divided by ``d`` (as in Garg et al.), so the zero predictor scores
about 1 (exactly ``(d + noise^2) / d`` in expectation) on the training distribution.

Splits: training prompts depend only on ``(seed, step)``; the ``id`` split is drawn from
the same distribution by its own random stream (real-valued prompts, so it shares no
prompt with training except with probability 0); the ``ood`` split shifts one thing,
chosen by ``ood``: ``length`` (prompts of ``ood_points`` pairs), ``covariate``
(``x ~ N(0, s^2 I)``) or ``task`` (``w ~ N(0, s^2 I)``), with ``s = ood_scale``.

Paper: Garg, Tsipras, Liang & Valiant, "What Can Transformers Learn In-Context? A Case
Study of Simple Function Classes" (2022).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, torch_generator
from anyformer.tasks.icl_common import (
    PerK,
    check_eval_request,
    check_ood_points,
    eval_batches,
    examples_curve,
    interleave_pairs,
    linear_prompts,
    ood_prompt_length,
    pair_tokens,
    scalar_output,
    stored_baselines,
    vector_io,
)

GARG = Paper(
    "What Can Transformers Learn In-Context? A Case Study of Simple Function Classes",
    2022,
    "Garg, Tsipras, Liang & Valiant",
)
#: Baselines reported beside the model, in this order.
BASELINES = ("least_squares", "ridge", "gd_one_step", "gd_fixed_step", "zero")


# --------------------------------------------------------------------------- baselines
def least_squares_predict(
    xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor
) -> torch.Tensor:
    """Minimum-norm least squares: ``x_query . pinv(X) y``.

    ``xs`` ``[..., n, d]``, ``ys`` ``[..., n]``, ``x_query`` ``[..., d]`` -> ``[...]``.
    With ``n < d`` the fit is underdetermined and the pseudo-inverse picks the
    interpolating ``w`` of least norm; with ``n = 0`` the prediction is 0.
    """
    if xs.shape[-2] == 0:
        return x_query.new_zeros(x_query.shape[:-1])
    w = torch.linalg.pinv(xs) @ ys.unsqueeze(-1)
    return (x_query.unsqueeze(-2) @ w)[..., 0, 0]


def ridge_predict(
    xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor, lam: float
) -> torch.Tensor:
    """Ridge regression: ``w = (X^T X + lam I)^-1 X^T y``, minimising
    ``||X w - y||^2 + lam ||w||^2``. For ``w ~ N(0, I)`` and noise std ``s`` the choice
    ``lam = s^2`` gives the posterior mean, the Bayes-optimal predictor."""
    if xs.shape[-2] == 0:
        return x_query.new_zeros(x_query.shape[:-1])
    d = xs.shape[-1]
    xt = xs.transpose(-1, -2)
    eye = torch.eye(d, dtype=xs.dtype, device=xs.device)
    w = torch.linalg.solve(xt @ xs + lam * eye, xt @ ys.unsqueeze(-1))
    return (x_query.unsqueeze(-2) @ w)[..., 0, 0]


def gd_one_step_predict(
    xs: torch.Tensor,
    ys: torch.Tensor,
    x_query: torch.Tensor,
    lr: float | None = None,
    noise: float = 0.0,
) -> torch.Tensor:
    """One gradient-descent step from ``w = 0`` on ``L(w) = ||X w - y||^2 / (2n)``.

    The gradient at 0 is ``-X^T y / n``, so ``w = lr * X^T y / n``. By default ``lr`` is
    ``n / (n + d + 1 + noise^2)``, the step that minimises the expected error when
    ``x, w ~ N(0, I_d)`` (from ``E[(X^T X / n)^2] = (1 + (d + 1) / n) I``); the
    prediction is then ``x_query . X^T y / (n + d + 1 + noise^2)``.
    """
    n, d = xs.shape[-2], xs.shape[-1]
    if n == 0:
        return x_query.new_zeros(x_query.shape[:-1])
    step = n / (n + d + 1 + noise**2) if lr is None else lr
    w = (step / n) * (xs.transpose(-1, -2) @ ys.unsqueeze(-1))
    return (x_query.unsqueeze(-2) @ w)[..., 0, 0]


def fixed_gd_step(dims: int, points: int, noise: float = 0.0) -> float:
    """The learning rate ``eta`` of :func:`gd_fixed_step_predict` that minimises the
    expected error averaged over every prefix of a ``points``-pair prompt.

    With ``x, w ~ N(0, I_d)`` and noise std ``s``, predicting from ``n`` pairs costs
    ``d (eta^2 n (n + d + 1 + s^2) - 2 eta n + 1) + s^2`` in expectation (from
    ``E[X^T X] = n I`` and ``E[(X^T X)^2] = n (n + d + 1) I``), so the mean over
    ``n = 0 .. points - 1`` is least at
    ``eta = sum_n n / sum_n n (n + d + 1 + s^2)``.
    """
    ns = range(points)
    den = sum(n * (n + dims + 1 + noise**2) for n in ns)
    return sum(ns) / den if den > 0 else 0.0


def gd_fixed_step_predict(
    xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor, eta: float
) -> torch.Tensor:
    """One gradient-descent step from ``w = 0`` on the summed loss ``||X w - y||^2 / 2``
    with a learning rate ``eta`` that does not depend on ``n``: ``x_query . eta X^T y``.

    This is what one layer of un-normalised linear self-attention computes with
    ``W_K^T W_Q`` proportional to the identity (von Oswald et al., 2023): one product for
    every prompt length, unlike :func:`gd_one_step_predict`, whose default step is tuned
    for each ``n``.
    """
    if xs.shape[-2] == 0:
        return x_query.new_zeros(x_query.shape[:-1])
    w = eta * (xs.transpose(-1, -2) @ ys.unsqueeze(-1))
    return (x_query.unsqueeze(-2) @ w)[..., 0, 0]


def zero_predict(xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Always 0 (the prior mean of ``y``)."""
    return x_query.new_zeros(x_query.shape[:-1])


def prefix_predictions(
    predict: Callable[..., torch.Tensor], xs: torch.Tensor, ys: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """``[B, k]``: entry ``i`` predicts ``y_i`` from pairs ``0 .. i-1`` and ``x_i``."""
    k = xs.shape[1]
    cols = [predict(xs[:, :i], ys[:, :i], xs[:, i], **kwargs) for i in range(k)]
    return torch.stack(cols, dim=1)


# --------------------------------------------------------------------------- params
class ICLRegressionParams(BaseModel):
    """Parameters of in-context linear regression.

    - ``dims``: ``d``, the dimension of ``x`` and ``w``.
    - ``n_points``: pairs per training and ``id`` prompt; None means ``2 d + 1``.
    - ``noise``: std of the Gaussian noise added to ``y`` (0 = noiseless).
    - ``ood``: what the ``ood`` split shifts: ``length`` (longer prompts),
      ``covariate`` (``x`` scaled by ``ood_scale``) or ``task`` (``w`` scaled by it).
    - ``ood_points``: pairs per ``ood`` prompt, only with ``ood='length'``; None means
      ``2 * n_points``.
    - ``ood_scale``: the scale factor, only with ``ood`` ``covariate``/``task``; None
      means 2.
    - ``ridge``: ``lam`` of the ridge baseline; None means ``noise^2`` (the posterior
      mean) when ``noise > 0``, else 0.01.
    - ``tokens``: the prompt layout, ``interleaved`` (``[x_i, 0]``, ``[0, y_i]``) or
      ``paired`` (``[x_i, x_{i-1}, y_{i-1}]``); see the module docstring.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: int = Field(5, ge=1)
    n_points: int | None = Field(None, ge=1)
    noise: float = Field(0.0, ge=0.0)
    ood: Literal["length", "covariate", "task"] = "length"
    ood_points: int | None = Field(None, ge=2)
    ood_scale: float | None = Field(None, gt=0.0)
    ridge: float | None = Field(None, gt=0.0)
    tokens: Literal["interleaved", "paired"] = "interleaved"

    @field_validator("ood_points")
    @classmethod
    def _ood_points(cls, v: int | None, info: ValidationInfo) -> int | None:
        dims, n = info.data.get("dims"), info.data.get("n_points")
        k = n if n is not None else (2 * dims + 1 if dims is not None else None)
        return check_ood_points(v, info.data.get("ood"), k)

    @field_validator("ood_scale")
    @classmethod
    def _ood_scale(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("ood") == "length":
            raise ValueError(
                f"ood_scale={v} applies only with ood='covariate' or ood='task' (ood='length')"
            )
        return v

    @property
    def points(self) -> int:
        """Pairs per training/``id`` prompt."""
        return self.n_points if self.n_points is not None else 2 * self.dims + 1

    @property
    def ood_length(self) -> int:
        """Pairs per ``ood`` prompt."""
        return ood_prompt_length(self.ood, self.ood_points, self.points)

    @property
    def shift_scale(self) -> float:
        """The scale applied to ``x`` or ``w`` in the ``ood`` split (1 for ``length``)."""
        if self.ood == "length":
            return 1.0
        return self.ood_scale if self.ood_scale is not None else 2.0

    @property
    def ridge_lambda(self) -> float:
        if self.ridge is not None:
            return self.ridge
        return self.noise**2 if self.noise > 0 else 0.01


# --------------------------------------------------------------------------- task
@register(
    "task",
    "icl_linear_regression",
    paper=GARG,
    summary="in-context linear regression; MSE vs examples beside least squares, ridge, GD",
    params=ICLRegressionParams,
    caps=Capabilities(),
)
class ICLLinearRegression(Task):
    """Predict ``y_i`` from ``x_i`` and the earlier pairs of a random linear function.

    Metrics (:meth:`score`), all squared errors divided by ``d``:

    - ``mse``: over every query position of every prompt;
    - ``by_k``: ``{str(k): mse}`` of predicting ``y_k`` from the ``k - 1`` earlier pairs;
    - ``baselines``: ``{name: {"mse", "by_k", "gap", "gap_by_k"}}`` for least squares
      (min-norm), ridge, one GD step with the step tuned for each number of examples
      (``gd_one_step``), one GD step with one step size for all of them, the one best on
      average over the training prompt's prefixes (``gd_fixed_step``, see
      :func:`fixed_gd_step`), and zero, on the same prompts; ``gap`` is the mean squared
      difference between the model's and the baseline's predictions, divided by ``d``
      (how closely the model predicts *like* the baseline, not only as well);
    - ``relative_to_least_squares``: the model's mean ``by_k`` over ``k >= d + 1`` (at
      least ``d`` earlier pairs, where least squares is determined) divided by least
      squares' mean over the same ``k``; None when that is 0 (noiseless data, where
      least squares is exact), or no such ``k`` exists;
    - ``curve``: MSE against the number of in-context examples ``k - 1`` for the model
      and each baseline.
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "mse"
    headline: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    params: ICLRegressionParams

    @property
    def paired(self) -> bool:
        """Whether prompts use the paired layout (one token per query)."""
        return self.params.tokens == "paired"

    def model_io(self) -> dict[str, Any]:
        d = self.params.dims
        return vector_io(2 * d + 1 if self.paired else d + 1)

    def max_seq_len(self) -> int:
        k = max(self.params.points, self.params.ood_length)
        return k if self.paired else 2 * k

    # ------------------------------------------------------------ data
    def sample(
        self,
        gen: torch.Generator,
        n: int,
        k: int,
        x_scale: float = 1.0,
        w_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` prompts of ``k`` pairs: ``xs`` ``[n, k, d]`` and ``ys`` ``[n, k]``."""
        p = self.params
        return linear_prompts(gen, n, k, p.dims, p.noise, x_scale=x_scale, w_scale=w_scale)

    def make_batch(self, xs: torch.Tensor, ys: torch.Tensor) -> Batch:
        """Lay out prompts as ``params.tokens`` says (see the module docstring)."""
        if self.paired:
            loss_mask = torch.ones(ys.shape, dtype=torch.bool)
            return Batch(inputs=pair_tokens(xs, ys), targets=ys, loss_mask=loss_mask)
        return interleave_pairs(xs, ys)

    def queries(self, values: torch.Tensor) -> torch.Tensor:
        """The query positions of per-token ``values`` ``[B, T, ...]``: ``[B, k, ...]``,
        entry ``i`` at the token where ``y_{i+1}`` is predicted."""
        return values if self.paired else values[:, 0::2]

    def pairs_of(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts of a batch made by :meth:`make_batch`: ``xs`` ``[B, k, d]``, ``ys``
        ``[B, k]``."""
        d = self.params.dims
        return self.queries(batch.inputs)[..., :d], self.queries(batch.targets)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        gen = torch_generator(self.seed, SPLIT_IDS["train"], step)
        return self.make_batch(*self.sample(gen, batch_size, self.params.points))

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        check_eval_request(self.splits, split, size)
        p = self.params
        gen = torch_generator(self.seed, SPLIT_IDS[split])
        if split == "ood":
            xs, ys = self.sample(
                gen,
                size,
                p.ood_length,
                x_scale=p.shift_scale if p.ood == "covariate" else 1.0,
                w_scale=p.shift_scale if p.ood == "task" else 1.0,
            )
        else:
            xs, ys = self.sample(gen, size, p.points)
        return eval_batches(
            {"xs": xs, "ys": ys},
            lambda part: self.make_batch(part["xs"], part["ys"]),
            lambda part: self.baselines(part["xs"], part["ys"]),
        )

    def baselines(self, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [B, k]}``: each baseline's prediction of every ``y_i`` (in float64)."""
        xs, ys = xs.double(), ys.double()
        p = self.params
        return {
            "least_squares": prefix_predictions(least_squares_predict, xs, ys),
            "ridge": prefix_predictions(ridge_predict, xs, ys, lam=p.ridge_lambda),
            "gd_one_step": prefix_predictions(gd_one_step_predict, xs, ys, noise=p.noise),
            "gd_fixed_step": prefix_predictions(
                gd_fixed_step_predict, xs, ys, eta=fixed_gd_step(p.dims, p.points, p.noise)
            ),
            "zero": prefix_predictions(zero_predict, xs, ys),
        }

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Squared errors / d of the model and the baselines (see the class docstring).

        ``outputs``: ``[B, T, 1]`` (or ``[B, T]``), read at the query positions (the
        x-tokens of the interleaved layout, every token of the paired one).
        """
        d = self.params.dims
        acc = PerK()
        for out, batch in zip(outputs, batches):
            pred = self.queries(scalar_output(out)).double().cpu()
            xs, ys = self.pairs_of(batch)
            y = ys.double().cpu()
            base = stored_baselines(batch)
            if not all(n in base for n in BASELINES):
                base = self.baselines(xs, ys)
            acc.add("model", (pred - y) ** 2 / d)
            for name in BASELINES:
                acc.add(name, (base[name] - y) ** 2 / d)
                acc.add(f"gap_{name}", (pred - base[name]) ** 2 / d)
        names = ("model", *BASELINES)
        by_k = {name: acc.by_k(name) for name in names}
        posed = list(range(d, acc.size("model")))  # k >= d + 1: at least d earlier pairs
        model_posed = acc.mean_over("model", posed)
        ls_posed = acc.mean_over("least_squares", posed)
        relative = model_posed / ls_posed if posed and ls_posed > 1e-8 else None
        return {
            **acc.summary("model", "mse"),
            "baselines": {
                n: {
                    **acc.summary(n, "mse"),
                    "gap": acc.mean(f"gap_{n}"),
                    "gap_by_k": acc.by_k(f"gap_{n}"),
                }
                for n in BASELINES
            },
            "relative_to_least_squares": relative,
            "curve": examples_curve("mse", by_k),
        }
