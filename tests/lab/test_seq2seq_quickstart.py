"""seq2seq_quickstart: an encoder-decoder on ``reverse`` runs from the command line, its
task rows in the encoder_decoder form (set from ``model.kind``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyformer.cli import main
from anyformer.lab.experiments import load_experiment
from anyformer.spec import ExperimentSpec


def test_seq2seq_quickstart_runs_an_encoder_decoder_on_reverse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = load_experiment("seq2seq_quickstart")
    assert spec.model.kind == "encoder_decoder" and spec.task.name == "reverse"
    assert spec.train.threads == 2
    small = ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
             "train.eval_size=16", "train.threads=1"]  # fmt: skip
    code = main(["run", "seq2seq_quickstart", *small, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    (folder,) = tmp_path.iterdir()
    evaluated = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in evaluated if "split" in r} >= {"id", "ood"}
    assert all("exact_match" in r for r in evaluated if "split" in r)
    assert folder.name.startswith("seq2seq_quickstart-")
    resolved = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert resolved.task.params["form"] == "encoder_decoder"
