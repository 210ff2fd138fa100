"""Forecasts as issued at ``now``: the ``forecaster`` functions ``(zone, now, horizon) ->
IntensitySeries`` that ``SeriesSource`` accepts.

- ``perfect``: the actual series itself (perfect foresight: the upper bound).
- ``noisy``: actual + Gaussian noise with σ = fraction × mean(actual), one draw per
  target slot for the whole run (the Let's Wait Awhile model, Wiesner et al.,
  Middleware '21, §5: the same noisy series serves every issue time).
- ``snapshots``: forecasts as really issued (FORECASTS.csv): the latest issue at or
  before ``now``.
- ``builtin``: greenml's own forecaster (``greenml.signals.forecaster``) from past actuals only.
- ``blended``: a provider's forecasts as issued (``snapshots``), corrected by the latest
  actual and blended with the builtin forecaster (``forecaster.blend_with_provider``).
- ``seasonal_naive``: the last 24 h repeated (a reference point for the benchmarks).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable

import numpy as np

from greenml.signals.base import IntensitySeries, SignalError
from greenml.sim.jobs import ForecastSnapshots

Forecaster = Callable[[str, datetime, timedelta], IntensitySeries]
DAY = timedelta(days=1)


def perfect(actual: IntensitySeries) -> Forecaster:
    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        if now >= actual.end:
            raise SignalError(f"{now} is past the end of the intensity series", reason="Stale")
        w = actual.window(now, now + horizon)
        return replace(w, issued_at=now, meta={"forecast": "perfect"})
    return forecast


def noisy(actual: IntensitySeries, fraction: float, seed: int) -> Forecaster:
    if fraction < 0:
        raise ValueError(f"--forecast-error must be >= 0, got {fraction}")
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, fraction * float(np.mean(actual.values)), len(actual))
    series = replace(actual, values=actual.values + noise, estimate=True, source=f"noisy({fraction:g})")

    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        if now >= series.end:
            raise SignalError(f"{now} is past the end of the intensity series", reason="Stale")
        w = series.window(now, now + horizon)
        return replace(w, issued_at=now, meta={"forecast": "noisy", "fraction": fraction, "seed": seed})
    return forecast


def snapshots(snaps: ForecastSnapshots) -> Forecaster:
    issues = np.array([i.timestamp() for i in snaps.issues])
    built: dict[int, IntensitySeries] = {}

    def series_for(k: int) -> IntensitySeries:
        s = built.get(k)
        if s is None:
            ts = np.array([t.timestamp() for t in snaps.targets[k]])
            vals = snaps.values[k]
            step = float(np.min(np.diff(ts))) if len(ts) > 1 else 1800.0
            idx = np.round((ts - ts[0]) / step).astype(np.int64)
            grid = np.interp(np.arange(idx[-1] + 1), idx, vals)
            s = IntensitySeries(snaps.targets[k][0], timedelta(seconds=step), grid, source="forecast-file",
                                estimate=True, issued_at=snaps.issues[k], meta={"forecast": "snapshots"})
            built[k] = s
        return s

    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        k = int(np.searchsorted(issues, now.timestamp(), side="right")) - 1
        if k < 0:
            raise SignalError(f"no forecast issued at or before {now.isoformat()}", reason="NoForecast")
        s = series_for(k)
        if now >= s.end:
            raise SignalError(f"the latest forecast (issued {s.issued_at}) ends before {now.isoformat()}", reason="Stale")
        return s.window(now, now + horizon) if now >= s.start else s
    return forecast


def _past(actual: IntensitySeries, now: datetime, lookback: timedelta) -> IntensitySeries:
    """The actuals of the ``lookback`` before ``now`` (the slot containing ``now`` excluded)."""
    i = actual.index_of(now)
    return actual.window(max(actual.start, now - lookback), actual.start + actual.step * max(0, i))


def builtin(actual: IntensitySeries) -> Forecaster:
    """Greenml's own forecaster (``signals.forecaster.forecast_from_history``) fed only the
    actuals before ``now`` (the history is cut there before the forecaster sees it)."""
    from greenml.signals.forecaster import ForecasterPolicy, forecast_from_history

    fp = ForecasterPolicy()
    lookback = timedelta(days=fp.days)

    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        past = _past(actual, now, lookback)
        if len(past) == 0:
            raise SignalError(f"no history before {now.isoformat()} to forecast from", reason="InsufficientHistory")
        return forecast_from_history(past, now, horizon, fp)
    return forecast


def blended(snaps: ForecastSnapshots, actual: IntensitySeries) -> Forecaster:
    """The provider's forecast as issued at ``now`` (``snapshots``), corrected by the last
    actual before ``now`` and blended with the builtin forecaster on the actuals before ``now``
    (``signals.forecaster.blend_with_provider``)."""
    from greenml.signals.forecaster import ForecasterPolicy, blend_with_provider

    fp = ForecasterPolicy()
    lookback = timedelta(days=fp.days)
    provider = snapshots(snaps)

    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        b = blend_with_provider(provider(zone, now, horizon), _past(actual, now, lookback), now, horizon, fp)
        return replace(b, meta={**b.meta, "forecast": "blended"})
    return forecast


def seasonal_naive(actual: IntensitySeries) -> Forecaster:
    """Stand-in: the last 24 h of actuals, repeated over the horizon."""
    per_day = max(1, int(round(DAY / actual.step)))

    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        i = actual.index_of(now)          # slots [0, i) are in the past
        if i <= 0:
            raise SignalError(f"no history before {now.isoformat()} to forecast from", reason="NoHistory")
        past = actual.values[max(0, i - per_day):i]
        n = max(1, int(np.ceil(horizon / actual.step)) + 1)
        vals = np.resize(past, n)
        return IntensitySeries(actual.start + actual.step * i, actual.step, vals, source="builtin", estimate=True,
                               issued_at=now, meta={"forecast": "seasonal-naive"})
    return forecast
