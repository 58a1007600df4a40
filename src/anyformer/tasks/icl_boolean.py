"""In-context learning of Boolean functions: conjunctions and sparse parities.

A prompt holds ``k`` labelled examples ``(b_i, f(b_i))`` of one random Boolean function
``f`` over ``n`` bits ``b in {0, 1}^n``. Labels are ``y = +1`` when ``f(b) = 1`` and
``-1`` otherwise. The function classes (``function_class``):

- ``conjunction``: each variable enters with probability ``literal_prob``, as ``b_j`` or
  ``not b_j`` with probability 1/2; ``f`` is the AND of the chosen literals (always 1
  when none is chosen). Since a random input rarely satisfies a long conjunction, each
  example is, with probability ``positive_fraction``, made positive by setting the
  bits of the chosen literals; the other bits stay random.
- ``sparse_parity``: ``f(b) = XOR_{j in S} b_j`` for a uniformly drawn set ``S`` of
  ``sparsity`` variables (default 2).

Tokens (size ``n + 1``, the layout of ``icl_linear_regression``): an x-token ``[x_i, 0]``
then a y-token ``[0, ..., 0, y_i]``, with ``x = 2 b - 1 in {-1, +1}^n``
(``encoding='sign'``) or ``x = b in {0, 1}^n`` (``encoding='binary'``). A causal model
predicts ``y_i`` (a real number; its sign is the label) at the position of ``x_i``,
from the ``i - 1`` earlier examples. The default objective is the mean squared error on
the ``+-1`` labels.

Baselines, computed on the same prompts (``Batch.extras['baseline_<name>']``, ``[B, k]``
of ``+-1``):

- ``elimination`` (conjunctions): the classical elimination learner. Start from all
  ``2n`` literals; every positive example removes the literals it falsifies; predict
  positive iff the query satisfies every remaining literal (before any positive example
  ``b_j and not b_j`` both remain, so it predicts negative). It is the most specific
  conjunction consistent with the examples: it predicts positive exactly when every
  consistent conjunction does, and errs only on positive queries.
- ``gf2_elimination`` (parities): Gaussian elimination over GF(2) on the examples seen
  so far (the system ``B s = f``). When the query lies in the row space of the examples
  every consistent parity agrees and the prediction is that label; otherwise exactly
  half of the consistent parities say 1, and the learner predicts with one consistent
  parity, the solution with every free variable set to 0 (pivots are the lowest set
  column of each reduced row).
- ``sparse_enumeration`` (parities, when ``C(n, sparsity) <= ENUMERATION_LIMIT``): the
  Bayes-optimal predictor for the task's prior, a majority vote over the
  ``sparsity``-sparse parities consistent with the examples (ties predict ``-1``).
- ``majority``: the majority label among earlier examples (ties and no examples
  predict ``-1``).

Metrics: accuracy (a prediction counts as ``+1`` when ``> 0``), overall and per
example index ``k``, for the model and each baseline; ``gap_to_optimal``, the mean over
``k`` of ``learner - model`` accuracy with the paper's optimal learner (``elimination``
for conjunctions, ``gf2_elimination`` for parities); and a curve of accuracy against the
number of in-context examples.

Splits: training prompts depend only on ``(seed, step)``; ``id`` is drawn from the same
distribution by its own stream; ``ood`` shifts ``length`` (``ood_points`` examples,
default ``2 * n_points``) or ``bias`` (each free input bit is 1 with probability
``ood_bias``, default 0.75, instead of 1/2).

Paper: Bhattamishra, Patel, Blunsom & Kanade, "Understanding In-Context Learning in
Transformers and LLMs by Learning to Learn Discrete Functions" (2023).
"""

from __future__ import annotations

import itertools
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
    exclusive_cumany,
    exclusive_cumsum,
    interleave_pairs,
    ood_prompt_length,
    scalar_output,
    split_pairs,
    vector_io,
)

BHATTAMISHRA = Paper(
    "Understanding In-Context Learning in Transformers and LLMs by Learning to Learn "
    "Discrete Functions",
    2023,
    "Bhattamishra, Patel, Blunsom & Kanade",
)
#: ``sparse_enumeration`` is computed only when there are at most this many candidates.
ENUMERATION_LIMIT = 2000


# --------------------------------------------------------------------------- learners
def _sign(flag: torch.Tensor) -> torch.Tensor:
    return torch.where(flag, 1.0, -1.0).double()


def elimination_predict(bits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The elimination learner for conjunctions at every position of every prompt.

    ``bits`` ``[B, K, n]`` bool, ``labels`` ``[B, K]`` ``+-1`` -> ``[B, K]`` ``+-1``:
    entry ``i`` predicts example ``i`` from examples ``< i``. Literal ``b_j`` survives
    until a positive example has ``b_j = 0``, literal ``not b_j`` until one has
    ``b_j = 1``; a query satisfies the survivors iff each of its bits has been seen with
    the same value in some earlier positive example.
    """
    positive = (labels > 0).unsqueeze(-1)
    seen_one = exclusive_cumany(bits & positive, dim=1)
    seen_zero = exclusive_cumany(~bits & positive, dim=1)
    return _sign(torch.where(bits, seen_one, seen_zero).all(-1))


def _reduce(v: torch.Tensor, rows: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
    """Reduce augmented vectors ``v`` ``[B, n + 1]`` by the pivot rows (GF(2))."""
    for c in range(rows.shape[1]):
        hit = v[:, c] & have[:, c]
        v = torch.where(hit.unsqueeze(-1), v ^ rows[:, c], v)
    return v


def _free_zero_solution(rows: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
    """``s`` ``[B, n]`` solving every pivot row, with the free variables set to 0."""
    b, n = have.shape
    s = torch.zeros(b, n, dtype=torch.bool)
    for c in range(n - 1, -1, -1):
        rest = (rows[:, c, c + 1 : n] & s[:, c + 1 :]).sum(-1) % 2 == 1
        s[:, c] = have[:, c] & (rows[:, c, n] ^ rest)
    return s


def gf2_predict(
    bits: torch.Tensor, labels: torch.Tensor, return_determined: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gaussian elimination over GF(2) at every position of every prompt.

    ``bits`` ``[B, K, n]`` bool, ``labels`` ``[B, K]`` ``+-1`` (``+1`` means parity 1).
    Returns ``[B, K]`` ``+-1`` (and, with ``return_determined``, a ``[B, K]`` bool mask of
    the queries every consistent parity agrees on). The examples are kept as an
    echelon basis: row ``c`` (when ``have[c]``) has its lowest set bit at column ``c``
    and its label in the last column.
    """
    b, k, n = bits.shape
    rows = torch.zeros(b, n, n + 1, dtype=torch.bool)
    have = torch.zeros(b, n, dtype=torch.bool)
    preds = torch.zeros(b, k, dtype=torch.float64)
    determined = torch.zeros(b, k, dtype=torch.bool)
    zero = torch.zeros(b, 1, dtype=torch.bool)
    for i in range(k):
        q = _reduce(torch.cat([bits[:, i], zero], -1), rows, have)
        residual = q[:, :n]
        known = ~residual.any(-1)
        guess = q[:, n]
        if not bool(known.all()):
            s = _free_zero_solution(rows, have)
            guess = guess ^ ((residual & s).sum(-1) % 2 == 1)
        preds[:, i] = _sign(guess)
        determined[:, i] = known
        v = _reduce(torch.cat([bits[:, i], (labels[:, i] > 0).unsqueeze(-1)], -1), rows, have)
        new = v[:, :n].any(-1)
        if bool(new.any()):
            idx = torch.nonzero(new)[:, 0]
            pivot = v[idx, :n].long().argmax(-1)
            rows[idx, pivot] = v[idx]
            have[idx, pivot] = True
    return (preds, determined) if return_determined else preds


def sparse_parity_candidates(n: int, sparsity: int) -> torch.Tensor:
    """``[C, n]`` bool: every set of ``sparsity`` of the ``n`` variables."""
    combos = list(itertools.combinations(range(n), sparsity))
    out = torch.zeros(len(combos), n, dtype=torch.bool)
    for row, combo in enumerate(combos):
        out[row, list(combo)] = True
    return out


def sparse_enumeration_predict(
    bits: torch.Tensor, labels: torch.Tensor, sparsity: int
) -> torch.Tensor:
    """Majority vote of the ``sparsity``-sparse parities consistent with earlier examples.

    With a uniform prior over the candidate sets this is the Bayes-optimal prediction
    (ties predict ``-1``). ``bits`` ``[B, K, n]`` bool, ``labels`` ``[B, K]`` -> ``[B, K]``.
    """
    cands = sparse_parity_candidates(bits.shape[-1], sparsity).float().T  # [n, C]
    alive = torch.ones(bits.shape[0], cands.shape[1], dtype=torch.bool)
    preds = torch.empty(bits.shape[:2], dtype=torch.float64)
    for i in range(bits.shape[1]):
        says_one = (bits[:, i].float() @ cands).remainder(2) > 0.5  # [B, C]
        ones = (says_one & alive).sum(-1)
        preds[:, i] = _sign(ones > alive.sum(-1) - ones)
        alive &= says_one == (labels[:, i] > 0).unsqueeze(-1)
    return preds


def majority_predict(labels: torch.Tensor) -> torch.Tensor:
    """The more frequent label among earlier examples (ties and none: ``-1``)."""
    pos = exclusive_cumsum((labels > 0).long(), dim=1)
    neg = exclusive_cumsum((labels <= 0).long(), dim=1)
    return _sign(pos > neg)


# --------------------------------------------------------------------------- params
class ICLBooleanParams(BaseModel):
    """Parameters of in-context Boolean function learning.

    - ``function_class``: ``conjunction`` or ``sparse_parity``.
    - ``n_bits``: ``n``, the number of input bits.
    - ``sparsity``: relevant variables of a sparse parity (``sparse_parity`` only); None
      means ``min(2, n_bits)``.
    - ``literal_prob``: probability that a variable enters a conjunction
      (``conjunction`` only); None means 0.3.
    - ``positive_fraction``: probability that an example is made positive
      (``conjunction`` only); None means 0.5.
    - ``encoding``: input tokens as signs ``{-1, +1}`` (``sign``) or bits (``binary``).
    - ``n_points``: examples per training and ``id`` prompt.
    - ``ood``: what the ``ood`` split shifts: ``length`` or ``bias``.
    - ``ood_points``: examples per ``ood`` prompt (``ood='length'`` only); None means
      ``2 * n_points``.
    - ``ood_bias``: probability of a 1 bit in ``ood`` inputs (``ood='bias'`` only); None
      means 0.75.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    function_class: Literal["conjunction", "sparse_parity"] = "conjunction"
    n_bits: int = Field(10, ge=1, le=64)
    sparsity: int | None = Field(None, ge=1)
    literal_prob: float | None = Field(None, gt=0.0, le=1.0)
    positive_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    encoding: Literal["sign", "binary"] = "sign"
    n_points: int = Field(40, ge=1)
    ood: Literal["length", "bias"] = "length"
    ood_points: int | None = Field(None, ge=2)
    ood_bias: float | None = Field(None, gt=0.0, lt=1.0)

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        fc = info.data.get("function_class")
        if fc is not None and fc != "sparse_parity":
            raise ValueError(f"sparsity={v} applies only with function_class='sparse_parity'")
        n = info.data.get("n_bits")
        if n is not None and v > n:
            raise ValueError(f"sparsity={v} must be <= n_bits={n}")
        return v

    @field_validator("literal_prob", "positive_fraction")
    @classmethod
    def _conjunction_only(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return v
        fc = info.data.get("function_class")
        if fc is not None and fc != "conjunction":
            raise ValueError(
                f"{info.field_name}={v} applies only with function_class='conjunction'"
            )
        return v

    @field_validator("ood_points")
    @classmethod
    def _ood_points(cls, v: int | None, info: ValidationInfo) -> int | None:
        return check_ood_points(v, info.data.get("ood"), info.data.get("n_points"))

    @field_validator("ood_bias")
    @classmethod
    def _ood_bias(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("ood") == "length":
            raise ValueError(f"ood_bias={v} applies only with ood='bias' (ood='length')")
        return v

    @property
    def literal_probability(self) -> float:
        """Probability that a variable enters a conjunction."""
        return self.literal_prob if self.literal_prob is not None else 0.3

    @property
    def forced_positive(self) -> float:
        """Probability that a conjunction example is made positive."""
        return self.positive_fraction if self.positive_fraction is not None else 0.5

    @property
    def parity_size(self) -> int:
        """Relevant variables of a sparse parity."""
        return self.sparsity if self.sparsity is not None else min(2, self.n_bits)

    @property
    def ood_length(self) -> int:
        """Examples per ``ood`` prompt."""
        return ood_prompt_length(self.ood, self.ood_points, self.n_points)

    @property
    def shift_bias(self) -> float:
        """Probability of a 1 bit in ``ood`` inputs (1/2 for ``length``)."""
        if self.ood == "length":
            return 0.5
        return self.ood_bias if self.ood_bias is not None else 0.75


# --------------------------------------------------------------------------- task
@register(
    "task",
    "icl_boolean",
    paper=BHATTAMISHRA,
    summary="in-context conjunctions and sparse parities beside elimination / GF(2) learners",
    params=ICLBooleanParams,
    caps=Capabilities(),
)
class ICLBoolean(PromptTask):
    """Predict the label of ``b_i`` from the earlier labelled examples of a Boolean function.

    Metrics (:meth:`score`): ``accuracy`` and ``by_k`` (``{str(k): accuracy}`` of
    example ``k``, predicted from the ``k - 1`` earlier ones), ``baselines``
    (``{name: {"accuracy", "by_k"}}``), ``gap_to_optimal`` and a ``curve`` (see the
    module docstring). ``extras`` hold the function: ``relevant`` ``[B, n]`` bool (the
    variables in it) and, for conjunctions, ``negated`` ``[B, n]`` bool.
    """

    headline: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    params: ICLBooleanParams

    def model_io(self) -> dict[str, Any]:
        return vector_io(self.params.n_bits + 1)

    def max_seq_len(self) -> int:
        return 2 * max(self.params.n_points, self.params.ood_length)

    @property
    def optimal(self) -> str:
        """The optimal learner the model is compared with."""
        return "elimination" if self.params.function_class == "conjunction" else "gf2_elimination"

    @property
    def baseline_names(self) -> tuple[str, ...]:
        p = self.params
        if p.function_class == "conjunction":
            return ("elimination", "majority")
        if math.comb(p.n_bits, p.parity_size) <= ENUMERATION_LIMIT:
            return ("gf2_elimination", "sparse_enumeration", "majority")
        return ("gf2_elimination", "majority")

    # ------------------------------------------------------------ data
    def sample(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        p = self.params
        k = p.ood_length if split == "ood" else p.n_points
        bias = p.shift_bias if split == "ood" else 0.5
        nb = p.n_bits
        bits = torch.rand(n, k, nb, generator=gen) < bias
        if p.function_class == "conjunction":
            relevant = torch.rand(n, nb, generator=gen) < p.literal_probability
            negated = torch.rand(n, nb, generator=gen) < 0.5
            force = torch.rand(n, k, generator=gen) < p.forced_positive
            fix = force.unsqueeze(-1) & relevant.unsqueeze(1)
            bits = torch.where(fix, ~negated.unsqueeze(1), bits)
            value = ~relevant.unsqueeze(1) | (bits != negated.unsqueeze(1))
            label = value.all(-1)
            data = {"bits": bits, "relevant": relevant, "negated": negated}
        else:
            order = torch.rand(n, nb, generator=gen).argsort(-1)
            relevant = torch.zeros(n, nb, dtype=torch.bool)
            relevant.scatter_(1, order[:, : p.parity_size], True)
            label = (bits & relevant.unsqueeze(1)).sum(-1) % 2 == 1
            data = {"bits": bits, "relevant": relevant}
        data["labels"] = _sign(label).float()
        return data

    def to_batch(self, data: dict[str, torch.Tensor]) -> Batch:
        bits = data["bits"]
        xs = bits.float() if self.params.encoding == "binary" else 2.0 * bits.float() - 1.0
        batch = interleave_pairs(xs, data["labels"])
        batch.extras.update({k: v for k, v in data.items() if k in ("relevant", "negated")})
        return batch

    def unpack(self, batch: Batch) -> dict[str, torch.Tensor]:
        xs, labels = split_pairs(batch, self.params.n_bits)
        data = {"bits": xs > 0.5, "labels": labels}
        data.update({k: v for k, v in batch.extras.items() if k in ("relevant", "negated")})
        return data

    def baselines(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: [B, k]}`` of ``+-1`` predictions, in :attr:`baseline_names` order."""
        bits, labels = data["bits"].cpu(), data["labels"].cpu()
        out: dict[str, torch.Tensor] = {}
        for name in self.baseline_names:
            if name == "elimination":
                out[name] = elimination_predict(bits, labels)
            elif name == "gf2_elimination":
                out[name] = gf2_predict(bits, labels)  # type: ignore[assignment]
            elif name == "sparse_enumeration":
                out[name] = sparse_enumeration_predict(bits, labels, self.params.parity_size)
            else:
                out[name] = majority_predict(labels)
        return out

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Accuracies of the model and the baselines; ``outputs`` ``[B, 2k, 1]`` or ``[B, 2k]``."""
        acc = PerK()
        names = ("model", *self.baseline_names)
        for out, batch in zip(outputs, batches):
            y = batch.targets[:, 0::2].cpu() > 0
            preds = {"model": scalar_output(out)[:, 0::2].cpu(), **self.baselines_of(batch)}
            for name in names:
                acc.add(name, ((preds[name] > 0) == y).double())
        by_k = {n: acc.by_k(n) for n in names}
        gaps = [by_k[self.optimal][k] - v for k, v in by_k["model"].items()]
        return {
            **acc.summary("model", "accuracy"),
            "baselines": {n: acc.summary(n, "accuracy") for n in self.baseline_names},
            "gap_to_optimal": sum(gaps) / len(gaps),
            "curve": examples_curve("accuracy", by_k),
        }
