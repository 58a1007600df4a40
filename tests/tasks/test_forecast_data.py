"""``forecast`` on users' CSV files and sktime's bundled series: the same windows as the
generator a file was written from, linear interpolation, and every refusal through the
command line (exit 2, the message, no traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.tasks.forecast import Forecast, ForecastParams
from anyformer.tasks.forecast_data import read_series_csv

SMALL = {"length": 400, "lookback": 12, "horizon": 3, "variates": 2}


def write(tmp_path: Path, text: str, name: str = "s.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_csv_written_from_the_var_generator_gives_the_same_windows(tmp_path: Path) -> None:
    gen = Forecast(ForecastParams(**SMALL))
    lines = ["date,x,y,unused"]
    for i, (a, b) in enumerate(gen.raw):
        day = np.datetime64("2020-01-01") + np.timedelta64(i, "D")
        lines.append(f"{day},{float(a)!r},{float(b)!r},{i % 3}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    kw = {k: v for k, v in SMALL.items() if k not in ("length", "variates")}
    csv = Forecast(ForecastParams(data="csv", path=path, columns=["x", "y"], time="date", **kw))
    np.testing.assert_array_equal(csv.raw, gen.raw)
    for split in ("id", "ood"):
        for a, b in zip(gen.make_eval_set(split, 1), csv.make_eval_set(split, 1), strict=True):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert torch.equal(gen.train_batch(5, 16).inputs, csv.train_batch(5, 16).inputs)
    # without columns: every column but the time column, in the file's order
    assert read_series_csv(path, time="date").shape == (400, 3)


def test_missing_values_are_interpolated_linearly_or_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t,a,b\n1,1,10\n2,,\n3,3,NA\n4,4,40\n5,,50\n")
    out = read_series_csv(path, time="t")
    np.testing.assert_allclose(out, [[1, 10], [2, 20], [3, 30], [4, 40], [4, 50]])
    with pytest.raises(SpecError, match=r"line 3: column 'a' has a missing value"):
        read_series_csv(path, time="t", missing="refuse")


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("t,a\n1,1\n2,2\n", ["task.columns=[a,zz]"],
         "task.columns: 'zz' is not a column of .* \\(columns of the file: t, a\\)"),
        ("t,a\n1,1\n2,2\n", ["task.time=when"], "task.time='when' is not a column"),
        ("t,a\n1,1\n2,abc\n", ["task.time=t"], "line 3: column 'a' holds 'abc', not a finite number"),
        ("t,a\n1,1\n2,inf\n", [], "line 3: column 'a' holds 'inf', not a finite number"),
        ("t,a\n2020-01-02,1\n2020-01-01,2\n", ["task.time=t"],
         "line 3: time '2020-01-01' in column 't' is not after '2020-01-02' of line 2"),
        ("t,a\n1,1\nnoon,2\n", ["task.time=t"], "line 3: the time column 't' holds 'noon'"),
        ("", [], "the file is empty"),
        ("t,a\n" + "".join(f"{i},{i}\n" for i in range(20)), ["task.time=t"],
         "task.lookback=16 \\+ task.horizon=4 do not fit data='csv' .* of 20 steps"),
    ],
)  # fmt: skip
def test_the_cli_refuses_a_bad_csv_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, args: list[str], message: str
) -> None:
    path = write(tmp_path, text)
    argv = ["run", "series_quickstart", "task.data=csv", f"task.path={path}", *args]
    code = main([*argv, "train.steps=1", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(message, " ".join(err.split())), err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_path_is_for_csv_and_csv_needs_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data='csv' reads the file named by path"):
        ForecastParams(data="csv")
    with pytest.raises(ValueError, match="path='x.csv' is for data='csv'"):
        ForecastParams(path="x.csv")
    with pytest.raises(SpecError, match="not a regular file"):
        read_series_csv(str(tmp_path))
    with pytest.raises(SpecError, match="no such file"):
        read_series_csv(str(tmp_path / "none.csv"))


@pytest.mark.slow  # importing sktime.datasets takes seconds
def test_sktimes_series_load_with_their_seasons() -> None:
    pytest.importorskip("sktime")
    airline = Forecast(ForecastParams(data="airline", lookback=24, horizon=6))
    assert airline.raw.shape == (144, 1) and airline.period == 12
    assert airline.raw[0, 0] == 112.0  # January 1949
    assert "seasonal_naive" in airline.baseline_predictions(airline.make_eval_set("id", 1)[0], "id")
    shapes = {
        name: Forecast(ForecastParams(data=name, lookback=4, horizon=1)).raw.shape
        for name in ("lynx", "shampoo", "uschange", "longley")
    }
    assert shapes == {"lynx": (114, 1), "shampoo": (36, 1), "uschange": (187, 5),
                      "longley": (16, 6)}  # fmt: skip


def test_a_missing_sktime_is_a_spec_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from anyformer.tasks.forecast_data import load_sktime

    monkeypatch.setitem(sys.modules, "sktime", None)
    with pytest.raises(SpecError, match="needs the package sktime"):
        load_sktime("airline")
