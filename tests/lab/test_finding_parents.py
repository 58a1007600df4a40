"""Two-stage findings: a comparison's ``init_from: @<key>`` names an earlier comparison
(its parent), and seed i of every variant naming it starts from the parent's run of seed i."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyformer.errors import SpecError
from anyformer.lab.compare import CompareResult, Variant, base_values, seed_values
from anyformer.lab.findings.base import Comparison
from anyformer.lab.findings.reproduce import parent_runs
from anyformer.spec import ExperimentSpec

BASE = {"name": "t", "task": "copy"}


def done(n_variants: int = 1, seeds: int = 2) -> CompareResult:
    """A finished parent comparison with ``seeds`` run folders per variant."""
    spec = ExperimentSpec.from_dict(BASE)
    variants = [Variant(f"v{i}", [], spec) for i in range(n_variants)]
    result = CompareResult(Path("p"), spec, [], variants)
    result.runs = {v.label: {None: [Path(f"p/runs/{v.label}-{s}") for s in range(seeds)]}
                   for v in variants}  # fmt: skip
    return result


def test_parents_are_read_from_init_from_values() -> None:
    comp = Comparison(BASE, [("init_from", ["null", "@a", "@b"]), ("train.lr", ["0.1"])])
    assert comp.parents() == ["a", "b"]
    assert Comparison(BASE | {"init_from": "@a"}, []).parents() == ["a"]
    assert Comparison(BASE | {"init_from": "runs/x"}, [("init_from", ["runs/y"])]).parents() == []


def test_parent_runs_map_each_parent_to_its_runs_by_seed() -> None:
    comp = Comparison(BASE, [("init_from", ["null", "@a"])], seeds=2)
    runs = parent_runs("f", "tune", comp, {"a": done()})
    assert runs == {"@a": ["p/runs/v0-0", "p/runs/v0-1"]}
    # seed i of the variant gets run i; other overrides and null are left alone
    overrides = ["init_from=@a", "train.lr=0.1"]
    assert seed_values(overrides, runs, 1) == ["init_from=p/runs/v0-1"]
    assert seed_values(["init_from=null"], runs, 0) == []
    assert base_values(ExperimentSpec.from_dict(BASE | {"init_from": "@a"}), runs) == [
        "init_from=@a"
    ]
    assert base_values(ExperimentSpec.from_dict(BASE), runs) == []


@pytest.mark.parametrize(
    ("parents", "seeds", "message"),
    [
        ({}, 1, "not an earlier comparison"),
        ({"a": done(n_variants=2)}, 1, "comparison of 2 variants"),
        ({"a": done(seeds=1)}, 2, "2 seeds but its parent 'a' only 1"),
    ],
)
def test_bad_parents_are_refused(
    parents: dict[str, CompareResult], seeds: int, message: str
) -> None:
    comp = Comparison(BASE, [("init_from", ["@a"])], seeds=seeds)
    with pytest.raises(SpecError, match=message):
        parent_runs("f", "tune", comp, parents)


@pytest.mark.slow
def test_fine_tuned_runs_start_from_their_parents_run(tmp_path: Path) -> None:
    """Quick mae_high_mask_ratio: each fine-tuned run read the backbone of the parent run
    its init_from names; the from-scratch run read none."""
    import json

    from anyformer.lab.findings.reproduce import reproduce

    (rep,) = reproduce(["mae_high_mask_ratio"], out=tmp_path, quick=True)
    tune = rep.results["finetune"]
    for v in tune.variants:
        (run,) = tune.run_dirs(v.label)
        spec = ExperimentSpec.from_yaml(run / "spec.yaml")
        value = next(o.split("=", 1)[1] for o in v.overrides if o.startswith("init_from="))
        if value == "null":
            assert spec.init_from is None
            continue
        (parent,) = rep.results[value[1:]].run_dirs(rep.results[value[1:]].variants[0].label)
        assert spec.init_from == str(parent)
        provenance = json.loads((run / "provenance.json").read_text())
        assert Path(provenance["sessions"][0]["parent_path"]) == parent.resolve()
