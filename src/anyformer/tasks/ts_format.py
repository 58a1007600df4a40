"""A small, safe reader of the ``.ts`` time-series classification format (UCR/UEA archive,
as sktime writes and ships it).

The format is plain text: comment lines start with ``#``; header lines start with ``@``
(``@problemName``, ``@timeStamps``, ``@missing``, ``@univariate``, ``@dimensions``,
``@equalLength``, ``@seriesLength``, ``@classLabel true <labels...>``), then ``@data``;
after it one case per line: each dimension's values comma-separated, dimensions
separated by ``:``, the class label last (``1.0,2.0:3.0,4.0:a``). A value ``?`` is
missing (read as NaN); dimensions of a case may have different lengths (JapaneseVowels'
cases have 7 to 29 steps), read as they are. Timestamped files (``@timeStamps true``,
values written ``(t,v)``) and regression targets are refused.

Nothing is evaluated: every value goes through ``float()``; a file over
:data:`MAX_FILE_BYTES`, a malformed line, an unknown label or a value that is not a
number raise :class:`~anyformer.errors.SpecError` naming the file, the line and what is
wrong.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anyformer.errors import SpecError

MAX_FILE_BYTES = 200_000_000
#: The classification sets sktime's wheel ships (``sktime/datasets/data/<NAME>/``).
BUNDLED = ("ArrowHead", "GunPoint", "ItalyPowerDemand", "BasicMotions", "JapaneseVowels")


@dataclass(frozen=True)
class TsData:
    """The cases of one ``.ts`` file: ``series[i]`` float64 ``[length_i, dimensions]``
    (NaN where a value is missing), ``labels[i]`` the class name, ``classes`` the names
    in the header's order (else sorted)."""

    series: tuple[np.ndarray, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def dimensions(self) -> int:
        return int(self.series[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[0] for s in self.series], dtype=np.int64)


def _value(text: str, where: str) -> float:
    text = text.strip()
    if text == "?":
        return math.nan
    try:
        v = float(text)
    except ValueError:
        raise SpecError(f"{where}: {text[:40]!r} is not a number (nor '?' for missing)") from None
    if math.isinf(v):
        raise SpecError(f"{where}: {text[:40]!r} is infinite")
    return v


def parse_ts(text: str, name: str = "<text>") -> TsData:
    """Parse the text of a ``.ts`` file (see the module docstring); ``name`` names it in
    errors. Every case must have the header's ``@dimensions`` (else the first case's)
    dimensions."""
    header: dict[str, str] = {}
    classes: list[str] | None = None
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    dims: int | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{name}, line {number}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise SpecError(f"{where}: expected a header line starting with '@' before @data")
            key, _, rest = line[1:].partition(" ")
            key, rest = key.lower(), rest.strip()
            if key == "data":
                in_data = True
            elif key == "classlabel":
                words = rest.split()
                if not words or words[0].lower() != "true":
                    raise SpecError(f"{where}: @classLabel false: not a classification file")
                classes = words[1:]
            elif key == "targetlabel" and rest.lower().startswith("true"):
                raise SpecError(
                    f"{where}: @targetLabel true: a regression file, not classification"
                )
            header[key] = rest
            continue
        if header.get("timestamps", "false").lower() == "true":
            raise SpecError(f"{name}: @timeStamps true is not supported (values without times)")
        parts = line.split(":")
        if len(parts) < 2:
            raise SpecError(f"{where}: expected values then ':' then the class label")
        label = parts[-1].strip()
        values = parts[:-1]
        if dims is None:
            dims = (
                int(header["dimensions"]) if header.get("dimensions", "").isdigit() else len(values)
            )
        if len(values) != dims:
            raise SpecError(f"{where}: {len(values)} dimensions, expected {dims}")
        if classes is not None and label not in classes:
            raise SpecError(
                f"{where}: class label {label[:40]!r} is not among @classLabel's "
                f"({', '.join(classes)})"
            )
        rows = [[_value(v, where) for v in dim.split(",")] for dim in values]
        length = max(len(r) for r in rows)
        if length == 0 or any(len(r) == 0 for r in rows):
            raise SpecError(f"{where}: a dimension has no values")
        arr = np.full((length, dims), np.nan)
        for d, r in enumerate(rows):  # a shorter dimension is missing at its end
            arr[: len(r), d] = r
        series.append(arr)
        labels.append(label)
    if not in_data:
        raise SpecError(f"{name}: no @data line")
    if not series:
        raise SpecError(f"{name}: no cases after @data")
    found = tuple(classes) if classes is not None else tuple(sorted(set(labels)))
    return TsData(tuple(series), tuple(labels), found)


def read_ts(path: Path) -> TsData:
    """Parse the ``.ts`` file at ``path`` (refused when missing or over the size cap)."""
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SpecError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc})") from None
    return parse_ts(text, str(path))


def bundled_prefix(name: str) -> Path:
    """``.../sktime/datasets/data/<name>/<name>``: the prefix of the bundled set's
    ``_TRAIN.ts`` and ``_TEST.ts`` files (found without importing sktime)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            f"task.dataset={name!r} reads the .ts files bundled with the 'sktime' package, "
            "which is not installed (pip install sktime), or point task.path=DIR/NAME at "
            "your own NAME_TRAIN.ts and NAME_TEST.ts"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "datasets" / "data" / name / name


def read_split(prefix: Path, field: str) -> tuple[TsData, TsData]:
    """``(TRAIN, TEST)`` from ``<prefix>_TRAIN.ts`` and ``<prefix>_TEST.ts``; the two must
    agree on the dimensions, and TEST's labels must be TRAIN's classes."""
    files = [prefix.parent / f"{prefix.name}_{s}.ts" for s in ("TRAIN", "TEST")]
    for f in files:
        if not f.is_file():
            raise SpecError(f"task.{field}={str(prefix)!r}: no file {f}")
    train, test = (read_ts(f) for f in files)
    if train.dimensions != test.dimensions:
        raise SpecError(
            f"task.{field}={str(prefix)!r}: TRAIN has {train.dimensions} dimensions, TEST "
            f"{test.dimensions}"
        )
    unknown = sorted(set(test.labels) - set(train.classes))
    if unknown:
        raise SpecError(
            f"task.{field}={str(prefix)!r}: TEST labels {unknown[:5]} are not TRAIN's classes "
            f"({', '.join(train.classes)})"
        )
    return train, test
