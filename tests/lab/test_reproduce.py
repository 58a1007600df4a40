"""Every registered finding runs end to end at quick size and writes its report."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.findings.reproduce import findings_markdown, publish_findings, reproduce


@pytest.mark.parametrize("name", registry.components("finding"))
def test_finding_runs_quick_and_reports(name: str, tmp_path: Path) -> None:
    (rep,) = reproduce([name], out=tmp_path, quick=True)
    report = (rep.dir / "report.md").read_text()
    assert rep.finding.claim in report and "Verdict (quick" in report
    assert rep.verdict.numbers and all(isinstance(v, float) for v in rep.verdict.numbers.values())
    assert (rep.dir / "verdict.json").is_file()
    entry = registry.get("finding", name)
    assert entry.paper is not None and entry.paper.year >= 2017


def test_unknown_finding_is_refused() -> None:
    with pytest.raises(SpecError, match="valid"):
        reproduce(["no_such_finding"], quick=True)


def test_findings_doc_lists_every_finding(tmp_path: Path) -> None:
    text = findings_markdown(tmp_path)
    for name in registry.components("finding"):
        assert f"`{name}`" in text


def test_publish_copies_full_reports_without_run_folders(tmp_path: Path) -> None:
    name = registry.components("finding")[0]
    source = tmp_path / "runs" / "full" / name
    (source / "main" / "runs" / "some-run").mkdir(parents=True)
    (source / "main" / "plots").mkdir()
    (source / "main" / "plots" / "curve.png").write_bytes(b"png")
    (source / "report.md").write_text("# report\n")
    (source / "verdict.json").write_text(
        '{"holds": true, "reason": "because", "date": "2026-12-01T00:00:00"}'
    )
    docs = tmp_path / "docs"
    (docs / "findings" / name / "stale").mkdir(parents=True)
    assert publish_findings(tmp_path / "runs", docs) == [name]
    target = docs / "findings" / name
    assert (target / "report.md").read_text() == "# report\n"
    assert (target / "main" / "plots" / "curve.png").is_file()
    assert not (target / "main" / "runs").exists() and not (target / "stale").exists()
    text = (docs / "findings.md").read_text()
    assert f"| `{name}` |" in text and "holds (2026-12-01) | because |" in text
