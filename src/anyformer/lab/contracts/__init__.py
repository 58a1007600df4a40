"""Contract checks per slot: what every variant of a slot must do, tested on any class.

Each check is a function ``(entry) -> None`` registered for a slot with
:func:`contract_check`; it builds the variant through the registry (``Entry.build`` or a
model spec naming it) and raises :class:`CheckFailure` with a reason when the variant
breaks the contract, or :class:`NotApplicable` when the check does not concern it (a
mixer without ``kv_cache`` has no cache to test). The same functions serve the
registry-generated tests (``tests/test_contracts.py``: every entry of every slot × that
slot's checks) and ``anyformer check PATH:Class --slot SLOT`` on a user's component
(:mod:`anyformer.lab.check`).

The checks of a slot live in one small module each (``mixer.py``, ``norm_ffn.py``,
``position.py``, ``layout.py``, ``io.py`` (embedders and heads inside a toy model;
``embedder.py`` adds the checks of image and table embedders, ``head.py`` those of heads
on their own; each imports ``io.py``), ``depth.py``, ``task.py``, ``objective.py``,
``finding.py``), imported the first time the slot's checks are asked for.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from anyformer import registry
from anyformer.errors import SpecError, did_you_mean
from anyformer.registry import Entry


class CheckFailure(AssertionError):
    """A component breaks its slot's contract; the message says how."""


class NotApplicable(Exception):
    """The check does not concern this component; the message says why."""


@dataclass(frozen=True)
class Check:
    """One contract check of a slot: its name, what it verifies and the function."""

    slot: str
    name: str
    run: Callable[[Entry], None]
    doc: str
    slow: bool = False


#: Slot -> the module of this package that holds its checks.
MODULES: dict[str, str] = {
    "embedder": "embedder",  # imports io.py, whose checks it shares with the head slot
    "head": "head",  # imports io.py too
    "attention": "mixer",
    "position": "position",
    "norm": "norm_ffn",
    "ffn": "norm_ffn",
    "layout": "layout",
    "depth": "depth",
    "task": "task",
    "objective": "objective",
    "finding": "finding",
}

_CHECKS: dict[str, list[Check]] = {}


def contract_check(
    slot: str, name: str, *, slow: bool = False
) -> Callable[[Callable[[Entry], None]], Callable[[Entry], None]]:
    """Decorator: register ``fn(entry)`` as check ``name`` of ``slot`` (its docstring's
    first line says what it verifies)."""

    def decorate(fn: Callable[[Entry], None]) -> Callable[[Entry], None]:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        checks = _CHECKS.setdefault(slot, [])
        checks[:] = [c for c in checks if c.name != name]
        checks.append(Check(slot, name, fn, doc, slow))
        return fn

    return decorate


def checks_for(slot: str) -> list[Check]:
    """The contract checks of ``slot``, in definition order (empty for a slot that has none)."""
    if slot not in registry.CONTRACTS and slot not in _CHECKS:
        raise SpecError(
            f"unknown slot '{slot}'{did_you_mean(slot, registry.CONTRACTS)} "
            f"(valid slots: {', '.join(registry.CONTRACTS)})"
        )
    module = MODULES.get(slot)
    if module is not None:
        importlib.import_module(f"{__name__}.{module}")
    return list(_CHECKS.get(slot, []))


def cases(slots: list[str] | None = None) -> list[tuple[str, str, Check]]:
    """``(slot, variant name, check)`` for every registered variant of every slot (or of
    ``slots``) and every check of its slot: what the registry-generated tests run, so a
    variant is tested the moment it is registered."""
    out = []
    for slot in registry.slots() if slots is None else slots:
        checks = checks_for(slot)
        for entry in registry.entries(slot):
            out += [(slot, entry.name, check) for check in checks]
    return out


Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What one check said about one component."""

    check: Check
    status: Status
    reason: str
    seconds: float


def run_check(check: Check, entry: Entry) -> Outcome:
    """Run ``check`` on ``entry`` from a fixed random state (the caller's is restored).

    A :class:`CheckFailure` fails it with its message, :class:`NotApplicable` skips it,
    and any other exception fails it naming the exception (a component that crashes
    breaks the contract too)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            check.run(entry)
            status: Status = "passed"
            reason = check.doc
        except NotApplicable as exc:
            status, reason = "skipped", str(exc)
        except CheckFailure as exc:
            status, reason = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash is a failure with its reason
            status, reason = "failed", f"raised {type(exc).__name__}: {exc}"
    return Outcome(check, status, reason, time.perf_counter() - start)


__all__ = [
    "Check",
    "CheckFailure",
    "NotApplicable",
    "Outcome",
    "cases",
    "checks_for",
    "contract_check",
    "run_check",
]
