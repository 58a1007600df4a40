"""``series_classification`` and its ``.ts`` reader: a handwritten file read exactly,
refusals naming the file and line, the archive's published 1-NN accuracy on GunPoint,
padding with the length indicator, and the ood transforms
(a model learning GunPoint: ``test_tasks_learn.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.series_classification import (
    OneNearestNeighbour,
    SeriesClassification,
    SeriesClassificationParams,
    delay,
    fill_missing,
)
from anyformer.tasks.ts_format import BUNDLED, parse_ts

TINY = """# a comment
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1.0,2.0,3.0:4.0,5.0,6.0:up
-1.5,?,0.25:7,8,9:down
1e1,2E-1:0,0:up
"""


def test_reader_reads_a_handwritten_file_exactly() -> None:
    data = parse_ts(TINY, "tiny.ts")
    assert data.classes == ("up", "down")
    assert data.labels == ("up", "down", "up")
    assert data.dimensions == 2
    assert data.lengths.tolist() == [3, 3, 2]
    np.testing.assert_array_equal(data.series[0], [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]])
    assert data.series[1][0, 0] == -1.5 and math.isnan(data.series[1][1, 0])
    assert data.series[1][2].tolist() == [0.25, 9.0]
    np.testing.assert_array_equal(data.series[2], [[10.0, 0.0], [0.2, 0.0]])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("@classLabel true a b\n@data\n1,2:c\n", "line 3: class label 'c'"),
        ("@classLabel true a\n@data\n1,x:a\n", "line 3: 'x' is not a number"),
        ("@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", "line 4: 1 dimensions, expected 2"),
        ("@classLabel true a\n@data\n1,2\n", "line 3: expected values then ':'"),
        ("@classLabel true a\n", "no @data line"),
        ("@classLabel true a\n@data\n", "no cases"),
        ("@classLabel false\n@data\n1:2\n", "not a classification file"),
        ("@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n", "@timeStamps true"),
        ("1,2:a\n", "expected a header line"),
        ("@classLabel true a\n@data\n1,inf:a\n", "infinite"),
    ],
)
def test_reader_refuses_bad_files_naming_file_and_line(text: str, says: str) -> None:
    with pytest.raises(SpecError, match="bad.ts") as err:
        parse_ts(text, "bad.ts")
    assert says in str(err.value)


def test_missing_values_are_interpolated_and_delay_repeats_the_first_value() -> None:
    x = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, 3.0], [6.0, np.nan]])
    np.testing.assert_array_equal(fill_missing(x), [[2, 1], [2, 2], [4, 3], [6, 3]])
    assert fill_missing(np.full((2, 1), np.nan)).tolist() == [[0.0], [0.0]]
    np.testing.assert_array_equal(delay(np.arange(5.0)[:, None], 2)[:, 0], [0, 0, 0, 1, 2])


def _write(folder: Path, name: str, train: str, test: str) -> str:
    (folder / f"{name}_TRAIN.ts").write_text(train)
    (folder / f"{name}_TEST.ts").write_text(test)
    return str(folder / name)


def test_a_users_ragged_files_are_padded_with_a_length_indicator(tmp_path: Path) -> None:
    head = "@dimensions 1\n@classLabel true a b\n@data\n"
    prefix = _write(tmp_path, "Mine", head + "1,2,3:a\n5,5:b\n", head + "1,2,3,4:a\n")
    task = SeriesClassification(SeriesClassificationParams(path=prefix))
    assert task.model_io()["input_shape"] == [4, 2] and task.ragged
    mean, std = np.mean([1, 2, 3, 5, 5]), np.std([1, 2, 3, 5, 5])
    z = (np.array([5.0, 5.0]) - mean) / std
    np.testing.assert_allclose(task.x_train[1, :, 0], [*z, 0, 0], rtol=1e-6)
    assert task.x_train[1, :, 1].tolist() == [1, 1, 0, 0]
    assert task.x_test[0, :, 1].tolist() == [1, 1, 1, 1]
    # nn1 compares the values only (the indicator left out)
    assert task.features(task.x_train).shape == (2, 4)


def test_user_path_refusals_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="Nope_TRAIN.ts"):
        SeriesClassification(SeriesClassificationParams(path=str(tmp_path / "Nope")))
    head = "@classLabel true a b\n@data\n"
    prefix = _write(tmp_path, "Two", head + "1,2:a\n", "@classLabel true a c\n@data\n1,2:c\n")
    with pytest.raises(SpecError, match=r"TEST labels \['c'\]"):
        SeriesClassification(SeriesClassificationParams(path=prefix))


def test_missing_sktime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyformer.tasks.ts_format as ts

    monkeypatch.setattr(ts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match="'sktime' package"):
        ts.bundled_prefix("GunPoint")


def test_params_list_exactly_the_bundled_sets() -> None:
    field = SeriesClassificationParams.model_fields["dataset"].annotation
    assert set(field.__args__) == set(BUNDLED)  # type: ignore[union-attr]


def test_one_nearest_neighbour_picks_the_closest_and_the_first_of_ties() -> None:
    nn = OneNearestNeighbour().fit(np.array([[0.0, 0], [1, 1], [0, 0]]), np.array([3, 4, 5]))
    assert nn.predict(np.array([[0.9, 1.2], [0.1, -0.1]])).tolist() == [4, 3]


def _task(**params: object) -> SeriesClassification:
    pytest.importorskip("sktime")
    entry = registry.get("task", "series_classification")
    return entry.build(entry.make_params(params), 0)


def test_gunpoint_nn1_equals_the_archives_published_accuracy() -> None:
    """UCR archive: GunPoint, Euclidean 1-NN test error 0.087 (150 TEST, 50 TRAIN)."""
    task = _task(dataset="GunPoint")
    assert len(task.y_train) == 50 and len(task.y_test) == 150
    batches = task.make_eval_set("id", 1000)
    scores = task.score(task.baseline_outputs("majority", batches), batches)
    assert scores["examples"] == 150
    assert round(scores["baselines"]["nn1"]["accuracy"], 3) == 0.913
    assert scores["baselines"]["majority"]["accuracy"] == pytest.approx(scores["accuracy"])


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_set_loads_with_its_official_split(name: str) -> None:
    sizes = {"ArrowHead": (36, 175, 251, 1), "GunPoint": (50, 150, 150, 1),
             "ItalyPowerDemand": (67, 1029, 24, 1), "BasicMotions": (40, 40, 100, 6),
             "JapaneseVowels": (270, 370, 29, 13)}  # fmt: skip
    task = _task(dataset=name)
    assert (len(task.y_train), len(task.y_test), *task.model_io()["input_shape"]) == sizes[name]
    assert np.isfinite(task.x_train).all() and np.isfinite(task.x_ood).all()


@pytest.mark.parametrize("ood", ["noise", "shift"])
def test_ood_moves_every_test_series_and_keeps_the_labels(ood: str) -> None:
    task = _task(dataset="JapaneseVowels", ood=ood)
    x, y = task.eval_examples("ood", 10_000)
    x_id, y_id = task.eval_examples("id", 10_000)
    assert len(y) == len(y_id) == 370
    # ood rows are the id rows transformed: the indicator (last variate) is unchanged
    assert sorted(map(bytes, x[..., -1])) == sorted(map(bytes, x_id[..., -1]))
    moved = np.abs(task.x_ood[..., :-1] - task.x_test[..., :-1]).sum((1, 2))
    assert (moved > 0).mean() > 0.95
