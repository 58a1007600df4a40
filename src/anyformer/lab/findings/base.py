"""Findings: a published claim, the comparison that tests it, and a check that decides.

A finding is registered in the ``finding`` slot with its paper. It states the claim in
one sentence, builds its comparison(s) at full or quick size, and reads the results to
say ``holds``, ``does not hold`` or ``inconclusive`` with the numbers that decided it.
A check says ``inconclusive`` when its experiment cannot decide the claim: the models
learned nothing (a claim that something *fails*, or that two models are *alike*, holds
trivially for models that learned nothing) or the measure cannot separate what the claim
compares. Quick mode only proves the pipeline (toy size, seconds); its verdict means
nothing and is labelled so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from anyformer.errors import RunFolderError
from anyformer.lab.compare import CompareResult
from anyformer.spec import ExperimentSpec


class NeedsCheckpoints(RunFolderError):
    """A check needs the trained weights of a comparison's runs (to score them at settings
    they were not trained at) and the run folders or their checkpoints are absent, as in
    the published ``docs/findings/`` records, which keep results but not runs."""


#: An ``init_from`` value naming another comparison of the same finding: ``@<key>``.
PARENT = "@"
#: The fields whose axis values may name a parent comparison: the run a model starts
#: from, and the run a distillation objective's teacher is loaded from.
PARENT_KEYS = ("init_from", "objective.teacher")


@dataclass
class Comparison:
    """A comparison to run: base experiment, axes, seeds and protocol options.

    Pretrain -> fine-tune: an ``init_from`` value (in ``base`` or an axis) of the form
    ``@<key>`` names an earlier comparison of the same finding (in the order
    :meth:`Finding.comparisons` returns them) with a single variant, its *parent*. When
    the finding is reproduced, seed ``i`` of every variant that names it starts from the
    backbone of the parent's run of seed ``i`` (its run folder substituted for
    ``@<key>``), so the parent needs at least as many seeds. ``init_from: null`` in an
    axis gives the from-scratch variant beside the fine-tuned ones."""

    base: dict[str, Any]
    axes: list[tuple[str, list[str]]]
    seeds: int = 1
    match_params: bool = False
    lrs: list[float] | None = None
    #: (rounds, steps) of the interleaved speed measurement after training
    #: (:func:`~anyformer.lab.compare.compare`'s ``timing``)
    timing: tuple[int, int] = (3, 3)

    def spec(self) -> ExperimentSpec:
        return ExperimentSpec.from_dict(self.base)

    def parents(self) -> list[str]:
        """The keys of the comparisons this one's ``init_from`` values name (``@<key>``)."""
        values = [str(self.base.get("init_from") or "")]
        values += [v for key, vs in self.axes if key in PARENT_KEYS for v in vs]
        return list(dict.fromkeys(v[len(PARENT) :] for v in values if v.startswith(PARENT)))


#: The three outcomes of a check, as written in reports and ``verdict.json`` (``status``).
STATUSES = ("holds", "does not hold", "inconclusive")


@dataclass
class Verdict:
    """The outcome of a check: whether the claim holds here, and the deciding numbers.

    ``holds`` is ``True``, ``False`` or ``None`` (inconclusive: the experiment could not
    decide, e.g. its models learned nothing); ``status`` names the three in words."""

    holds: bool | None
    numbers: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def status(self) -> str:
        if self.holds is None:
            return "inconclusive"
        return "holds" if self.holds else "does not hold"

    @property
    def label(self) -> str:
        return self.status

    @classmethod
    def decide(
        cls,
        holds: bool,
        numbers: dict[str, float],
        reason: str,
        decidable: bool = True,
        undecided: str = "",
    ) -> Verdict:
        """``holds`` when the experiment can decide (``decidable``); else inconclusive,
        with ``undecided`` (why it cannot decide) in front of the reason."""
        if decidable:
            return cls(bool(holds), numbers, reason)
        return cls(None, numbers, f"{undecided}; {reason}")


class Finding:
    """Base class; subclasses set ``claim`` and implement :meth:`comparisons` and :meth:`check`."""

    claim: ClassVar[str] = ""

    def __init__(self, dims: Any = None, params: Any = None) -> None:
        self.params = params

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        raise NotImplementedError

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        raise NotImplementedError


def quick_train(**extra: Any) -> dict[str, Any]:
    """A toy training budget that proves a pipeline in seconds."""
    return {"steps": 30, "batch_size": 16, "warmup_steps": 5, "eval_every": 30, "eval_size": 32,
            "checkpoint_every": 30, "log_every": 10, **extra}  # fmt: skip


def tiny_model(**extra: Any) -> dict[str, Any]:
    return {"d_model": 32, "n_layers": 1, "n_heads": 2, **extra}
