"""In-context regression on a mixture of function families: dense linear and sinusoid.

Each prompt draws one family, then one function of it, then ``k`` pairs
``(x_i, f(x_i) + noise * eps_i)`` with ``x_i ~ N(0, I_d)`` and ``eps_i ~ N(0, 1)``:

- ``linear`` (probability ``p_linear``): ``f(x) = w . x``, ``w ~ N(0, I_d)``;
- ``sinusoid``: ``f(x) = sum_j a_j sin(omega x_j) + c_j cos(omega x_j)`` with
  ``a, c ~ N(0, I_d)`` and a fixed, known frequency ``omega = frequency``: a linear model
  on the known sinusoid basis ``phi(x) = [sin(omega x), cos(omega x)]`` (``2d``
  features);
- ``combination`` (only in the ``ood='combination'`` split, out of the training
  mixture): ``(linear + sinusoid) / sqrt(2)``, a linear model on ``[x, phi(x)]`` with
  coefficients ``~ N(0, I / 2)``.

``E[f(x)^2] = d`` in every family, and errors are divided by ``d`` (as in
``icl_linear_regression``), so the zero predictor scores about ``1 + noise^2 / d``.
Tokens follow ``icl_linear_regression``: ``[x_i, 0]`` then ``[0, ..., 0, y_i]``; a
causal model predicts ``y_i`` at the position of ``x_i``.

Baselines (``Batch.extras['baseline_<name>']``, ``[B, k]``), all exact Bayesian
posterior means of ``y_i`` given the earlier pairs, with the true ``noise`` (which must
be > 0, so that the family evidence is defined):

- ``linear``: assumes the linear family (ridge regression with ``lam = noise^2``, the
  least-squares fit regularised by the prior; it tends to least squares as noise -> 0);
- ``sinusoid``: assumes the sinusoid family (the same fit on ``phi(x)``);
- ``family_oracle``: the posterior mean of the prompt's true family (the per-family
  optimal predictor, told the family);
- ``bayes``: the Bayes-optimal predictor for the training mixture: the two family
  posterior means weighted by the posterior probability of each family (prior
  ``p_linear``, updated by each family's Gaussian evidence on the earlier pairs);
- ``zero``: 0.

Metrics: ``mse`` / ``by_k`` of the model and every baseline, over all prompts and
``by_family`` (``linear``, ``sinusoid``, and ``combination`` when present); the ratio
``relative_to_bayes``; a curve of MSE against the number of in-context examples.

Splits: training prompts depend only on ``(seed, step)``; ``id`` draws from the same
mixture with its own stream; ``ood`` shifts ``length`` (``ood_points`` pairs, default
``2 * n_points``) or ``combination`` (every prompt a combined function).

Paper: Yadlowsky, Doshi & Tripuraneni, "Pretraining Data Mixtures Enable Narrow Model
Selection Capabilities in Transformer Models" (2023).
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
    gaussian_predictive,
    interleave_pairs,
    mixture_predictive,
    ood_prompt_length,
    scalar_output,
    split_pairs,
    vector_io,
)

YADLOWSKY = Paper(
    "Pretraining Data Mixtures Enable Narrow Model Selection Capabilities in Transformer Models",
    2023,
    "Yadlowsky, Doshi & Tripuraneni",
)
#: Family ids stored in ``extras['family']``.
FAMILIES = ("linear", "sinusoid", "combination")
BASELINES = ("linear", "sinusoid", "family_oracle", "bayes", "zero")


def sinusoid_features(xs: torch.Tensor, frequency: float) -> torch.Tensor:
    """``[..., 2d]``: ``[sin(omega x), cos(omega x)]`` of ``xs`` ``[..., d]``."""
    return torch.cat([torch.sin(frequency * xs), torch.cos(frequency * xs)], -1)


def family_predictives(
    xs: torch.Tensor, ys: torch.Tensor, noise: float, frequency: float
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{family: (mean, var)}`` ``[B, k]``: each family's posterior predictive per prefix."""
    xs = xs.double()
    phi = sinusoid_features(xs, frequency)
    s2 = noise**2
    return {
        "linear": gaussian_predictive(xs, ys, s2),
        "sinusoid": gaussian_predictive(phi, ys, s2),
        "combination": gaussian_predictive(torch.cat([xs, phi], -1), ys, s2, prior_var=0.5),
    }


def bayes_mixture_mean(
    predictives: dict[str, tuple[torch.Tensor, torch.Tensor]], ys: torch.Tensor, p_linear: float
) -> torch.Tensor:
    """``[B, k]``: the posterior-mean prediction under the linear/sinusoid mixture, from
    the per-family predictives of :func:`family_predictives`."""
    means = torch.stack([predictives["linear"][0], predictives["sinusoid"][0]])
    variances = torch.stack([predictives["linear"][1], predictives["sinusoid"][1]])
    log_prior = torch.tensor([p_linear, 1.0 - p_linear], dtype=torch.float64).log()
    return mixture_predictive(means, variances, ys, log_prior)["mean"]


class ICLMixtureParams(BaseModel):
    """Parameters of in-context regression on a linear/sinusoid mixture.

    - ``dims``: ``d``, the dimension of ``x``.
    - ``n_points``: pairs per training and ``id`` prompt; None means ``4 d + 1``.
    - ``p_linear``: probability of the linear family (the rest is sinusoid).
    - ``frequency``: ``omega`` of the sinusoid basis.
    - ``noise``: std of the Gaussian noise on ``y`` (> 0).
    - ``ood``: what the ``ood`` split shifts: ``length`` or ``combination``.
    - ``ood_points``: pairs per ``ood`` prompt (``ood='length'`` only); None means
      ``2 * n_points``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: int = Field(3, ge=1)
    n_points: int | None = Field(None, ge=1)
    p_linear: float = Field(0.5, ge=0.0, le=1.0)
    frequency: float = Field(2.0, gt=0.0)
    noise: float = Field(0.1, gt=0.0)
    ood: Literal["length", "combination"] = "length"
    ood_points: int | None = Field(None, ge=2)

    @field_validator("ood_points")
    @classmethod
    def _ood_points(cls, v: int | None, info: ValidationInfo) -> int | None:
        dims, n = info.data.get("dims"), info.data.get("n_points")
        k = n if n is not None else (4 * dims + 1 if dims is not None else None)
        return check_ood_points(v, info.data.get("ood"), k)

    @property
    def points(self) -> int:
        return self.n_points if self.n_points is not None else 4 * self.dims + 1

    @property
    def ood_length(self) -> int:
        return ood_prompt_length(self.ood, self.ood_points, self.points)


@register(
    "task",
    "icl_mixture",
    paper=YADLOWSKY,
    summary="in-context regression on a linear/sinusoid mixture; per-family Bayes baselines",
    params=ICLMixtureParams,
    caps=Capabilities(),
)
class ICLMixture(PromptTask):
    """Predict ``y_i`` from ``x_i`` and the earlier pairs of a function from a mixture.

    Metrics (:meth:`score`): ``mse``, ``by_k``, ``baselines`` (``{name: {"mse",
    "by_k"}}``), ``by_family`` (``{family: {"mse", "by_k", "baselines"}}``),
    ``relative_to_bayes`` and ``curve`` (see the module docstring). ``extras['family']``
    ``[B]`` holds each prompt's family id (index into ``FAMILIES``).
    """

    headline: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    params: ICLMixtureParams

    def model_io(self) -> dict[str, Any]:
        return vector_io(self.params.dims + 1)

    def max_seq_len(self) -> int:
        return 2 * max(self.params.points, self.params.ood_length)

    # ------------------------------------------------------------ data
    def sample(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        p = self.params
        d = p.dims
        k = p.ood_length if split == "ood" else p.points
        family = (torch.rand(n, generator=gen) >= p.p_linear).long()
        if split == "ood" and p.ood == "combination":
            family = torch.full((n,), 2, dtype=torch.long)
        w = torch.randn(n, d, generator=gen)
        coef = torch.randn(n, 2 * d, generator=gen)
        xs = torch.randn(n, k, d, generator=gen)
        eps = torch.randn(n, k, generator=gen)
        lin = (xs @ w.unsqueeze(-1))[..., 0]
        sin = (sinusoid_features(xs, p.frequency) @ coef.unsqueeze(-1))[..., 0]
        f = torch.where(
            (family == 0).unsqueeze(-1),
            lin,
            torch.where((family == 1).unsqueeze(-1), sin, (lin + sin) / math.sqrt(2.0)),
        )
        return {"xs": xs, "ys": f + p.noise * eps, "family": family}

    def to_batch(self, data: dict[str, torch.Tensor]) -> Batch:
        batch = interleave_pairs(data["xs"], data["ys"])
        batch.extras["family"] = data["family"]
        return batch

    def unpack(self, batch: Batch) -> dict[str, torch.Tensor]:
        xs, ys = split_pairs(batch, self.params.dims)
        return {"xs": xs, "ys": ys, "family": batch.extras["family"]}

    def baselines(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: [B, k]}`` posterior means (float64), in ``BASELINES`` order."""
        p = self.params
        xs, ys, family = data["xs"].double(), data["ys"].double(), data["family"]
        pred = family_predictives(xs, ys, p.noise, p.frequency)
        means = torch.stack([pred[f][0] for f in FAMILIES])  # [3, B, k]
        oracle = means.gather(0, family.view(1, -1, 1).expand(1, *ys.shape))[0]
        return {
            "linear": pred["linear"][0],
            "sinusoid": pred["sinusoid"][0],
            "family_oracle": oracle,
            "bayes": bayes_mixture_mean(pred, ys, p.p_linear),
            "zero": torch.zeros_like(ys),
        }

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Squared errors / d of the model and the baselines; outputs ``[B, 2k(, 1)]``."""
        d = self.params.dims
        names = ("model", *BASELINES)
        total = PerK()
        fam = PerK()
        present: set[int] = set()
        for out, batch in zip(outputs, batches):
            y = batch.targets[:, 0::2].double().cpu()
            family = batch.extras["family"].cpu()
            preds = {"model": scalar_output(out)[:, 0::2].cpu(), **self.baselines_of(batch)}
            present.update(int(f) for f in family.unique())
            for name in names:
                err = (preds[name].double() - y) ** 2 / d
                total.add(name, err)
                for f in range(len(FAMILIES)):
                    rows = (family == f).unsqueeze(-1).expand_as(err)
                    fam.add(f"{FAMILIES[f]}/{name}", err, rows)

        by_family = {}
        for f in sorted(present):
            fname = FAMILIES[f]
            model = fam.summary(f"{fname}/model", "mse")
            model["baselines"] = {n: fam.summary(f"{fname}/{n}", "mse") for n in BASELINES}
            by_family[fname] = model
        bayes = total.mean("bayes")
        return {
            **total.summary("model", "mse"),
            "baselines": {n: total.summary(n, "mse") for n in BASELINES},
            "by_family": by_family,
            "relative_to_bayes": total.mean("model") / bayes if bayes > 1e-12 else None,
            "curve": examples_curve("mse", {n: total.by_k(n) for n in names}),
        }
