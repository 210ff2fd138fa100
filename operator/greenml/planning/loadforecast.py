"""Forecast a serving workload's load (requests/s) from its past load only.

The InferenceBudget pacer plans the rest of a period, so it needs the load of every
step until the period ends. Nobody hands the operator that: it has what Prometheus
recorded (``spec.loadQuery`` over the last days) and nothing else. This module turns
that history into a forecast, and ``greenml simulate inference --online`` runs the
same function on the past of a trace.

    seasonal(t) = P[slot(t)] · D[weekday(t)]
    f(t)        = seasonal(t) · (1 + (r − 1) · exp(−lead(t) / tau))

- P: the daily profile, per slot of the *local* day (``tz``: users keep local hours;
  UTC would put a DST week one hour off), the median of that slot over the last
  ``days`` days. The median ignores a spike (or a dip) on a minority of days, and
  missing samples (NaN: a gap in the scrape) are left out; a slot with no sample at all
  is interpolated from its neighbours on the circle of the day.
- D: the day-of-week level, once ``weeks_min`` weeks of history exist: per weekday the
  median over up to ``weeks`` weeks of (that day's load ÷ the profile's load over the
  same slots) — a ratio to the profile the forecast multiplies, so it needs no
  normalising. 1 otherwise.
- r: the current level against the profile, the median ratio of the samples of the last
  ``level_hours`` to their seasonal values, clipped to [``level_min``, ``level_max``];
  it fades with lead time (``tau``) into the seasonal forecast. A burst in the last
  minutes moves the median less than a mean; a lasting change (a launch, an outage)
  moves it within the window.

Each forecast also reports ``error``: the same forecast made a day earlier, scored
against the last day (relative MAE) — the pacer widens its reserve by it.

Pure numpy, O(history) per call (≈ 2.5 ms for 14 days at 5 minutes, the backtest
included, on the 2-core development box); ``now`` is a parameter. Raises :class:`LoadForecastError` (``reason``: ``InsufficientHistory`` or
``Malformed``) when it cannot forecast; callers then fall back to the current load.
Accuracy on the benchmark traces: bench/results/inference.md (the online rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import numpy as np

from greenml.planning.periods import zone_info
from greenml.timeutil import ensure_utc, format_duration

_DAY = 86400.0
_WEEK = 7 * _DAY


class LoadForecastError(ValueError):
    """The history cannot give a forecast; ``reason`` says why (a condition reason)."""

    def __init__(self, message: str, reason: str = "InsufficientHistory") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadForecastPolicy:
    days: int = 7                      # daily profile: median over the last this many days
    weeks: int = 4                     # day-of-week levels: median over up to this many weeks
    weeks_min: int = 2                 # ... once this many whole weeks are in the history
    level_hours: float = 3.0           # the current level is measured over this window
    tau_hours: float = 6.0             # and fades into the seasonal forecast this fast
    level_min: float = 0.25            # clip of the level ratio
    level_max: float = 4.0
    min_history: timedelta = timedelta(days=1)
    min_coverage: float = 0.5          # share of the history's slots that must hold a sample
    lookback: timedelta = timedelta(days=28)  # history older than this is not read


@dataclass(frozen=True)
class LoadForecast:
    """Requests/s per ``step`` from ``start`` (the first slot after the history)."""

    start: datetime
    step: timedelta
    values: np.ndarray
    method: str                 # "daily", "daily+weekday"
    history: timedelta          # span of history used (samples present)
    error: float | None = None  # relative MAE of the same forecast made a day ago for the last day

    def on_grid(self, current: float, now: datetime, step: timedelta, n: int) -> np.ndarray:
        """The ``n``-step load array :func:`greenml.planning.inference.decide` takes: the
        measured ``current`` load at ``now`` (step 0), then the forecast at ``now + i·step``
        (the slot of the forecast holding that time; edge-extended past its end)."""
        out = np.full(max(1, n), float(current))
        if out.size > 1 and self.values.size:
            t = (ensure_utc(now) - self.start).total_seconds() + step.total_seconds() * np.arange(1, out.size)
            idx = np.clip(np.floor(t / self.step.total_seconds() + 1e-9).astype(np.int64), 0, self.values.size - 1)
            out[1:] = self.values[idx]
        return out


def forecast_load(values: np.ndarray | list, start: datetime, step: timedelta, now: datetime,
                  horizon: timedelta, *, tz: str = "UTC",
                  policy: LoadForecastPolicy = LoadForecastPolicy(), backtest: bool = True) -> LoadForecast:
    """Forecast from ``values`` (req/s at ``start + i·step``, NaN where missing) the slots
    after the last sample at or before ``now``, until ``now + horizon``.

    Samples after ``now`` are ignored (the forecaster never sees the future); negative or
    non-finite samples count as missing. ``error`` (with ``backtest``, from two days of
    history on): the forecast issued one day before the last sample, from the history
    before it, against the last day's samples — mean absolute error ÷ mean actual; what
    the pacer reserves for load it did not see coming.
    """
    now = ensure_utc(now)
    start = ensure_utc(start)
    s = step.total_seconds()
    if s <= 0 or _DAY % s:
        raise LoadForecastError(f"load step {step} does not divide a day", reason="Malformed")
    per_day = int(_DAY // s)
    v = np.asarray(values, dtype=np.float64).ravel()
    end = min(v.size, int(math.floor((now - start).total_seconds() / s + 1e-9)) + 1)
    first = max(0, end - int(policy.lookback.total_seconds() // s))
    v = v[first:end].copy()
    v[~np.isfinite(v) | (v < 0)] = np.nan
    # history begins at the first sample: a series younger than the window asked for has no gap
    lead = int(np.argmax(np.isfinite(v))) if np.isfinite(v).any() else v.size
    v, first = v[lead:], first + lead
    t0 = start.timestamp() + first * s
    present = np.isfinite(v)
    if v.size * s < policy.min_history.total_seconds() or present.sum() < policy.min_coverage * max(v.size, per_day):
        raise LoadForecastError(
            f"load forecast needs {format_duration(policy.min_history)} of history with {policy.min_coverage:.0%} of "
            f"the samples present; has {format_duration(timedelta(seconds=v.size * s))} with {int(present.sum())} "
            f"of {v.size}")
    # recent coverage matters too: a profile from a month-old week says little about today
    recent = present[-min(v.size, per_day * policy.days):]
    if recent.mean() < policy.min_coverage:
        raise LoadForecastError(f"load history has only {recent.mean():.0%} of the last "
                                f"{min(v.size // per_day, policy.days)} days' samples")

    times = t0 + s * np.arange(v.size)
    n_out = max(1, int(math.ceil((now.timestamp() + horizon.total_seconds() - (times[-1] + s)) / s)))
    f_times = times[-1] + s * np.arange(1, n_out + 1)
    local_h, local_f = _local_seconds(times, tz), _local_seconds(f_times, tz)
    slot_h = ((local_h % _DAY) // s).astype(np.int64)
    slot_f = ((local_f % _DAY) // s).astype(np.int64)

    # the daily profile: per local slot, the median over the last `days` days
    last = min(v.size, per_day * policy.days)
    profile = _slot_median(v[-last:], slot_h[-last:], per_day)
    if not np.isfinite(profile).any() or np.nanmax(profile) <= 0:
        flat = float(np.nanmedian(v[-last:]))
        return LoadForecast(_dt(f_times[0], now), step, np.full(n_out, flat), "flat",
                            timedelta(seconds=int(present.sum()) * s))
    profile = _fill_circular(profile)

    day_h = np.floor(local_h / _DAY).astype(np.int64)
    day_f = np.floor(local_f / _DAY).astype(np.int64)
    weekday = _weekday_levels(v, day_h, slot_h, profile, per_day, policy)
    method = "daily+weekday" if weekday is not None else "daily"
    wk_h = np.ones(v.size) if weekday is None else weekday[(day_h + 3) % 7]   # day 0 (1970-01-01) is a Thursday
    wk_f = np.ones(n_out) if weekday is None else weekday[(day_f + 3) % 7]
    seasonal_h = profile[slot_h] * wk_h
    seasonal_f = profile[slot_f] * wk_f

    # the current level against the seasonal value, fading with lead time
    k = max(1, int(round(policy.level_hours * 3600 / s)))
    num, den = v[-k:], seasonal_h[-k:]
    ok = np.isfinite(num) & (den > 1e-9 * max(1.0, float(np.nanmax(profile))))
    level = float(np.median(num[ok] / den[ok])) if ok.any() else 1.0
    level = min(policy.level_max, max(policy.level_min, level))
    lead_h = (f_times - times[-1]) / 3600.0
    out = seasonal_f * (1.0 + (level - 1.0) * np.exp(-lead_h / policy.tau_hours))
    error = _backtest(v, t0, step, per_day, tz, policy) if backtest else None
    return LoadForecast(_dt(f_times[0], now), step, np.maximum(out, 0.0), method,
                        timedelta(seconds=int(present.sum()) * s), error)


def _backtest(v: np.ndarray, t0: float, step: timedelta, per_day: int, tz: str,
              policy: LoadForecastPolicy) -> float | None:
    """Relative MAE of the day-ahead forecast for the last day of ``v`` (None when it cannot be made)."""
    if v.size < 2 * per_day:
        return None
    cut = v.size - per_day
    origin = datetime.fromtimestamp(t0 + (cut - 1) * step.total_seconds(), tz=timezone.utc)
    try:
        past = forecast_load(v[:cut], datetime.fromtimestamp(t0, tz=timezone.utc), step, origin,
                             step * (per_day + 1), tz=tz, policy=policy, backtest=False)
    except LoadForecastError:
        return None
    actual = v[cut:]
    ok = np.isfinite(actual)
    denom = float(actual[ok].mean()) if ok.any() else 0.0
    if denom <= 0:
        return None
    return float(np.abs(past.values[:per_day][ok] - actual[ok]).mean() / denom)


def _dt(ts: float, like: datetime) -> datetime:
    return datetime.fromtimestamp(ts, tz=like.tzinfo)


def _slot_median(v: np.ndarray, slots: np.ndarray, per_day: int) -> np.ndarray:
    """Per slot of the day, the median of the samples present (NaN where none)."""
    days = -(-v.size // per_day)
    grid = np.full((days, per_day), np.nan)
    # fill row by row from the end, so the latest sample of a slot sits in the last row
    rows = days - 1 - (np.arange(v.size)[::-1] // per_day)
    grid[rows, slots] = v
    with np.errstate(all="ignore"):
        counts = np.isfinite(grid).sum(axis=0)
        med = np.full(per_day, np.nan)
        if counts.any():
            med[counts > 0] = np.nanmedian(grid[:, counts > 0], axis=0)
    return med


def _fill_circular(p: np.ndarray) -> np.ndarray:
    """Missing slots interpolated from their neighbours on the circle of the day."""
    bad = ~np.isfinite(p)
    if not bad.any():
        return p
    idx = np.arange(p.size)
    good = idx[~bad]
    xp = np.concatenate([good - p.size, good, good + p.size])
    fp = np.tile(p[good], 3)
    out = p.copy()
    out[bad] = np.interp(idx[bad], xp, fp)
    return out


def _weekday_levels(v: np.ndarray, day: np.ndarray, slot: np.ndarray, profile: np.ndarray, per_day: int,
                    policy: LoadForecastPolicy) -> np.ndarray | None:
    """Per weekday (Monday = 0) the level against the profile; None without enough weeks."""
    if v.size < policy.weeks_min * 7 * per_day:
        return None
    recent = slice(max(0, v.size - policy.weeks * 7 * per_day), v.size)
    vv, dd, ss = v[recent], day[recent], slot[recent]
    days, inv = np.unique(dd, return_inverse=True)
    ok = np.isfinite(vv)
    got = np.bincount(inv, weights=np.where(ok, vv, 0.0), minlength=days.size)
    exp = np.bincount(inv, weights=np.where(ok, profile[ss], 0.0), minlength=days.size)
    full = np.bincount(inv, weights=ok.astype(np.float64), minlength=days.size) >= 0.5 * per_day
    ratio = np.where(full & (exp > 0), got / np.where(exp > 0, exp, 1.0), np.nan)
    wd = (days + 3) % 7
    levels = np.ones(7)
    for d in range(7):
        r = ratio[(wd == d) & np.isfinite(ratio)]
        if r.size < policy.weeks_min:
            return None
        levels[d] = float(np.median(r))
    return levels


def _local_seconds(ts: np.ndarray, tz: str) -> np.ndarray:
    """UTC epoch seconds → seconds since the epoch on the local wall clock of ``tz``."""
    if tz in ("UTC", "Etc/UTC", "") or ts.size == 0:
        return ts
    lo, hi = _offset(float(ts[0]), tz), _offset(float(ts[-1]), tz)
    if lo == hi and _offset(float((ts[0] + ts[-1]) / 2), tz) == lo:
        return ts + lo
    # a DST change inside: the offset per hour (a change falls on an hour boundary in practice)
    hours = np.floor(ts / 3600.0)
    uniq, inv = np.unique(hours, return_inverse=True)
    offs = np.array([_offset(h * 3600.0, tz) for h in uniq])
    return ts + offs[inv]


@lru_cache(maxsize=4096)
def _offset(ts: float, tz: str) -> float:
    return datetime.fromtimestamp(ts, tz=zone_info(tz)).utcoffset().total_seconds()
