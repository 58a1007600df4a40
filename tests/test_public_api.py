"""The public API: stable attributes of ``anyformer``, each callable twice in one process."""

from __future__ import annotations

import importlib
import subprocess
import sys

import anyformer

PUBLIC = ["components", "build_model", "load_experiment", "train", "check", "load_run", "generate"]


def test_public_names_are_listed_by_dir() -> None:
    assert set(PUBLIC) <= set(dir(anyformer))
    assert all(not name.startswith("_") for name in dir(anyformer) if name != "__version__")


def test_components_survives_importing_the_components_package() -> None:
    """Importing the subpackage ``anyformer.components`` used to replace the function."""
    first = anyformer.components("attention")
    importlib.import_module("anyformer.components.attention.softmax")  # the subpackage

    assert anyformer.components("attention") == first
    assert anyformer.components("norm") == anyformer.components("norm")
    assert anyformer.components.base.Context is not None  # the package is still reachable


def test_every_public_name_twice_in_a_fresh_process(tmp_path) -> None:
    """Each public function called twice in one process (a new one, so no earlier test
    has imported anything): the values agree and nothing is replaced between calls."""
    code = f"""
import anyformer, pathlib, torch
out = pathlib.Path({str(tmp_path)!r})
for _ in range(2):
    assert "softmax" in anyformer.components("attention")
    m = anyformer.build_model(dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2))
    spec = anyformer.load_experiment("quickstart").with_overrides(
        ["train.steps=2", "train.eval_every=2", "train.eval_size=4", "train.batch_size=4",
         "train.checkpoint_every=2", "train.progress=false", "model.d_model=16",
         "model.n_layers=1", "model.n_heads=2"])
    run = anyformer.train(spec, out=str(out))
    loaded = anyformer.load_run(run.dir)
    assert loaded.spec == run.spec and loaded.model.num_params() > 0
    ids = anyformer.generate(loaded.model, torch.tensor([[1, 2, 3]]), 4)
    assert ids.shape == (1, 7)
    report = anyformer.check("anyformer.components.norm:RMSNorm", "norm")
    assert report.passed, report.table()
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok" in res.stdout
