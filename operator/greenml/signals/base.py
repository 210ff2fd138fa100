"""The time-series type and the carbon-source interface.

Conventions: all intensities are gCO2e/kWh; all times are aware UTC datetimes;
a series is regular: value i covers [start + i*step, start + (i+1)*step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np

from greenml.timeutil import ensure_utc


class SignalError(Exception):
    """A source could not serve (outage, auth, unknown zone, malformed data)."""

    def __init__(self, message: str, *, reason: str = "Unavailable") -> None:
        super().__init__(message)
        self.reason = reason  # short CamelCase reason for conditions/metrics


@dataclass(frozen=True)
class IntensitySeries:
    """A regular series of carbon intensity (gCO2e/kWh).

    ``source`` names who served it (e.g. "electricitymaps", "embedded"); ``estimate``
    is True when it is not live or provider data (embedded profile, own forecaster);
    ``issued_at`` is when a forecast was made (None for actuals).
    """

    start: datetime
    step: timedelta
    values: np.ndarray
    source: str = "unknown"
    estimate: bool = False
    issued_at: datetime | None = None
    kind: str = "average"  # "average" or "marginal": never mix the two
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", ensure_utc(self.start))
        vals = np.asarray(self.values, dtype=np.float64)
        if vals.ndim != 1:
            raise ValueError("IntensitySeries values must be one-dimensional")
        object.__setattr__(self, "values", vals)
        if self.step.total_seconds() <= 0:
            raise ValueError("IntensitySeries step must be positive")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self)

    def times(self) -> list[datetime]:
        return [self.start + self.step * i for i in range(len(self))]

    def index_of(self, t: datetime) -> int:
        """Index of the slot containing t (may be out of range)."""
        return int((ensure_utc(t) - self.start).total_seconds() // self.step.total_seconds())

    def at(self, t: datetime) -> float:
        i = self.index_of(t)
        if not 0 <= i < len(self):
            raise IndexError(f"{t} outside series [{self.start}, {self.end})")
        return float(self.values[i])

    def resample(self, start: datetime, step: timedelta, n: int, *, fill: str = "edge") -> np.ndarray:
        """Values on another regular grid, time-weighted mean of the overlapping slots.

        Slots beyond the series are filled with the nearest edge value (``fill="edge"``)
        or NaN (``fill="nan"``). Vectorised: O(len + n).
        """
        start = ensure_utc(start)
        if n <= 0:
            return np.empty(0)
        src_step = self.step.total_seconds()
        dst_step = step.total_seconds()
        offset = (start - self.start).total_seconds()
        vals = self.values
        if len(vals) == 0:
            return np.full(n, np.nan)
        # cumulative integral of the step function at source boundaries
        cum = np.concatenate(([0.0], np.cumsum(vals) * src_step))
        edges = offset + dst_step * np.arange(n + 1)
        total = src_step * len(vals)
        inside = np.clip(edges, 0.0, total)
        pos = inside / src_step
        idx = np.minimum(pos.astype(np.int64), len(vals) - 1)
        integral = cum[idx] + (pos - idx) * src_step * vals[idx]
        integral = np.where(inside >= total, cum[-1], integral)
        covered = np.diff(inside)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.diff(integral) / covered
        # slots fully outside the series
        before = edges[1:] <= 0
        after = edges[:-1] >= total
        if fill == "edge":
            out = np.where(before, vals[0], out)
            out = np.where(after, vals[-1], out)
            # partially covered slots: blend in the edge value for the uncovered part
            part = (~before) & (~after) & (covered < dst_step)
            if part.any():
                lo_gap = np.clip(0.0 - edges[:-1], 0, None)
                hi_gap = np.clip(edges[1:] - total, 0, None)
                blended = (np.diff(integral) + lo_gap * vals[0] + hi_gap * vals[-1]) / dst_step
                out = np.where(part, blended, out)
        else:
            out = np.where(before | after, np.nan, out)
        return out

    def window(self, start: datetime, end: datetime) -> "IntensitySeries":
        """The slots overlapping [start, end), same grid."""
        i0 = max(0, self.index_of(start))
        i1 = min(len(self), max(i0, -(-int((ensure_utc(end) - self.start).total_seconds()) // int(self.step.total_seconds()))))
        return IntensitySeries(self.start + self.step * i0, self.step, self.values[i0:i1], self.source,
                               self.estimate, self.issued_at, self.kind, dict(self.meta))


@runtime_checkable
class CarbonSource(Protocol):
    """What the planners need from a provider. Implementations raise SignalError."""

    name: str

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        """The latest value (a one-slot series)."""
        ...

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        """Actuals over [start, end)."""
        ...

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        """A forecast from ``now`` (issued at or before now) covering at least ``horizon``."""
        ...
