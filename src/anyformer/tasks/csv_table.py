"""Reading tables for the ``table`` task: scikit-learn's bundled ones and CSV files.

A CSV file is read with :mod:`csv` (UTF-8, a header row, ``,`` between fields), at most
:data:`MAX_BYTES` bytes and ``max_rows`` data rows. Empty lines are skipped; a cell that
is empty or one of :data:`MISSING` is missing. A column is numerical when every present
value parses as a number, else categorical (``categorical``/``numerical`` override the
inference; a column forced numerical must parse). Categories are the sorted distinct
values of a column, coded ``0 .. K-1``; a missing one is ``K``.

The target column may not have missing values. Its kind: ``regress`` needs numbers;
``classify`` takes any values (classes in sorted order, numerically when they are
numbers); ``auto`` classifies a non-numeric target or one of at most
:data:`MAX_AUTO_CLASSES` distinct integers, and regresses any other.

Every problem — a file that is missing, unreadable, too large, not UTF-8 or empty; a
header without data; a row with another number of fields than the header; an unknown
or duplicated column; a missing or non-numeric target — raises
:class:`~anyformer.errors.SpecError` naming the file and the line or column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anyformer.errors import SpecError, did_you_mean

#: The largest CSV file read (bytes).
MAX_BYTES = 200_000_000
#: Cells read as missing values (besides the empty cell).
MISSING = frozenset({"na", "n/a", "nan", "null", "none", "?"})
#: ``kind='auto'`` classifies an integer target with at most this many distinct values.
MAX_AUTO_CLASSES = 20


@dataclass(frozen=True)
class RawTable:
    """A table before splitting: ``numbers`` float64 ``[N, columns]`` (numbers, NaN when
    missing, or category codes), ``categories`` (``K`` per column, 0 = numerical),
    ``keys`` (one string per row: its feature cells, equal for equal rows), ``target``
    float64 ``[N]`` (class index or value), ``classes`` (class names; empty when
    regressing) and ``kind``."""

    columns: tuple[str, ...]
    categories: tuple[int, ...]
    numbers: np.ndarray
    keys: np.ndarray
    target: np.ndarray
    target_name: str
    classes: tuple[str, ...]
    kind: str


def sklearn_table(name: str) -> RawTable:
    """One of scikit-learn's bundled tables (all columns numerical)."""
    from sklearn import datasets

    loader = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
    }[name]
    data = loader()
    x = np.asarray(data.data, dtype=np.float64)
    regress = name == "diabetes"
    classes = () if regress else tuple(str(c) for c in data.target_names)
    return RawTable(
        columns=tuple(str(c) for c in data.feature_names),
        categories=(0,) * x.shape[1],
        numbers=x,
        keys=np.array([row.tobytes().hex() for row in x]),
        target=np.asarray(data.target, dtype=np.float64),
        target_name="target",
        classes=classes,
        kind="regress" if regress else "classify",
    )


def _number(cell: str) -> float | None:
    """The cell as a finite or infinite float, or None when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def _missing(cell: str) -> bool:
    return cell.strip() == "" or cell.strip().lower() in MISSING


def read_rows(path: str, max_rows: int) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows and their line numbers of a CSV file (see the module
    docstring for what is refused)."""
    where = f"task.path={path!r}"
    file = Path(path)
    if not file.exists():
        raise SpecError(f"{where}: no such file")
    if not file.is_file():
        raise SpecError(f"{where}: not a regular file")
    size = file.stat().st_size
    if size > MAX_BYTES:
        raise SpecError(f"{where}: {size} bytes, more than the {MAX_BYTES} a table may have")
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if not row or all(c.strip() == "" for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                if len(row) != len(header):
                    raise SpecError(
                        f"{where}: line {reader.line_num} has {len(row)} fields, the header "
                        f"has {len(header)}"
                    )
                if len(rows) >= max_rows:
                    raise SpecError(
                        f"{where}: more than task.max_rows={max_rows} data rows; raise "
                        "task.max_rows or use a smaller file"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise SpecError(f"{where}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if header is None:
        raise SpecError(f"{where}: the file is empty (a header row and data rows are needed)")
    if not rows:
        raise SpecError(f"{where}: the header has no data rows below it")
    seen: set[str] = set()
    for name in header:
        if name == "":
            raise SpecError(f"{where}: the header has an empty column name")
        if name in seen:
            raise SpecError(f"{where}: column '{name}' appears twice in the header")
        seen.add(name)
    return header, rows, lines


def read_csv_table(
    path: str,
    target: str,
    kind: str = "auto",
    categorical: Sequence[str] = (),
    numerical: Sequence[str] = (),
    max_rows: int = 100_000,
) -> RawTable:
    """A CSV file as a :class:`RawTable` predicting column ``target``."""
    where = f"task.path={path!r}"
    header, rows, lines = read_rows(path, max_rows)
    if target not in header:
        raise SpecError(
            f"task.target={target!r} is not a column of {path!r}{did_you_mean(target, header)} "
            f"(columns: {', '.join(header)})"
        )
    for field, names in (("categorical", categorical), ("numerical", numerical)):
        for name in names:
            if name not in header or name == target:
                raise SpecError(
                    f"task.{field}: {name!r} is not a feature column of {path!r}"
                    f"{did_you_mean(name, header)}"
                )
    t = header.index(target)
    cells = [row[t].strip() for row in rows]
    for cell, line in zip(cells, lines):
        if _missing(cell):
            raise SpecError(f"{where}: line {line}: the target column '{target}' is missing")
    values = [_number(c) for c in cells]
    numeric = all(v is not None and math.isfinite(v) for v in values)
    if kind == "regress" and not numeric:
        bad = next(i for i, v in enumerate(values) if v is None or not math.isfinite(v))
        raise SpecError(
            f"{where}: line {lines[bad]}: the target column '{target}' holds "
            f"{cells[bad]!r}, not a number, so it cannot be regressed (task.kind='regress')"
        )
    if kind == "auto":
        integral = numeric and all(float(v).is_integer() for v in values)  # type: ignore[arg-type]
        few = len(set(cells)) <= MAX_AUTO_CLASSES
        kind = "regress" if numeric and not (integral and few) else "classify"
    if kind == "classify":
        names = sorted(set(cells), key=lambda c: (0, float(c), c) if numeric else (1, 0.0, c))
        index = {c: i for i, c in enumerate(names)}
        y = np.array([index[c] for c in cells], dtype=np.float64)
        classes = tuple(names)
    else:
        y = np.array(values, dtype=np.float64)
        classes = ()
    feature_cols = [i for i in range(len(header)) if i != t]
    columns, cats, data = [], [], []
    for i in feature_cols:
        name = header[i]
        col = [row[i].strip() for row in rows]
        nums = [None if _missing(c) else _number(c) for c in col]
        parsed = all(v is not None for c, v in zip(col, nums) if not _missing(c))
        if name in numerical and not parsed:
            bad = next(
                j for j, (c, v) in enumerate(zip(col, nums)) if v is None and not _missing(c)
            )
            raise SpecError(
                f"{where}: line {lines[bad]}: column '{name}' holds {col[bad]!r}, not a "
                "number (it is listed in task.numerical)"
            )
        if parsed and name not in categorical:
            data.append([math.nan if v is None else v for v in nums])
            cats.append(0)
        else:
            levels = sorted({c for c in col if not _missing(c)})
            code = {c: j for j, c in enumerate(levels)}
            data.append([float(code.get(c, len(levels))) for c in col])
            cats.append(len(levels))
        columns.append(name)
    if not columns:
        raise SpecError(f"{where}: the table has no column besides the target '{target}'")
    keys = np.array(["\x1f".join(row[i].strip() for i in feature_cols) for row in rows])
    return RawTable(
        columns=tuple(columns),
        categories=tuple(cats),
        numbers=np.array(data, dtype=np.float64).T,
        keys=keys,
        target=y,
        target_name=target,
        classes=classes,
        kind=kind,
    )
