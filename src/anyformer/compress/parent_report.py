"""A compressed run compared with its parent on the parent's own evaluation.

:func:`compare_with_parent` scores both models on every split of the parent's task (the
same fixed evaluation sets, the parent's objective) and writes ``parent.json`` and a
section of ``report.md`` in the new run folder: headline metric and loss per split,
parameters, and the change against the parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from anyformer.lab.elastic import Variant, evaluate_variants
from anyformer.lab.run import build_objective
from anyformer.model.factorized import stored_params
from anyformer.model.flops import count_params
from anyformer.spec import ExperimentSpec, write_text_atomic
from anyformer.tasks.base import Task


def own_params(model: nn.Module) -> int:
    """Parameters of ``model`` without an objective's modules (a distillation teacher),
    the N:M-sparse factor of a dense x sparse layer (DSFormer) at its nonzeros."""
    own = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("objective_module.")
    )
    return own - (count_params(model) - stored_params(model))


def compare_with_parent(
    folder: Path,
    title: str,
    parent: tuple[str, ExperimentSpec, nn.Module],
    child: tuple[str, nn.Module],
    task: Task,
    eval_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``parent`` (label, spec, model) and ``child`` (label, model) on ``task``
    with the parent's objective; write ``parent.json`` and append a section titled
    ``title`` to ``folder/report.md``. Returns one row per (model, split)."""
    p_label, spec, p_model = parent
    c_label, c_model = child
    objective = build_objective(spec, task)
    size = eval_size or spec.train.eval_size
    rows = []
    for label, model in ((p_label, p_model), (c_label, c_model)):
        for row in evaluate_variants(model, task, objective, size, [Variant(label)]):
            row["params"] = own_params(model)
            rows.append(row)
    headline = task.headline
    write_text_atomic(
        folder / "parent.json",
        json.dumps({"headline": headline, "rows": rows, **(extra or {})}, indent=1) + "\n",
    )
    lines = [f"\n## {title}\n", f"On the parent's evaluation ({size} examples per split).\n"]
    lines += [f"| model | split | {headline} | loss | params |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['split']} | {r.get(headline, float('nan')):.4g} | "
            f"{r.get('loss', float('nan')):.4g} | {r['params']:,} |"
        )
    for key, value in (extra or {}).items():
        lines.append(f"\n- {key}: {value}")
    report = folder / "report.md"
    before = report.read_text() if report.exists() else ""
    write_text_atomic(report, before + "\n".join(lines) + "\n")
    return rows


__all__ = ["compare_with_parent", "own_params"]
