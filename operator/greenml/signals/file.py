"""Intensity from a CSV file, or a directory of them such as a mounted ConfigMap
(air-gapped clusters, the simulator, tests).

Format: a header row; a time column named ``datetime_utc``, ``datetime``, ``from_utc``,
``timestamp``, ``time`` or ``Datetime (UTC)`` (the Electricity Maps portal's; names match
case-insensitively; ISO 8601, naive times are UTC); and one or more numeric columns
(gCO2e/kWh). ``column=`` picks one; by default the column is chosen by this preference
(the first column of the best rank; ``meta["column"]`` and ``meta["column_why"]`` say
which and why, and the simulator prints it):

1. an *actual* (measured) series: a name with ``actual`` (NESO's ``actual_gco2_per_kwh``);
2. *life-cycle* intensity: ``lca``, ``life cycle``/``lifecycle`` (Electricity Maps'
   default, ``ci_lca_gco2eq_per_kwh``, the portal's ``… (LCA)``) — what the rest of the
   project uses;
3. another intensity (``gco2``, ``co2``, ``intensity``, ``moer``, ``ci_``) that is not
   direct and not a forecast;
4. *direct* (operational-only) intensity;
5. a *forecast* (``forecast`` in the name: only when nothing else is there);
6. any other numeric column, except shares and flags (``pct``, ``percent``, ``renewable``,
   ``low carbon``, ``estimated``, ``index``, ``lead``, ``hours``), which are never intensities.

A column named with ``moer`` or ``marginal`` gives a ``kind="marginal"`` series.
Rows are put on a regular grid whose step is the smallest spacing in the file; missing
slots and empty cells are filled by linear interpolation and counted in ``meta["filled"]``.

The forecast a file serves is the file itself from ``now`` on: a *perfect* forecast,
labelled ``meta["forecast"] = "perfect"`` (only right for replay and simulation).

A directory (``GREENML_INTENSITY_FILE`` naming a mounted ConfigMap, as the Helm chart's
``provider.intensity`` mounts it) holds one file per zone, ``<zone>.csv``, and/or
``default.csv`` for every zone without its own. Entries whose names start with a dot
(the kubelet's ``..data`` links) are not data.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping

import numpy as np

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.series import SeriesSource
from greenml.timeutil import parse_time

TIME_COLUMNS = ("datetime_utc", "datetime", "from_utc", "timestamp", "time", "datetime (utc)")
DEFAULT_STEM = "default"  # a directory's default.csv serves every zone without a <zone>.csv
MAX_FILL_RATIO = 3.0  # a grid more than 3x the rows means the file is not regular


class IntensityFileError(SignalError):
    """A CSV that cannot be read as an intensity series; the message names file, line, column."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="Malformed")


def _time_column(header: list[str], name: str) -> int:
    lowered = [h.lower() for h in header]
    for col in TIME_COLUMNS:
        if col in lowered:
            return lowered.index(col)
    raise IntensityFileError(f"{name}: no time column; expected one of {', '.join(TIME_COLUMNS)} in header {header}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_NOT_INTENSITY = ("pct", "percent", "renewable", "low carbon", "low_carbon", "estimated", "index", "lead", "hours")
_INTENSITY = ("gco2", "co2", "intensity", "moer", "ci_")
_RANKS = ("actual (preferred: measured)", "life-cycle (the project's default)", "intensity", "direct",
          "forecast (no actual in the file)", "the only numeric column left")


def _rank(col: str) -> int | None:
    """The column's place in the preference (see the module docstring); None: never chosen."""
    c = col.lower()
    if "actual" in c:
        return 0
    if "lca" in c or "life cycle" in c or "lifecycle" in c or "life-cycle" in c:
        return 1
    if "forecast" in c:
        return 4
    if "direct" in c:
        return 3
    if any(k in c for k in _INTENSITY):
        return 2
    if any(k in c for k in _NOT_INTENSITY):
        return None
    return 5


def choose_column(header: list[str], rows: list[list[str]], tcol: int) -> tuple[int, str] | None:
    """(index, why) of the preferred numeric column, None when there is none."""
    numeric = [j for j, _ in enumerate(header)
               if j != tcol and any(len(r) > j and r[j].strip() and _is_number(r[j]) for r in rows[:50])]
    ranked = [(r, j) for j in numeric if (r := _rank(header[j])) is not None]
    if not ranked:
        return None
    r, j = min(ranked)
    others = [header[k] for k in numeric if k != j]
    return j, _RANKS[r] + (f"; also in the file: {', '.join(others)}" if others else "")


def _value_column(header: list[str], rows: list[list[str]], column: str | None, tcol: int,
                  name: str) -> tuple[int, str]:
    if column is not None:
        if column not in header:
            raise IntensityFileError(f"{name}: column {column!r} not in header {header}")
        return header.index(column), "chosen (--column)"
    chosen = choose_column(header, rows, tcol)
    if chosen is None:
        raise IntensityFileError(f"{name}: no numeric column in header {header}")
    return chosen


def _parse_rows(rows: list[list[str]], tcol: int, vcol: int, name: str, colname: str) -> tuple[list[datetime], list[float]]:
    times: list[datetime] = []
    vals: list[float] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(tcol, vcol):
            raise IntensityFileError(f"{name}:{line}: expected at least {max(tcol, vcol) + 1} fields, got {len(row)}")
        try:
            t = parse_time(row[tcol])
        except ValueError:
            raise IntensityFileError(f"{name}:{line}: bad time {row[tcol]!r}") from None
        cell = row[vcol].strip()
        if cell == "":
            v = float("nan")
        else:
            try:
                v = float(cell)
            except ValueError:
                raise IntensityFileError(f"{name}:{line}: column {colname!r}: not a number: {cell!r}") from None
            if not np.isfinite(v) or v < 0:
                raise IntensityFileError(f"{name}:{line}: column {colname!r}: intensity must be finite and >= 0, got {cell}")
        times.append(t)
        vals.append(v)
    if not times:
        raise IntensityFileError(f"{name}: no data rows")
    return times, vals


def _regular(times: list[datetime], vals: list[float], name: str,
             step_hint: timedelta | None = None) -> tuple[datetime, timedelta, np.ndarray, int]:
    """Sort, place on the grid and interpolate gaps. The step is ``step_hint`` (the interval
    length the source states; points off its grid are an error) or else the smallest spacing
    (one point alone: 1 h, a CSV's convention)."""
    order = sorted(range(len(times)), key=times.__getitem__)
    t0 = times[order[0]]
    secs = np.array([(times[i] - t0).total_seconds() for i in order])
    v = np.array([vals[i] for i in order], dtype=np.float64)
    if step_hint is not None and step_hint.total_seconds() <= 0:
        raise IntensityFileError(f"{name}: interval length must be positive, got {step_hint}")
    if len(secs) == 1:
        if np.isnan(v[0]):
            raise IntensityFileError(f"{name}: the only row has no value")
        return t0, step_hint or timedelta(hours=1), v, 0
    diffs = np.diff(secs)
    if (diffs == 0).any():
        dup = times[order[int(np.argmax(diffs == 0)) + 1]]
        raise IntensityFileError(f"{name}: duplicate timestamp {dup.isoformat()}")
    step = step_hint.total_seconds() if step_hint is not None else float(diffs.min())
    idx = secs / step
    if not np.allclose(idx, np.round(idx), atol=1e-6):
        raise IntensityFileError(f"{name}: timestamps are not on a regular grid of {step:g} s")
    idx = np.round(idx).astype(np.int64)
    n = int(idx[-1]) + 1
    if n > MAX_FILL_RATIO * len(idx):
        raise IntensityFileError(f"{name}: too sparse for a regular series ({len(idx)} rows over {n} slots of {step:g} s)")
    grid = np.full(n, np.nan)
    grid[idx] = v
    known = ~np.isnan(grid)
    if not known.any():
        raise IntensityFileError(f"{name}: no values")
    filled = int(n - known.sum())
    if filled:
        pos = np.arange(n)
        grid = np.interp(pos, pos[known], grid[known])
    return t0, timedelta(seconds=step), grid, filled


def regular_series(times: list[datetime], values: list[float], *, name: str, source: str,
                   kind: str = "average", issued_at: datetime | None = None,
                   step: timedelta | None = None) -> IntensitySeries:
    """A regular IntensitySeries from (time, value) points as providers return them; NaN
    values and missing slots are interpolated and counted in ``meta["filled"]``. ``step``:
    the interval length the provider states (else inferred from the spacing).
    Raises IntensityFileError (reason "Malformed") naming ``name``."""
    if not times:
        raise IntensityFileError(f"{name}: no data points")
    start, step, vals, filled = _regular(times, values, name, step)
    return IntensitySeries(start, step, vals, source=source, kind=kind, issued_at=issued_at,
                           meta={"filled": filled})


def parse_intensity_csv(text: str, *, column: str | None = None, name: str = "<csv>",
                        source: str = "file") -> IntensitySeries:
    """Parse CSV text into a regular IntensitySeries (see the module docstring)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise IntensityFileError(f"{name}: empty file") from None
    rows = list(reader)
    tcol = _time_column(header, name)
    vcol, why = _value_column(header, rows, column, tcol, name)
    times, vals = _parse_rows(rows, tcol, vcol, name, header[vcol])
    start, step, values, filled = _regular(times, vals, name)
    kind = "marginal" if any(k in header[vcol].lower() for k in ("moer", "marginal")) else "average"
    return IntensitySeries(start, step, values, source=source, kind=kind,
                           meta={"file": name, "column": header[vcol], "column_why": why, "filled": filled})


def column_line(series: IntensitySeries) -> str:
    """Which series of an intensity file was used, and why (the simulators print it)."""
    m = series.meta
    return (f"intensity: {Path(str(m.get('file'))).name}, column {m.get('column')!r} "
            f"({m.get('column_why')}; {series.kind})")


def load_intensity_csv(path: str | Path, *, column: str | None = None, source: str = "file") -> IntensitySeries:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise IntensityFileError(f"{p}: cannot read intensity file: {exc.strerror or exc}") from None
    return parse_intensity_csv(text, column=column, name=str(p), source=source)


class FileSource(SeriesSource):
    """Serves one CSV for every zone, one CSV per zone (``{"DE": path, ...}``), or a
    directory of them (a mounted ConfigMap: ``<zone>.csv`` keys, ``default.csv`` for the rest)."""

    def __init__(self, path: str | Path | Mapping[str, str | Path], *, column: str | None = None) -> None:
        if isinstance(path, Mapping):
            series = {zone: load_intensity_csv(p, column=column) for zone, p in path.items()}
        elif Path(path).is_dir():
            series = _directory_series(Path(path), column=column)
        else:
            series = {"*": load_intensity_csv(path, column=column)}
        super().__init__(series, name="file")


def _directory_series(directory: Path, *, column: str | None) -> dict[str, IntensitySeries]:
    """``{zone: series}`` from a directory's ``<zone>.csv`` files (``default.csv``: every zone
    without its own), e.g. a mounted ConfigMap's keys (its hidden ``..data`` /
    ``..<timestamp>`` entries left out, key links followed)."""
    files = [e for e in sorted(directory.iterdir()) if not e.name.startswith(".") and e.is_file()]
    if not files:
        raise IntensityFileError(f"{directory}: no intensity files (expected <zone>.csv or default.csv)")
    series: dict[str, IntensitySeries] = {}
    for f in files:
        if f.suffix != ".csv" or not f.stem:
            raise IntensityFileError(f"{f}: not an intensity file name (expected <zone>.csv, e.g. DE.csv, "
                                     "or default.csv for every other zone)")
        series["*" if f.stem == DEFAULT_STEM else f.stem] = load_intensity_csv(f, column=column)
    return series
