"""The contract of the ``task`` slot, as checks that run on any task class.

The registry-generated tests (``tests/tasks/test_task_contract.py``) run them on every
registered task, so a new task is checked the moment it is registered. A task built as
``cls(params, seed)`` must keep:

- ``train_deterministic``: a training batch depends only on ``(seed, step)``: two
  instances give equal batches whatever the order of the calls, and asking again gives
  the same batch (no hidden state);
- ``train_varies``: another step, or another seed, gives another batch;
- ``eval_fixed``: the evaluation sets are the same in every instance, before and after
  training batches are drawn;
- ``fits_max_seq_len``: no batch is longer than :meth:`Task.max_seq_len`;
- ``declared_sizes``: for a task that splits by size (:meth:`Task.split_sizes`), every
  batch's ``group`` is one of its split's sizes, and every ``ood`` size exceeds every
  training size;
- ``held_out``: for a task that holds its evaluation examples out by construction
  (``Task.disjoint_splits``), no ``id`` or ``ood`` row occurs in training batches, and
  no row is in both;
- ``baselines_ignore_model``: the ``baselines`` a task reports are the same whatever the
  model outputs (their own numbers: a ``gap*`` entry, the model's distance to a
  baseline, is left out);
- ``baselines_same_prompts``: a deterministic baseline (``majority``) given to
  ``score`` as the model's outputs scores exactly the numbers the task reports for it,
  so it was computed on the prompts the model is scored on.

A check that does not apply to a task passes with a reason saying so (``skipped``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel

from anyformer.tasks.base import Batch, Task

#: The names of the checks, in the order :func:`check_task` runs them.
CHECKS = (
    "train_deterministic",
    "train_varies",
    "eval_fixed",
    "fits_max_seq_len",
    "declared_sizes",
    "held_out",
    "baselines_ignore_model",
    "baselines_same_prompts",
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed``, and why (or why it was ``skipped``)."""

    name: str
    passed: bool
    reason: str = ""
    skipped: bool = False


class _Skip(Exception):
    """Raised by a check that does not apply to the task."""


class _Fail(Exception):
    """Raised by a check that found a breach."""


def batches_equal(a: Batch, b: Batch) -> bool:
    """Whether two batches hold the same tensors, group and extras (bit for bit)."""

    def same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        if x is None or y is None:
            return x is y
        return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)

    if a.group != b.group or set(a.extras) != set(b.extras):
        return False
    pairs = [(a.inputs, b.inputs), (a.targets, b.targets), (a.loss_mask, b.loss_mask)]
    pairs += [(a.padding_mask, b.padding_mask)]
    pairs += [(a.extras[k], b.extras[k]) for k in a.extras]
    return all(same(x, y) for x, y in pairs)


def _rows(batch: Batch) -> set[tuple[Any, ...]]:
    """The rows of a batch (each example's inputs flattened: token ids, vectors, image
    pixels or table cells, then its ``extras["source"]`` when it has one, the encoder's
    input), trailing padding (id 0) of each removed."""
    parts = [batch.inputs]
    if "source" in batch.extras:
        parts.append(batch.extras["source"])
    out = set()
    for rows in zip(*(p.reshape(p.shape[0], -1).tolist() for p in parts)):
        key: list[Any] = []
        for row in rows:
            while row and row[-1] == 0:
                row.pop()
            key += [*row, None]  # None ends each part
        out.add(tuple(key))
    return out


def model_outputs(task: Task, batch: Batch, right: bool) -> torch.Tensor:
    """Outputs a model could give: for token tasks one-hot logits of the targets
    (``right``) or of the next token id (wrong everywhere); for vector tasks zeros or
    ones of the head's ``n_outputs`` channels; for a ``dense`` or ``forecast`` head zeros
    or ones shaped like the targets (an image, a forecast per example)."""
    io = task.model_io()
    if "vocab_size" in io:
        vocab = int(io["vocab_size"])
        ids = batch.targets.long() if right else (batch.targets.long() + 1) % vocab
        return torch.nn.functional.one_hot(ids, vocab).float()
    head = io.get("head")
    if (head if isinstance(head, str) else dict(head or {}).get("name")) in ("dense", "forecast"):
        return torch.zeros(batch.targets.shape) if right else torch.ones(batch.targets.shape)
    shape = (*batch.targets.shape[:2], int(io.get("n_outputs", 1)))
    return torch.zeros(shape) if right else torch.ones(shape)


def _own_numbers(baselines: dict[str, Any]) -> str:
    """The baselines' own numbers as canonical JSON (``gap*`` entries left out)."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not str(k).startswith("gap")}
        return x

    return json.dumps(strip(baselines), sort_keys=True)


class _Context:
    """The instances and batches the checks share (each drawn once)."""

    def __init__(
        self, build: Callable[[int], Task], seed: int, steps: int, batch_size: int, size: int
    ) -> None:
        self.build, self.seed, self.steps, self.size = build, seed, steps, size
        self.batch_size = batch_size
        self.task = build(seed)
        self.train = [self.task.train_batch(s, batch_size) for s in range(steps)]
        self.eval = {split: self.task.make_eval_set(split, size) for split in ("id", "ood")}


def _train_deterministic(c: _Context) -> str:
    other = c.build(c.seed)
    again = [other.train_batch(s, c.batch_size) for s in reversed(range(c.steps))][::-1]
    for step, (a, b) in enumerate(zip(c.train, again)):
        if not batches_equal(a, b):
            raise _Fail(f"step {step}: two instances with seed {c.seed} give different batches")
    if not batches_equal(c.task.train_batch(0, c.batch_size), c.train[0]):
        raise _Fail("step 0 asked again after other steps gives another batch (hidden state)")
    return f"{c.steps} steps equal across instances and call orders"


def _train_varies(c: _Context) -> str:
    if batches_equal(c.train[0], c.train[1]):
        raise _Fail("steps 0 and 1 give the same batch")
    if batches_equal(c.build(c.seed + 1).train_batch(0, c.batch_size), c.train[0]):
        raise _Fail(f"seeds {c.seed} and {c.seed + 1} give the same batch at step 0")
    return "steps and seeds give different batches"


def _eval_fixed(c: _Context) -> str:
    fresh = c.build(c.seed)
    for split, batches in c.eval.items():
        again = fresh.make_eval_set(split, c.size)
        if len(again) != len(batches) or not all(map(batches_equal, batches, again)):
            raise _Fail(f"split '{split}' differs between instances (or after training)")
    return "id and ood sets equal across instances"


def _fits(c: _Context) -> str:
    limit = c.task.max_seq_len()
    for name, batches in [("train", c.train), *c.eval.items()]:
        longest = max(b.inputs.shape[1] for b in batches)
        if longest > limit:
            raise _Fail(f"a '{name}' batch has {longest} positions > max_seq_len() = {limit}")
    return f"every batch within max_seq_len() = {limit}"


def _declared_sizes(c: _Context) -> str:
    sizes = {s: c.task.split_sizes(s) for s in ("train", "id", "ood")}
    if sizes["train"] is None:
        raise _Skip("the task does not split by size")
    for name, batches in [("train", c.train), *c.eval.items()]:
        seen = {b.group for b in batches}
        if not seen <= set(sizes[name]):  # type: ignore[arg-type]
            raise _Fail(f"'{name}' batches have sizes {sorted(seen)} outside {sizes[name]}")
    if min(sizes["ood"]) <= max(sizes["train"]):  # type: ignore[arg-type,type-var]
        raise _Fail(f"ood sizes {sizes['ood']} do not all exceed train sizes {sizes['train']}")
    return f"train {sizes['train']}, ood {sizes['ood']}"


def _held_out(c: _Context) -> str:
    if not c.task.disjoint_splits:
        raise _Skip("the task does not hold its evaluation examples out by construction")
    trained = set().union(*(_rows(b) for b in c.train))
    held = {split: set().union(*(_rows(b) for b in bs)) for split, bs in c.eval.items()}
    for split, rows in held.items():
        if rows & trained:
            raise _Fail(f"{len(rows & trained)} '{split}' rows occur in training batches")
    if held["id"] & held["ood"]:
        raise _Fail(f"{len(held['id'] & held['ood'])} rows are in both 'id' and 'ood'")
    return f"{len(held['id'])} id and {len(held['ood'])} ood rows, none of {len(trained)} trained"


def _scores(c: _Context, split: str, right: bool) -> dict[str, Any]:
    batches = c.eval[split]
    return c.task.score([model_outputs(c.task, b, right) for b in batches], batches)


def _baselines_ignore_model(c: _Context) -> str:
    names = []
    for split in c.eval:
        good, bad = _scores(c, split, True), _scores(c, split, False)
        if "baselines" not in good:
            raise _Skip("the task reports no baselines")
        if _own_numbers(good["baselines"]) != _own_numbers(bad["baselines"]):
            raise _Fail(f"split '{split}': the baselines change with the model's outputs")
        names = sorted(good["baselines"])
    return f"baselines {', '.join(names)}"


def _baselines_same_prompts(c: _Context) -> str:
    outputs_of = getattr(c.task, "baseline_outputs", None)
    checked = []
    for split, batches in c.eval.items():
        reported = _scores(c, split, True).get("baselines", {})
        if outputs_of is None or "majority" not in reported:
            raise _Skip("the task has no deterministic baseline to replay as a model")
        as_model = c.task.score(outputs_of("majority", batches), batches)
        for key, value in reported["majority"].items():
            if not _close(as_model.get(key), value):
                raise _Fail(
                    f"split '{split}': the majority answers scored as a model give {key}="
                    f"{as_model.get(key)}, the task reports {value}"
                )
            checked.append(key)
    return f"majority replayed: {', '.join(sorted(set(checked)))}"


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return False


_RUN = dict(
    zip(
        CHECKS,
        (
            _train_deterministic,
            _train_varies,
            _eval_fixed,
            _fits,
            _declared_sizes,
            _held_out,
            _baselines_ignore_model,
            _baselines_same_prompts,
        ),
        strict=True,
    )
)


def check_task(
    cls: type[Task],
    params: BaseModel,
    seed: int = 0,
    steps: int = 12,
    batch_size: int = 16,
    eval_size: int = 48,
) -> list[CheckResult]:
    """Run every check of the task contract on ``cls(params, seed)``; one result per check
    (a check that raises fails with the exception as its reason)."""

    def build(s: int) -> Task:
        return cls(params, s)

    try:
        context = _Context(build, seed, max(steps, 2), batch_size, eval_size)
    except Exception as exc:  # the task cannot even be built or sampled
        reason = f"building or sampling failed: {type(exc).__name__}: {exc}"
        return [CheckResult(name, False, reason) for name in CHECKS]
    results = []
    for name, run in _RUN.items():
        try:
            results.append(CheckResult(name, True, run(context)))
        except _Skip as exc:
            results.append(CheckResult(name, True, str(exc), skipped=True))
        except _Fail as exc:
            results.append(CheckResult(name, False, str(exc)))
        except Exception as exc:
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))
    return results
