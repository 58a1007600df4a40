"""Run reports say what ran (task, model, depth, widths, command, version, machine), and
figures keep intervals inside a metric's range, draw baselines and sample counts."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pytest
import torch

import anyformer
from anyformer.cli import main
from anyformer.lab import compare as cmp
from anyformer.lab import load_experiment, plots, run_experiment
from anyformer.lab.run import apply_run_overrides
from anyformer.spec import ExperimentSpec

SMALL = [
    "train.steps=2", "train.batch_size=4", "train.eval_size=8", "train.eval_every=2",
    "train.checkpoint_every=2", "train.warmup_steps=0", "train.log_every=1", "train.threads=1",
    "train.progress=false", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
]  # fmt: skip


def test_a_run_with_another_task_is_named_and_described_by_what_ran(tmp_path: Path) -> None:
    args = ["run", "quickstart", "task=icl_linear_regression", *SMALL, "--out", str(tmp_path)]
    assert main(args) == 0
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("icl_linear_regression-")
    report = (folder / "report.md").read_text()
    assert "learns to copy" not in report  # the quickstart's description is about copying
    assert "experiment 'quickstart' with overrides: task=icl_linear_regression" in report
    assert "- task: `icl_linear_regression`" in report and "objective: `mse`" in report
    assert "depth schedule `stack`" in report and "d_model 16" in report
    assert "command `anyformer run quickstart task=icl_linear_regression train.steps=2" in report
    assert "overrides `task=icl_linear_regression` `train.steps=2`" in report
    assert f"anyformer {anyformer.__version__}" in report
    assert f"torch {torch.__version__}" in report and platform.platform() in report
    assert (folder / "plots" / "loss.png").is_file()
    sessions = json.loads((folder / "provenance.json").read_text())["sessions"]
    assert len(sessions) == 1 and sessions[0]["experiment"] == "quickstart"
    # a resume adds its session; the report lists both
    assert main(["resume", str(folder), "train.steps=3"]) == 0
    report = (folder / "report.md").read_text()
    assert "2. " in report and "resumed" in report and "`train.steps=3`" in report


def test_run_names_follow_the_task_only_when_the_task_was_overridden() -> None:
    base = load_experiment("quickstart")
    assert apply_run_overrides(base, ["train.steps=5"]).name == "quickstart"
    same_task = apply_run_overrides(base, ["task.max_len=8", "model.position=alibi"])
    assert same_task.name == "quickstart"
    assert same_task.description.startswith(base.description.rstrip())
    assert same_task.description.endswith(
        "(Run with overrides: task.max_len=8 model.position=alibi.)"
    )
    assert apply_run_overrides(base, ["train.steps=5"]).description == base.description
    moved = apply_run_overrides(base, ["task=icl_linear_regression"])
    assert moved.name == "icl_linear_regression" and "quickstart" in moved.description
    named = apply_run_overrides(base, ["task=icl_linear_regression", "name=mine"])
    assert named.name == "mine"


def test_report_shows_the_depth_schedule_and_every_matformer_width(tmp_path: Path) -> None:
    spec = ExperimentSpec.from_dict(
        {
            "name": "nested",
            "model": {
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "max_len": 16,
                "depth": {"name": "looped", "loops": 2},
                "ffn": {"name": "matformer", "widths": [0.5, 1.0]},
            },
            "task": {
                "name": "copy",
                "min_len": 2,
                "max_len": 3,
                "ood_min_len": 4,
                "ood_max_len": 5,
            },
        }  # fmt: skip
    ).with_overrides([o for o in SMALL if not o.startswith("model.")])
    run = run_experiment(spec, out=tmp_path)
    report = (run.dir / "report.md").read_text()
    assert "depth schedule `looped` (loops=2" in report
    assert "## MatFormer widths" in report
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
        for line in report.splitlines()
        if line.startswith("| 0.5 |") or line.startswith("| 1 |")
    }
    assert set(rows) == {(w, s) for w in ("0.5", "1") for s in ("id", "ood")}
    # the full width is the trained model: its loss is the run's own evaluation
    head = next(line for line in report.splitlines() if line.startswith("| width |"))
    col = [c.strip() for c in head.strip("|").split("|")].index("loss")
    full = [c.strip() for c in rows[("1", "id")].strip("|").split("|")]
    assert full[col] == f"{run.metrics['id']['loss']:.4g}"
    half = [c.strip() for c in rows[("0.5", "id")].strip("|").split("|")]
    assert half[col] != full[col]
    p = [c.strip() for c in head.strip("|").split("|")].index("params")
    assert int(half[p]) < int(full[p])  # a standalone model at half width is smaller


# ------------------------------------------------------------------ figures
def test_metric_ranges() -> None:
    assert plots.metric_range("exact_match") == (0.0, 1.0)
    assert plots.metric_range("token_accuracy") == (0.0, 1.0)
    assert plots.metric_range("baselines.least_squares.mse") == (0.0, None)
    assert plots.metric_range("loss") == (None, None)  # a Gaussian NLL may be negative
    assert plots.band([0.9, 0.1], [0.5, 0.4], "exact_match") == ([0.4, 0.0], [1.0, 0.5])
    assert plots.band([0.1], [0.3], "mse")[0] == [0.0]
    assert plots.yerr(0.5, 0.8, "accuracy") == [[0.5], [0.5]]
    flat = {"chance": 0.25, "baselines.least_squares.mse": 0.1, "baselines.gd.mse": 0.4,
            "baselines.gd.by_k.3": 0.9, "mse": 0.2}  # fmt: skip
    assert plots.reference_values(flat, "mse") == {"least_squares": 0.1, "gd": 0.4}
    assert plots.reference_values(flat, "accuracy") == {"chance": 0.25}


class Recorder:
    """Records calls of matplotlib Axes methods."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.axes import Axes

        self.calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {n: [] for n in names}
        for name in names:
            original = getattr(Axes, name)

            def wrapper(ax: Any, *a: Any, _n: str = name, _o: Any = original, **k: Any) -> Any:
                self.calls[_n].append((a, k))
                return _o(ax, *a, **k)

            monkeypatch.setattr(Axes, name, wrapper)


def synthetic(tmp_path: Path, params: tuple[int, int] = (100, 100)) -> cmp.CompareResult:
    spec = ExperimentSpec.from_dict({"name": "syn"})
    variants = [cmp.Variant("a", [], spec, params[0]), cmp.Variant("b", [], spec, params[1])]

    def stat(mean: float, ci: float) -> dict[str, Any]:
        return {"mean": mean, "ci95": ci, "values": [mean], "n": 2}

    summary = {
        label: {"id": {"exact_match": stat(0.5, 0.8), "chance": stat(0.25, 0.0)}}
        for label in ("a", "b")
    }
    curve = {
        "x": "length",
        "y": "exact_match",
        "series": {"model": {"2": {"mean": 0.9, "ci95": 0.5}, "3": {"mean": 0.1, "ci95": 0.4}}},
        "n": {"2": 40, "3": 3},
    }
    return cmp.CompareResult(tmp_path, spec, [("model.position", ["a", "b"])], variants,
                             summary=summary, curves={"a": {"id": curve}, "b": {"id": curve}},
                             headline="exact_match")  # fmt: skip


def test_curve_bands_are_clipped_and_baselines_and_counts_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch, "fill_between", "axhline", "annotate")
    (path,) = plots.plot_compare_curves(synthetic(tmp_path), tmp_path / "plots")
    assert path.is_file()
    for args, _ in rec.calls["fill_between"]:
        _, lo, hi = args
        assert min(lo) >= 0.0 and max(hi) <= 1.0, (lo, hi)
    assert rec.calls["fill_between"][0][0][2] == [1.0, 0.5]
    assert [a[0] for a, _ in rec.calls["axhline"]] == [0.25]
    assert "chance" in rec.calls["axhline"][0][1]["label"]
    texts = [a[0] for a, _ in rec.calls["annotate"]]
    assert texts == ["n=3", "n=3"]  # one per variant, only the point on 3 examples


def test_params_plot_is_a_bar_chart_when_every_variant_has_the_same_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch, "bar", "errorbar", "set_xscale")
    assert plots.plot_metric_vs_params(synthetic(tmp_path), tmp_path / "p.png") is not None
    assert len(rec.calls["bar"]) == 2 and not rec.calls["set_xscale"]
    assert rec.calls["bar"][0][1]["yerr"] == [[0.5], [0.5]]  # 0.5 ± 0.8 clipped to [0, 1]
    rec = Recorder(monkeypatch, "bar", "errorbar", "set_xscale")
    plots.plot_metric_vs_params(synthetic(tmp_path, (100, 1000)), tmp_path / "q.png")
    assert len(rec.calls["errorbar"]) == 2 and rec.calls["set_xscale"][0][0] == ("log",)


def test_loss_plot_of_a_comparison(tmp_path: Path) -> None:
    losses = {"a": {1: (2.0, 0.5), 2: (1.0, 0.2)}, "b": {1: (2.5, 0.0), 2: (1.5, 0.0)}}
    assert plots.plot_losses(losses, tmp_path / "loss.png", "t").is_file()
    assert plots.plot_losses({"a": {}}, tmp_path / "none.png", "t") is None
