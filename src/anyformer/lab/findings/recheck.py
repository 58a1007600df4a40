"""Re-checking recorded findings: the current check and report code applied to the
results a full run recorded, without training anything.

``docs/findings/<name>/`` keeps each finding's last full run as results (per comparison
``results.json``, ``report.md`` and plots), not as run folders. When a check or the
report code changes, :func:`recheck` reads those results back
(:func:`load_compare_result`), applies the finding's current ``check()``, redraws the
comparison plots and rewrites the finding's ``report.md`` and ``verdict.json``, stating
that the verdict was re-checked on a given day from the runs recorded on another.

A check that must score the trained models again (at other loop counts or widths:
``looped_matches_deeper``, ``algoformer_beats_looped_and_stack``,
``matformer_granularities``) raises :class:`~anyformer.lab.findings.base.NeedsCheckpoints`
here, since the records hold no checkpoints; its re-checked verdict is then
*inconclusive: needs the checkpoints of a new full run*, with no numbers invented.
What a check measures without trained weights (``wide_vs_deep``'s forward latency) is
measured again, on one thread (a shared machine's other loads distort it less).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from anyformer import registry
from anyformer.errors import SpecError, did_you_mean
from anyformer.lab.compare import CompareResult, Variant, _with
from anyformer.lab.compare_report import write_compare_report
from anyformer.lab.findings.base import Finding, NeedsCheckpoints, Verdict
from anyformer.spec import ExperimentSpec


def load_compare_result(folder: Path | str) -> CompareResult:
    """The :class:`CompareResult` recorded in ``<folder>/results.json``: base spec, axes,
    variants (their specs rebuilt from the base and their overrides), summary, curves,
    learning rates, run folders (resolved against ``folder``), cost, training losses and
    grid; keys an older record lacks stay empty. A missing or unreadable file raises
    :class:`SpecError` naming it."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise SpecError(f"no recorded results: '{path}' does not exist")
    try:
        data = json.loads(path.read_text())
        base = ExperimentSpec.from_dict(data["base"])
        axes = [(a["key"], list(a["values"])) for a in data["axes"]]
        variants = [
            Variant(v["label"], list(v["overrides"]), _with(base, list(v["overrides"])),
                    int(v["params"]))
            for v in data["variants"]
        ]  # fmt: skip
        lrs = {k: float(v) for k, v in (data.get("learning_rates") or {}).items()}
        runs = {
            label: {lrs.get(label): [folder / p for p in paths]}
            for label, paths in (data.get("runs") or {}).items()
        }
        losses = {
            label: {int(s): (float(m), float(h)) for s, (m, h) in by_step.items()}
            for label, by_step in (data.get("losses") or {}).items()
        }
        return CompareResult(
            folder, base, axes, variants, summary=data["summary"], curves=data["curves"],
            headline=data["headline"], higher_is_better=bool(data["higher_is_better"]),
            lrs=lrs, runs=runs, match_params=bool(data.get("match_params", False)),
            cost=data.get("cost") or {}, losses=losses, grid=data.get("grid") or {},
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"'{path}' is not a readable comparison record ({exc!r})") from None


def _today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def recheck_finding(
    name: str, folder: Path | str, today: str | None = None
) -> tuple[Verdict, dict[str, Any]]:
    """Re-check finding ``name`` from its recorded full run in ``folder``
    (``docs/findings/<name>``): returns the new verdict and the ``verdict.json`` record
    written, after rewriting the comparison reports and plots and the finding's report."""
    from anyformer.lab.findings.reproduce import (
        Reproduction,
        verdict_status,
        write_finding_report,
    )

    folder = Path(folder)
    old_path = folder / "verdict.json"
    if not old_path.is_file():
        raise SpecError(f"no recorded verdict: '{old_path}' does not exist")
    try:
        old = json.loads(old_path.read_text())
        run_date = str(old.get("run_date") or old["date"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"'{old_path}' is not a readable verdict record ({exc!r})") from None
    if old.get("quick"):
        raise SpecError(f"'{old_path}' records a quick run; only full runs are re-checked")
    finding: Finding = registry.get("finding", name).build()
    results = {key: load_compare_result(folder / key) for key in finding.comparisons(False)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a check measures itself (latency) on one core, steadier
    try:
        verdict = finding.check(results)
    except NeedsCheckpoints as exc:
        verdict = Verdict(None, {}, f"needs the checkpoints of a new full run ({exc})")
    finally:
        torch.set_num_threads(threads)
    for result in results.values():
        shutil.rmtree(result.dir / "plots", ignore_errors=True)  # drawn by older code
        write_compare_report(result, write_results=False)
    rechecked = {
        "rechecked": today or _today(),
        "run_date": run_date,
        "previous": {"status": verdict_status(old), "reason": old.get("reason", "")},
    }
    rep = Reproduction(name, finding, verdict, results, folder, quick=False)
    write_finding_report(rep, rechecked=rechecked)
    return verdict, json.loads(old_path.read_text())


def recheck(
    names: list[str] | None, docs_dir: Path | str = "docs/findings", today: str | None = None
) -> dict[str, tuple[dict[str, Any], Verdict]]:
    """Re-check the named findings (all with a folder under ``docs_dir`` when ``names``
    is empty); returns ``{name: (previous verdict record, new verdict)}``."""
    from anyformer.lab.findings.reproduce import finding_names

    valid = finding_names()
    docs_dir = Path(docs_dir)
    names = names or [n for n in valid if (docs_dir / n / "verdict.json").is_file()]
    for name in names:
        if name not in valid:
            raise SpecError(
                f"unknown finding '{name}'{did_you_mean(name, valid)} (valid: {', '.join(valid)})"
            )
    out = {}
    for name in names:
        path = docs_dir / name / "verdict.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        verdict, _ = recheck_finding(name, docs_dir / name, today)
        out[name] = (previous, verdict)
    return out
