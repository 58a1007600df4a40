"""``series_quickstart`` runs through the command line and prints its table beside the
forecasting baselines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from anyformer.cli import main
from anyformer.spec import ExperimentSpec


def test_series_quickstart_prints_its_table_beside_the_baselines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    small = ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
             "train.threads=1", "task.length=600"]  # fmt: skip
    code = main(["run", "series_quickstart", *small, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "in-distribution (id)" in out and "out-of-distribution (ood)" in out
    for name in ("last_value", "linear", "dlinear", "optimal"):
        # under id and under ood
        assert len(re.findall(rf"\b{name} baseline", out)) == 2, name
    (folder,) = tmp_path.iterdir()
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert spec.task.name == "forecast" and spec.model.embedder_ref.name == "points"
    assert spec.model.head_ref.name == "forecast"
