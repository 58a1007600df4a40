"""Every task's data, pinned: a digest of a few training batches and of both evaluation
sets per configuration. A refactor of the task code must leave every digest unchanged
(a change of the data itself must update the digest here, on purpose)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from code_library import CODE_TASKS, NAME_TASKS, code_tree, names_tree, write_code_library

from anyformer import registry
from anyformer.tasks.base import Batch, Task

#: (task, parameters) pairs covering every registered task and its main modes.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("copy", {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7}),
    ("reverse", {"min_len": 3, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8}),
    ("sort", {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7}),
    ("sort", {"max_len": 6, "ood_min_len": 7, "ood_max_len": 8, "hint": "successor"}),
    ("sort", {"max_len": 6, "ood_min_len": 7, "ood_max_len": 8, "hint": "rank"}),
    ("parity", {"min_len": 2, "max_len": 6, "ood_min_len": 7, "ood_max_len": 9}),
    ("addition", {"max_len": 3, "ood_min_len": 4, "ood_max_len": 4}),
    ("addition", {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3, "format": "reversed"}),
    ("selective_copy", {"max_len": 10, "ood_min_len": 11, "ood_max_len": 12}),
    ("multiplication", {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3}),
    ("multiplication", {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3, "format": "scratchpad"}),
    ("dyck", {"max_len": 10, "ood_min_len": 11, "ood_max_len": 14}),
    ("dyck", {"max_len": 10, "ood_min_len": 11, "ood_max_len": 14, "mode": "recognize"}),
    ("listops", {"max_depth": 2, "ood_min_depth": 3, "ood_max_depth": 3}),
    ("graph_search", {"min_vertices": 6, "max_vertices": 7, "ood_min_vertices": 8,
                      "ood_max_vertices": 9}),
    ("graph_search", {"query": "connected", "min_vertices": 6, "max_vertices": 7,
                      "ood_min_vertices": 8, "ood_max_vertices": 9, "trace": "bfs"}),
    ("graph_search", {"min_vertices": 6, "max_vertices": 7, "ood_min_vertices": 8,
                      "ood_max_vertices": 9, "trace": "dfs"}),
    ("two_hop", {"n_entities": 8, "n_functions": 3}),
    ("kg_reasoning", {"n_entities": 12, "n_relations": 2, "ood_fraction": 0.25,
                      "inferred_ratio": 1.0}),
    ("kg_reasoning", {"reasoning": "comparison", "n_entities": 12, "n_relations": 2,
                      "ood_fraction": 0.25, "inferred_ratio": 1.0}),
    ("mqar", {"n_keys": 16, "n_values": 8, "min_pairs": 2, "max_pairs": 4, "ood_min_pairs": 5,
              "ood_max_pairs": 6, "n_queries": 2}),
    ("mqar", {"n_keys": 16, "n_values": 8, "min_pairs": 2, "max_pairs": 4, "ood_min_pairs": 5,
              "ood_max_pairs": 6, "n_queries": 2, "seq_len": 24}),
    ("icl_linear_regression", {"dims": 3, "n_points": 6}),
    ("icl_linear_regression", {"dims": 3, "n_points": 6, "ood": "task", "tokens": "paired"}),
    ("icl_boolean", {"n_bits": 4, "n_points": 6}),
    ("icl_ar", {"n_points": 8}),
    ("icl_mixture", {"dims": 2, "n_points": 6}),
    ("icl_uncertainty", {"dims": 2, "n_points": 6}),
    ("stdlib_lm", {"seq_len": 16, "val_fraction": 0.3}),
    ("digits", {}),
    ("digits", {"ood": "shift"}),
    ("mnist1d", {}),
    ("shapes", {"size": 8, "max_objects": 2, "ood_min_objects": 3, "ood_max_objects": 3}),
    ("shapes", {"output": "count", "count_as": "regress"}),
    ("super_resolution", {}),
    ("pose_lifting", {"frames": 2}),
    ("table", {}),
    ("forecast", {"length": 300, "lookback": 8, "horizon": 2}),
    ("forecast", {"data": "seasonal", "length": 300, "lookback": 8, "horizon": 2}),
    ("forecast", {"data": "macrodata", "lookback": 8, "horizon": 2}),
    ("table", {"dataset": "diabetes", "shift_column": "bmi"}),
    ("image_folder", {"size": 8}),
    ("reverse", {"min_len": 3, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8,
                 "form": "encoder_decoder"}),
    ("copy", {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7,
              "form": "prefix_lm"}),
    ("translation", {}),
    ("translation", {"max_depth": 1, "ood_min_depth": 2, "ood_max_depth": 3,
                     "form": "encoder_decoder"}),
    ("text_files", {"seq_len": 16, "val_fraction": 0.3}),
    ("code_search", {"tokenizer": "bytes", "query_len": 16, "code_len": 32, "val_fraction": 0.25,
                     "min_query_chars": 8}),
    ("defect_detection", {"tokenizer": "bytes", "code_len": 96, "val_fraction": 0.3}),
    ("defect_detection", {"tokenizer": "bytes", "code_len": 96, "val_fraction": 0.3,
                          "output": "kind"}),
    ("repair", {"tokenizer": "bytes", "code_len": 96, "val_fraction": 0.3, "context": True}),
    ("code_lm", {"seq_len": 32, "val_fraction": 0.3}),
    ("completion_with_tests", {}),
    ("method_name", {"code_len": 64, "val_fraction": 0.3, "n_classes": 3}),
    ("text_corpus", {"seq_len": 16, "ood_fraction": 0.3}),
    ("text_corpus", {"seq_len": 16, "ood_fraction": 0.3, "source": True}),
    ("tones", {}),
    ("tones", {"ood": "pitch"}),
    ("dtmf", {}),
    ("dtmf", {"ood": "snr"}),
    # lap_pe off: eigenvectors of repeated eigenvalues depend on the LAPACK build
    ("graph_atlas", {"target": "triangles", "lap_pe": 0}),
    ("series_classification", {}),
    ("series_classification", {"dataset": "JapaneseVowels", "ood": "shift"}),
    ("audio_folder", {"duration": 0.2}),
    # lap_pe off for the same reason
    ("graph_sbm", {"n_train": 16, "n_eval": 8, "lap_pe": 0, "rwse": 4}),
    ("graph_sbm", {"n_train": 16, "n_eval": 8, "lap_pe": 0, "mode": "pattern", "ood": "pq"}),
    ("graph_motifs", {"n_train": 16, "n_eval": 8, "lap_pe": 0}),
    ("graph_file", {"lap_pe": 0, "level": "node", "target": "end"}),
]  # fmt: skip

#: sha256 (first 16 hex digits) of each case's batches; see :func:`data_digest`.
DIGESTS: dict[str, str] = {
    "copy,max_len=5,min_len=2,ood_max_len=7,ood_min_len=6": "68578a055c6a5752",
    "reverse,max_len=6,min_len=3,ood_max_len=8,ood_min_len=7": "8c7fdf545f860b4b",
    "sort,max_len=5,min_len=2,ood_max_len=7,ood_min_len=6": "d3b86654e87b3d3f",
    "sort,hint=successor,max_len=6,ood_max_len=8,ood_min_len=7": "c91bfe05c06b057f",
    "sort,hint=rank,max_len=6,ood_max_len=8,ood_min_len=7": "4400908f13faffb6",
    "parity,max_len=6,min_len=2,ood_max_len=9,ood_min_len=7": "0d59fd4b0f3dbe07",
    "addition,max_len=3,ood_max_len=4,ood_min_len=4": "b9f686842e688db2",
    "addition,format=reversed,max_len=2,ood_max_len=3,ood_min_len=3": "9dd5437b17e9daad",
    "selective_copy,max_len=10,ood_max_len=12,ood_min_len=11": "c8fdafe63755853f",
    "multiplication,max_len=2,ood_max_len=3,ood_min_len=3": "794e6478b870cb32",
    "multiplication,format=scratchpad,max_len=2,ood_max_len=3,ood_min_len=3": "7d90229766b60a51",
    "dyck,max_len=10,ood_max_len=14,ood_min_len=11": "b319e0db930eae8c",
    "dyck,max_len=10,mode=recognize,ood_max_len=14,ood_min_len=11": "5cf3466b234ccf43",
    "listops,max_depth=2,ood_max_depth=3,ood_min_depth=3": "fe4dae3ff9e94b20",
    "graph_search,max_vertices=7,min_vertices=6,ood_max_vertices=9,ood_min_vertices=8": "8132a811e881e58c",
    "graph_search,max_vertices=7,min_vertices=6,ood_max_vertices=9,ood_min_vertices=8,query=connected,trace=bfs": "f2e6a3ce4001ceee",
    "graph_search,max_vertices=7,min_vertices=6,ood_max_vertices=9,ood_min_vertices=8,trace=dfs": "43b379b066e0a97c",
    "two_hop,n_entities=8,n_functions=3": "07a3e084ff33af54",
    "kg_reasoning,inferred_ratio=1.0,n_entities=12,n_relations=2,ood_fraction=0.25": "7c96d1efb58a044c",
    "kg_reasoning,inferred_ratio=1.0,n_entities=12,n_relations=2,ood_fraction=0.25,reasoning=comparison": "8ad049cdae924716",
    "mqar,max_pairs=4,min_pairs=2,n_keys=16,n_queries=2,n_values=8,ood_max_pairs=6,ood_min_pairs=5": "11fe2b0eeb492acb",
    "mqar,max_pairs=4,min_pairs=2,n_keys=16,n_queries=2,n_values=8,ood_max_pairs=6,ood_min_pairs=5,seq_len=24": "3ec2b9ce0bae83df",
    "icl_linear_regression,dims=3,n_points=6": "80203179705d7356",
    "icl_linear_regression,dims=3,n_points=6,ood=task,tokens=paired": "b616edf5cb411df5",
    "icl_boolean,n_bits=4,n_points=6": "c753f28716ae6509",
    "icl_ar,n_points=8": "a98085a617399b67",
    "icl_mixture,dims=2,n_points=6": "e1957bd7c6592d86",
    "icl_uncertainty,dims=2,n_points=6": "0532cedcd23a31e3",
    "stdlib_lm,seq_len=16,val_fraction=0.3": "440c0b361c110e60",
    "digits": "0cbc9850c627ffdd",
    "digits,ood=shift": "02f5da930793392c",
    "mnist1d": "d3b69b04b8af94e0",
    "shapes,max_objects=2,ood_max_objects=3,ood_min_objects=3,size=8": "146ad2e98a84570d",
    "shapes,count_as=regress,output=count": "443e3677e500ca1a",
    "super_resolution": "74ed2793519ab9a7",
    "pose_lifting,frames=2": "31bbf8ce8603777c",
    "table": "70596dfd40b08db5",
    "forecast,horizon=2,length=300,lookback=8": "9a0a3f380225fdc0",
    "forecast,data=seasonal,horizon=2,length=300,lookback=8": "579a1ef73f564b0e",
    "forecast,data=macrodata,horizon=2,lookback=8": "4e8f77bc8cc2d661",
    "table,dataset=diabetes,shift_column=bmi": "39724f0b34986acc",
    "image_folder,size=8": "388cdabed5ca496a",
    "reverse,form=encoder_decoder,max_len=6,min_len=3,ood_max_len=8,ood_min_len=7": "286d304fe90fe485",
    "copy,form=prefix_lm,max_len=5,min_len=2,ood_max_len=7,ood_min_len=6": "9ca7e53c71324104",
    "translation": "c8f8022f50ab2421",
    "translation,form=encoder_decoder,max_depth=1,ood_max_depth=3,ood_min_depth=2": "2d83cd9277e366ef",
    "text_files,seq_len=16,val_fraction=0.3": "d3618e7ddb447103",
    "code_search,code_len=32,min_query_chars=8,query_len=16,tokenizer=bytes,val_fraction=0.25": (
        "e8a8f092441324ce"
    ),
    "defect_detection,code_len=96,tokenizer=bytes,val_fraction=0.3": "6e9f0c8fd7db12c1",
    "defect_detection,code_len=96,output=kind,tokenizer=bytes,val_fraction=0.3": "d3568e40fb868203",
    "repair,code_len=96,context=True,tokenizer=bytes,val_fraction=0.3": "f1382b298f43c1b6",
    "code_lm,seq_len=32,val_fraction=0.3": "782ba166f4de487d",
    "completion_with_tests": "328da600114f7f20",
    "method_name,code_len=64,n_classes=3,val_fraction=0.3": "5bc784822d896b26",
    "text_corpus,ood_fraction=0.3,seq_len=16": "bcc287167dee369f",
    "text_corpus,ood_fraction=0.3,seq_len=16,source=True": "15105b1ba9516c88",
    "tones": "8dce57fa3496b788",
    "tones,ood=pitch": "2322670662ea2bf1",
    "dtmf": "2a1cb8c99a8bee5a",
    "dtmf,ood=snr": "61413b5eb7362e92",
    "graph_atlas,lap_pe=0,target=triangles": "7b4dc5f2f834c48b",
    "series_classification": "06db843c6fe65a19",
    "series_classification,dataset=JapaneseVowels,ood=shift": "165e6367953e09aa",
    "audio_folder,duration=0.2": "9d7c0fea87fff1ca",
    "graph_sbm,lap_pe=0,n_eval=8,n_train=16,rwse=4": "a055deeff271f4ac",
    "graph_sbm,lap_pe=0,mode=pattern,n_eval=8,n_train=16,ood=pq": "13f6dadc40d2b4a3",
    "graph_motifs,lap_pe=0,n_eval=8,n_train=16": "9f897a40b7d70646",
    "graph_file,lap_pe=0,level=node,target=end": "6a1f396235408f04",
}  # fmt: skip


def _case_id(name: str, params: dict[str, Any]) -> str:
    return name + "".join(f",{k}={v}" for k, v in sorted(params.items()))


def build(name: str, params: dict[str, Any], seed: int = 0) -> Task:
    entry = registry.get("task", name)
    return entry.build(entry.make_params(params), seed)


def _feed(h: Any, batch: Batch) -> None:
    def tensor(t: torch.Tensor | None) -> None:
        if t is None:
            h.update(b"none")
            return
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())

    for t in (batch.inputs, batch.targets, batch.loss_mask, batch.padding_mask):
        tensor(t)
    h.update(repr(batch.group).encode())
    for key in sorted(batch.extras):
        h.update(key.encode())
        tensor(batch.extras[key])


def data_digest(task: Task) -> str:
    """Digest of the model fields, training batches of steps 0, 1 and 7 (8 rows) and the
    ``id`` and ``ood`` evaluation sets of size 16."""
    h = hashlib.sha256()
    h.update(json.dumps(task.model_io(), sort_keys=True).encode())
    h.update(str(task.max_seq_len()).encode())
    for step in (0, 1, 7):
        _feed(h, task.train_batch(step, 8))
    for split in ("id", "ood"):
        for batch in task.make_eval_set(split, 16):
            _feed(h, batch)
    return h.hexdigest()[:16]


@pytest.mark.parametrize(("name", "params"), CASES, ids=[_case_id(n, p) for n, p in CASES])
def test_task_data_is_pinned(
    name: str,
    params: dict[str, Any],
    stdlib_tree: Path,
    image_tree: Path,
    audio_tree: Path,
    graph_file: Path,
) -> None:
    if name == "series_classification":
        pytest.importorskip("sktime")
    if name in ("stdlib_lm", "text_corpus"):
        params = {**params, "root": str(stdlib_tree)}
    if name == "text_files":
        params = {**params, "path": str(stdlib_tree)}
    if name == "code_search":
        params = {**params, "root": str(write_code_library(stdlib_tree.with_name("code-lib")))}
    if name in CODE_TASKS:
        params = {**params, "root": str(code_tree(stdlib_tree))}
    if name in NAME_TASKS:
        params = {**params, "root": str(names_tree(stdlib_tree))}
    if name == "text_corpus" and sys.version_info[:2] != (3, 11):
        pytest.skip("the help topics (pydoc_data.topics) are pinned for Python 3.11")
    if name == "image_folder":
        params = {**params, "path": str(image_tree)}
    if name == "audio_folder":
        params = {**params, "path": str(audio_tree)}
    if name == "graph_file":
        params = {**params, "path": str(graph_file)}
    digest = data_digest(build(name, params))
    case = _case_id(name, {k: v for k, v in params.items() if k not in ("root", "path")})
    assert DIGESTS.get(case) == digest, f"{case}: data digest {digest}"


def test_every_registered_task_is_pinned() -> None:
    assert {n for n, _ in CASES} == set(registry.components("task"))
