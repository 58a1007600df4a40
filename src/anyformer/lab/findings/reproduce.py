"""``reproduce``: run findings' comparisons, check their claims, write reports."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyformer import registry
from anyformer.errors import SpecError, did_you_mean
from anyformer.lab.compare import CompareResult, compare, table_markdown
from anyformer.lab.findings.base import PARENT, STATUSES, Comparison, Finding, Verdict
from anyformer.lab.plots import image_lines
from anyformer.spec import write_text_atomic


@dataclass
class Reproduction:
    name: str
    finding: Finding
    verdict: Verdict
    results: dict[str, CompareResult]
    dir: Path
    quick: bool


def finding_names() -> list[str]:
    return registry.components("finding")


def reproduce(
    names: list[str] | None,
    out: Path | str = "findings",
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Reproduction]:
    """Run the named findings (all when ``names`` is empty) and write one report each."""
    valid = finding_names()
    names = names or valid
    for name in names:
        if name not in valid:
            raise SpecError(
                f"unknown finding '{name}'{did_you_mean(name, valid)} (valid: {', '.join(valid)})"
            )
    done = []
    for name in names:
        entry = registry.get("finding", name)
        finding: Finding = entry.build()
        folder = Path(out) / ("quick" if quick else "full") / name
        results: dict[str, CompareResult] = {}
        for key, comp in finding.comparisons(quick).items():
            if progress:
                progress(f"{name}: {key}")
            results[key] = compare(
                comp.spec(), comp.axes, folder / key, seeds=comp.seeds, match_params=comp.match_params,
                lrs=comp.lrs, progress=progress, replace=True, timing=comp.timing,
                per_seed=parent_runs(name, key, comp, results),
            )  # fmt: skip
        verdict = finding.check(results)
        rep = Reproduction(name, finding, verdict, results, folder, quick)
        write_finding_report(rep)
        done.append(rep)
    return done


def parent_runs(
    name: str, key: str, comp: Comparison, done: dict[str, CompareResult]
) -> dict[str, list[str]]:
    """``{"@<parent>": [run folder of seed 0, 1, ...]}`` for every parent comparison that
    ``comp`` names in its ``init_from`` values (:meth:`Comparison.parents`), read from the
    comparisons already run (``done``). Refused (:class:`SpecError`) when a parent is not
    an earlier comparison of the finding, has more than one variant or fewer seeds."""
    runs = {}
    for parent in comp.parents():
        if parent not in done:
            raise SpecError(
                f"finding '{name}': comparison '{key}' starts from init_from='{PARENT}{parent}', "
                f"which is not an earlier comparison (earlier: {', '.join(done) or 'none'})"
            )
        result = done[parent]
        if len(result.variants) != 1:
            raise SpecError(
                f"finding '{name}': init_from='{PARENT}{parent}' names a comparison of "
                f"{len(result.variants)} variants; a parent comparison has one"
            )
        folders = [str(d) for d in result.run_dirs(result.variants[0].label)]
        if len(folders) < comp.seeds:
            raise SpecError(
                f"finding '{name}': comparison '{key}' has {comp.seeds} seeds but its parent "
                f"'{parent}' only {len(folders)}"
            )
        runs[f"{PARENT}{parent}"] = folders
    return runs


def write_finding_report(rep: Reproduction, rechecked: dict[str, Any] | None = None) -> Path:
    """``report.md`` and ``verdict.json`` of a finding in ``rep.dir``. ``rechecked``
    (``rechecked``: today, ``run_date``: the recorded full run's date, ``previous``: its
    verdict) marks a verdict re-checked from recorded results (:mod:`.recheck`): both
    files say so and ``date`` stays the run's date."""
    entry = registry.get("finding", rep.name)
    lines = [
        f"# {rep.name}",
        "",
        f"**Paper:** {entry.paper}",
        "",
        f"**Claim:** {rep.finding.claim}",
        "",
        "**What is checked** (when it holds, does not hold, or is inconclusive):",
        "",
        inspect.cleandoc(type(rep.finding).__doc__ or ""),
        "",
    ]
    mode = (
        "quick (toy size: proves the pipeline, the verdict means nothing)" if rep.quick else "full"
    )
    if rechecked:
        mode = f"full run of {rechecked['run_date'][:10]}, re-checked {rechecked['rechecked']}"
        prev = rechecked["previous"]
        lines += [
            f"> **Re-checked on {rechecked['rechecked']}** from the full runs recorded on "
            f"{rechecked['run_date'][:10]}: the current check and report code applied to the "
            "recorded results (each comparison's `results.json`); no model was trained "
            "again. Numbers a check measures without trained weights (e.g. forward "
            "latency) were measured again. The verdict before the re-check was "
            f"*{prev['status']}* ({prev['reason']}).",
            "",
        ]
    lines += [
        f"**Verdict ({mode}):** {rep.verdict.label} — {rep.verdict.reason}",
    ]
    if rep.verdict.numbers:
        lines += ["", "| number | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in rep.verdict.numbers.items()]
    for key, result in rep.results.items():
        lines += [
            "",
            f"## Experiment `{key}`",
            "",
            inspect.cleandoc(rep.finding.__doc__ or "").split("\n\n")[0],
            "",
        ]
        lines += table_markdown(result)
        # each image its own paragraph, never read as part of the table
        lines += image_lines(sorted((result.dir / "plots").glob("*.png")), rep.dir)
    path = rep.dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    # ``holds`` stays a bool for conclusive verdicts (readers of older records); it is
    # null when inconclusive, and ``status`` names the outcome in words
    record = {"name": rep.name, "holds": rep.verdict.holds, "status": rep.verdict.status,
              "numbers": rep.verdict.numbers, "reason": rep.verdict.reason, "quick": rep.quick,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if rechecked:
        record |= {"date": rechecked["run_date"], "rechecked": rechecked["rechecked"],
                   "previous": rechecked["previous"]}  # fmt: skip
    write_text_atomic(rep.dir / "verdict.json", json.dumps(record, indent=1))
    return path


def verdict_status(record: dict[str, Any]) -> str:
    """The outcome a ``verdict.json`` record states: its ``status``, or for records written
    before verdicts could be inconclusive, ``holds`` in words."""
    status = record.get("status")
    if status in STATUSES:
        return str(status)
    holds = record.get("holds")
    if holds is None:
        return "inconclusive"
    return "holds" if holds else "does not hold"


def findings_markdown(root: Path | str = "findings", published: bool = False) -> str:
    """``docs/findings.md``: every finding with the verdict of its last full run, read
    from ``<root>/full/<name>/verdict.json`` (``published``: ``<root>/<name>/``, the
    layout of ``docs/findings``)."""
    lines = [
        "# Findings",
        "",
        "Generated by `anyformer reproduce --all --write-docs` from the last full runs; each "
        "finding's report (claim, tables, plots, verdict) is in "
        "`docs/findings/<name>/report.md`. A verdict marked *re-checked* was decided by "
        "the current check from the results of the full run of the date given "
        "(`anyformer reproduce --recheck`), without training again.",
        "",
    ]
    lines += ["| finding | paper | verdict | deciding numbers |", "|---|---|---|---|"]
    for name in finding_names():
        entry = registry.get("finding", name)
        path = Path(root) / ("" if published else "full") / name / "verdict.json"
        if path.is_file():
            v = json.loads(path.read_text())
            verdict = f"{verdict_status(v)} ({v['date'][:10]})"
            if v.get("rechecked"):
                verdict = (f"{verdict_status(v)} (run {v['date'][:10]}, re-checked "
                           f"{v['rechecked']})")  # fmt: skip
            numbers = v["reason"]
        else:
            verdict, numbers = "not run yet", ""
        lines.append(f"| `{name}` | {entry.paper} | {verdict} | {numbers} |")
    lines.append("")
    for name in finding_names():
        entry = registry.get("finding", name)
        lines += [f"## {name}", "", entry.cls.claim, ""]
    return "\n".join(lines)


def publish_findings(root: Path | str, docs: Path | str = "docs") -> list[str]:
    """Write ``<docs>/findings.md`` from the full runs under ``root`` and copy each full
    run's reports (``report.md``, ``verdict.json``, per-comparison ``results.json``,
    ``report.md`` and plots; not the run folders) to ``<docs>/findings/<name>/``,
    replacing what was there. Returns the names of the findings copied."""
    docs = Path(docs)
    write_text_atomic(docs / "findings.md", findings_markdown(root))
    copied = []
    for name in finding_names():
        source = Path(root) / "full" / name
        if not (source / "verdict.json").is_file():
            continue
        target = docs / "findings" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("runs"))
        copied.append(name)
    return copied
