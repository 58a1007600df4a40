"""The task contract (``anyformer.tasks.contract``), generated from the registry: every
registered task, with small parameters, keeps every check; a task registered later is
picked up; a task that breaks the contract fails the check named for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from code_library import CODE_TASKS, NAME_TASKS, code_tree, names_tree, write_code_library

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.registry import Capabilities, register
from anyformer.tasks.base import LENGTH_FIELDS, Batch, split_range
from anyformer.tasks.contract import CHECKS, CheckResult, check_task
from anyformer.tasks.graphs import VERTEX_FIELDS
from anyformer.tasks.recall import PAIR_FIELDS
from anyformer.tasks.sequence import LengthParams, SequenceTask
from anyformer.tasks.symbolic import DEPTH_FIELDS

#: Small parameters per task, to keep the contract fast; a task not listed runs with its
#: defaults (so a new task is checked as soon as it is registered).
SMALL: dict[str, dict[str, Any]] = {
    "copy": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7},
    "reverse": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7},
    "sort": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7, "hint": "rank"},
    "parity": {"min_len": 2, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8},
    "addition": {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3},
    "multiplication": {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3},
    "selective_copy": {"max_len": 10, "ood_min_len": 11, "ood_max_len": 12},
    "dyck": {"max_len": 10, "ood_min_len": 11, "ood_max_len": 14, "mode": "recognize"},
    "listops": {"max_depth": 2, "ood_min_depth": 3, "ood_max_depth": 3},
    "graph_search": {"min_vertices": 6, "max_vertices": 7, "ood_min_vertices": 8,
                     "ood_max_vertices": 9},
    "two_hop": {"n_entities": 8, "n_functions": 3},
    "kg_reasoning": {"n_entities": 16, "n_relations": 2, "ood_fraction": 0.25,
                     "inferred_ratio": 1.0},
    "mqar": {"n_keys": 16, "n_values": 8, "min_pairs": 2, "max_pairs": 4, "ood_min_pairs": 5,
             "ood_max_pairs": 6, "n_queries": 2},
    "icl_linear_regression": {"dims": 2, "n_points": 5},
    "icl_boolean": {"n_bits": 4, "n_points": 6},
    "icl_ar": {"n_points": 8},
    "icl_mixture": {"dims": 2, "n_points": 5},
    "icl_uncertainty": {"dims": 2, "n_points": 5},
    "stdlib_lm": {"seq_len": 16, "val_fraction": 0.3},
    "text_files": {"seq_len": 16, "val_fraction": 0.3},
    "code_search": {"tokenizer": "bytes", "query_len": 40, "code_len": 40, "val_fraction": 0.25,
                    "min_query_chars": 8, "embed_dim": 8},
    "text_corpus": {"seq_len": 16, "ood_fraction": 0.3},
    "translation": {"max_depth": 1, "ood_min_depth": 2, "ood_max_depth": 2},
    "shapes": {"size": 8, "max_objects": 2, "ood_min_objects": 3, "ood_max_objects": 3},
    "image_folder": {"size": 8},
    "forecast": {"length": 400, "lookback": 12, "horizon": 3},
    "graph_atlas": {"gin_steps": 5},
    "graph_sbm": {"n_train": 16, "n_eval": 8, "gin_steps": 5},
    "graph_motifs": {"n_train": 16, "n_eval": 8, "gin_steps": 5},
    "graph_file": {"gin_steps": 5},
    "defect_detection": {"tokenizer": "bytes", "code_len": 96, "val_fraction": 0.3},
    "repair": {"tokenizer": "bytes", "code_len": 96, "val_fraction": 0.3},
    "code_lm": {"seq_len": 32, "val_fraction": 0.3},
    "completion_with_tests": {"samples": 1, "k": 1, "eval_problems": 1},
    "method_name": {"code_len": 64, "val_fraction": 0.3, "n_classes": 3},
}  # fmt: skip
#: Further modes whose data or baselines differ from the defaults.
MODES: list[tuple[str, dict[str, Any]]] = [
    ("dyck", {"max_len": 10, "ood_min_len": 11, "ood_max_len": 14}),
    ("graph_search", {**SMALL["graph_search"], "query": "connected", "trace": "bfs"}),
    ("kg_reasoning", {**SMALL["kg_reasoning"], "reasoning": "comparison"}),
    ("mqar", {**SMALL["mqar"], "seq_len": 24}),
    ("digits", {"ood": "shift"}),
    ("shapes", {**SMALL["shapes"], "output": "count", "count_as": "regress"}),
    ("shapes", {**SMALL["shapes"], "output": "boxes"}),
    ("pose_lifting", {"frames": 2}),
    ("table", {"dataset": "diabetes"}),
    ("forecast", {**SMALL["forecast"], "ood": "horizon", "data": "seasonal", "period": 6}),
    ("series_classification", {"dataset": "JapaneseVowels", "ood": "shift"}),
    ("graph_sbm", {**SMALL["graph_sbm"], "mode": "pattern", "ood": "pq"}),
    ("graph_motifs", {**SMALL["graph_motifs"], "target": "in_motif", "features": "constant"}),
    ("graph_file", {"gin_steps": 5, "level": "node", "target": "end"}),
    ("defect_detection", {**SMALL["defect_detection"], "output": "kind"}),
    ("repair", {**SMALL["repair"], "context": True, "context_len": 32}),
]


def registered_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every registered task with its small parameters, then the further modes."""
    return [(name, SMALL.get(name, {})) for name in registry.components("task")] + MODES


def run_contract(
    name: str,
    params: dict[str, Any],
    stdlib: Path,
    images: Path | None = None,
    audio: Path | None = None,
    graphs: Path | None = None,
) -> list[CheckResult]:
    if name in ("stdlib_lm", "text_corpus"):
        params = {**params, "root": str(stdlib)}
    if name == "text_files":
        params = {**params, "path": str(stdlib)}
    if name == "code_search":  # a small documented library beside the source tree
        library = stdlib.with_name(stdlib.name + "-code")
        if not library.exists():
            write_code_library(library)
        params = {**params, "root": str(library)}
    if name in CODE_TASKS:
        params = {**params, "root": str(code_tree(stdlib))}
    if name in NAME_TASKS:
        params = {**params, "root": str(names_tree(stdlib))}
    if name == "image_folder":
        assert images is not None
        params = {**params, "path": str(images)}
    if name == "audio_folder":
        assert audio is not None
        params = {**params, "path": str(audio)}
    if name == "graph_file":
        assert graphs is not None
        params = {**params, "path": str(graphs)}
    key = (name, json.dumps(params, sort_keys=True, default=str))
    if key not in _CONTRACT_RUNS:  # both contract tests read one run per task and params
        entry = registry.get("task", name)
        _CONTRACT_RUNS[key] = check_task(entry.cls, entry.make_params(params))
    return _CONTRACT_RUNS[key]


#: contract results of this session, by task name and parameters (the paths included)
_CONTRACT_RUNS: dict[tuple[str, str], list[CheckResult]] = {}


def _failures(results: list[CheckResult]) -> list[str]:
    return [f"{r.name}: {r.reason}" for r in results if not r.passed]


CASES = registered_cases()


@pytest.mark.parametrize(
    ("name", "params"),
    CASES,
    ids=[n + ("" if p is SMALL.get(n) else f"-{i}") for i, (n, p) in enumerate(CASES)],
)
def test_registered_task_keeps_the_contract(
    name: str,
    params: dict[str, Any],
    stdlib_tree: Path,
    image_tree: Path,
    audio_tree: Path,
    graph_file: Path,
) -> None:
    results = run_contract(name, params, stdlib_tree, image_tree, audio_tree, graph_file)
    assert [r.name for r in results] == list(CHECKS)
    assert not _failures(results), _failures(results)


def _ran(results: list[CheckResult]) -> set[str]:
    return {r.name for r in results if r.passed and not r.skipped}


def test_the_contract_applies_where_tasks_declare_it(
    stdlib_tree: Path, image_tree: Path, audio_tree: Path, graph_file: Path
) -> None:
    """The checks that depend on a declaration run where the task makes it."""
    examples = {"digits", "mnist1d", "shapes", "super_resolution", "pose_lifting", "table",
                "image_folder", "tones", "graph_atlas", "series_classification",
                "audio_folder", "graph_sbm", "graph_motifs", "graph_file"}  # fmt: skip
    no_sizes = {
        "two_hop",
        "kg_reasoning",
        "stdlib_lm",
        "text_corpus",
        "text_files",
        "code_search",
        "dtmf",
        "forecast",
        "defect_detection",
        "repair",
        "code_lm",
        "completion_with_tests",
        "method_name",
    } | examples
    with_majority = {"parity", "listops", "dyck", "graph_search", "two_hop", "kg_reasoning",
                     "mqar", "digits", "mnist1d", "shapes", "table", "image_folder",
                     "tones", "graph_atlas", "series_classification", "audio_folder",
                     "graph_sbm", "graph_motifs", "graph_file",
                     "defect_detection"}  # fmt: skip
    for name in registry.components("task"):
        ran = _ran(run_contract(name, SMALL.get(name, {}), stdlib_tree, image_tree, audio_tree,
                                graph_file))  # fmt: skip
        sized = not (name in no_sizes or name.startswith("icl_"))
        assert ("declared_sizes" in ran) == sized, name
        assert ("baselines_same_prompts" in ran) == (name in with_majority), name
        if name in with_majority | {"translation", "text_corpus"} or name.startswith("icl_"):
            assert "baselines_ignore_model" in ran, name
        if not name.startswith(("icl_", "stdlib", "text_")):
            assert "held_out" in ran, name


class _ThrowawayParams(LengthParams):
    pass


class _Leaky(SequenceTask):
    """A copy task whose training batches depend on how often it was asked (a counter),
    and whose ``ood`` set reuses training lengths: it breaks two checks."""

    params: _ThrowawayParams
    calls: ClassVar[int] = 0

    @property
    def alphabet(self) -> int:
        return 4

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return raw + 4, raw + 4

    def train_batch(self, step: int, batch_size: int) -> Batch:
        type(self).calls += 1
        return super().train_batch(step + type(self).calls, batch_size)

    def split_sizes(self, split: str) -> range | None:
        return self.lengths("train")


def test_a_task_registered_later_is_picked_up_and_its_breaches_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(registry._REGISTRY, "task", dict(registry._REGISTRY["task"]))
    register("task", "throwaway_leaky", paper=None, summary="a leaky task",
             params=_ThrowawayParams, caps=Capabilities())(_Leaky)  # fmt: skip
    cases = dict(registered_cases())
    assert "throwaway_leaky" in cases
    params = {"min_len": 3, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7}
    results = {r.name: r for r in run_contract("throwaway_leaky", params, tmp_path)}
    assert not results["train_deterministic"].passed
    assert "different batches" in results["train_deterministic"].reason
    assert not results["declared_sizes"].passed
    assert "'ood' batches have sizes [6, 7] outside range(3, 6)" in results["declared_sizes"].reason
    assert results["held_out"].passed and results["eval_fixed"].passed


def test_a_task_that_cannot_be_built_fails_every_check() -> None:
    class Broken(_Leaky):
        def __init__(self, params: Any, seed: int = 0) -> None:
            raise RuntimeError("no data")

    results = check_task(Broken, _ThrowawayParams())
    assert [r.passed for r in results] == [False] * len(CHECKS)
    assert all("RuntimeError: no data" in r.reason for r in results)


def test_baselines_that_depend_on_the_model_are_caught() -> None:
    class Peeking(_Leaky):
        def train_batch(self, step: int, batch_size: int) -> Batch:
            return SequenceTask.train_batch(self, step, batch_size)

        def split_sizes(self, split: str) -> range | None:
            return self.lengths(split)

        def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
            metrics = super().score(outputs, batches)
            peek = float(outputs[0].argmax(-1).sum())
            metrics["baselines"] = {"chance": {"exact_match": peek}}
            return metrics

    results = {r.name: r for r in check_task(Peeking, _ThrowawayParams())}
    assert not results["baselines_ignore_model"].passed
    assert "change with the model's outputs" in results["baselines_ignore_model"].reason
    assert results["train_deterministic"].passed and results["declared_sizes"].passed


@pytest.mark.parametrize(
    ("name", "fields", "bad", "message"),
    [
        ("copy", LENGTH_FIELDS, {"ood_min_len": 12},
         "ood_min_len=12 must be > max_len=12 (OOD lengths are longer than every training "
         "length)"),
        ("listops", DEPTH_FIELDS, {"max_depth": 3, "ood_min_depth": 3},
         "ood_min_depth=3 must be > max_depth=3"),
        ("graph_search", VERTEX_FIELDS, {"ood_max_vertices": 13},
         "ood_max_vertices=13 must be >= ood_min_vertices=14"),
        ("mqar", PAIR_FIELDS, {"max_pairs": 3}, "max_pairs=3 must be >= min_pairs=4"),
    ],
)  # fmt: skip
def test_one_helper_reads_and_orders_the_split_ranges(
    name: str, fields: tuple[str, ...], bad: dict[str, int], message: str
) -> None:
    entry = registry.get("task", name)
    task = entry.build(entry.make_params({}), 0)
    p = task.params
    expected = {
        "train": range(getattr(p, fields[0]), getattr(p, fields[1]) + 1),
        "ood": range(getattr(p, fields[2]), getattr(p, fields[3]) + 1),
    }
    for split in ("train", "id", "ood"):
        want = expected["ood" if split == "ood" else "train"]
        assert split_range(p, split, fields) == want == task.split_sizes(split)
    with pytest.raises(ValueError, match="unknown split 'test' \\(valid: train, id, ood\\)"):
        split_range(p, "test", fields)
    with pytest.raises(SpecError) as err:
        entry.make_params(bad)
    assert message in str(err.value)
