"""``table``: bundled tables and CSV files — types, encoding, the covariate split, scores,
baselines, and bad files refused with the line or column named."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.supervised import regression_metrics
from anyformer.tasks.table import Table


def build(seed: int = 0, **params: Any) -> Table:
    entry = registry.get("task", "table")
    return entry.build(entry.make_params(params), seed)  # type: ignore[return-value]


def write(tmp_path: Path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def perfect(task: Table, split: str) -> dict[str, Any]:
    batches = task.eval_set(split, 10_000)
    if task.kind == "classify":
        outs = [torch.nn.functional.one_hot(b.targets, task.n_classes).float() for b in batches]
    else:
        outs = [b.targets[:, None] for b in batches]
    return task.score(outs, batches)


@pytest.mark.parametrize(
    ("dataset", "columns", "kind", "classes"),
    [("iris", 4, "classify", 3), ("wine", 13, "classify", 3),
     ("breast_cancer", 30, "classify", 2), ("diabetes", 10, "regress", 0)],
)  # fmt: skip
def test_bundled_tables_split_by_a_covariate_and_encode_their_columns(
    dataset: str, columns: int, kind: str, classes: int
) -> None:
    task = build(dataset=dataset)
    assert (task.kind, task.n_classes, len(task.raw.columns)) == (kind, classes, columns)
    rows = len(task.raw.keys)
    parts = [set(task.train_rows), set(task.id_rows), set(task.ood_rows)]
    assert sum(map(len, parts)) == rows and set().union(*parts) == set(range(rows))
    # ood: exactly the rows above the 0.8 quantile of the first column
    col = task.raw.numbers[:, 0]
    assert set(np.flatnonzero(col > np.quantile(col, 0.8))) == parts[2]
    assert task.shift_name == task.raw.columns[0]
    # standardised with the training rows
    train = task.x[task.train_rows]
    assert np.allclose(train.mean(0), 0, atol=1e-5) and np.allclose(train.std(0), 1, atol=1e-4)
    assert task.model_io() == {
        "input_shape": [columns],
        "embedder": {"name": "features", "categories": [0] * columns},
        "head": "classify" if kind == "classify" else "regress",
        "n_outputs": classes if kind == "classify" else 1,
    }
    assert task.max_seq_len() == columns + 1
    batch = task.train_batch(0, 8)
    assert batch.inputs.shape == (8, columns) and batch.loss_mask.shape == (8,)
    assert batches_equal(batch, build(dataset=dataset).train_batch(0, 8))
    assert not batches_equal(batch, build(1, dataset=dataset).train_batch(0, 8))


def test_table_scores_and_baselines() -> None:
    cancer = perfect(build(dataset="breast_cancer"), "id")
    assert cancer["accuracy"] == 1.0
    assert cancer["baselines"]["linear"]["accuracy"] >= 0.93
    assert cancer["baselines"]["hgb"]["accuracy"] >= 0.9
    assert cancer["baselines"]["majority"]["accuracy"] < 0.9
    diabetes = build(dataset="diabetes")
    scores = perfect(diabetes, "id")
    assert scores["mse"] == 0.0 and scores["rmse"] == 0.0
    base = scores["baselines"]
    assert base["linear"]["mse"] < base["mean"]["mse"] and 0.8 < base["mean"]["mse"] < 1.3
    # known errors: predicting target + 0.5 everywhere
    batches = diabetes.eval_set("id", 1000)
    out = diabetes.score([b.targets + 0.5 for b in batches], batches)
    assert out["mse"] == pytest.approx(0.25) and out["mae"] == pytest.approx(0.5)
    assert regression_metrics(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == {
        "mse": 5.0, "mae": 2.0, "rmse": 5.0**0.5}  # fmt: skip


def test_csv_columns_are_inferred_overridable_and_missing_values_encoded(tmp_path: Path) -> None:
    lines = ["size,colour,code,label,w"]
    for i in range(40):
        colour = ["red", "blue", ""][i % 3]
        size = "NA" if i == 5 else str(i)
        lines.append(f"{size},{colour},{i % 4},{'yes' if i % 2 else 'no'},{i * 0.37:.2f}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    task = build(path=path, target="label")
    assert task.kind == "classify" and task.raw.classes == ("no", "yes")
    assert task.raw.columns == ("size", "colour", "code", "w")
    assert task.raw.categories == (0, 2, 0, 0)  # colour: blue, red; code numerical
    x = task.x
    assert np.isnan(x[5, 0])  # a missing number stays NaN
    assert x[0, 1] == 1.0 and x[1, 1] == 0.0 and x[2, 1] == 2.0  # red, blue, missing = K
    forced = build(path=path, target="label", categorical=["code"])
    assert forced.raw.categories == (0, 2, 4, 0)
    assert forced.model_io()["embedder"] == {"name": "features", "categories": [0, 2, 4, 0]}
    # the shift column must be numerical
    with pytest.raises(SpecError, match="task.shift_column='colour' is categorical"):
        build(path=path, target="label", shift_column="colour")
    # a numeric target of few integers is classified, else regressed
    assert build(path=path, target="code").kind == "classify"
    assert build(path=path, target="w").kind == "regress"
    with pytest.raises(SpecError, match="line 7: the target column 'size' is missing"):
        build(path=path, target="size")


def test_rows_with_equal_features_share_a_split(tmp_path: Path) -> None:
    lines = ["a,b,y"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(120)]
    task = build(path=write(tmp_path, "\n".join(lines)), target="y")
    split_of: dict[str, set[str]] = {}
    for name, rows in (("train", task.train_rows), ("id", task.id_rows), ("ood", task.ood_rows)):
        for r in rows:
            split_of.setdefault(str(task.raw.keys[r]), set()).add(name)
    assert all(len(s) == 1 for s in split_of.values())
    assert len(task.id_rows) > 0


@pytest.mark.parametrize(
    ("text", "params", "message"),
    [
        ("", {}, "the file is empty"),
        ("a,b,y\n", {}, "the header has no data rows"),
        ("a,b,y\n1,2,3\n4,5\n", {}, "line 3 has 2 fields, the header has 3"),
        ("a,b,c\n1,2,3\n", {}, "task.target='y' is not a column of .*columns: a, b, c"),
        ("a,b,y\n1,2,3\n1,2,\n", {}, "line 3: the target column 'y' is missing"),
        ("a,b,y\n1,2,3\n1,2,x\n", {"kind": "regress"},
         "line 3: the target column 'y' holds 'x', not a number"),
        ("a,b,y\n1,2,3\n1,q,4\n", {"numerical": ["b"]},
         "line 3: column 'b' holds 'q', not a number"),
        ("a,a,y\n1,2,3\n", {}, "column 'a' appears twice"),
        ("a,b,y\n1,2,3\n", {"categorical": ["z"]}, "task.categorical: 'z' is not a feature"),
        ("a,b,y\n" + "1,2,3\n" * 5, {"max_rows": 4}, "more than task.max_rows=4 data rows"),
    ],
)  # fmt: skip
def test_bad_csv_files_are_refused_naming_the_line_or_column(
    tmp_path: Path, text: str, params: dict[str, Any], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=message):
        build(path=path, target="y", **params)


def test_unreadable_missing_and_odd_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = write(tmp_path, "a,y\n" + "1,2\n" * 50, "big.csv")
    monkeypatch.setattr("anyformer.tasks.csv_table.MAX_BYTES", 100)
    with pytest.raises(SpecError, match="204 bytes, more than the 100 a table may have"):
        build(path=big, target="y")
    monkeypatch.undo()
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"a,y\n\xff\xfe\x00,1\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        build(path=str(binary), target="y")
    with pytest.raises(SpecError, match="no such file"):
        build(path=str(tmp_path / "none.csv"), target="y")
    with pytest.raises(SpecError, match="not a regular file"):
        build(path=str(tmp_path), target="y")
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked.csv"
        locked.write_text("a,y\n1,2\n")
        locked.chmod(0)
        with pytest.raises(SpecError, match="cannot be read"):
            build(path=str(locked), target="y")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"path": "x.csv"}, "path and target go together"),
        ({"dataset": "iris", "path": "x.csv", "target": "y"}, "not both"),
        ({"categorical": ["a"]}, "override the column types of a CSV"),
        ({"dataset": "zoo"}, "dataset"),
    ],
)  # fmt: skip
def test_bad_table_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        registry.get("task", "table").make_params(params)


def test_a_bundled_table_refuses_the_other_kind() -> None:
    with pytest.raises(SpecError, match="task.kind='classify' does not fit dataset 'diabetes'"):
        build(dataset="diabetes", kind="classify")


@pytest.mark.slow
def test_the_cli_exits_2_on_a_bad_csv(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    bad = write(tmp_path, "a,b,y\n1,2,3\n4,5\n")
    spec.write_text(
        "name: t\ntask:\n  name: table\n  path: " + bad + "\n  target: y\n", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "anyformer", "run", str(spec), "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "line 3 has 2 fields, the header has 3" in done.stderr
    assert "Traceback" not in done.stderr
