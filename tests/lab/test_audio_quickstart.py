"""audio_quickstart (tones) and audio_ctc (dtmf) run from the command line and print their
tables beside their baselines."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyformer.cli import main
from anyformer.lab.experiments import load_experiment
from anyformer.spec import ExperimentSpec

SMALL = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
         "train.eval_size=16", "train.threads=1"]  # fmt: skip


@pytest.mark.parametrize("name,task,baselines", [
    pytest.param("audio_quickstart", "tones", ("logreg", "majority"), marks=pytest.mark.slow),
    ("audio_ctc", "dtmf", ("goertzel", "empty")),
])  # fmt: skip
def test_audio_experiments_print_their_tables_beside_the_baselines(
    name: str, task: str, baselines: tuple[str, ...], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    assert load_experiment(name).train.threads == 2
    code = main(["run", name, *SMALL, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for baseline in baselines:
        assert out.count(f"{baseline} baseline") == 2  # under id and under ood
    (folder,) = tmp_path.iterdir()
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert spec.task.name == task and spec.model.embedder_ref.name == "spectrogram_patches"
    assert spec.model.input_shape is not None and len(spec.model.input_shape) == 1
