"""Trivial baselines of tasks whose answer is a class: chance and majority.

A task whose scored answer is one class per example (the parity bit, the ListOps digit,
``TRUE``/``FALSE`` of Dyck recognition, the next vertex or ``YES``/``NO`` of graph
search, the entity or comparison of a fact) or one class per query (MQAR's values)
reports two baselines beside the model, computed on the same evaluation set:

- ``chance``: the expected score of a guess drawn uniformly from the ``n_classes``
  answers the task allows (``1 / n_classes`` per answer);
- ``majority``: the score of always giving the set's most common answer (the best
  constant answer on that set, ties to the smallest token id).

Both take the rest of the sequence (e.g. the closing ``EOS``) as right, so they compare
directly with the model's ``exact_match`` (a row is right when all its answers are) and
``accuracy`` (the share of answers right). A model scoring at ``majority`` has learnt no
more than the answers' frequencies.
"""

from __future__ import annotations

from typing import Any

import torch


def majority_answer(labels: torch.Tensor) -> int:
    """The most common value of ``labels`` (the smallest of the most common on ties)."""
    values, counts = torch.unique(labels.reshape(-1), return_counts=True)
    return int(values[int(counts.argmax())])


def _by_group(right: torch.Tensor, groups: torch.Tensor) -> dict[str, float]:
    """``{str(group): mean of right}`` over the rows of each group, in group order."""
    return {str(int(g)): float(right[groups == g].double().mean()) for g in torch.unique(groups)}


def class_baselines(
    labels: torch.Tensor,
    n_classes: int,
    groups: torch.Tensor | None = None,
    by: str = "by_length",
    headline: str = "exact_match",
) -> dict[str, dict[str, Any]]:
    """``{"chance": {...}, "majority": {...}}`` for the answers ``labels`` ``[N, Q]``
    (``Q`` answers per example; ``[N]`` is one per example) of an evaluation set.

    Each baseline holds ``exact_match`` (examples with all ``Q`` answers right), with
    ``headline="accuracy"`` also ``accuracy`` (answers right), and, when ``groups``
    ``[N]`` (an integer per example: its length, pair count, ...) is given, ``by`` (the
    headline per group).
    """
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes} must be >= 1")
    if headline not in ("exact_match", "accuracy"):
        raise ValueError(f"headline='{headline}' must be 'exact_match' or 'accuracy'")
    labels = labels.reshape(labels.shape[0], -1)
    per_answer = 1.0 / n_classes
    per_row = per_answer ** labels.shape[1]
    right = labels == majority_answer(labels)
    rows_right = right.all(dim=1)
    chance: dict[str, Any] = {"exact_match": per_row}
    majority: dict[str, Any] = {"exact_match": float(rows_right.double().mean())}
    if headline == "accuracy":
        chance["accuracy"] = per_answer
        majority["accuracy"] = float(right.double().mean())
    if groups is not None:
        per_group = per_answer if headline == "accuracy" else per_row
        chance[by] = {str(int(g)): per_group for g in torch.unique(groups)}
        score = right.double().mean(dim=1) if headline == "accuracy" else rows_right
        majority[by] = _by_group(score, groups)
    return {"chance": chance, "majority": majority}


def with_baseline_series(
    curve: dict[str, Any], baselines: dict[str, dict[str, Any]], by: str
) -> dict[str, Any]:
    """``curve`` with a series per baseline (its ``by`` values) beside ``model``."""
    series = dict(curve["series"])
    series.update({name: dict(b[by]) for name, b in baselines.items() if by in b})
    return {**curve, "series": series}
