"""The embedded default: a compact parametric intensity profile per zone.

Used when no provider is configured or every other link of the fallback chain failed.
Every series it serves says ``source="embedded"`` and ``estimate=True``: it is a
climatology (typical level for that hour, season and day type), never live data.

Model (UTC time t, slot mid-point), 12 numbers per zone::

    I(t) = c0 + sum_k=1..3 [a_k cos(2πk h/24) + b_k sin(2πk h/24)]
              + s_c cos(2π d/365.25) + s_s sin(2π d/365.25)
              + cos(2π d/365.25) * [w_c cos(2π h/24) + w_s sin(2π h/24)]   (seasonal daily swing)
              + e * weekend

with h the UTC hour of day, d the day of year, weekend = Saturday/Sunday (UTC). Values
are clipped below at the lowest value seen in the fitting data.

Coefficients are least-squares fits by ``bench/derive_embedded_profile.py`` (which
prints them and their R²/MAE) to:

- DE, GB, US-CAL-CISO, US-MIDA-PJM: Electricity Maps hourly life-cycle intensity
  2021-2024, Electricity Maps Data Portal (ODbL). Attribution: "Electricity Maps".
- FR: Let's Wait Awhile 2020 (Wiesner et al., "Let's Wait Awhile", Middleware '21,
  doi:10.1145/3464298.3493399), computed from ENTSO-E Transparency Platform data.

No data rows are embedded, only these fitted coefficients.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.zones import ZoneMapping, profile_zone
from greenml.timeutil import ensure_utc

FEATURE_NAMES = ("c0", "a1", "b1", "a2", "b2", "a3", "b3", "s_c", "s_s", "w_c", "w_s", "e")

# Fitted by bench/derive_embedded_profile.py (gCO2e/kWh; see the module docstring for sources).
# R² of the hourly fit: DE 0.20, GB 0.13, US-CAL-CISO 0.68, US-MIDA-PJM 0.10, FR 0.31 (weather
# dominates the rest; the profile gives the typical shape, not the day's weather).
PROFILES: dict[str, tuple[float, ...]] = {
    "DE": (418.4, 48.33, -14.53, -28.04, 1.91, 1.48, -0.64, 38.83, -20.02, -52.14, 5.19, -53.13),
    "GB": (207.72, 10.65, -11.23, -16.91, -14.68, -0.01, 0.83, 2.06, -3.15, -24.7, -13.89, -30.03),
    "US-CAL-CISO": (259.38, -35.51, 64.39, 12, 17.06, -7.88, -0.94, 32.57, -39.48, -6.73, -0.81, -12.78),
    "US-MIDA-PJM": (415.26, 8.8, -2.96, 5.69, 5.6, -0.33, 1.9, -12.81, -0.58, -7.33, 1.57, -14.99),
    "FR": (59.19, -2.38, -0.67, -0.6, -1.71, 0.14, -0.41, 5.46, -12.92, -0.51, -0.4, -9.76),
}
# Lowest value in each zone's fitting data (the profile never goes below it).
FLOORS: dict[str, float] = {"DE": 107.1, "GB": 28.1, "US-CAL-CISO": 50.6, "US-MIDA-PJM": 265.5, "FR": 19.5}
# Other providers' names for areas inside a profiled zone (NESO's GB-1 … GB-18, WattTime's
# CAISO_NORTH, PJM_NJ, …) are mapped explicitly, with the reason, in greenml.signals.zones:
# the zone's climatology stands in for the area (an estimate, like every embedded series;
# meta["zone"] says which profile, meta["zone_map"] why).

EMBEDDED_STEP = timedelta(hours=1)
_DAY = 86400.0
_YEAR_DAYS = 365.25


def profile_features(unix_seconds: np.ndarray) -> np.ndarray:
    """Design matrix (n × 12) of the profile model for UTC unix times."""
    t = np.asarray(unix_seconds, dtype=np.float64)
    hour = (t % _DAY) / 3600.0
    days = t / _DAY
    doy = days - 365.25 * np.floor((days + 0.5) / 365.25)  # approximate day of year (phase only)
    weekday = (np.floor(days).astype(np.int64) + 3) % 7     # 1970-01-01 was a Thursday (3, Monday=0)
    dh = 2 * np.pi * hour / 24.0
    dy = 2 * np.pi * doy / _YEAR_DAYS
    cols = [np.ones_like(t)]
    for k in (1, 2, 3):
        cols += [np.cos(k * dh), np.sin(k * dh)]
    cols += [np.cos(dy), np.sin(dy), np.cos(dy) * np.cos(dh), np.cos(dy) * np.sin(dh)]
    cols.append((weekday >= 5).astype(np.float64))
    return np.column_stack(cols)


def known_zones() -> list[str]:
    return sorted(PROFILES)


def _mapping(zone: str) -> ZoneMapping:
    m = profile_zone(zone, frozenset(PROFILES))
    if m is None:
        raise SignalError(f"no embedded profile for zone {zone!r}; known: {', '.join(known_zones())} and the "
                          "providers' names for areas inside them (greenml.signals.zones)", reason="UnknownZone")
    return m


def _zone(zone: str) -> str:
    return _mapping(zone).profile


def profile_values(zone: str, start: datetime, step: timedelta, n: int) -> np.ndarray:
    """Profile values for n slots of ``step`` from ``start`` (evaluated at slot mid-points)."""
    z = _zone(zone)
    t0 = ensure_utc(start).timestamp() + step.total_seconds() / 2
    t = t0 + step.total_seconds() * np.arange(n)
    vals = profile_features(t) @ np.asarray(PROFILES[z])
    return np.maximum(vals, FLOORS.get(z, 0.0))


def _floor_hour(t: datetime) -> datetime:
    t = ensure_utc(t)
    return t.replace(minute=0, second=0, microsecond=0)


class EmbeddedSource:
    """CarbonSource over the built-in profiles: deterministic, offline, always an estimate."""

    name = "embedded"

    def __init__(self, step: timedelta = EMBEDDED_STEP) -> None:
        if step.total_seconds() <= 0 or 3600 % step.total_seconds():
            raise ValueError("embedded step must divide one hour")
        self.step = step

    def _series(self, zone: str, start: datetime, n: int, issued_at: datetime | None) -> IntensitySeries:
        vals = profile_values(zone, start, self.step, n)
        m = _mapping(zone)
        return IntensitySeries(start, self.step, vals, source="embedded", estimate=True, issued_at=issued_at,
                               meta={"zone": m.profile, "model": "climatology", **({"zone_map": m.why} if m.why else {})})

    def _slot(self, t: datetime) -> datetime:
        base = _floor_hour(t)
        k = int((ensure_utc(t) - base).total_seconds() // self.step.total_seconds())
        return base + self.step * k

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        return self._series(zone, self._slot(now), 1, None)

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        s0 = self._slot(start)
        n = max(0, -(-int((ensure_utc(end) - s0).total_seconds()) // int(self.step.total_seconds())))
        return self._series(zone, s0, n, None)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        s0 = self._slot(now)
        n = max(1, -(-int((ensure_utc(now) + horizon - s0).total_seconds()) // int(self.step.total_seconds())))
        return self._series(zone, s0, n, ensure_utc(now))
