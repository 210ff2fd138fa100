"""An in-memory source: serves a given intensity series (for the simulator, for files
already loaded, and for tests). Its forecast is the series itself from ``now`` — a
perfect forecast, labelled so — unless a ``forecaster`` is given.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable, Iterable

from greenml.signals.base import IntensitySeries, SignalError

Forecaster = Callable[[str, datetime, timedelta], IntensitySeries]


class SeriesSource:
    def __init__(self, series: IntensitySeries | dict[str, IntensitySeries], *, name: str | None = None,
                 zones: Iterable[str] | None = None, forecaster: Forecaster | None = None) -> None:
        if isinstance(series, IntensitySeries):
            self._by_zone: dict[str, IntensitySeries] = {z: series for z in (zones or ["*"])}
        else:
            self._by_zone = dict(series)
        self.name = name or next(iter(self._by_zone.values())).source
        self._forecaster = forecaster

    def _series(self, zone: str) -> IntensitySeries:
        s = self._by_zone.get(zone) or self._by_zone.get("*")
        if s is None:
            raise SignalError(f"no intensity series for zone {zone!r}", reason="UnknownZone")
        return s

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        s = self._series(zone)
        i = s.index_of(now)
        if not 0 <= i < len(s):
            raise SignalError(f"{now} is outside the series for {zone}", reason="Stale")
        return s.window(s.start + s.step * i, s.start + s.step * (i + 1))

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        return self._series(zone).window(start, end)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        if self._forecaster is not None:
            return self._forecaster(zone, now, horizon)
        s = self._series(zone)
        if now >= s.end:
            raise SignalError(f"{now} is past the end of the series for {zone}", reason="Stale")
        w = s.window(now, now + horizon)
        return replace(w, issued_at=now, meta={**w.meta, "forecast": "perfect"})
