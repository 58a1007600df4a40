"""``anyformer --version``, ``list`` on narrow terminals, a component's parameters,
``show --summary``, ``list runs DIR`` and the findings' last verdicts."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from anyformer import registry
from anyformer.cli import main
from anyformer.lab import load_experiment
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("slot", ["depth", "attention", "finding"])
def test_list_never_breaks_a_name_on_a_narrow_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, slot: str
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run_cli(capsys, "list", slot)
    assert code == 0
    cells = {c.strip() for line in out.splitlines() for c in line.split("│")}
    for name in registry.components(slot):
        assert name in cells, f"'{name}' is broken or cut in:\n{out}"


def test_a_components_parameters_with_types_defaults_and_choices(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_cli(capsys, "list", "attention", "sliding_window")
    assert code == 0
    rows = {c[0]: c[1:] for c in (
        [x.strip() for x in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line
    ) if c}  # fmt: skip
    assert rows["window"] == ["int", "128", "> 0"]
    impl = registry.get("attention", "sliding_window").params.model_fields["impl"]
    choices = ", ".join(typing.get_args(impl.annotation))
    assert rows["impl"] == ["choice", repr(impl.default), choices]
    code, shown, _ = run_cli(capsys, "show", "sliding_window")
    assert code == 0 and shown == out
    code, _, err = run_cli(capsys, "list", "attention", "sliding_windw")
    assert code == 2 and "sliding_window" in err


def test_show_summary_counts_what_the_model_has(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    overrides = [
        "model.n_layers=3",
        "model.layers.1.ffn={name: mlp, mult: 2}",
        "model.depth=recursive",
    ]
    code, out, _ = run_cli(capsys, "show", "quickstart", *overrides, "--summary")
    assert code == 0
    spec = resolve(load_experiment("quickstart").with_overrides(overrides))
    model = prepare_model(spec)
    assert f"{model.num_params():,}" in out
    assert f"{model.flops_per_token(spec.model.max_len):,}" in out
    blocks = [line for line in out.splitlines() if re.match(r"│ +\d+ │", line)]
    assert len(blocks) == 3
    sizes = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    for line, size in zip(blocks, sizes, strict=True):
        assert f"{size:,}" in line
    assert sizes[1] < sizes[0]  # the narrower FFN of layer 1
    assert not list(Path().glob("runs/quickstart-*-summary")), "nothing is trained or written"


def test_list_runs_shows_headline_metrics_and_survives_torn_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "150")
    spec = resolve(load_experiment("quickstart"))
    good = tmp_path / "quickstart-aaaa"
    good.mkdir()
    spec.save(good / SPEC_FILE)
    lines = [
        {"step": 10, "loss": 2.0},
        {"step": 20, "split": "id", "exact_match": 0.25},
        {"step": 40, "split": "id", "exact_match": 0.75},
        {"step": 40, "split": "ood", "exact_match": 0.125},
    ]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 50, "lo'  # a torn tail
    (good / "metrics.jsonl").write_text(text)
    bad = tmp_path / "broken-bbbb"
    bad.mkdir()
    (bad / SPEC_FILE).write_bytes(b"\xff\xfe not yaml")
    (tmp_path / "not-a-run").mkdir()
    code, out, err = run_cli(capsys, "list", "runs", str(tmp_path))
    assert code == 0, err
    row = next(line for line in out.splitlines() if "quickstart-aaaa" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells == ["quickstart-aaaa", "copy", "40", "exact_match", "0.75", "0.125"]
    assert "broken-bbbb" in out and "unreadable" in out and "not-a-run" not in out


def test_list_finding_shows_the_last_verdict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    names = registry.components("finding")
    full = tmp_path / "full" / names[0]
    full.mkdir(parents=True)
    (full / "verdict.json").write_text(json.dumps({"holds": False, "date": "2026-11-30T10:00"}))
    quick = tmp_path / "quick" / names[1]
    quick.mkdir(parents=True)
    (quick / "verdict.json").write_text(json.dumps({"holds": True, "date": "2026-12-01T10:00"}))
    torn = tmp_path / "full" / names[2]
    torn.mkdir(parents=True)
    (torn / "verdict.json").write_text('{"holds": tr')
    code, out, _ = run_cli(capsys, "list", "finding", "--findings-dir", str(tmp_path))
    assert code == 0
    row = {n: next(line for line in out.splitlines() if f"│ {n} " in line) for n in names[:4]}
    assert "does not hold (full, 2026-11-30)" in row[names[0]]
    assert "holds (quick, 2026-12-01)" in row[names[1]]
    assert row[names[2]].rstrip("│ ").endswith("-") and row[names[3]].rstrip("│ ").endswith("-")
