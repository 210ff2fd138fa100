"""HTTP carbon-intensity providers (all normalised to gCO2e/kWh).

Response shapes follow the providers' public documentation; where we assume more than
the docs state, the class docstring says so. Every provider raises SignalError with a
reason (see greenml.signals.http) and is wrapped by FallbackChain in the operator.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.file import regular_series
from greenml.signals.http import JsonClient, check_url, field_of
from greenml.signals.robust import DEFAULT_RATE_LIMIT_BLOCK, Clock, RateLimiter, RetryPolicy
from greenml.timeutil import ensure_utc, format_time, parse_time

ELECTRICITYMAPS_URL = "https://api.electricitymap.org"
WATTTIME_URL = "https://api.watttime.org"
UKCARBON_URL = "https://api.carbonintensity.org.uk"

LBS_PER_MWH_TO_G_PER_KWH = 0.453592  # 1 lb = 453.592 g; 1 MWh = 1000 kWh


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
        except (ValueError, TypeError, AttributeError):
            raise SignalError(f"{what} point {i}: bad time {t!r}", reason="Malformed") from None
        if v is None:
            vals.append(float("nan"))  # a gap; interpolated by regular_series
        elif _number(v) and v >= 0:
            vals.append(float(v))
        else:  # a string, a negative, NaN or ±Inf (json accepts the tokens)
            raise SignalError(f"{what} point {i}: bad value {v!r}", reason="Malformed")
    return times, vals


def _series(rows: Any, time_key: str, value_key: str | tuple[str, ...], *, what: str, source: str,
            kind: str = "average", issued_at: datetime | None = None, scale: float = 1.0,
            step: timedelta | None = None, flags: Callable[[dict], list[str]] | None = None) -> IntensitySeries:
    times, vals = _points(rows, time_key, value_key, what)
    if not times:
        raise SignalError(f"{what}: no data points", reason="Malformed")
    if all(v != v for v in vals):  # all NaN
        raise SignalError(f"{what}: every point lacks a value", reason="Malformed")
    s = regular_series(times, [v * scale for v in vals], name=what, source=source, kind=kind,
                       issued_at=issued_at, step=step)
    if flags is None:
        return s
    quality: dict[str, int] = {}
    for row in rows:   # the provider's own quality flags, counted over the answer's points
        for f in flags(row) if isinstance(row, dict) else ():
            quality[f] = quality.get(f, 0) + 1
    # a point the provider itself flags (estimated, imputed, a forecast standing in for an
    # actual) makes the series an estimate, as status and metrics show it
    return IntensitySeries(s.start, s.step, s.values, s.source, s.estimate or bool(quality), s.issued_at, s.kind,
                           {**s.meta, "quality": {"points": len(rows), **quality}})


def _last_per(rows: Any, time_key: str) -> Any:
    """The points of an answer with one record per time (a time listed twice keeps its last
    record, in the place of the last); anything but a list is returned as is."""
    if not isinstance(rows, list):
        return rows
    by_time: dict[Any, Any] = {}
    for r in rows:
        key = r[time_key] if isinstance(r, dict) and isinstance(r.get(time_key), str) else id(r)
        by_time.pop(key, None)
        by_time[key] = r
    return list(by_time.values())


def _em_flags(row: dict) -> list[str]:
    return ["estimated"] if row.get("isEstimated") is True else []


def _wt_flags(row: dict) -> list[str]:
    return ["imputed"] if row.get("imputed_data_used") is True else []


def _object(body: Any, what: str) -> dict:
    if not isinstance(body, dict):
        raise SignalError(f"{what}: expected a JSON object, got {type(body).__name__}", reason="Malformed")
    return body


def _limiter(client_kw: dict, clock: Clock, limit: tuple[int, float] | None = None) -> RateLimiter:
    """The provider's limiter: it records a server's 429 block (and a client-side limit)."""
    return client_kw.pop("limiter", None) or RateLimiter(*(limit or (None, 1.0)), clock=clock)


def _blocking(client: JsonClient, fn: Callable[[], Any]) -> Any:
    """Run a request; a 429 blocks the provider for its Retry-After (default
    DEFAULT_RATE_LIMIT_BLOCK s): until then every call fails at once with RateLimited,
    without a request, and the chain serves from its next link."""
    try:
        return fn()
    except SignalError as exc:
        if exc.reason == "RateLimited" and getattr(exc, "status", None) == 429 and client.limiter is not None:
            ra = getattr(exc, "retry_after", None)
            client.limiter.block_for(DEFAULT_RATE_LIMIT_BLOCK if ra is None else ra)
        raise


HOUR = timedelta(hours=1)
UtcNow = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ElectricityMapsSource:
    """Electricity Maps API v3 (https://static.electricitymaps.com/api/docs/index.html).

    ``GET /v3/carbon-intensity/latest?zone=Z`` → ``{"zone", "carbonIntensity", "datetime", ...}``;
    ``/history?zone=Z`` → ``{"zone", "history": [{"carbonIntensity", "datetime"}, …]}`` (the last
    24 h, on every plan); ``/past-range?zone=Z&start=&end=`` → ``{"zone", "data": [...same
    items...]}`` (older ranges; paid plans); ``/forecast?zone=Z`` → ``{"zone", "forecast": [...],
    "updatedAt"}`` (paid plans; else 401/403/404 and the chain falls back). Token in the
    ``auth-token`` header. Life-cycle intensity, hourly (the API's default granularity: a
    single point covers one hour).

    Checks: the answer's ``zone`` (when present) must be the zone asked for, else Malformed.
    ``history`` picks the endpoint by the range's *position*: /history when the range starts
    within the last 24 h (by the wall clock, ``utcnow``), else /past-range, asked in pieces of
    at most ``PAST_RANGE_SPAN`` (10 days: the API's limit at hourly granularity) and for at
    most ``PAST_RANGE_MAX`` back (older parts are left out, ``meta["partial"]``). When
    /past-range is refused (400/401/403/404: a plan without it, e.g. the free tier) it
    serves the part of the range /history covers, marked ``meta["partial"]``, and asks
    /past-range again only after ``PAST_RANGE_RETRY`` seconds. Weeks of history on such a
    plan come from the local record of what was read (greenml.signals.history).
    A 429 blocks the provider for its Retry-After (see ``_blocking``).
    """

    name = "electricitymaps"
    kind = "average"
    HISTORY_SPAN = timedelta(hours=24)
    PAST_RANGE_SPAN = timedelta(days=10)   # the most one /past-range request may span (hourly)
    PAST_RANGE_MAX = timedelta(days=60)    # the furthest back one history() call reaches
    PAST_RANGE_RETRY = 3600.0   # seconds /past-range is not asked again after a refusal
    PAST_RANGE_REFUSED = frozenset({400, 401, 403, 404})   # the plan does not include it

    def __init__(self, token: str, *, base_url: str = ELECTRICITYMAPS_URL, policy: RetryPolicy = RetryPolicy(),
                 client: JsonClient | None = None, clock: Clock = time.monotonic, utcnow: UtcNow = _utcnow,
                 **client_kw: Any) -> None:
        if not token:
            raise SignalError("electricitymaps: provider_token is empty", reason="Misconfigured")
        url = check_url(base_url, credentials=True, what=self.name)
        self._headers = {"auth-token": token}
        self._utcnow = utcnow
        self._clock = clock
        self._past_range_refused_until = float("-inf")
        limiter = _limiter(client_kw, clock)
        self._client = client or JsonClient(self.name, url, policy=policy, limiter=limiter, secrets=(token,),
                                            **client_kw)

    def __repr__(self) -> str:
        return f"ElectricityMapsSource(base_url={self._client.base_url!r})"

    def _get(self, path: str, zone: str, what: str, **params: str) -> dict:
        body = _object(_blocking(self._client, lambda: self._client.get(path, params={"zone": zone, **params},
                                                                        headers=self._headers)), what)
        answered = body.get("zone")
        if answered is not None and answered != zone:
            raise SignalError(f"{what}: answer is for zone {answered!r}, not {zone!r}", reason="Malformed")
        return body

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        what = f"{self.name} latest {zone}"
        body = self._get("/v3/carbon-intensity/latest", zone, what)
        return _series([body], "datetime", "carbonIntensity", what=what, source=self.name, step=HOUR,
                       flags=_em_flags)

    def _recent(self, zone: str, what: str) -> Any:
        return field_of(self._get("/v3/carbon-intensity/history", zone, what), "history", what=what)

    def _past_range(self, zone: str, start: datetime, end: datetime) -> list:
        """/past-range over [start, end) in pieces of at most PAST_RANGE_SPAN, oldest first."""
        rows: list = []
        a = start
        while a < end:
            b = min(end, a + self.PAST_RANGE_SPAN)
            what = f"{self.name} past-range {zone}"
            body = self._get("/v3/carbon-intensity/past-range", zone, what, start=format_time(a), end=format_time(b))
            piece = field_of(body, "data", what=what)
            if not isinstance(piece, list):
                raise SignalError(f"{what}: expected a list of points", reason="Malformed")
            rows += piece
            a = b
        return rows

    def _refused(self, exc: SignalError) -> bool:
        return getattr(exc, "status", None) in self.PAST_RANGE_REFUSED

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        start, end = ensure_utc(start), ensure_utc(end)
        what = f"{self.name} history {zone}"
        now = self._utcnow()
        partial, endpoint = False, "past-range"
        if start >= now - self.HISTORY_SPAN:   # what /history serves: the last 24 h
            rows, endpoint = self._recent(zone, what), "history"
        elif self._clock() < self._past_range_refused_until:  # refused lately: not asked again
            rows, partial, endpoint = self._recent(zone, what), True, "history"
        else:
            first = max(start, min(end, now) - self.PAST_RANGE_MAX)
            partial = first > start
            try:
                rows = self._past_range(zone, first, min(end, now + HOUR))
            except SignalError as exc:
                if not self._refused(exc):
                    raise
                rows, partial, endpoint = self._recent(zone, what), True, "history"   # the last 24 h only
                # /history answered: the plan refused /past-range, not the zone (a 404 for both is the zone)
                self._past_range_refused_until = self._clock() + self.PAST_RANGE_RETRY
        rows = _last_per(rows, "datetime")   # pieces meet at their ends: one point per hour
        s = _series(rows, "datetime", "carbonIntensity", what=what, source=self.name, flags=_em_flags,
                    step=HOUR if isinstance(rows, list) and len(rows) == 1 else None).window(start, end)
        if partial and len(s) == 0:
            raise SignalError(f"{what}: /past-range refused (plan) and /history does not reach back to "
                              f"{start.isoformat()}", reason="Unauthorized")
        return replace(s, meta={**s.meta, "endpoint": endpoint, **({"partial": True} if partial else {})})

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        what = f"{self.name} forecast {zone}"
        body = self._get("/v3/carbon-intensity/forecast", zone, what)
        rows = field_of(body, "forecast", what=what)
        updated = body.get("updatedAt")
        try:
            issued = parse_time(updated) if isinstance(updated, str) else ensure_utc(now)
        except ValueError:
            raise SignalError(f"{what}: bad updatedAt {updated!r}", reason="Malformed") from None
        s = _series(rows, "datetime", "carbonIntensity", what=what, source=self.name, issued_at=issued, flags=_em_flags,
                    step=HOUR if isinstance(rows, list) and len(rows) == 1 else None)
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
    Interval length: ``meta.data_point_period_seconds`` (300 s on v3).
    Errors: a 401, or a 403 with no JSON error (nginx's page), means the token: one re-login
    and retry. A 403 with a JSON message (``Invalid scope…``: the plan does not cover the
    region) raises reason ``Forbidden`` with the API's message, without a re-login.
    """

    name = "watttime"
    kind = "marginal"
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
        limiter = _limiter(client_kw, clock, self.RATE_LIMIT)
        self._client = client or JsonClient(self.name, url, policy=policy, limiter=limiter,
                                            secrets=(password,), **client_kw)

    def __repr__(self) -> str:
        return f"WattTimeSource(base_url={self._client.base_url!r})"

    def _login(self) -> str:
        body = _blocking(self._client, lambda: self._client.get("/login", auth=(self._user, self._password)))
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

    @staticmethod
    def _token_rejected(exc: SignalError) -> bool:
        """A 401, or a 403 without a JSON error (nginx's page): the token. A 403 whose body
        says why (``Invalid scope``: the plan does not cover the region or signal) is not."""
        return exc.reason == "Unauthorized" and (getattr(exc, "status", None) == 401
                                                 or not getattr(exc, "detail", None))

    def _get(self, path: str, params: dict[str, str]) -> Any:
        def call(token: str) -> Any:
            try:
                return _blocking(self._client, lambda: self._client.get(
                    path, params=params, headers={"Authorization": f"Bearer {token}"}))
            except SignalError as exc:
                detail = getattr(exc, "detail", None)
                if exc.reason == "Unauthorized" and getattr(exc, "status", None) == 403 and detail:
                    raise SignalError(f"{self.name}: GET {path}: HTTP 403: {detail} (the account's plan does not "
                                      f"cover region {params.get('region')!r}; not a credentials problem)",
                                      reason="Forbidden") from None
                raise

        try:
            return call(self._bearer())
        except SignalError as exc:
            if not self._token_rejected(exc):
                raise
            return call(self._bearer(force=True))  # expired early: log in once more

    def _moer(self, body: Any, what: str, issued: bool) -> IntensitySeries:
        body = _object(body, what)
        meta = _object(field_of(body, "meta", what=what), f"{what} meta")
        units = field_of(meta, "units", what=f"{what} meta")
        scale = {"lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH, "g_co2_per_kwh": 1.0}.get(units)
        if scale is None:
            raise SignalError(f"{what}: unexpected units {units!r}", reason="Malformed")
        rows = field_of(body, "data", what=what)
        gen = meta.get("generated_at") if issued else None
        try:
            issued_at = parse_time(gen) if isinstance(gen, str) else None
        except ValueError:
            raise SignalError(f"{what}: bad generated_at {gen!r}", reason="Malformed") from None
        return _series(rows, "point_time", "value", what=what, source=self.name, kind="marginal", scale=scale,
                       flags=_wt_flags,
                       issued_at=issued_at, step=self._period(meta, rows, what))

    @staticmethod
    def _period(meta: dict, rows: Any, what: str) -> timedelta | None:
        """The interval length WattTime states: ``meta.data_point_period_seconds`` (v3), else a
        point's ``frequency`` (older answers); None: inferred from the spacing."""
        first = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
        for v in (meta.get("data_point_period_seconds"), first.get("frequency")):
            if v is None:
                continue
            if not _number(v) or not 1 <= v <= 7 * 86400:
                raise SignalError(f"{what}: bad data point period {v!r}", reason="Malformed")
            return timedelta(seconds=float(v))
        return None

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


def _actual(intensity: Any) -> Any:
    return intensity.get("actual") if isinstance(intensity, dict) else None


def _uk_value(intensity: Any, actual: bool) -> Any:
    """The period's actual (when wanted and present), else its forecast."""
    if not isinstance(intensity, dict):
        return None
    if actual and intensity.get("actual") is not None:
        return intensity["actual"]
    return intensity.get("forecast")


class UKCarbonSource:
    """NESO Carbon Intensity API (https://carbon-intensity.github.io/api-definitions/), no key.

    Zones: ``GB`` (national) or ``GB-<regionid>`` (1–17 DNO regions and nations, e.g.
    ``GB-13`` London; 18 is GB as a region). National: ``GET /intensity`` (current),
    ``/intensity/{from}/{to}``, ``/intensity/{from}/fw48h`` → ``{"data": [{"from", "to",
    "intensity": {"forecast", "actual", "index"}}]}``. Regional: ``/regional/regionid/{id}``,
    ``/regional/intensity/{from}/{to}/regionid/{id}`` and ``…/{from}/fw48h/regionid/{id}`` →
    ``{"data": {"regionid", "data": [...same items...]}}`` (the current endpoint wraps it
    in a list: ``{"data": [{"regionid", "data": [...]}]}``). Actuals are national only;
    history uses ``actual`` and falls back to ``forecast`` where it is null.
    Interval length: each period's ``to - from`` (30 min). A period listed twice (the API
    has answered so, api-definitions#17) keeps its last record.
    """

    name = "ukcarbon"
    kind = "average"
    REGIONS = range(1, 19)

    def __init__(self, *, base_url: str = UKCARBON_URL, policy: RetryPolicy = RetryPolicy(),
                 client: JsonClient | None = None, clock: Clock = time.monotonic, **client_kw: Any) -> None:
        url = check_url(base_url, credentials=False, what=self.name)
        limiter = _limiter(client_kw, clock)
        self._client = client or JsonClient(self.name, url, policy=policy, limiter=limiter, **client_kw)

    def __repr__(self) -> str:
        return f"UKCarbonSource(base_url={self._client.base_url!r})"

    @classmethod
    def _region(cls, zone: str) -> int | None:
        if zone in ("GB", "UK", "GB-national"):
            return None
        if zone.startswith("GB-") and zone[3:].isdigit() and int(zone[3:]) in cls.REGIONS:
            return int(zone[3:])
        raise SignalError(f"ukcarbon: zone {zone!r} is not GB or GB-<1..18>", reason="UnknownZone")

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

    @staticmethod
    def _period(rows: list, what: str) -> timedelta | None:
        """The periods' stated length (``to - from``); they must all agree."""
        lengths = set()
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or r.get("to") is None:
                continue
            try:
                lengths.add(parse_time(r["to"]) - parse_time(r.get("from")))
            except (ValueError, TypeError, AttributeError):
                raise SignalError(f"{what} period {i}: bad from/to", reason="Malformed") from None
        if not lengths:
            return None
        if len(lengths) > 1 or min(lengths) <= timedelta(0):
            raise SignalError(f"{what}: periods of different or non-positive lengths {sorted(map(str, lengths))}",
                              reason="Malformed")
        return lengths.pop()

    def _fetch(self, zone: str, national: str, regional: str, what: str, *, actual: bool,
               issued_at: datetime | None = None) -> IntensitySeries:
        region = self._region(zone)
        path = national if region is None else regional.format(region=region)
        rows = self._rows(_blocking(self._client, lambda: self._client.get(path)), region is not None, what)
        if not isinstance(rows, list):
            raise SignalError(f"{what}: expected a list of periods", reason="Malformed")
        rows = _last_per(rows, "from")   # a period listed twice: the last record wins
        points = [{"from": r.get("from"), "v": _uk_value(r.get("intensity"), actual),
                   # an actual wanted but absent: the period's forecast stands in
                   "forecast": actual and _actual(r.get("intensity")) is None}
                  if isinstance(r, dict) else r for r in rows]
        return _series(points, "from", "v", what=what, source=self.name, issued_at=issued_at,
                       step=self._period(rows, what), flags=lambda p: ["forecast"] if p.get("forecast") else [])

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
