"""defect_detection and repair: every mutant differs in its syntax tree from its original
and is recorded, originals and mutants are balanced, splits are disjoint by module, the
metrics equal hand computations, the baselines, the repair context, and short runs that
learn (above the majority class; below copying's edit distance)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from code_library import write_library

from anyformer import registry
from anyformer.cli import main
from anyformer.tasks.code_defects import (
    LABELS,
    DefectDetection,
    Repair,
    binary_f1,
    classification_metrics,
    context_of,
    edit_distance,
    normalized_edit_distance,
)
from anyformer.tasks.code_mutations import KINDS
from anyformer.tasks.text import module_split

BASE = {"tokenizer": "bytes", "val_fraction": 0.3, "code_len": 160}


def build(name: str, root: Path, **params: object) -> DefectDetection | Repair:
    entry = registry.get("task", name)
    return entry.build(entry.make_params({**BASE, "root": str(root), **params}), 0)


def test_every_mutant_changes_the_tree_and_is_recorded(tmp_path: Path) -> None:
    task = build("defect_detection", write_library(tmp_path), output="kind")
    assert isinstance(task, DefectDetection)
    seen = set()
    for split in ("train", "id", "ood"):
        rows = task.examples[split]
        originals = rows[0::2]
        mutants = rows[1::2]
        assert len(originals) == len(mutants) >= 2  # balanced 50/50
        for o, m in zip(originals, mutants):
            assert o.kind == "none" and o.code == o.original == m.original
            assert m.kind in KINDS and m.detail and m.lineno >= 1
            assert ast.dump(ast.parse(m.code)) != ast.dump(ast.parse(o.code))
            # formatting cannot give the label away: both are ast.unparse's text
            assert o.code == ast.unparse(ast.parse(o.code)) + "\n"
            assert m.code == ast.unparse(ast.parse(m.code)) + "\n"
            seen.add(m.kind)
    assert seen == set(KINDS)  # the library has a place for every kind
    # the kind of a function does not depend on the run's seed
    other = build("defect_detection", tmp_path, output="kind")
    other.seed = 7
    assert [e.code for e in other.examples["train"]] == [e.code for e in task.examples["train"]]


def test_splits_are_disjoint_by_module(tmp_path: Path) -> None:
    task = build("defect_detection", write_library(tmp_path))
    modules = {s: {e.path for e in task.examples[s]} for s in ("train", "id", "ood")}
    assert all(modules.values())
    assert not modules["train"] & modules["id"] and not modules["ood"] & (
        modules["train"] | modules["id"]
    )
    assert all(p.startswith("test/") for p in modules["ood"])
    for split in ("train", "id"):
        assert all(module_split(p, 0.3, 0.0) == split for p in modules[split])
    codes = {s: {e.code for e in task.examples[s]} for s in modules}
    assert not codes["train"] & (codes["id"] | codes["ood"])


def test_metrics_equal_hand_computations() -> None:
    pred = np.array([1, 1, 0, 0, 1, 0])
    truth = np.array([1, 0, 0, 1, 1, 0])
    # tp 2, fp 1, fn 1: f1 = 4 / 6
    assert binary_f1(pred == 1, truth == 1) == pytest.approx(4 / 6)
    m = classification_metrics(pred, truth, 2)
    assert m == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(4 / 6)}
    kinds = np.array([0, 2, 3, 2, 0, 1])
    labels = np.array([0, 2, 2, 2, 1, 1])
    m = classification_metrics(kinds, labels, 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # buggy read off the kind: pred buggy [0,1,1,1,0,1], truth [0,1,1,1,1,1]: tp 4, fn 1
    assert m["f1"] == pytest.approx(8 / 9)
    # one-vs-rest: class 0 (tp1 fp1) 2/3, 1 (tp1 fn1) 2/3, 2 (tp2 fn1) 4/5, 3 (fp1) 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 4 / 5 + 0) / 4)
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert normalized_edit_distance([1, 2, 3, 4], [1, 2]) == 0.5


@pytest.mark.slow  # scikit-learn's import takes seconds
def test_score_and_baselines(tmp_path: Path) -> None:
    task = build("defect_detection", write_library(tmp_path))
    batches = task.make_eval_set("id", 1000)
    labels = torch.cat([b.targets for b in batches])
    assert labels.float().mean() == 0.5
    perfect = task.score(
        [torch.nn.functional.one_hot(b.targets, 2).float() for b in batches], batches
    )
    assert perfect["accuracy"] == 1.0 and perfect["f1"] == 1.0
    assert set(perfect["by_kind"]) <= set(LABELS) and all(
        v == 1.0 for v in perfect["by_kind"].values()
    )
    base = perfect["baselines"]
    assert base["majority"]["accuracy"] == 0.5
    as_model = task.score(task.baseline_outputs("bow_logreg", batches), batches)
    assert as_model["accuracy"] == pytest.approx(base["bow_logreg"]["accuracy"])


def test_verify_keeps_only_behaviour_changing_mutants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyformer.tasks.code_defects as cd

    calls = []

    def changed(original: str, mutated: str, module: str, examples: tuple) -> bool:
        calls.append((module, examples))
        return len(mutated) % 2 == 0  # a stand-in verdict

    monkeypatch.setattr(cd, "behaviour_changed", changed)
    task = build("defect_detection", write_library(tmp_path), verify=True)
    with_doctests = {(f.path, f.qualname) for f in task.functions if f.doctests}
    for split in ("train", "id", "ood"):
        mutants = task.examples[split][1::2]
        assert mutants and all(len(m.code) % 2 == 0 for m in mutants)
        assert all((m.path, m.qualname) in with_doctests for m in mutants)
    # the verdict was asked with each function's module and examples
    assert calls and all(ex and module.startswith(("pkg", "test")) for module, ex in calls)


def test_repair_rows_and_context(tmp_path: Path) -> None:
    root = write_library(tmp_path)
    task = build("repair", root, context=True, context_len=40)
    assert isinstance(task, Repair)
    batch = task.make_eval_set("id", 8)[0]
    sep = task.codec.separator
    for r, i in enumerate(batch.extras["example"].tolist()):
        f, m = task._pairs["id"][i]
        n = int(batch.loss_mask[r].sum())
        assert task.codec.decode(batch.targets[r, : n - 1].tolist()) == m.original
        assert batch.inputs[r, 0] == sep and batch.targets[r, n - 1] == sep
        source = batch.extras["source"][r][batch.extras["source_mask"][r]].tolist()
        text = task.codec.decode(source)
        assert text.endswith(m.code + "\0")
        context = text[: -len(m.code) - 1]
        assert context.endswith("\0") and len(context) <= 41
        assert context[:-1] in context_of(f, task.functions)
    f = next(f for f, _ in task._pairs["train"] if "." in f.qualname)
    assert context_of(f, task.functions).startswith(f"# class {f.qualname.split('.')[0]}\n")
    out = task.score(
        [torch.nn.functional.one_hot(b.targets, 256).float() for b in [batch]], [batch]
    )
    assert out["exact_match"] == 1.0 and out["edit_distance"] == 0.0
    assert out["baselines"]["copy"]["exact_match"] == 0.0
    assert 0 < out["baselines"]["copy"]["edit_distance"] < 0.5


def _last(folder: Path, split: str) -> dict:
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x for x in records if x.get("split") == split][-1]


@pytest.mark.slow
def test_a_short_run_detects_defects_above_majority(tmp_path: Path) -> None:
    root = write_library(tmp_path / "lib", modules=24)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "model: {kind: encoder, d_model: 32, n_layers: 1, n_heads: 2, max_len: 160}\n"
        f"task: {{name: defect_detection, root: '{root}', tokenizer: bytes, code_len: 160,"
        " val_fraction: 0.3}\n"
        "train: {steps: 200, batch_size: 32, lr: 0.003, eval_every: 200, eval_size: 200,"
        " progress: false, threads: 1}\n"
    )
    assert main(["run", str(spec), "--out", str(tmp_path / "runs")]) == 0
    (folder,) = list((tmp_path / "runs").iterdir())
    held_out = _last(folder, "id")
    assert held_out["accuracy"] > held_out["baselines"]["majority"]["accuracy"] + 0.1


def test_repair_keeps_only_mutants_changed_inside_the_window(tmp_path: Path) -> None:
    # a short window cuts many functions before their mutation; such a mutant, cut, is
    # its original, and copying it would score as a repair
    task = build("repair", write_library(tmp_path), code_len=40)
    assert isinstance(task, Repair)
    cut = [(f, m) for f, m in task._pairs["id"]
           if task.codec.encode(m.code)[:40] == task.codec.encode(m.original)[:40]]  # fmt: skip
    assert cut  # the library has such functions, so the filter is exercised
    batches = task.make_eval_set("id", 1000)
    assert sum(b.targets.shape[0] for b in batches) == len(task._pairs["id"]) - len(cut)
    out = task.score([torch.zeros(*b.targets.shape, 256) for b in batches], batches)
    assert out["baselines"]["copy"]["exact_match"] == 0.0
    for step in range(3):
        b = task.train_batch(step, 16)
        for r in range(b.targets.shape[0]):
            source = b.extras["source"][r][b.extras["source_mask"][r]].tolist()[:-1]
            n = int(b.loss_mask[r].sum())
            assert source != b.targets[r, : n - 1].tolist()
