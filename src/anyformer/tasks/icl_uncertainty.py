"""In-context linear regression with a per-prompt noise level, and predictive uncertainty.

A prompt holds ``k`` pairs of one random linear function with its own noise level:
``w ~ N(0, I_d)``, ``sigma`` uniform on the finite grid ``noise_levels``,
``x_i ~ N(0, I_d)``, ``y_i = w . x_i + sigma * eps_i``. Tokens follow
``icl_linear_regression`` (``[x_i, 0]`` then ``[0, ..., 0, y_i]``). The model has a
mean-variance head: two output channels at the position of ``x_i``, the predictive
mean of ``y_i`` and its log-variance, trained with the Gaussian negative log-likelihood
(objective ``gaussian_nll``).

Baselines (``Batch.extras['baseline_<name>_<mean|var|nll>']``, ``[B, k]``), predictive
distributions of ``y_i`` given the earlier pairs of the prompt:

- ``bayes``: the exact Bayesian posterior predictive of the training prior. For each
  grid value ``s`` the predictive is Gaussian, ``N(x . m_s, s^2 + x^T S_s x)`` with the
  posterior ``N(m_s, S_s)`` of ``w``; the grid values are weighted by their posterior
  probabilities ``∝ N(y_<i; 0, X X^T + s^2 I)`` (uniform prior), so the predictive is an
  exact finite mixture of Gaussians. ``nll`` is minus the log of the mixture density at
  the true ``y_i``; ``mean``/``var`` are the mixture's moments.
- ``bayes_gaussian``: the Gaussian with ``bayes``' mean and variance. Among Gaussian
  predictives it has the least expected NLL (moment matching), so it is the floor a
  mean-variance head can reach; its MSE equals ``bayes``'.
- ``known_sigma``: the posterior predictive when the prompt's ``sigma`` is known.
- ``zero``: mean 0 and variance ``|x_i|^2 + mean(noise_levels^2)``, the prior
  predictive's moments (what ``bayes_gaussian`` predicts with no examples).

Metrics: ``nll`` (with the ``log 2 pi`` constant, so model and mixture densities are
comparable; the training objective leaves it out) and ``mse`` (not divided by ``d``)
of the model's predictive, overall and per example index (``by_k`` for NLL,
``by_k_mse``), ``calibration`` (the mean of ``(y - mean)^2 / var``; 1 when the variance
is right on average), the same for each baseline, ``nll_gap_to_bayes`` (model minus
``bayes`` NLL) and a curve of NLL against the number of in-context examples.

Splits: training prompts depend only on ``(seed, step)``; ``id`` from the same
distribution by its own stream; ``ood`` shifts ``length`` (``ood_points`` pairs,
default ``2 * n_points``), ``noise`` (``sigma`` uniform on ``ood_noise_levels``,
default ``(2.0,)``) or ``task`` (``w ~ N(0, s^2 I)``, ``s = ood_scale``, default 2).
The ``bayes`` baselines keep the training prior under every shift (they are what a
model that learned the training distribution would compute), ``known_sigma`` is told
the true ``sigma``.

Paper: Liu, Cai, Chen & Li, "Towards Better Understanding of In-Context Learning
Ability from In-Context Uncertainty Quantification" (2024).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch
from anyformer.tasks.icl_common import (
    PerK,
    PromptTask,
    check_ood_points,
    examples_curve,
    gaussian_nll,
    gaussian_predictive,
    interleave_pairs,
    linear_prompts,
    mixture_predictive,
    ood_prompt_length,
    split_pairs,
    vector_io,
)

LIU = Paper(
    "Towards Better Understanding of In-Context Learning Ability from In-Context "
    "Uncertainty Quantification",
    2024,
    "Liu, Cai, Chen & Li",
)
BASELINES = ("bayes", "bayes_gaussian", "known_sigma", "zero")


def bayes_grid_predictive(
    xs: torch.Tensor, ys: torch.Tensor, noise_levels: tuple[float, ...]
) -> dict[str, torch.Tensor]:
    """The posterior predictive of ``y_i`` given pairs ``< i`` under ``w ~ N(0, I)`` and
    ``sigma`` uniform on ``noise_levels``: ``{"mean", "var", "nll", "weights"}`` (see
    :func:`~anyformer.tasks.icl_common.mixture_predictive`)."""
    parts = [gaussian_predictive(xs, ys, s**2) for s in noise_levels]
    means = torch.stack([m for m, _ in parts])
    variances = torch.stack([v for _, v in parts])
    log_prior = torch.full((len(noise_levels),), -math.log(len(noise_levels)))
    return mixture_predictive(means, variances, ys, log_prior)


class ICLUncertaintyParams(BaseModel):
    """Parameters of in-context regression with per-prompt noise.

    - ``dims``: ``d``, the dimension of ``x`` and ``w``.
    - ``n_points``: pairs per training and ``id`` prompt; None means ``2 d + 1``.
    - ``noise_levels``: the grid ``sigma`` is drawn from (uniformly), each > 0.
    - ``ood``: what the ``ood`` split shifts: ``length``, ``noise`` or ``task``.
    - ``ood_points``: pairs per ``ood`` prompt (``ood='length'`` only); None means
      ``2 * n_points``.
    - ``ood_noise_levels``: the ``ood`` grid (``ood='noise'`` only); None means
      ``(2.0,)``.
    - ``ood_scale``: scale of ``w`` in the ``ood`` split (``ood='task'`` only); None
      means 2.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: int = Field(5, ge=1)
    n_points: int | None = Field(None, ge=1)
    noise_levels: tuple[float, ...] = (0.1, 0.3, 1.0)
    ood: Literal["length", "noise", "task"] = "length"
    ood_points: int | None = Field(None, ge=2)
    ood_noise_levels: tuple[float, ...] | None = None
    ood_scale: float | None = Field(None, gt=0.0)

    @field_validator("noise_levels", "ood_noise_levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...] | None, info: ValidationInfo) -> Any:
        if v is None:
            return v
        if info.field_name == "ood_noise_levels" and info.data.get("ood") != "noise":
            raise ValueError(f"ood_noise_levels={v} applies only with ood='noise'")
        if not v or any(s <= 0 for s in v):
            raise ValueError(f"{info.field_name}={v} must be a non-empty list of values > 0")
        return v

    @field_validator("ood_points")
    @classmethod
    def _ood_points(cls, v: int | None, info: ValidationInfo) -> int | None:
        dims, n = info.data.get("dims"), info.data.get("n_points")
        k = n if n is not None else (2 * dims + 1 if dims is not None else None)
        return check_ood_points(v, info.data.get("ood"), k)

    @field_validator("ood_scale")
    @classmethod
    def _ood_scale(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("ood") != "task":
            raise ValueError(f"ood_scale={v} applies only with ood='task'")
        return v

    @property
    def points(self) -> int:
        return self.n_points if self.n_points is not None else 2 * self.dims + 1

    @property
    def ood_length(self) -> int:
        return ood_prompt_length(self.ood, self.ood_points, self.points)

    @property
    def ood_levels(self) -> tuple[float, ...]:
        if self.ood != "noise":
            return self.noise_levels
        return self.ood_noise_levels if self.ood_noise_levels is not None else (2.0,)

    @property
    def w_scale(self) -> float:
        if self.ood != "task":
            return 1.0
        return self.ood_scale if self.ood_scale is not None else 2.0


@register(
    "task",
    "icl_uncertainty",
    paper=LIU,
    summary="in-context regression with per-prompt noise; mean-variance head vs exact Bayes",
    params=ICLUncertaintyParams,
    caps=Capabilities(),
)
class ICLUncertainty(PromptTask):
    """Predict the distribution of ``y_i`` (mean and log-variance) from earlier pairs.

    Metrics (:meth:`score`): ``nll``, ``mse``, ``by_k`` (NLL), ``by_k_mse``,
    ``calibration``, ``baselines`` (``{name: {"nll", "mse", "calibration", "by_k",
    "by_k_mse"}}``), ``nll_gap_to_bayes`` and ``curve`` (see the module docstring).
    ``extras['sigma']`` ``[B]`` holds each prompt's noise level.
    """

    default_objective: ClassVar[str] = "gaussian_nll"
    headline: ClassVar[str] = "nll"
    higher_is_better: ClassVar[bool] = False

    params: ICLUncertaintyParams

    def model_io(self) -> dict[str, Any]:
        return vector_io(self.params.dims + 1, n_outputs=2)

    def max_seq_len(self) -> int:
        return 2 * max(self.params.points, self.params.ood_length)

    # ------------------------------------------------------------ data
    def sample(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        p = self.params
        ood = split == "ood"
        k = p.ood_length if ood else p.points
        levels = torch.tensor(p.ood_levels if ood else p.noise_levels)
        sigma = levels[torch.randint(len(levels), (n,), generator=gen)]
        w_scale = p.w_scale if ood else 1.0
        xs, ys = linear_prompts(gen, n, k, p.dims, sigma.unsqueeze(-1), w_scale=w_scale)
        return {"xs": xs, "ys": ys, "sigma": sigma}

    def to_batch(self, data: dict[str, torch.Tensor]) -> Batch:
        batch = interleave_pairs(data["xs"], data["ys"])
        batch.extras["sigma"] = data["sigma"]
        return batch

    def unpack(self, batch: Batch) -> dict[str, torch.Tensor]:
        xs, ys = split_pairs(batch, self.params.dims)
        return {"xs": xs, "ys": ys, "sigma": batch.extras["sigma"]}

    def baselines(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{f"{name}_{mean|var|nll}": [B, k]}`` for every baseline (float64)."""
        levels = self.params.noise_levels
        xs, ys = data["xs"].double(), data["ys"].double()
        bayes = bayes_grid_predictive(xs, ys, levels)
        known = gaussian_predictive(xs, ys, data["sigma"].double() ** 2)
        zero_var = (xs**2).sum(-1) + sum(s**2 for s in levels) / len(levels)
        moments = {
            "bayes": (bayes["mean"], bayes["var"]),
            "bayes_gaussian": (bayes["mean"], bayes["var"]),
            "known_sigma": known,
            "zero": (torch.zeros_like(ys), zero_var),
        }
        out: dict[str, torch.Tensor] = {}
        for name, (mean, var) in moments.items():
            nll = bayes["nll"] if name == "bayes" else gaussian_nll(ys, mean, var)
            out.update({f"{name}_mean": mean, f"{name}_var": var, f"{name}_nll": nll})
        return out

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """NLL, MSE and calibration; ``outputs`` ``[B, 2k, 2]`` (mean, log-variance)."""
        names = ("model", *BASELINES)
        nll, mse, z2 = PerK(), PerK(), PerK()
        for out, batch in zip(outputs, batches):
            if out.dim() != 3 or out.shape[-1] < 2:
                raise ValueError(
                    f"icl_uncertainty needs outputs [B, T, 2] (mean, log-variance), got "
                    f"{tuple(out.shape)}; build the model with n_outputs=2"
                )
            y = batch.targets[:, 0::2].double().cpu()
            base = self.baselines_of(batch)
            mean = out[:, 0::2, 0].double().cpu()
            var = out[:, 0::2, 1].double().cpu().exp()
            preds = {"model": (mean, var, gaussian_nll(y, mean, var))}
            for n in BASELINES:
                preds[n] = (base[f"{n}_mean"], base[f"{n}_var"], base[f"{n}_nll"])
            for name in names:
                m, v, ll = preds[name]
                nll.add(name, ll)
                mse.add(name, (m - y) ** 2)
                z2.add(name, (m - y) ** 2 / v)

        def summary(name: str) -> dict[str, Any]:
            return {
                "nll": nll.mean(name),
                "mse": mse.mean(name),
                "calibration": z2.mean(name),
                "by_k": nll.by_k(name),
                "by_k_mse": mse.by_k(name),
            }

        results = {n: summary(n) for n in names}
        return {
            **results["model"],
            "baselines": {n: results[n] for n in BASELINES},
            "nll_gap_to_bayes": results["model"]["nll"] - results["bayes"]["nll"],
            "curve": examples_curve("nll", {n: results[n]["by_k"] for n in names}),
        }
