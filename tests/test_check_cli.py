"""``anyformer check PATH:Class --slot SLOT``: a table of the slot's contract checks;
exit 0 when all pass, 1 when one fails, 2 on bad input (with a message, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anyformer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh process (the examples register their classes), run from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "anyformer", "check", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_the_example_attention_passes_every_check() -> None:
    res = _cli("examples/my_attention.py:MyAttention", "--slot", "attention")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "as attention 'qk_norm': passed" in out
    for check in ("shape", "causal", "encoder_padding", "gradients"):
        assert f"│ {check}" in out
    assert "failed" not in out and "not registered" not in out


def test_the_leaky_example_fails_the_causality_check() -> None:
    res = _cli("examples/leaky_attention.py:LeakyAttention", "--slot", "attention")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "1 failed" in out
    row = next(line for line in out.splitlines() if line.startswith("│ causal "))
    assert "failed" in row and "causality: changing token 7 changed earlier outputs" in row
    assert "Traceback" not in res.stderr
    # named by path, unregistered: the report says which capabilities it was held to
    assert "not registered: checked with causal_safe, bidirectional, no kv_cache" in out


def test_a_module_path_works_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "anyformer.components.norm:RMSNorm", "--slot", "norm"]) == 0
    out = capsys.readouterr().out
    assert "as norm 'rmsnorm': passed" in out and "per_token" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["examples/my_attention.py:MyAttention", "--slot", "atention"],
            ["'atention' is not a slot", "did you mean 'attention'", "valid slots"],
        ),
        (
            ["examples/no_such_file.py:X", "--slot", "attention"],
            ["file 'examples/no_such_file.py' does not exist"],
        ),
        (
            ["no_such_package.mod:X", "--slot", "norm"],
            ["module 'no_such_package.mod' could not be imported"],
        ),
        (
            ["anyformer.components.norm:RMSNrom", "--slot", "norm"],
            ["has no class 'RMSNrom'", "did you mean 'RMSNorm'"],
        ),
        (["anyformer.components.norm", "--slot", "norm"], ["path/to/file.py:Class"]),
        (["torch.nn:Linear", "--slot", "task"], ["cannot be a task", "does not subclass"]),
    ],
)
def test_bad_input_exits_2_with_the_reason(
    args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_a_class_that_breaks_the_contract_exits_2_naming_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "half_done_mixer.py"
    source.write_text(
        "from torch import nn\n\n"
        "class HalfDone(nn.Module):\n"
        "    def __init__(self, params):\n"
        "        super().__init__()\n"
    )
    assert main(["check", f"{source}:HalfDone", "--slot", "attention"]) == 2
    err = capsys.readouterr().err
    assert "HalfDone cannot be a attention" in err
    assert "it does not define forward()" in err
    assert "its constructor does not take (dims, params)" in err
    broken = tmp_path / "syntax_error_mixer.py"
    broken.write_text("def oops(:\n")
    assert main(["check", f"{broken}:X", "--slot", "attention"]) == 2
    assert "could not be imported: SyntaxError" in capsys.readouterr().err
