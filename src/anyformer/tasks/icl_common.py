"""Shared machinery of the in-context-learning tasks.

- :func:`interleave_pairs`: the ``[x, 0]`` / ``[0, y]`` token layout of a prompt of
  ``(x_i, y_i)`` pairs, with the target ``y_i`` at the position of ``x_i``, and
  :func:`split_pairs`, its inverse;
- :func:`pair_tokens`: the paired layout, one token per query, ``[x_i, x_{i-1}, y_{i-1}]``
  (the query and the previous completed pair), with the target ``y_i`` at token ``i``;
- :func:`linear_prompts`: prompts of one random noisy linear function each;
- :func:`check_ood_points` and :func:`ood_prompt_length`: the ``ood_points`` parameter
  of the tasks whose ``ood`` split may shift the prompt length;
- :func:`vector_io`, :func:`scalar_output`: the model fields of a prompt task (real
  vector tokens, a per-token regression head) and the prediction of a one-output model;
- :func:`check_eval_request`, :func:`eval_batches` and :func:`stored_baselines`: the
  evaluation sets, cut into batches that carry each baseline's predictions;
- :class:`PromptTask`: the driver every prompt task shares. A subclass says how to draw
  prompts (:meth:`PromptTask.sample`), lay them out (:meth:`PromptTask.to_batch`),
  read them back from a batch (:meth:`PromptTask.unpack`) and predict with its
  baselines (:meth:`PromptTask.baselines`); training batches then depend only on
  ``(seed, step)`` and evaluation sets carry every baseline's predictions on the same
  prompts in ``Batch.extras`` as ``baseline_<name>``;
- :class:`PerK`: running means of a per-position quantity (error, accuracy, NLL) for
  several series, indexed by position, for the ``by_k`` metrics and the curves
  (:func:`make_curve`, :func:`examples_curve`);
- :func:`gaussian_predictive` and :func:`mixture_predictive`: the exact Bayesian
  posterior predictive of a linear-Gaussian model (``y = w . phi(x) + noise``,
  ``w ~ N(0, prior_var I)``) at every prefix of a prompt, and of a finite mixture of
  such models (weights updated by each model's evidence on the earlier pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from anyformer.tasks.base import SPLIT_IDS, Batch, Task, torch_generator

#: Evaluation sets are cut into batches of at most this many prompts.
EVAL_BATCH_PROMPTS = 256
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- layout
def interleave_pairs(xs: torch.Tensor, ys: torch.Tensor) -> Batch:
    """Prompt tokens ``[x_1, 0], [0, y_1], ..., [x_k, 0], [0, y_k]`` of size ``d + 1``.

    ``xs`` ``[n, k, d]``, ``ys`` ``[n, k]``. ``targets`` ``[n, 2k]`` holds ``y_i`` at the
    x-token position ``2(i - 1)`` and 0 at y-tokens; ``loss_mask`` is True at x-tokens.
    """
    n, k, d = xs.shape
    inputs = torch.zeros(n, 2 * k, d + 1)
    inputs[:, 0::2, :d] = xs
    inputs[:, 1::2, d] = ys
    targets = torch.zeros(n, 2 * k)
    targets[:, 0::2] = ys
    loss_mask = torch.zeros(n, 2 * k, dtype=torch.bool)
    loss_mask[:, 0::2] = True
    return Batch(inputs=inputs, targets=targets, loss_mask=loss_mask)


def split_pairs(batch: Batch, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of a batch laid out by :func:`interleave_pairs` (its inverse).

    Returns ``xs`` ``[n, k, d]`` (the first ``d`` channels of the x-tokens) and ``ys``
    ``[n, k]`` (the targets at the x-tokens).
    """
    return batch.inputs[:, 0::2, :d], batch.targets[:, 0::2]


def linear_prompts(
    gen: torch.Generator,
    n: int,
    k: int,
    d: int,
    noise: float | torch.Tensor,
    x_scale: float = 1.0,
    w_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` prompts of ``k`` pairs of one random noisy linear function each.

    Draws, in this order from ``gen``, ``w ~ N(0, w_scale^2 I_d)`` ``[n, d]``,
    ``x_i ~ N(0, x_scale^2 I_d)`` and ``eps_i ~ N(0, 1)``, and returns ``xs``
    ``[n, k, d]`` and ``ys = w . x_i + noise * eps_i`` ``[n, k]``; ``noise`` is a float
    or a per-prompt ``[n, 1]`` tensor of noise standard deviations.
    """
    w = torch.randn(n, d, generator=gen) * w_scale
    xs = torch.randn(n, k, d, generator=gen) * x_scale
    eps = torch.randn(n, k, generator=gen)
    return xs, (xs @ w.unsqueeze(-1))[..., 0] + noise * eps


def pair_tokens(
    feats: torch.Tensor, ys: torch.Tensor, complete: torch.Tensor | None = None
) -> torch.Tensor:
    """Paired tokens ``[phi_i, phi_{i-1}, y_{i-1}]`` of size ``2m + 1``, one per query.

    ``feats`` ``[n, k, m]`` (the regressors ``phi_i`` of the targets ``y_i``), ``ys``
    ``[n, k]``. Token ``i`` holds the query ``phi_i`` followed by the previous completed
    pair ``(phi_{i-1}, y_{i-1})``; the pair part is zero at ``i = 0`` and wherever
    ``complete`` ``[k]`` (bool, optional) is False at ``i - 1`` (a pair that is not a
    real example, e.g. an AR lag window still padded with zeros). No token holds its own
    target ``y_i`` (nor any later value), so a causal model predicts ``y_i`` at token
    ``i`` from the pairs ``< i`` and ``phi_i``; and since token ``j`` carries pair
    ``j - 1`` whole, one causal linear-attention layer can form
    ``sum_{j <= i} (phi_i . phi_{j-1}) y_{j-1}``, the one-step gradient-descent
    prediction of von Oswald et al. (2023), whose tokens hold a whole ``(x, y)`` pair.
    Returns ``[n, k, 2m + 1]`` (the dtype of ``feats``).
    """
    n, k, m = feats.shape
    out = feats.new_zeros(n, k, 2 * m + 1)
    out[:, :, :m] = feats
    prev = torch.cat([feats[:, :-1], ys[:, :-1, None].to(feats.dtype)], -1)
    if complete is not None:
        prev = prev * complete[:-1].to(feats.dtype).view(1, -1, 1)
    out[:, 1:, m:] = prev
    return out


def exclusive_cumany(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``out[i]`` is True when any ``x[j]``, ``j < i``, is True (along ``dim``)."""
    seen = x.long().cumsum(dim) > 0
    first = torch.zeros_like(seen.narrow(dim, 0, 1))
    return torch.cat([first, seen.narrow(dim, 0, seen.shape[dim] - 1)], dim)


def exclusive_cumsum(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``out[i] = sum_{j < i} x[j]`` along ``dim``."""
    return x.cumsum(dim) - x


# --------------------------------------------------------------------------- metrics
class PerK:
    """Running means of per-position values for named series.

    ``add(name, values, mask)`` takes ``[B, K]`` values (positions ``0 .. K-1``) and an
    optional ``[B, K]`` bool mask of the entries that count.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}

    def add(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        values = values.double().cpu()
        mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.cpu()
        k = values.shape[1]
        sums = self._sums.setdefault(name, torch.zeros(0, dtype=torch.float64))
        counts = self._counts.setdefault(name, torch.zeros(0, dtype=torch.float64))
        if sums.shape[0] < k:
            grow = k - sums.shape[0]
            sums = torch.cat([sums, torch.zeros(grow, dtype=torch.float64)])
            counts = torch.cat([counts, torch.zeros(grow, dtype=torch.float64)])
        sums[:k] += torch.where(mask, values, torch.zeros_like(values)).sum(0)
        counts[:k] += mask.sum(0)
        self._sums[name], self._counts[name] = sums, counts

    def by_k(self, name: str, offset: int = 1) -> dict[str, float]:
        """``{str(position + offset): mean}`` over positions with at least one count."""
        sums, counts = self._sums[name], self._counts[name]
        return {
            str(i + offset): float(sums[i] / counts[i])
            for i in range(sums.shape[0])
            if counts[i] > 0
        }

    def mean(self, name: str) -> float:
        """Mean over every counted entry (NaN when none)."""
        total = float(self._counts[name].sum())
        return float(self._sums[name].sum()) / total if total > 0 else math.nan

    def mean_over(self, name: str, positions: list[int]) -> float:
        """Mean of the per-position means at ``positions`` (0-based) that have counts."""
        sums, counts = self._sums[name], self._counts[name]
        vals = [
            float(sums[i] / counts[i]) for i in positions if i < sums.shape[0] and counts[i] > 0
        ]
        return sum(vals) / len(vals) if vals else math.nan

    def summary(self, name: str, metric: str) -> dict[str, Any]:
        """``{metric: mean, "by_k": by_k}`` of series ``name`` (see :meth:`mean`, :meth:`by_k`)."""
        return {metric: self.mean(name), "by_k": self.by_k(name)}

    def size(self, name: str) -> int:
        """Number of positions seen for ``name``."""
        return int(self._sums[name].shape[0])

    def __contains__(self, name: str) -> bool:
        return name in self._sums


def make_curve(
    x_label: str, y_label: str, series: dict[str, dict[str, float]], shift: int = 0
) -> dict[str, Any]:
    """A ``curve`` entry for reports: ``series`` keyed by ``str(int(key) + shift)``."""
    return {
        "x": x_label,
        "y": y_label,
        "series": {n: {str(int(k) + shift): v for k, v in s.items()} for n, s in series.items()},
    }


def examples_curve(y_label: str, series: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A ``curve`` of ``y_label`` against the number of in-context examples: ``series``
    holds ``by_k`` values keyed by the example index ``k``, predicted from ``k - 1``
    earlier examples, so each key moves down by one."""
    return make_curve("in-context examples", y_label, series, shift=-1)


# --------------------------------------------------------------------------- Bayes
def gaussian_predictive(
    feats: torch.Tensor,
    ys: torch.Tensor,
    noise_var: float | torch.Tensor,
    prior_var: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior predictive of ``y_i`` from the pairs before ``i``, for every ``i``.

    Model: ``y = w . phi + e``, ``w ~ N(0, prior_var I_m)``, ``e ~ N(0, noise_var)``.
    ``feats`` ``[B, K, m]`` (the ``phi_i``), ``ys`` ``[B, K]``; ``noise_var`` a float or
    ``[B]``. Returns ``(mean, var)``, both ``[B, K]``: the predictive of ``y_i`` is
    ``N(mean_i, var_i)`` with ``var_i = phi_i^T S phi_i + noise_var`` for the posterior
    covariance ``S`` given pairs ``< i``. Computed by exact rank-one (Kalman) updates of
    the posterior mean and covariance, in float64.
    """
    feats, ys = feats.double(), ys.double()
    b, k, m = feats.shape
    s2 = torch.as_tensor(noise_var, dtype=torch.float64).expand(b)
    mu = feats.new_zeros(b, m)
    cov = prior_var * torch.eye(m, dtype=torch.float64).expand(b, m, m).clone()
    means, variances = [], []
    for i in range(k):
        phi = feats[:, i]
        cphi = (cov @ phi.unsqueeze(-1))[..., 0]
        mean = (phi * mu).sum(-1)
        var = (phi * cphi).sum(-1) + s2
        means.append(mean)
        variances.append(var)
        gain = cphi / var.unsqueeze(-1)
        mu = mu + gain * (ys[:, i] - mean).unsqueeze(-1)
        cov = cov - gain.unsqueeze(-1) * cphi.unsqueeze(-2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
    return torch.stack(means, 1), torch.stack(variances, 1)


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``-log N(y; mean, var)`` elementwise (with the ``log 2 pi`` constant)."""
    return 0.5 * (LOG_2PI + torch.log(var) + (y - mean) ** 2 / var)


def mixture_predictive(
    means: torch.Tensor, variances: torch.Tensor, ys: torch.Tensor, log_prior: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Bayesian model averaging of ``M`` Gaussian predictives along each prompt.

    ``means``/``variances`` ``[M, B, K]``: model ``m``'s predictive of ``y_i`` from the
    pairs before ``i`` (as :func:`gaussian_predictive` returns); ``log_prior`` ``[M]``
    (``-inf`` allowed for excluded models). The evidence of model ``m`` on pairs ``< i``
    is ``prod_{j < i} N(y_j; mean_mj, var_mj)`` (chain rule), so the posterior weights
    are ``w_mi ∝ prior_m * evidence_mi``. Returns ``[B, K]`` tensors: ``mean`` and
    ``var`` (the mixture's first two moments), ``nll`` (``-log`` of the mixture density
    at the true ``y_i``), and ``weights`` ``[M, B, K]``.
    """
    ys = ys.double()
    ll = -gaussian_nll(ys.unsqueeze(0), means.double(), variances.double())
    evidence = exclusive_cumsum(ll, dim=2)
    logits = log_prior.double().view(-1, 1, 1) + evidence
    log_w = logits - torch.logsumexp(logits, 0, keepdim=True)
    w = log_w.exp()
    mean = (w * means).sum(0)
    var = (w * (variances + means**2)).sum(0) - mean**2
    nll = -torch.logsumexp(log_w + ll, 0)
    return {"mean": mean, "var": var.clamp_min(1e-300), "nll": nll, "weights": w}


# --------------------------------------------------------------------------- params
def check_ood_points(
    value: int | None, ood: str | None, points: int | None, unit: str = "prompts"
) -> int | None:
    """Validate ``ood_points``, the length of the ``ood`` prompts, and return it.

    ``ood`` is the shift the split applies and ``points`` the training length (either
    None when not known, e.g. when its own field failed validation); ``unit`` names
    the prompts in the message. ``ood_points`` applies only with ``ood='length'`` and
    must exceed ``points``; raises :class:`ValueError` otherwise.
    """
    if value is None:
        return value
    if ood is not None and ood != "length":
        raise ValueError(f"ood_points={value} applies only with ood='length' (ood='{ood}')")
    if points is not None and value <= points:
        raise ValueError(f"ood_points={value} must be > n_points={points} (OOD {unit} are longer)")
    return value


def ood_prompt_length(ood: str, ood_points: int | None, points: int) -> int:
    """The length of the ``ood`` prompts: ``points`` (the training length) unless the
    split shifts ``length``, then ``ood_points``, by default ``2 * points``."""
    if ood != "length":
        return points
    return ood_points if ood_points is not None else 2 * points


# --------------------------------------------------------------------------- model io
def vector_io(input_dim: int, n_outputs: int = 1) -> dict[str, Any]:
    """The ``model_io`` of a task with real-vector tokens of size ``input_dim`` and a
    per-token regression head of ``n_outputs`` channels."""
    return {
        "embed": "vectors",
        "input_dim": input_dim,
        "head": "token_regress",
        "n_outputs": n_outputs,
    }


def scalar_output(out: torch.Tensor) -> torch.Tensor:
    """The prediction ``[B, T]`` of a one-output model: channel 0 of ``[B, T, 1]``
    outputs, or ``out`` itself when it is already ``[B, T]``."""
    return out[..., 0] if out.dim() == 3 else out


# --------------------------------------------------------------------------- eval sets
def check_eval_request(splits: tuple[str, ...], split: str, size: int) -> None:
    """Raise :class:`ValueError` unless ``size >= 1`` and ``split`` is one of ``splits``."""
    if size < 1:
        raise ValueError(f"eval size={size} must be >= 1")
    if split not in splits:
        raise ValueError(f"unknown split '{split}' (valid: {', '.join(splits)})")


def eval_batches(
    data: dict[str, torch.Tensor],
    to_batch: Callable[[dict[str, torch.Tensor]], Batch],
    baselines: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> list[Batch]:
    """An evaluation set of the prompts ``data`` (tensors sharing the leading prompt
    dimension), cut into batches of at most :data:`EVAL_BATCH_PROMPTS` prompts.

    Each part is laid out by ``to_batch``, and each baseline's output on it (from
    ``baselines``, ``{name: tensor}``) is stored in ``extras`` as ``baseline_<name>``
    (float32), so that scoring compares the model with the baselines on the same
    prompts without recomputing them.
    """
    size = next(iter(data.values())).shape[0]
    batches = []
    for start in range(0, size, EVAL_BATCH_PROMPTS):
        part = {k: v[start : start + EVAL_BATCH_PROMPTS] for k, v in data.items()}
        batch = to_batch(part)
        batch.extras.update({f"baseline_{k}": v.float() for k, v in baselines(part).items()})
        batches.append(batch)
    return batches


def stored_baselines(batch: Batch) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` (float64, on the CPU) of the ``baseline_<name>`` entries of
    ``batch.extras`` (empty when the batch carries none)."""
    return {
        k.removeprefix("baseline_"): v.double().cpu()
        for k, v in batch.extras.items()
        if k.startswith("baseline_")
    }


# --------------------------------------------------------------------------- driver
class PromptTask(Task):
    """A task of random prompts scored beside baselines computed on the same prompts.

    Subclasses implement :meth:`sample`, :meth:`to_batch`, :meth:`unpack` and
    :meth:`baselines`. A prompt set is a ``dict`` of tensors sharing the leading
    (prompt) dimension.
    """

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "mse"

    # ------------------------------------------------------------ hooks
    def sample(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """``n`` prompts of ``split`` (``train``, ``id`` or ``ood``), drawn from ``gen``."""
        raise NotImplementedError

    def to_batch(self, data: dict[str, torch.Tensor]) -> Batch:
        """The model-facing layout of prompts (the latent facts the metrics need in extras)."""
        raise NotImplementedError

    def unpack(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The prompts of a batch made by :meth:`to_batch` (inverse of it)."""
        raise NotImplementedError

    def baselines(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: tensor}``: each baseline's per-position output on the prompts."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def train_batch(self, step: int, batch_size: int) -> Batch:
        gen = torch_generator(self.seed, SPLIT_IDS["train"], step)
        return self.to_batch(self.sample(gen, batch_size, "train"))

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        check_eval_request(self.splits, split, size)
        data = self.sample(torch_generator(self.seed, SPLIT_IDS[split]), size, split)
        return eval_batches(data, self.to_batch, self.baselines)

    def baselines_of(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The baselines stored in ``batch.extras``, or computed now when absent (float64)."""
        stored = stored_baselines(batch)
        if stored:
            return stored
        return {k: v.double().cpu() for k, v in self.baselines(self.unpack(batch)).items()}
