"""``series_classification_quickstart`` runs through the command line and prints its
table beside the 1-NN and majority baselines."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyformer.cli import main
from anyformer.spec import ExperimentSpec


@pytest.mark.slow
def test_series_classification_quickstart_prints_its_table_beside_the_baselines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("sktime")
    small = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
             "train.threads=1", "train.eval_size=32"]  # fmt: skip
    code = main(["run", "series_classification_quickstart", *small, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "in-distribution (id)" in out and "out-of-distribution (ood)" in out
    for name in ("nn1", "majority"):
        assert out.count(f"{name} baseline") == 2  # under id and under ood
    (folder,) = tmp_path.iterdir()
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert spec.task.name == "series_classification"
    assert tuple(spec.model.input_shape) == (150, 1)
