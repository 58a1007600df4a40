"""The task interface: deterministic generators with named splits, metrics and baselines.

A task is registered in the ``task`` slot and built as ``cls(params, seed)``. It says
which model inputs/outputs it needs (:meth:`Task.model_io`), which objective it trains
with by default, produces training batches that depend only on ``(seed, step)`` — so a
resumed run sees exactly the data an uninterrupted one would — and fixed evaluation sets
per split (``id``: the training distribution on held-out examples; ``ood``: the shifted
one), which it scores with its own metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationInfo, field_validator

SPLIT_IDS = {"train": 0, "id": 1, "ood": 2}
#: The parameter names of the inclusive size ranges of most tasks: training (and ``id``)
#: from ``min_len`` to ``max_len``, ``ood`` from ``ood_min_len`` to ``ood_max_len``.
LENGTH_FIELDS = ("min_len", "max_len", "ood_min_len", "ood_max_len")


@dataclass
class Batch:
    """One batch.

    - ``inputs``: token ids ``[B, T]`` or vectors ``[B, T, D]``;
    - ``targets``: what the model should output, aligned with ``inputs`` (``[B, T]``);
    - ``loss_mask``: ``[B, T]`` bool, the positions the loss and metrics count;
    - ``padding_mask``: ``[B, T]`` bool, True at real tokens, or ``None`` when every
      position is real or padding only trails (harmless under a causal mask);
    - ``group``: a label shared by the whole batch (e.g. the sequence length), or None.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    padding_mask: torch.Tensor | None = None
    group: int | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        moved["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return Batch(**moved)

    @property
    def n_tokens(self) -> int:
        """Tokens processed (all positions of the rows, padding included)."""
        return int(self.inputs.shape[0] * self.inputs.shape[1])

    @property
    def n_real_tokens(self) -> int:
        """Real tokens: the count of ``padding_mask`` (every position when it is ``None``)."""
        if self.padding_mask is None:
            return self.n_tokens
        return int(self.padding_mask.sum())


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *stream)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def train_rows(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """The rows of training step ``step`` of a task with ``n`` training examples:
    ``min(batch_size, n)`` distinct indices drawn from ``(seed, train, step)`` alone."""
    rng = rng_for(seed, SPLIT_IDS["train"], step)
    return [int(i) for i in rng.choice(n, size=min(batch_size, n), replace=False)]


def eval_set_by_size(
    seed: int,
    split: str,
    size: int,
    sizes: Sequence[int],
    draw: Callable[[int, int, np.random.Generator], np.ndarray],
    make_batch: Callable[[np.ndarray, int], Batch],
    rows_per_batch: int,
    none_drawn: str,
) -> list[Batch]:
    """A fixed evaluation set spread over ``sizes`` (lengths, pair counts, ...): for each
    size ``s``, ``draw(s, n, rng)`` gives ``n = ceil(size / len(sizes))`` raw rows from the
    split's own stream (:func:`rng_for` of ``seed``, the split and ``s``), which
    ``make_batch(rows, s)`` turns into batches of at most ``rows_per_batch`` rows. A draw
    may return fewer rows (a small held-out space); when nothing at all is drawn the error
    is ``none_drawn``."""
    if size < 1:
        raise ValueError(f"eval size={size} must be >= 1")
    per_size = max(1, math.ceil(size / len(sizes)))
    batches: list[Batch] = []
    for s in sizes:
        rows = draw(s, per_size, rng_for(seed, SPLIT_IDS[split], s))
        for start in range(0, rows.shape[0], rows_per_batch):
            batches.append(make_batch(rows[start : start + rows_per_batch], s))
    if not batches:
        raise ValueError(none_drawn)
    return batches


def split_range(params: BaseModel, split: str, fields: Sequence[str] = LENGTH_FIELDS) -> range:
    """The sizes (lengths, depths, vertex or pair counts) of ``split``, read from
    ``params``: ``fields`` names the inclusive bounds ``(low, high, ood_low, ood_high)``;
    ``train`` and ``id`` share the first pair, ``ood`` has the second."""
    if split in ("train", "id"):
        low, high = fields[0], fields[1]
    elif split == "ood":
        low, high = fields[2], fields[3]
    else:
        raise ValueError(f"unknown split '{split}' (valid: train, id, ood)")
    return range(getattr(params, low), getattr(params, high) + 1)


def torch_generator(seed: int, *stream: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, *stream)``."""
    sub = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(sub) & ((1 << 63) - 1))


class Task:
    """Base class of every task; subclasses set ``splits`` and implement the hooks."""

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")
    default_objective: ClassVar[str] = "causal_lm"
    #: Whether the token ids are exactly the UTF-8 bytes 0-255 of text (vocabulary 256, no
    #: special tokens); ``anyformer generate`` then reads and writes text, not token ids.
    byte_level: ClassVar[bool] = False
    #: Whether no ``id`` or ``ood`` example ever occurs in training by construction
    #: (held out by size, by prompt hash or as explicit sets); the contract tests compare
    #: whole rows to check it.
    disjoint_splits: ClassVar[bool] = False

    def __init__(self, params: BaseModel, seed: int = 0) -> None:
        self.params = params
        self.seed = seed
        self._eval_cache: dict[tuple[str, int], list[Batch]] = {}

    # ------------------------------------------------------------------ hooks
    def model_io(self) -> dict[str, Any]:
        """Model fields the task fixes: e.g. ``vocab_size`` or ``embed``/``input_dim``."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The training batch of ``step``; depends only on (seed, step, batch_size)."""
        raise NotImplementedError

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        """About ``size`` held-out examples of ``split``, as a list of batches."""
        raise NotImplementedError

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Metrics of model outputs on an evaluation set."""
        raise NotImplementedError

    def max_seq_len(self) -> int:
        """The longest sequence any split produces (the model's ``max_len`` must cover it)."""
        raise NotImplementedError

    def split_sizes(self, split: str) -> range | None:
        """The sizes (lengths, pair counts, ...) of ``split`` when the task splits by size:
        every batch of the split has one of them as its ``group``, and the ``ood`` sizes
        all exceed the ``train`` ones; None (the default) when it does not."""
        return None

    def plot_data(self, split: str, outputs: list[torch.Tensor], batches: list[Batch]) -> Any:
        """What the task's own plot shows of a model's ``outputs`` on the evaluation
        ``batches`` of ``split``, as data (:mod:`anyformer.tasks.plot_data`: a
        ``Confusion``, ``Scatter`` or ``ImageGrid``), or ``None`` (the default) when the
        task has no plot of its own. The lab draws it at the end of a run; a ``Scatter``
        gets the run's conformal intervals added there."""
        return None

    # ------------------------------------------------------------------ shared
    def eval_set(self, split: str, size: int) -> list[Batch]:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (valid: {', '.join(self.splits)})")
        key = (split, size)
        if key not in self._eval_cache:
            self._eval_cache[key] = self.make_eval_set(split, size)
        return self._eval_cache[key]

    @torch.no_grad()
    def evaluate(
        self,
        predict: Callable[[Batch], torch.Tensor],
        split: str,
        size: int,
        loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Run ``predict`` over the split's evaluation set and score it.

        With ``loss_fn`` the metrics also hold ``loss``, averaged over counted positions.
        An objective that corrupts its inputs (an MLM, a denoiser) passed as ``loss_fn``
        is scored on the evaluation set as it corrupts it (its ``evaluation_batches``).
        The Trainer's ``predict`` also carries the model as ``predict.model``, for a task
        that decodes with the model's cache (``completion_with_tests``); other callers'
        ``predict`` may lack it, and such a task then decodes through ``predict``.
        """
        batches = self.eval_set(split, size)
        corrupted = getattr(loss_fn, "evaluation_batches", None)
        if corrupted is not None:
            batches = corrupted(batches, split)
        outputs = [predict(b) for b in batches]
        metrics = self.score([o.float().cpu() for o in outputs], batches)
        if loss_fn is not None:
            total, weight = 0.0, 0
            for out, b in zip(outputs, batches):
                n = int(b.loss_mask.sum())
                total += float(loss_fn(out, b.to(out.device))) * n
                weight += n
            metrics["loss"] = total / max(weight, 1)
        return metrics


def at_least(
    other: str, strict: bool = False, why: str = ""
) -> Callable[[Any, int, ValidationInfo], int]:
    """A field validator: the field must be ``>=`` (``>`` when ``strict``) field ``other``;
    ``why``, if given, ends the error message in parentheses.

    Use as ``_v = field_validator("max_x")(at_least("min_x"))`` (``other`` must be
    declared before the checked field).
    """

    def check(cls: Any, v: int, info: ValidationInfo) -> int:
        lo = info.data.get(other)
        if lo is not None and (v <= lo if strict else v < lo):
            reason = f" ({why})" if why else ""
            raise ValueError(
                f"{info.field_name}={v} must be {'>' if strict else '>='} {other}={lo}{reason}"
            )
        return v

    return check


def range_validators(fields: Sequence[str] = LENGTH_FIELDS, why: str = "") -> tuple[Any, Any, Any]:
    """The field validators that order a task's split ranges (``fields`` as in
    :func:`split_range`): ``high >= low``, ``ood_low > high`` (``why`` ends that message)
    and ``ood_high >= ood_low``.

    Use as ``_max, _ood, _ood_max = range_validators((...))`` in the parameter class (the
    four fields declared in that order, before the assignment).
    """
    low, high, ood_low, ood_high = fields
    return (
        field_validator(high)(at_least(low)),
        field_validator(ood_low)(at_least(high, strict=True, why=why)),
        field_validator(ood_high)(at_least(ood_low)),
    )
