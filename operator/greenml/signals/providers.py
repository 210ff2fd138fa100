"""HTTP carbon-intensity providers (all normalised to gCO2e/kWh).

Response shapes follow the providers' public documentation; where we assume more than
the docs state, the class docstring says so. Every provider raises SignalError with a
reason (see greenml.signals.http) and is wrapped by FallbackChain in the operator.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.file import regular_series
from greenml.signals.http import JsonClient, check_url, field_of
from greenml.signals.robust import Clock, RateLimiter, RetryPolicy
from greenml.timeutil import ensure_utc, format_time, parse_time

ELECTRICITYMAPS_URL = "https://api.electricitymap.org"
WATTTIME_URL = "https://api.watttime.org"
UKCARBON_URL = "https://api.carbonintensity.org.uk"

LBS_PER_MWH_TO_G_PER_KWH = 0.453592  # 1 lb = 453.592 g; 1 MWh = 1000 kWh


def _points(rows: Any, time_key: str, value_key: str | tuple[str, ...], what: str) -> tuple[list[datetime], list[float]]:
    if not isinstance(rows, list):
        raise SignalError(f"{what}: expected a list of points", reason="Malformed")
    times: list[datetime] = []
    vals: list[float] = []
    keys = (value_key,) if isinstance(value_key, str) else value_key
    for i, row in enumerate(rows):
        t = field_of(row, time_key, what=f"{what} point {i}")
        v: Any = row
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        try:
            times.append(parse_time(t))
        except (ValueError, TypeError):
            raise SignalError(f"{what} point {i}: bad time {t!r}", reason="Malformed") from None
        if v is None:
            vals.append(float("nan"))  # a gap; interpolated by regular_series
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            vals.append(float(v))
        else:
            raise SignalError(f"{what} point {i}: bad value {v!r}", reason="Malformed")
    return times, vals


def _series(rows: Any, time_key: str, value_key: str | tuple[str, ...], *, what: str, source: str,
            kind: str = "average", issued_at: datetime | None = None, scale: float = 1.0) -> IntensitySeries:
    times, vals = _points(rows, time_key, value_key, what)
    if not times:
        raise SignalError(f"{what}: no data points", reason="Malformed")
    if all(v != v for v in vals):  # all NaN
        raise SignalError(f"{what}: every point lacks a value", reason="Malformed")
    s = regular_series(times, [v * scale for v in vals], name=what, source=source, kind=kind, issued_at=issued_at)
    return s


class ElectricityMapsSource:
    """Electricity Maps API v3 (https://static.electricitymaps.com/api/docs/index.html).

    ``GET /v3/carbon-intensity/latest?zone=Z`` → ``{"zone", "carbonIntensity", "datetime", ...}``;
    ``/history?zone=Z`` → ``{"history": [{"carbonIntensity", "datetime"}, …]}`` (last 24 h);
    ``/past-range?zone=Z&start=&end=`` (same item shape, for older ranges);
    ``/forecast?zone=Z`` → ``{"forecast": [...], "updatedAt"}`` (paid plans; else 401/403/404
    and the chain falls back). Token in the ``auth-token`` header. Life-cycle intensity.
    """

    name = "electricitymaps"

    def __init__(self, token: str, *, base_url: str = ELECTRICITYMAPS_URL, policy: RetryPolicy = RetryPolicy(),
                 client: JsonClient | None = None, **client_kw: Any) -> None:
        if not token:
            raise SignalError("electricitymaps: provider_token is empty", reason="Misconfigured")
        url = check_url(base_url, credentials=True, what=self.name)
        self._headers = {"auth-token": token}
        self._client = client or JsonClient(self.name, url, policy=policy, secrets=(token,), **client_kw)

    def __repr__(self) -> str:
        return f"ElectricityMapsSource(base_url={self._client.base_url!r})"

    def _get(self, path: str, **params: str) -> Any:
        return self._client.get(path, params=params, headers=self._headers)

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        body = self._get("/v3/carbon-intensity/latest", zone=zone)
        s = _series([body], "datetime", "carbonIntensity", what=f"{self.name} latest {zone}", source=self.name)
        return s

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        if ensure_utc(end) - ensure_utc(start) <= timedelta(hours=24):
            body = self._get("/v3/carbon-intensity/history", zone=zone)
            rows = field_of(body, "history", what=f"{self.name} history")
        else:
            body = self._get("/v3/carbon-intensity/past-range", zone=zone,
                             start=format_time(start), end=format_time(end))
            rows = field_of(body, "data", what=f"{self.name} past-range")
        return _series(rows, "datetime", "carbonIntensity", what=f"{self.name} history {zone}",
                       source=self.name).window(start, end)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        body = self._get("/v3/carbon-intensity/forecast", zone=zone)
        rows = field_of(body, "forecast", what=f"{self.name} forecast")
        issued = parse_time(body["updatedAt"]) if isinstance(body.get("updatedAt"), str) else ensure_utc(now)
        s = _series(rows, "datetime", "carbonIntensity", what=f"{self.name} forecast {zone}",
                    source=self.name, issued_at=issued)
        return s.window(now, now + horizon)


class WattTimeSource:
    """WattTime API v3 (https://docs.watttime.org/): marginal emissions (MOER).

    ``GET /login`` with HTTP Basic → ``{"token"}`` (valid 30 min; refreshed after
    ``token_ttl``, and once on a 401). ``GET /v3/forecast?region=R&signal_type=co2_moer``
    and ``/v3/historical?region=R&start=&end=&signal_type=co2_moer`` →
    ``{"data": [{"point_time", "value"}], "meta": {"units": "lbs_co2_per_mwh", "generated_at", …}}``.
    Values in lbs/MWh are converted ×0.453592 to g/kWh; series have ``kind="marginal"``.
    ``current`` is the newest point of the last hour of /v3/historical (assumption: the
    free tier serves the last hour of historical data for its region).
    Client-side limit: 3,000 requests per 5 minutes (WattTime's documented limit).
    """

    name = "watttime"
    RATE_LIMIT = (3000, 300.0)

    def __init__(self, username: str, password: str, *, base_url: str = WATTTIME_URL,
                 policy: RetryPolicy = RetryPolicy(), token_ttl: float = 25 * 60, clock: Clock = time.monotonic,
                 client: JsonClient | None = None, **client_kw: Any) -> None:
        if not username or not password:
            raise SignalError("watttime: provider_username and provider_password are required", reason="Misconfigured")
        url = check_url(base_url, credentials=True, what=self.name)
        self._user, self._password = username, password
        self._clock = clock
        self._token_ttl = token_ttl
        self._token: str | None = None
        self._token_at = 0.0
        self._lock = threading.Lock()
        limiter = RateLimiter(*self.RATE_LIMIT, clock=clock)
        self._client = client or JsonClient(self.name, url, policy=policy, limiter=limiter,
                                            secrets=(password,), **client_kw)

    def __repr__(self) -> str:
        return f"WattTimeSource(base_url={self._client.base_url!r})"

    def _login(self) -> str:
        body = self._client.get("/login", auth=(self._user, self._password))
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise SignalError("watttime: login response lacks token", reason="Malformed")
        self._client.secrets = (self._password, token)
        self._token, self._token_at = token, self._clock()
        return token

    def _bearer(self, force: bool = False) -> str:
        with self._lock:
            if force or self._token is None or self._clock() - self._token_at >= self._token_ttl:
                return self._login()
            return self._token

    def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            return self._client.get(path, params=params, headers={"Authorization": f"Bearer {self._bearer()}"})
        except SignalError as exc:
            if exc.reason != "Unauthorized":
                raise
            token = self._bearer(force=True)  # expired early: log in once more
            return self._client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})

    def _moer(self, body: Any, what: str, issued: bool) -> IntensitySeries:
        units = field_of(body, "meta", "units", what=what)
        scale = {"lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH, "g_co2_per_kwh": 1.0}.get(units)
        if scale is None:
            raise SignalError(f"{what}: unexpected units {units!r}", reason="Malformed")
        gen = body["meta"].get("generated_at") if issued else None
        return _series(field_of(body, "data", what=what), "point_time", "value", what=what, source=self.name,
                       kind="marginal", scale=scale, issued_at=parse_time(gen) if isinstance(gen, str) else None)

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        body = self._get("/v3/historical", {"region": zone, "signal_type": "co2_moer",
                                            "start": format_time(start), "end": format_time(end)})
        return self._moer(body, f"{self.name} historical {zone}", False).window(start, end)

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        s = self.history(zone, now - timedelta(hours=1), now)
        if len(s) == 0:
            raise SignalError(f"{self.name}: no data in the last hour for {zone}", reason="Stale")
        return s.window(s.start + s.step * (len(s) - 1), s.end)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        hours = max(1, min(72, int(-(-horizon.total_seconds() // 3600))))
        body = self._get("/v3/forecast", {"region": zone, "signal_type": "co2_moer", "horizon_hours": str(hours)})
        s = self._moer(body, f"{self.name} forecast {zone}", True)
        if s.issued_at is None:
            s = IntensitySeries(s.start, s.step, s.values, s.source, s.estimate, ensure_utc(now), s.kind, s.meta)
        return s.window(now, now + horizon)


def _uk_value(intensity: Any, actual: bool) -> Any:
    """The period's actual (when wanted and present), else its forecast."""
    if not isinstance(intensity, dict):
        return None
    if actual and intensity.get("actual") is not None:
        return intensity["actual"]
    return intensity.get("forecast")


class UKCarbonSource:
    """NESO Carbon Intensity API (https://carbon-intensity.github.io/api-definitions/), no key.

    Zones: ``GB`` (national) or ``GB-<regionid>`` (1–17, e.g. ``GB-13`` London).
    National: ``GET /intensity`` (current), ``/intensity/{from}/{to}``, ``/intensity/{from}/fw48h``
    → ``{"data": [{"from", "to", "intensity": {"forecast", "actual", "index"}}]}``.
    Regional: ``/regional/regionid/{id}`` and ``/regional/intensity/{from}/fw48h/regionid/{id}``
    → ``{"data": {"regionid", "data": [...same items...]}}`` (the current endpoint wraps it
    in a list: ``{"data": [{"regionid", "data": [...]}]}``). Actuals are national only;
    history uses ``actual`` and falls back to ``forecast`` where it is null.
    """

    name = "ukcarbon"

    def __init__(self, *, base_url: str = UKCARBON_URL, policy: RetryPolicy = RetryPolicy(),
                 client: JsonClient | None = None, **client_kw: Any) -> None:
        url = check_url(base_url, credentials=False, what=self.name)
        self._client = client or JsonClient(self.name, url, policy=policy, **client_kw)

    def __repr__(self) -> str:
        return f"UKCarbonSource(base_url={self._client.base_url!r})"

    @staticmethod
    def _region(zone: str) -> int | None:
        if zone in ("GB", "UK", "GB-national"):
            return None
        if zone.startswith("GB-") and zone[3:].isdigit() and 1 <= int(zone[3:]) <= 17:
            return int(zone[3:])
        raise SignalError(f"ukcarbon: zone {zone!r} is not GB or GB-<1..17>", reason="UnknownZone")

    @staticmethod
    def _t(t: datetime) -> str:
        return ensure_utc(t).strftime("%Y-%m-%dT%H:%MZ")

    def _rows(self, body: Any, regional: bool, what: str) -> Any:
        data = field_of(body, "data", what=what)
        if not regional:
            return data
        if isinstance(data, list):
            data = field_of(data, 0, what=what)
        return field_of(data, "data", what=what)

    def _fetch(self, zone: str, national: str, regional: str, what: str, *, actual: bool,
               issued_at: datetime | None = None) -> IntensitySeries:
        region = self._region(zone)
        path = national if region is None else regional.format(region=region)
        rows = self._rows(self._client.get(path), region is not None, what)
        if not isinstance(rows, list):
            raise SignalError(f"{what}: expected a list of periods", reason="Malformed")
        points = [{"from": r.get("from"), "v": _uk_value(r.get("intensity"), actual)} if isinstance(r, dict) else r
                  for r in rows]
        return _series(points, "from", "v", what=what, source=self.name, issued_at=issued_at)

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        return self._fetch(zone, "/intensity", "/regional/regionid/{region}", f"{self.name} current {zone}",
                           actual=True)

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        a, b = self._t(start), self._t(end)
        s = self._fetch(zone, f"/intensity/{a}/{b}", f"/regional/intensity/{a}/{b}/regionid/{{region}}",
                        f"{self.name} history {zone}", actual=True)
        return s.window(start, end)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        a = self._t(now)
        s = self._fetch(zone, f"/intensity/{a}/fw48h", f"/regional/intensity/{a}/fw48h/regionid/{{region}}",
                        f"{self.name} forecast {zone}", actual=False, issued_at=ensure_utc(now))
        return s.window(now, now + horizon)
