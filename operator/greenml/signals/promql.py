"""Prometheus access (prometheus-api-client) with errors mapped to SignalError reasons,
and a CarbonSource over a user's own intensity exporter.

``PromQLSource(url, query)``: ``query`` is PromQL with ``$zone`` substituted (quoted
safely), default ``carbon_intensity_gco2_per_kwh{zone="$zone"}``. ``current`` is an
instant query, ``history`` a range query at ``step``; there is no provider forecast
(the chain's own forecaster takes over from history).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
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

    def _call(self, what: str, fn, *args: Any, **params: Any) -> list[dict]:
        try:
            result = fn(*args, params=params or None, timeout=self._timeout)
        except requests.Timeout:
            raise SignalError(f"prometheus: {what} timed out", reason="Timeout") from None
        except requests.RequestException as exc:
            raise SignalError(f"prometheus: {what}: connection failed ({type(exc).__name__})",
                              reason="Unavailable") from None
        except PrometheusApiClientException as exc:
            raise SignalError(f"prometheus: {what}: {exc}", reason="ServerError") from None
        except ValueError:
            raise SignalError(f"prometheus: {what}: response is not JSON", reason="Malformed") from None
        if not isinstance(result, list):
            raise SignalError(f"prometheus: {what}: unexpected result type", reason="Malformed")
        return result

    def instant(self, query: str, at: datetime | None = None) -> list[dict]:
        extra = {} if at is None else {"time": ensure_utc(at).timestamp()}
        return self._call("instant query", self._conn.custom_query, query, **extra)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> list[dict]:
        return self._call("range query", self._conn.custom_query_range, query, ensure_utc(start), ensure_utc(end),
                          f"{int(step.total_seconds())}s")


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
            t, v = datetime.fromtimestamp(float(ts), tz=ensure_utc(now).tzinfo), float(val)
        except (KeyError, TypeError, ValueError):
            raise SignalError("prometheus: malformed instant result", reason="Malformed") from None
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
            vals = [float(v) for _, v in pts]
        except (KeyError, TypeError, ValueError):
            raise SignalError("prometheus: malformed range result", reason="Malformed") from None
        return regular_series(times, vals, name="prometheus range", source=self.name)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        raise SignalError("prometheus: no forecast endpoint (the own forecaster serves)", reason="Unavailable")
