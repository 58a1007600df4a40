"""stdlib_lm: deterministic module splits (disjoint, test suites out of distribution),
windows that decode back to the source, reproducible batches, and its metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.text import (
    StdlibLM,
    module_paths,
    module_split,
    split_stream,
    stdlib_root,
)

SEQ = 32


def _tree(root: Path) -> dict[str, str]:
    files = {f"pkg{i}/mod{j}.py": f"def f_{i}_{j}(x):\n    return x + {i * j}  # é\n" * 3
             for i in range(8) for j in range(6)}  # fmt: skip
    files["test/test_pkg.py"] = "import unittest\n\nclass T(unittest.TestCase):\n    pass\n" * 4
    files["pkg0/tests/test_mod.py"] = "assert 1 + 1 == 2\n" * 10
    files["site-packages/other/x.py"] = "skipped = True\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return files


def _task(root: Path, seed: int = 0, **params: object) -> StdlibLM:
    entry = registry.get("task", "stdlib_lm")
    return entry.cls(
        entry.make_params({"root": str(root), "seq_len": SEQ, "val_fraction": 0.2, **params}),
        seed,
    )


def test_splits_are_disjoint_by_module_and_test_suites_are_ood(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    task = _task(tmp_path)
    seen = {
        split: set(split_stream(task.root, split, 0.2, 0.05)[1])
        for split in ("train", "id", "test", "ood")
    }
    names = list(seen)
    for a in names:
        for b in names:
            assert a == b or not seen[a] & seen[b]
    expected = {p for p in files if not p.startswith("site-packages")}
    assert set().union(*seen.values()) == expected
    assert seen["ood"] == {"test/test_pkg.py", "pkg0/tests/test_mod.py"}
    assert seen["id"] and seen["train"]
    # membership is a function of the path alone: the seed does not move modules
    assert set(_task(tmp_path, seed=5).stream("id")[1]) == seen["id"]


def test_windows_decode_back_to_the_source(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    task = _task(tmp_path)
    sources = [files[p] for p in task.stream("train")[1]]
    batch = task.train_batch(0, 8)
    assert batch.inputs.shape == (8, SEQ) and batch.loss_mask.all()
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])  # targets = next byte
    for row in torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1).tolist():
        for piece in bytes(row).split(b"\x00"):  # 0 separates modules
            text = piece.decode("utf-8", errors="ignore")  # a window may cut a character
            assert any(text in src for src in sources)


def test_batches_are_deterministic_and_eval_sets_fixed(tmp_path: Path) -> None:
    _tree(tmp_path)
    a, b = _task(tmp_path), _task(tmp_path)
    assert torch.equal(a.train_batch(3, 4).inputs, b.train_batch(3, 4).inputs)
    assert not torch.equal(a.train_batch(3, 4).inputs, a.train_batch(4, 4).inputs)
    assert not torch.equal(a.train_batch(3, 4).inputs, _task(tmp_path, 1).train_batch(3, 4).inputs)
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 20), _task(tmp_path, 9).make_eval_set(split, 20)
        assert all(torch.equal(x.inputs, y.inputs) for x, y in zip(ea, eb))
    assert a.model_io()["vocab_size"] == 256 and a.max_seq_len() == SEQ


def test_metrics_are_bits_per_byte_and_accuracy(tmp_path: Path) -> None:
    _tree(tmp_path)
    task = _task(tmp_path)
    batches = task.make_eval_set("id", 10)
    uniform = [torch.zeros(*b.inputs.shape, 256) for b in batches]
    assert task.score(uniform, batches)["bits_per_byte"] == pytest.approx(8.0)
    perfect = [torch.nn.functional.one_hot(b.targets, 256).float() * 100 for b in batches]
    scores = task.score(perfect, batches)
    assert scores["accuracy"] == 1.0 and scores["bits_per_byte"] < 1e-6
    got = task.evaluate(lambda b: torch.zeros(*b.inputs.shape, 256), "id", 10, _ce)
    assert got["loss"] == pytest.approx(math.log(256))


def _ce(out: torch.Tensor, batch: object) -> torch.Tensor:
    targets = batch.targets  # type: ignore[attr-defined]
    return torch.nn.functional.cross_entropy(out.reshape(-1, 256), targets.reshape(-1))


def test_bad_parameters_are_refused(tmp_path: Path) -> None:
    entry = registry.get("task", "stdlib_lm")
    with pytest.raises(SpecError, match="must be < 1"):
        entry.make_params({"val_fraction": 0.6, "test_fraction": 0.5})
    _tree(tmp_path)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        _task(tmp_path, seq_len=100_000).train_batch(0, 1)


def test_the_real_standard_library_splits() -> None:
    paths = module_paths(stdlib_root())
    assert len(paths) > 300 and "json/decoder.py" in paths
    splits = {p: module_split(p, 0.05, 0.05) for p in paths}
    assert splits["os.py"] in ("train", "id", "test")
    assert all(splits[p] == "ood" for p in paths if p.startswith("test/"))
    held_out = sum(splits[p] in ("id", "test") for p in paths)
    library = sum(splits[p] != "ood" for p in paths)
    assert 0.04 < held_out / library < 0.2
