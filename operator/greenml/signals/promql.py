"""Prometheus access (prometheus-api-client) with errors mapped to SignalError reasons,
and a CarbonSource over a user's own intensity exporter.

``PromQLSource(url, query)``: ``query`` is PromQL with ``$zone`` substituted (quoted
safely), default ``carbon_intensity_gco2_per_kwh{zone="$zone"}``. ``current`` is an
instant query, ``history`` a range query at ``step``; there is no provider forecast
(the chain's own forecaster takes over from history).

Every answer is checked (``Prometheus._call``, ``finite``): a 200 without ``data.result``
is Malformed, 400/422 (the query is wrong) are BadQuery, and a sample of "NaN", "+Inf" or
"-Inf" (Prometheus's string forms) or a negative intensity is Malformed — never a value.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.file import regular_series
from greenml.signals.http import check_url
from greenml.timeutil import ensure_utc

DEFAULT_INTENSITY_QUERY = 'carbon_intensity_gco2_per_kwh{zone="$zone"}'


class Prometheus:
    """Thin wrapper: instant and range queries returning the raw result lists."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        self.url = check_url(url, credentials=bool(headers), what="prometheus")
        # one quick retry only: the fallback chain, not a long backoff, handles an absent Prometheus
        retry = Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504), allowed_methods=("GET", "POST"))
        self._conn = PrometheusConnect(url=self.url, headers=headers, disable_ssl=False, retry=retry,
                                       timeout=int(max(1, timeout)))
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Prometheus(url={self.url!r})"

    def _call(self, what: str, path: str, params: dict[str, Any]) -> list[dict]:
        """GET /api/v1/<path> through the client's session (its retry adapter and TLS
        settings); every failure is a SignalError: connection → Unavailable/Timeout,
        400/422 (a bad query: Prometheus's ``bad_data``/``execution``) → BadQuery with
        Prometheus's error text, other statuses → ServerError, an answer without
        ``data.result`` (or not JSON) → Malformed."""
        c = self._conn
        try:
            resp = c._session.request(method=c._method, url=f"{self.url}/api/v1/{path}", params=params,
                                      verify=c._session.verify, headers=c.headers, auth=c.auth,
                                      cert=c._session.cert, timeout=self._timeout)
        except requests.Timeout:
            raise SignalError(f"prometheus: {what} timed out", reason="Timeout") from None
        except requests.RequestException as exc:
            raise SignalError(f"prometheus: {what}: connection failed ({type(exc).__name__})",
                              reason="Unavailable") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        said = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
        said = " ".join(said.split())[:300] if said else None
        if resp.status_code in (400, 422):
            raise SignalError(f"prometheus: {what}: HTTP {resp.status_code} bad query"
                              + (f": {said}" if said else ""), reason="BadQuery")
        if resp.status_code != 200:
            raise SignalError(f"prometheus: {what}: HTTP {resp.status_code}" + (f": {said}" if said else ""),
                              reason="Unauthorized" if resp.status_code in (401, 403) else "ServerError")
        if body is None:
            raise SignalError(f"prometheus: {what}: response is not JSON", reason="Malformed")
        if not isinstance(body, dict) or body.get("status") != "success":
            raise SignalError(f"prometheus: {what}: status is not success" + (f": {said}" if said else ""),
                              reason="Malformed")
        data = body.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
            raise SignalError(f"prometheus: {what}: response lacks data.result", reason="Malformed")
        return result

    def instant(self, query: str, at: datetime | None = None) -> list[dict]:
        params: dict[str, Any] = {"query": str(query)}
        if at is not None:
            params["time"] = ensure_utc(at).timestamp()
        return self._call("instant query", "query", params)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> list[dict]:
        return self._call("range query", "query_range", {
            "query": str(query), "start": round(ensure_utc(start).timestamp()),
            "end": round(ensure_utc(end).timestamp()), "step": f"{int(step.total_seconds())}s"})


def finite(value: Any, what: str) -> float:
    """A sample value (Prometheus sends strings: "NaN", "+Inf", "-Inf" included) as a finite
    float, else SignalError(reason="Malformed")."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SignalError(f"{what}: sample value {value!r} is not a number", reason="Malformed") from None
    if not math.isfinite(v):
        raise SignalError(f"{what}: sample value {value!r} is not finite", reason="Malformed")
    return v


def _quote(value: str) -> str:
    return json.dumps(value)[1:-1]  # escape quotes and backslashes for a PromQL string


class PromQLSource:
    """CarbonSource over a Prometheus intensity metric (see the module docstring)."""

    name = "prometheus"

    def __init__(self, url: str, *, query: str = DEFAULT_INTENSITY_QUERY, step: timedelta = timedelta(minutes=5),
                 timeout: float = 10.0) -> None:
        self.prom = Prometheus(url, timeout=timeout)
        self.query = query
        self.step = step

    def _q(self, zone: str) -> str:
        return self.query.replace("$zone", _quote(zone))

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        res = self.prom.instant(self._q(zone), now)
        if not res:
            raise SignalError(f"prometheus: no intensity series for zone {zone}", reason="UnknownZone")
        try:
            ts, val = res[0]["value"]
            t = datetime.fromtimestamp(float(ts), tz=ensure_utc(now).tzinfo)
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            raise SignalError("prometheus: malformed instant result", reason="Malformed") from None
        v = finite(val, f"prometheus: intensity for zone {zone}")
        if v < 0:
            raise SignalError(f"prometheus: intensity for zone {zone} is negative ({val})", reason="Malformed")
        slot = self.step.total_seconds()
        start = datetime.fromtimestamp(t.timestamp() // slot * slot, tz=t.tzinfo)
        return IntensitySeries(start, self.step, [v], source=self.name)

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        res = self.prom.range(self._q(zone), start, end, self.step)
        if not res:
            raise SignalError(f"prometheus: no intensity series for zone {zone}", reason="UnknownZone")
        try:
            pts = res[0]["values"]
            times = [datetime.fromtimestamp(float(ts), tz=ensure_utc(start).tzinfo) for ts, _ in pts]
            raw = [v for _, v in pts]
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            raise SignalError("prometheus: malformed range result", reason="Malformed") from None
        vals = [finite(v, f"prometheus: intensity for zone {zone}") for v in raw]
        if any(v < 0 for v in vals):
            raise SignalError(f"prometheus: negative intensity for zone {zone}", reason="Malformed")
        if not times:
            raise SignalError(f"prometheus: no intensity samples for zone {zone}", reason="Malformed")
        return regular_series(times, vals, name="prometheus range", source=self.name, step=self.step)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        raise SignalError("prometheus: no forecast endpoint (the own forecaster serves)", reason="Unavailable")
