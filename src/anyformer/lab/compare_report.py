"""The report of a comparison: ``report.md`` (the metrics table, the cost table and the
figures), ``results.json`` and ``plots/`` (see :mod:`anyformer.lab.plots`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyformer.spec import write_text_atomic

if TYPE_CHECKING:
    from anyformer.lab.compare import CompareResult


def write_compare_report(result: CompareResult, write_results: bool = True) -> Path:
    """``report.md``, ``results.json`` and ``plots/*.png`` in the comparison folder
    (``write_results=False`` leaves a recorded ``results.json`` as it is: a re-check
    redraws the report of results it did not produce)."""
    from anyformer.lab.plots import (
        image_lines,
        plot_compare_curves,
        plot_losses,
        plot_metric_vs_cost,
        plot_metric_vs_params,
    )

    folder = result.dir
    folder.mkdir(parents=True, exist_ok=True)
    if write_results:
        write_text_atomic(folder / "results.json", json.dumps(result.to_json(), indent=1))
    plots: list[Path | None] = list(plot_compare_curves(result, folder / "plots"))
    plots.append(plot_metric_vs_params(result, folder / "plots" / "params.png"))
    plots.append(plot_metric_vs_cost(result, folder / "plots" / "cost.png"))
    plots.append(plot_losses(result.losses, folder / "plots" / "loss.png",
                             f"{result.base.name}: training loss (mean over seeds)"))  # fmt: skip
    lines = [f"# Comparison: {result.base.name}", "", result.base.description or "", ""]
    lines += ["- axes: " + "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in result.axes)]
    n = max(
        (
            s["id"][result.headline]["n"]
            for s in result.summary.values()
            if "id" in s and result.headline in s["id"]
        ),
        default=0,
    )
    lines += [f"- seeds: {n}; values are mean ± 95% interval"]
    if result.grid:
        lines += [f"- grid `{result.grid['key']}` (base spec `{result.grid['base_hash']}`)"]
    if result.match_params:
        lines += ["- `--match-params`: each variant's `d_model` (and FFN `mult`) chosen so its "
                  "parameter count is within 5% of the first variant's (columns below)"]  # fmt: skip
    lines += [""] + table_markdown(result)
    if result.cost:
        lines += ["", "## Cost", "", *cost_notes(result), ""] + cost_markdown(result)
    lines += image_lines(plots, folder)
    write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
    return folder / "report.md"


def table_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: variant, parameters, (d_model, mult with --match-params), (lr),
    headline per split, training tokens/s."""
    splits = [s for s in ("id", "ood") if any(s in v for v in result.summary.values())]
    mult = result.match_params and any("mult" in v.spec.model.ffn.params for v in result.variants)
    head = (
        ["variant", "params"]
        + (["d_model"] if result.match_params else [])
        + (["ffn mult"] if mult else [])
        + (["lr"] if result.lrs else [])
        + [f"{result.headline} ({s})" for s in splits]
        + (["tokens/s"] if result.cost else [])
    )
    rows = []
    for v in result.variants:
        s = result.summary.get(v.label, {})
        row = [v.label, f"{v.params:,}"]
        if result.match_params:
            row.append(str(v.spec.model.d_model))
        if mult:
            row.append(f"{v.spec.model.ffn.params.get('mult', '-')}")
        if result.lrs:
            row.append(f"{result.lrs.get(v.label, '')}")
        for split in splits:
            m = s.get(split, {}).get(result.headline)
            row.append(f"{m['mean']:.4g} ± {m['ci95']:.2g}" if m else "-")
        if result.cost:
            row.append(_fmt(result.cost.get(v.label, {}).get("tokens_per_s"), "{:,.0f}"))
        rows.append(row)
    return head, rows


def _fmt(value: Any, form: str) -> str:
    return "-" if value is None else form.format(value)


def _bytes(n: Any) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cost_notes(result: CompareResult) -> list[str]:
    """What the cost columns measured."""
    c = next(iter(result.cost.values()), {})
    return [
        "- FLOPs/token: training FLOPs (3x the forward matrix products) per real token, "
        "over the timed training batches",
        f"- tokens/s: training speed measured after all runs, "
        f"{c.get('speed_measure') or 'not measured'}, variants taking turns (median of rounds)",
        "- wall s: mean training time of a variant's runs, measured one run after another "
        "(a busy machine slows whichever runs then: for the record, not for ranking)",
        f"- peak memory: each variant alone, {c.get('memory_measure') or 'unmeasured'}",
    ]


def cost_markdown(result: CompareResult) -> list[str]:
    """The cost table: params, FLOPs/token, tokens/s, wall s, peak memory per variant."""
    head = ["variant", "params", "FLOPs/token", "tokens/s", "wall s", "peak memory"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result.variants:
        c = result.cost.get(v.label, {})
        cells = [v.label, f"{v.params:,}", _fmt(c.get("flops_per_token"), "{:.3g}"),
                 _fmt(c.get("tokens_per_s"), "{:,.0f}"), _fmt(c.get("wall_s"), "{:.1f}"),
                 _bytes(c.get("peak_memory_bytes"))]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def table_markdown(result: CompareResult) -> list[str]:
    head, rows = table_rows(result)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out
