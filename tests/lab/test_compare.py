"""Comparisons: intervals, grids, iso-parameter matching, resumability and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from anyformer.errors import SpecError
from anyformer.lab import compare as cmp
from anyformer.spec import ExperimentSpec

BASE = {
    "name": "cmp",
    "model": {"d_model": 48, "n_layers": 1, "n_heads": 2, "max_len": 32},
    "task": {"name": "copy", "min_len": 2, "max_len": 4, "ood_min_len": 5, "ood_max_len": 6},
    "train": {
        "steps": 6,
        "batch_size": 8,
        "eval_every": 6,
        "eval_size": 16,
        "checkpoint_every": 6,
        "warmup_steps": 2,
    },
}


@pytest.mark.parametrize("values", [[1.0, 2.0], [0.3, 0.5, 0.9, 0.1], [5.0] * 3 + [6.0] * 2])
def test_interval_is_the_student_t_interval(values: list[float]) -> None:
    mean, half = cmp.mean_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(sum(values) / len(values))
    assert half == pytest.approx((hi - lo) / 2, rel=1e-3)
    assert cmp.mean_interval([3.0]) == (3.0, 0.0)


def test_axes_parse_and_refuse_bad_forms() -> None:
    assert cmp.parse_axis("model.position=rope,alibi") == ("model.position", ["rope", "alibi"])
    assert cmp.parse_axis("model.n_layers,model.n_heads=1:8,4:2")[1] == ["1:8", "4:2"]
    for bad in ["model.position", "model.position=", "model.n_layers,model.n_heads=1,2"]:
        with pytest.raises(SpecError):
            cmp.parse_axis(bad)


def test_axis_values_may_switch_to_a_component_with_its_own_parameters() -> None:
    key, values = cmp.parse_axis(
        "model.attention=softmax, {name: sliding_window, window: 8},{name: softmax, kv_heads: 1}"
    )
    assert key == "model.attention"
    assert values == [
        "softmax",
        "{name: sliding_window, window: 8}",
        "{name: softmax, kv_heads: 1}",
    ]
    joint = cmp.parse_axis("model.attention,model.n_layers={name: sliding_window, window: 4}:2")
    assert joint[1] == ["{name: sliding_window, window: 4}:2"]
    base = ExperimentSpec.from_dict(BASE)
    variants = cmp.make_variants(base, [(key, values)], match_params=False)
    assert [v.label for v in variants] == [
        "attention=softmax", "attention=sliding_window(window=8)", "attention=softmax(kv_heads=1)"
    ]  # fmt: skip
    assert variants[1].spec.model.attention.params["window"] == 8
    (pair,) = cmp.make_variants(base, [("model.attention,model.n_layers", joint[1])], False)
    assert pair.spec.model.attention.params["window"] == 4 and pair.spec.model.n_layers == 2


def test_match_params_brings_every_variant_within_five_percent() -> None:
    base = ExperimentSpec.from_dict(BASE)
    axes = [("model.ffn", ["mlp", "glu"]), ("model.n_layers", ["1", "2"])]
    variants = cmp.make_variants(base, axes, match_params=True)
    target = variants[0].params
    assert len(variants) == 4
    for v in variants:
        assert abs(v.params - target) / target <= 0.05, (v.label, v.params, target)
    assert any(v.spec.model.d_model != 48 for v in variants[1:])


def test_compare_aggregates_resumes_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ExperimentSpec.from_dict(BASE)
    axes = [("model.position", ["rope", "none"])]
    result = cmp.compare(base, axes, tmp_path, seeds=2, lrs=[1e-3, 3e-3])
    assert set(result.summary) == {"position=rope", "position=none"}
    em = result.summary["position=rope"]["id"]["exact_match"]
    assert em["n"] == 2 and len(em["values"]) == 2
    assert set(result.lrs.values()) <= {1e-3, 3e-3}
    folders = result.run_dirs("position=rope")
    assert len(folders) == 2 and all((f / "final.json").is_file() for f in folders)
    assert all(f"{result.lrs['position=rope']}" in (f / "spec.yaml").read_text() for f in folders)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [tmp_path / f for f in saved["runs"]["position=none"]] == [
        f.resolve() for f in result.run_dirs("position=none")
    ]
    assert all(f.startswith("runs/") for f in saved["runs"]["position=none"])
    assert saved["summary"]["position=none"]["ood"]["exact_match"]["n"] == 2
    assert (tmp_path / "report.md").read_text().count("position=") >= 2
    assert list((tmp_path / "plots").glob("*.png"))
    # a second call reads every finished run back instead of training it again
    import anyformer.lab.run as run_module

    monkeypatch.setattr(
        run_module, "run_experiment", lambda *a, **k: pytest.fail("retrained a finished run")
    )
    again = cmp.compare(base, axes, tmp_path, seeds=2, lrs=[1e-3, 3e-3])
    assert again.summary == result.summary
