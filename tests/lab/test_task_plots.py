"""Each run writes its task's own plot (confusion matrix, predicted vs true with conformal
intervals, input/output image grid, boxes on images) and report.md shows it; the numbers a plot is drawn
from are the model's predictions (tested on the data, not the pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anyformer import registry
from anyformer.cli import main
from anyformer.lab import run_experiment
from anyformer.lab.loaded import load_run
from anyformer.lab.run import Run
from anyformer.lab.task_plot import task_plot_data
from anyformer.spec import ExperimentSpec
from anyformer.tasks.packing import model_inputs
from anyformer.tasks.plot_data import BoxesOnImages, Confusion, ImageGrid, Scatter, confusion

TRAIN = {"steps": 3, "batch_size": 16, "eval_size": 40, "eval_every": 3, "checkpoint_every": 3,
         "warmup_steps": 0, "threads": 1, "progress": False}  # fmt: skip
SMALL = {"kind": "encoder", "d_model": 16, "n_layers": 1, "n_heads": 2, "position": "learned"}
KINDS = {
    "confusion": ({"name": "table", "dataset": "wine"},
                  {"embedder": "features", "position": "none"}),
    "scatter": ({"name": "table", "dataset": "diabetes"},
                {"embedder": "features", "position": "none"}),
    "images": ({"name": "super_resolution"}, {"embedder": {"name": "patches", "cls": False}}),
    "boxes": ({"name": "shapes", "output": "boxes", "size": 8, "max_objects": 2,
               "ood_min_objects": 3, "ood_max_objects": 3},
              {"kind": "encoder_decoder", "max_len": 24}),
}  # fmt: skip
FILES = {"confusion": "confusion.png", "scatter": "predicted_vs_true.png", "images": "images.png",
         "boxes": "boxes.png"}  # fmt: skip


def tiny_run(tmp_path: Path, kind: str) -> Run:
    task, model = KINDS[kind]
    spec = ExperimentSpec.from_dict(
        {"name": f"plot-{kind}", "task": task, "model": {**SMALL, **model}, "train": TRAIN}
    )
    return run_experiment(spec, out=tmp_path)


def trained_model(run: Run) -> torch.nn.Module:
    """The run's trained model, read back from its checkpoint."""
    return load_run(run.dir).model


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_task_writes_its_plot_as_a_png_shown_in_the_report(
    tmp_path: Path, kind: str
) -> None:
    run = tiny_run(tmp_path, kind)
    path = run.dir / "plots" / FILES[kind]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert f"![{path.stem}](plots/{path.name})" in (run.dir / "report.md").read_text()
    others = set(FILES.values()) - {path.name}
    assert not any((run.dir / "plots" / name).exists() for name in others)


def test_the_confusion_matrix_counts_the_models_predictions(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "confusion")
    model = trained_model(run)
    panels = task_plot_data(run, model)
    assert [p.split for p in panels] == ["id", "ood"]
    for panel in panels:
        assert isinstance(panel, Confusion) and panel.counts.shape == (3, 3)
        assert panel.labels == ("class_0", "class_1", "class_2")
        batches = run.task.eval_set(panel.split, TRAIN["eval_size"])
        with torch.no_grad():
            pred = torch.cat([model(b.inputs).argmax(-1) for b in batches]).numpy()
        true = torch.cat([b.targets for b in batches]).numpy()
        expected = np.zeros((3, 3), dtype=np.int64)
        for t, p in zip(true, pred):
            expected[t, p] += 1
        np.testing.assert_array_equal(panel.counts, expected)
        assert panel.accuracy == pytest.approx(run.metrics[panel.split]["accuracy"])


def test_the_scatter_carries_the_runs_conformal_intervals(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "scatter")
    panels = task_plot_data(run, trained_model(run))
    for panel in panels:
        assert isinstance(panel, Scatter) and panel.level == 0.9
        assert panel.lower is not None and panel.upper is not None
        assert np.all(panel.lower <= panel.pred) and np.all(panel.pred <= panel.upper)
        batches = run.task.eval_set(panel.split, TRAIN["eval_size"])
        true = torch.cat([b.targets for b in batches]).double().numpy()
        np.testing.assert_allclose(panel.true, true)
        # the coverage the legend shows is the one the run reported
        reported = run.metrics[panel.split]["conformal"]["coverage"]
        assert panel.coverage == pytest.approx(reported)


def test_the_super_resolution_grid_shows_input_output_target_and_nearest(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "images")
    model = trained_model(run)
    (panel, _) = task_plot_data(run, model)
    assert isinstance(panel, ImageGrid)
    assert panel.columns == ("input", "output", "target", "nearest")
    inputs, outputs, targets, nearest = panel.images
    assert inputs.shape[1] * 2 == outputs.shape[1] == targets.shape[1] == nearest.shape[1]
    batch = run.task.eval_set("id", TRAIN["eval_size"])[0]
    with torch.no_grad():
        out = model(batch.inputs[:4]).clamp(0, 1).permute(0, 2, 3, 1).double().numpy()
    np.testing.assert_allclose(outputs, out, atol=1e-6)
    # nearest upsampling repeats each input pixel in a 2x2 block
    np.testing.assert_allclose(nearest[:, ::2, ::2], inputs, atol=1e-6)
    np.testing.assert_allclose(nearest[:, 1::2, 1::2], inputs, atol=1e-6)


def test_the_boxes_plot_shows_the_models_boxes_and_the_true_ones(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "boxes")
    model = trained_model(run)
    panels = task_plot_data(run, model)
    assert [p.split for p in panels] == ["id", "ood"]
    for panel in panels:
        assert isinstance(panel, BoxesOnImages) and len(panel.images) == 8
        batch = run.task.eval_set(panel.split, TRAIN["eval_size"])[0]
        with torch.no_grad():
            pred = model(batch.inputs, **model_inputs(batch)).argmax(-1)
        np.testing.assert_array_equal(panel.images, batch.extras["source"][:8].permute(0, 2, 3, 1))
        for r in range(8):
            np.testing.assert_array_equal(panel.true[r], run.task.decode_boxes(batch.targets[r]))
            np.testing.assert_array_equal(panel.pred[r], run.task.decode_boxes(pred[r]))


def test_confusion_counts_pairs_of_true_and_predicted_classes() -> None:
    c = confusion("id", np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(c.counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert c.accuracy == pytest.approx(4 / 6) and c.labels == ("0", "1", "2")
    with pytest.raises(ValueError, match="3 true classes but 2 predictions"):
        confusion("id", np.array([0, 1, 2]), np.array([0, 1]), 3)


@pytest.mark.slow
def test_vision_quickstart_writes_its_confusion_matrix(tmp_path: Path) -> None:
    small = ["train.steps=2", "train.batch_size=8", "train.eval_size=20", "train.eval_every=2",
             "train.checkpoint_every=2", "train.warmup_steps=0", "train.threads=1",
             "train.progress=false", "model.n_layers=1"]  # fmt: skip
    assert main(["run", "vision_quickstart", *small, "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    assert (folder / "plots" / "confusion.png").is_file()
    assert "![confusion](plots/confusion.png)" in (folder / "report.md").read_text()


def test_shapes_names_its_classes_on_the_confusion_matrix() -> None:
    entry = registry.get("task", "shapes")
    task = entry.build(entry.make_params(), 0)
    batches = task.eval_set("id", 24)
    outputs = [torch.nn.functional.one_hot(b.targets, task.n_classes).float() for b in batches]
    panel = task.plot_data("id", outputs, batches)
    assert panel.labels[0] == "red rect" and panel.labels[5] == "blue disc"
    assert panel.accuracy == 1.0 and panel.examples == 24
    assert np.count_nonzero(panel.counts - np.diag(np.diag(panel.counts))) == 0
