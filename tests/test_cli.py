"""The command line: every bad input exits with status 2 and a message, without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anyformer.cli import main

TINY = [
    "train.steps=4",
    "train.warmup_steps=2",
    "train.eval_every=4",
    "train.eval_size=8",
    "train.progress=false",
    "model.d_model=32",
    "model.n_layers=1",
]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["run", "quickstart", "model.attention=sofmax"], ["sofmax", "softmax", "valid"]),
        (["run", "quickstart", "model.d_modle=64"], ["d_modle", "d_model"]),
        (
            ["run", "quickstart", "model.d_model=100", "model.n_heads=3"],
            ["d_model=100", "n_heads=3"],
        ),
        (["run", "quickstart", "train.steps=0"], ["train.steps", "0"]),
        (["run", "quickstart", "model.n_heads=-1"], ["model.n_heads", "-1"]),
        (["run", "quikstart"], ["quikstart", "quickstart"]),
        pytest.param(
            ["run", "quickstart", "train.device=cuda"],
            ["train.device='cuda'", "no CUDA device", "cpu"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
            id="cuda-without-a-gpu",
        ),
        (["show", "nope"], ["nope", "quickstart"]),
        (["list", "atention"], ["atention", "attention"]),
        (["reproduce", "--all", "--quick", "--write-docs"], ["--write-docs", "--quick", "full"]),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], fragments: list[str]
) -> None:
    code, _, err = run_cli(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] == "run" else []))
    assert code == 2
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not any(tmp_path.iterdir()), "a refused run must leave nothing behind"


def test_yaml_that_does_not_parse_gives_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {d_model: 64\ntrain: {}\n")
    code, _, err = run_cli(capsys, "run", str(bad), "--out", str(tmp_path / "runs"))
    assert code == 2 and "line" in err


def test_resume_of_a_non_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "resume", str(tmp_path))
    assert code == 2 and "not a run folder" in err


def test_override_without_equals_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "quickstart", "train.steps"])
    assert info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_run_prints_results_and_resume_continues(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "run", *TINY, "--out", str(tmp_path))
    assert code == 0
    assert "in-distribution" in out and "out-of-distribution" in out
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("quickstart-") and str(folder.name) in out.replace("\n", "")
    for name in ("spec.yaml", "metrics.jsonl", "report.md", "checkpoint"):
        assert (folder / name).exists()
    code, out, _ = run_cli(capsys, "resume", str(folder), "train.steps=6")
    assert code == 0 and "step 6" in out


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list", "position")
    assert code == 0 and "alibi" in out and "rope" in out
    code, out, _ = run_cli(capsys, "show", "quickstart", "model.position=alibi")
    assert code == 0 and "position: alibi" in out and "vocab_size:" in out
