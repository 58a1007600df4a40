"""method_name: labels are names' first words, the name never reaches the model, splits
keep evaluation code out of training, few-label cuts, metrics equal hand computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from code_library import write_names_library

from anyformer import registry
from anyformer.tasks.code_names import BLANK, MethodName, blanked, first_word


def build(root: Path, **params: object) -> MethodName:
    entry = registry.get("task", "method_name")
    base = {"root": str(root), "val_fraction": 0.3, "code_len": 64, "n_classes": 3}
    task = entry.build(entry.make_params({**base, **params}), 0)
    assert isinstance(task, MethodName)
    return task


@pytest.mark.parametrize(
    ("qualname", "word"),
    [("A.__init__", "__init__"), ("_get_value", "get"), ("A.getValue", "get"),
     ("isReady", "is"), ("__private", "private"), ("A.B.set", "set"), ("___", "")],
)  # fmt: skip
def test_first_word(qualname: str, word: str) -> None:
    assert first_word(qualname) == word


def test_blanking_hides_the_name_everywhere() -> None:
    code = "def is_ready(self, n):\n    return n <= 0 or self.is_ready(n - 1) or is_ready(n)\n"
    text = blanked(code, "is_ready")
    assert text is not None and "is_ready" not in text
    assert text.startswith(f"def {BLANK}(self, n):") and f"self.{BLANK}(n - 1)" in text
    assert blanked("x = 1\n", "x") is None  # not a function


def test_splits_labels_and_few_labels(tmp_path: Path) -> None:
    root = write_names_library(tmp_path)
    task = build(root)
    # 4 methods of each kind per module; is_* counts twice (is_<word> and is_ready)
    assert task.labels[0] == "is" and set(task.labels) <= {"is", "__init__", "get", "set"}
    trained = {e.code for e in task.examples["train"]}
    for split in ("train", "id", "ood"):
        rows = task.examples[split]
        assert rows and all(e.word in task.labels for e in rows)
        assert all(first_word(e.qualname) == e.word for e in rows)
        assert all(e.qualname.rsplit(".", 1)[-1] not in e.code for e in rows)
        if split != "train":
            assert not {e.code for e in rows} & trained
    few = build(root, train_functions=5)
    assert [e.code for e in few.examples["train"]] == [e.code for e in task.examples["train"][:5]]
    assert [e.code for e in few.examples["id"]] == [e.code for e in task.examples["id"]]


def test_score_equals_hand_computation(tmp_path: Path) -> None:
    task = build(write_names_library(tmp_path))
    batches = task.make_eval_set("id", 100)
    labels = torch.cat([b.targets for b in batches]).numpy()
    assert labels.shape[0] == len(task.examples["id"])
    # predict class 0 everywhere: accuracy = its share; macro F1 = its F1 / classes
    outputs = [torch.nn.functional.one_hot(torch.zeros_like(b.targets), 3).float()
               for b in batches]  # fmt: skip
    out = task.score(outputs, batches)
    share = float(np.mean(labels == 0))
    assert out["accuracy"] == pytest.approx(share)
    assert out["macro_f1"] == pytest.approx(2 * share / (1 + share) / 3)
    # perfect logits
    perfect = [torch.nn.functional.one_hot(b.targets, 3).float() for b in batches]
    assert task.score(perfect, batches)["accuracy"] == 1.0
    # baselines: majority predicts the most common training class
    counts = np.bincount([task.labels.index(e.word) for e in task.examples["train"]], minlength=3)
    expected = float(np.mean(labels == counts.argmax()))
    assert out["baselines"]["majority"]["accuracy"] == pytest.approx(expected)
    assert 0.0 <= out["baselines"]["bow_logreg"]["accuracy"] <= 1.0
