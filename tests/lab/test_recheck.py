"""Re-checking recorded findings: results read back, current checks applied, reports
rewritten with a re-check notice, nothing invented where checkpoints are needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anyformer import registry
from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.lab.findings.base import STATUSES
from anyformer.lab.findings.recheck import load_compare_result, recheck

DOCS = Path(__file__).resolve().parents[2] / "docs" / "findings"
TRACKS = "icl_tracks_least_squares"


def _copy(tmp_path: Path, name: str) -> Path:
    shutil.copytree(DOCS / name, tmp_path / name)
    return tmp_path / name


def _run_date(folder: Path) -> str:
    record = json.loads((folder / "verdict.json").read_text())
    return str(record.get("run_date") or record["date"])


def test_a_recorded_results_folder_round_trips_to_the_same_metrics(tmp_path: Path) -> None:
    folder = _copy(tmp_path, TRACKS) / "main"
    recorded = json.loads((folder / "results.json").read_text())
    result = load_compare_result(folder)
    assert result.summary == recorded["summary"]
    assert result.curves == recorded["curves"]
    assert [v.label for v in result.variants] == [v["label"] for v in recorded["variants"]]
    assert [v.params for v in result.variants] == [v["params"] for v in recorded["variants"]]
    assert result.headline == recorded["headline"] == "mse"
    assert result.mean("ood=task", "mse", "ood") == recorded["summary"]["ood=task"]["ood"][
        "mse"]["mean"]  # fmt: skip
    # each variant's spec is the base with its overrides
    assert result.variants[0].spec.task.params["ood"] == "covariate"
    # with runs, losses, cost and grid it round-trips through to_json exactly
    runs = folder / "runs"
    result.runs = {v.label: {None: [runs / v.label / "s0", runs / v.label / "s1"]}
                   for v in result.variants}  # fmt: skip
    result.losses = {"ood=task": {1: (2.5, 0.1), 10: (1.25, 0.0)}}
    result.cost = {"ood=task": {"tokens_per_s": 1234.0, "wall_s": 5.0}}
    result.grid = {"key": "abcd1234", "base": "x"}
    other = tmp_path / "copy"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(result.to_json()))
    again = load_compare_result(other)
    assert again.to_json() == result.to_json()
    assert again.losses == result.losses
    runs = other / "runs" / "ood=task"  # relative to the comparison folder
    assert again.run_dirs("ood=task") == [runs / "s0", runs / "s1"]


def test_recheck_rewrites_report_and_verdict_with_the_notice_and_both_dates(
    tmp_path: Path,
) -> None:
    folder = _copy(tmp_path, TRACKS)
    run_date = _run_date(folder)
    results_before = (folder / "main" / "results.json").read_bytes()
    done = recheck([TRACKS], tmp_path, today="2031-01-02")
    verdict = done[TRACKS][1]
    # the verdict is the current check applied to the recorded results
    expected = (
        registry.get("finding", TRACKS)
        .build()
        .check({"main": load_compare_result(folder / "main")})
    )
    assert (verdict.status, verdict.numbers) == (expected.status, expected.numbers)
    record = json.loads((folder / "verdict.json").read_text())
    assert record["status"] == verdict.status in STATUSES
    assert record["date"] == run_date and record["rechecked"] == "2031-01-02"
    assert record["previous"]["status"] in STATUSES
    report = (folder / "report.md").read_text()
    assert f"Re-checked on 2031-01-02** from the full runs recorded on {run_date[:10]}" in report
    assert f"re-checked 2031-01-02):** {verdict.status}" in report
    lines = report.splitlines()
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(images) >= 3
    for i in images:  # every image is its own paragraph, never part of a table
        assert lines[i - 1] == "" and lines[i + 1] == ""
        assert (folder / lines[i].split("(")[1].rstrip(")")).is_file()
    assert (folder / "main" / "results.json").read_bytes() == results_before
    comparison = (folder / "main" / "report.md").read_text().splitlines()
    for i, line in enumerate(comparison):
        if line.startswith("!["):
            assert comparison[i - 1] == "" and comparison[i + 1] == ""
    # a second re-check keeps the run's date
    recheck([TRACKS], tmp_path, today="2031-01-03")
    record = json.loads((folder / "verdict.json").read_text())
    assert record["date"] == run_date and record["rechecked"] == "2031-01-03"


def test_a_check_that_needs_checkpoints_is_inconclusive_without_numbers(
    tmp_path: Path,
) -> None:
    folder = _copy(tmp_path, "matformer_granularities")
    verdict = recheck(["matformer_granularities"], tmp_path, today="2031-01-02")[
        "matformer_granularities"][1]  # fmt: skip
    assert verdict.status == "inconclusive" and verdict.numbers == {}
    assert verdict.reason.startswith("needs the checkpoints of a new full run")
    record = json.loads((folder / "verdict.json").read_text())
    assert record["status"] == "inconclusive" and record["holds"] is None
    report = (folder / "report.md").read_text()
    assert "needs the checkpoints of a new full run" in report
    assert "| number | value |" not in report  # no empty table of numbers


def test_missing_results_exit_2_naming_the_file(tmp_path: Path, capsys) -> None:
    folder = _copy(tmp_path, TRACKS)
    (folder / "main" / "results.json").unlink()
    code = main(["reproduce", "--recheck", TRACKS, "--findings-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(folder / "main" / "results.json") in err.replace("\n", "")
    with pytest.raises(SpecError, match="results.json' does not exist"):
        load_compare_result(folder / "main")
    assert main(["reproduce", "--recheck", "no_such_finding", "--findings-dir",
                 str(tmp_path)]) == 2  # fmt: skip
    assert "unknown finding 'no_such_finding'" in capsys.readouterr().err


def test_recheck_cli_writes_findings_md_beside_the_records(tmp_path: Path, capsys) -> None:
    records = tmp_path / "findings"
    records.mkdir()
    _copy(records, TRACKS)
    assert main(["reproduce", "--recheck", "--all", "--findings-dir", str(records),
                 "--write-docs"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert str(tmp_path / "findings.md") in out.replace("\n", "")
    md = (tmp_path / "findings.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| `{TRACKS}`"))
    assert "re-checked" in row and _run_date(records / TRACKS)[:10] in row
    assert "| `wide_vs_deep` |" in md and "not run yet" in md
