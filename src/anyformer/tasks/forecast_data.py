"""Series for ``forecast`` read from packages and from users' CSV files.

- statsmodels' bundled datasets (:func:`load_statsmodels`): ``sunspots``, ``co2``,
  ``elnino``, ``macrodata``, ``nile``;
- sktime's bundled forecasting series (:func:`load_sktime`), read with sktime's own
  loaders (``sktime.datasets.load_airline`` ...): ``airline`` (144 monthly airline
  passenger totals 1949-1960), ``lynx`` (114 yearly lynx trappings in Canada
  1821-1934), ``shampoo`` (36 monthly shampoo sales), ``uschange`` (187 quarters of 5 US
  series: percentage changes of consumption, income, production, savings and the change
  of the unemployment rate; the target ``Consumption`` first) and ``longley`` (16 years
  of 6 US series: total employment first, then the GNP deflator, GNP, unemployment,
  armed forces and population). A missing sktime is a :class:`SpecError` naming the
  package;
- a CSV file (:func:`read_series_csv`), read with the standard library's :mod:`csv`
  through :func:`anyformer.tasks.csv_table.read_rows` (UTF-8, a header row, at most
  100,000 data rows; the path must be a regular readable file; nothing in it is ever
  executed).

A CSV series is the columns ``columns`` (every column but ``time`` when not given), one
variate each, in the order given. With ``time`` the rows must be in strictly increasing
time: a time cell is a number or an ISO 8601 date or date-time (``2024-01-31``,
``2024-01-31 12:00``), every cell of one kind. A missing value (an empty cell or one of
``csv_table.MISSING``) is interpolated linearly between its column's neighbours in row
order (the first or last present value at the ends) with ``missing='interpolate'``, or
refused naming its line with ``missing='refuse'``. Every problem raises
:class:`~anyformer.errors.SpecError` naming the file and the line, column and value,
and what is valid: an unknown column (the file's columns listed), a non-numeric or
infinite cell, a time that does not parse or does not increase, a column with no
value at all, an empty file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from anyformer.errors import SpecError, did_you_mean
from anyformer.tasks.csv_table import MISSING, read_rows

#: The largest number of data rows a CSV series may have (``forecast``'s ``length`` bound).
MAX_ROWS = 100_000
#: sktime's bundled forecasting series: the loader's name and each one's season length
#: (1: none; ``lynx``'s is its ~10-year population cycle).
SKTIME = {
    "airline": ("load_airline", 12),
    "lynx": ("load_lynx", 10),
    "shampoo": ("load_shampoo_sales", 1),
    "uschange": ("load_uschange", 1),
    "longley": ("load_longley", 1),
}
#: statsmodels' bundled datasets and their season lengths.
STATSMODELS = {"sunspots": 11, "co2": 52, "elnino": 12, "macrodata": 4, "nile": 1}


def load_statsmodels(name: str) -> np.ndarray:
    """A statsmodels dataset as ``[N, variates]`` float64: ``sunspots`` (yearly, 309),
    ``co2`` (weekly, 2,284, missing values interpolated linearly), ``elnino`` (monthly
    sea temperatures, 732), ``macrodata`` (202 quarters of 6 US series: 100 x
    log-growth of real GDP, consumption, investment, government spending and disposable
    income, and inflation) and ``nile`` (yearly, 100)."""
    import statsmodels.datasets as sm

    df = getattr(sm, name).load_pandas().data
    if name == "sunspots":
        return df[["SUNACTIVITY"]].to_numpy(np.float64)
    if name == "co2":
        return df[["co2"]].interpolate(limit_direction="both").to_numpy(np.float64)
    if name == "elnino":
        return df.drop(columns="YEAR").to_numpy(np.float64).reshape(-1, 1)
    if name == "macrodata":
        cols = ["realgdp", "realcons", "realinv", "realgovt", "realdpi"]
        growth = 100.0 * np.diff(np.log(df[cols].to_numpy(np.float64)), axis=0)
        return np.concatenate([growth, df[["infl"]].to_numpy(np.float64)[1:]], axis=1)
    if name == "nile":
        return df[["volume"]].to_numpy(np.float64)
    raise ValueError(f"unknown dataset '{name}'")


def load_sktime(name: str) -> np.ndarray:
    """One of sktime's bundled series (module docstring) as ``[N, variates]`` float64,
    through sktime's own loader; the target first, then the exogenous columns."""
    try:
        from sktime import datasets
    except ImportError:
        raise SpecError(
            f"task.data={name!r} is one of sktime's bundled series and needs the package "
            "sktime, which is not installed (pip install sktime)"
        ) from None
    loaded = getattr(datasets, SKTIME[name][0])()
    if isinstance(loaded, tuple):  # (y, X): the target and its exogenous series
        y, x = loaded
        return np.concatenate([y.to_numpy(np.float64)[:, None], x.to_numpy(np.float64)], axis=1)
    return loaded.to_numpy(np.float64)[:, None]


def _time_value(cell: str) -> tuple[int, float] | None:
    """A time cell as ``(kind, value)`` (0: a number, 1: a naive date-time in seconds,
    2: an aware one), or None when it does not parse."""
    try:
        v = float(cell)
        return (0, v) if math.isfinite(v) else None
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(cell)
    except ValueError:
        return None
    if t.tzinfo is None:
        return 1, (t - datetime(1970, 1, 1)).total_seconds()
    return 2, t.timestamp()


def _check_time(where: str, name: str, cells: list[str], lines: list[int]) -> None:
    """Refuse a time column that does not parse, mixes kinds or does not increase."""
    kinds = {0: "a number", 1: "a date-time without a time zone", 2: "a date-time with a zone"}
    first: tuple[int, float] | None = None
    prev = None
    for cell, line in zip(cells, lines):
        parsed = _time_value(cell)
        if parsed is None:
            raise SpecError(
                f"{where}: line {line}: the time column '{name}' holds {cell!r}, neither a "
                "number nor an ISO 8601 date (e.g. 2024-01-31 or 2024-01-31 12:00)"
            )
        if first is None:
            first = parsed
        elif parsed[0] != first[0]:
            raise SpecError(
                f"{where}: line {line}: the time column '{name}' holds {cell!r}, "
                f"{kinds[parsed[0]]}, but its first value is {kinds[first[0]]}"
            )
        if prev is not None and parsed[1] <= prev[1]:
            raise SpecError(
                f"{where}: line {line}: time {cell!r} in column '{name}' is not after "
                f"{prev[2]!r} of line {prev[0]}; the rows must be in strictly increasing "
                "time (sort the file by it, without repeated times)"
            )
        prev = (line, parsed[1], cell)


def read_series_csv(
    path: str,
    columns: Sequence[str] | None = None,
    time: str | None = None,
    missing: str = "interpolate",
) -> np.ndarray:
    """The columns ``columns`` of the CSV file ``path`` as ``[N, variates]`` float64 (see
    the module docstring for the rules and every refusal)."""
    where = f"task.path={path!r}"
    header, rows, lines = read_rows(path, MAX_ROWS)
    valid = f"(columns of the file: {', '.join(header)})"
    if time is not None and time not in header:
        raise SpecError(
            f"task.time={time!r} is not a column of {path!r}{did_you_mean(time, header)} {valid}"
        )
    if columns is None:
        names = [h for h in header if h != time]
    else:
        names = list(columns)
        for name in names:
            if name not in header:
                raise SpecError(
                    f"task.columns: {name!r} is not a column of {path!r}"
                    f"{did_you_mean(name, header)} {valid}"
                )
            if name == time:
                raise SpecError(f"task.columns: {name!r} is the time column (task.time)")
        if len(set(names)) != len(names):
            raise SpecError(f"task.columns={names} names a column twice")
    if not names:
        raise SpecError(f"{where}: no column besides the time column '{time}' {valid}")
    if time is not None:
        t = header.index(time)
        _check_time(where, time, [row[t].strip() for row in rows], lines)
    out = np.empty((len(rows), len(names)))
    for j, name in enumerate(names):
        i = header.index(name)
        for r, (row, line) in enumerate(zip(rows, lines)):
            cell = row[i].strip()
            if cell == "" or cell.lower() in MISSING:
                if missing == "refuse":
                    raise SpecError(
                        f"{where}: line {line}: column '{name}' has a missing value "
                        f"({cell!r}); fill it in, or set task.missing=interpolate"
                    )
                out[r, j] = math.nan
                continue
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
                ok = False
            else:
                ok = math.isfinite(v)
            if not ok:
                raise SpecError(
                    f"{where}: line {line}: column '{name}' holds {cell!r}, not a finite "
                    f"number (a missing value is an empty cell or one of: "
                    f"{', '.join(sorted(MISSING))})"
                )
            out[r, j] = v
        present = ~np.isnan(out[:, j])
        if not present.any():
            raise SpecError(f"{where}: column '{name}' has no value on any line")
        if not present.all():
            idx = np.arange(len(rows))
            out[:, j] = np.interp(idx, idx[present], out[present, j])
    return out
