"""Providers against their documented JSON, served from a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from greenml.settings import Settings
from greenml.signals import FallbackChain, SignalError, build_source
from greenml.signals.http import JsonClient, check_url
from greenml.signals.providers import ElectricityMapsSource, UKCarbonSource, WattTimeSource
from greenml.signals.robust import RetryPolicy

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "em-secret-token-123"
PASSWORD = "wt-secret-pass-456"
FAST = RetryPolicy(attempts=2, base_delay=0.0, timeout=0.3)

Reply = tuple[int, dict, bytes]


class Server:
    """Routes: path (without query) → function(request) -> (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[dict], Reply]] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                req = {"path": parts.path, "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
                       "headers": dict(self.headers)}
                server.requests.append(req)
                fn = server.routes.get(parts.path)
                status, headers, body = fn(req) if fn else (404, {}, b'{"error":"not found"}')
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def json(self, path: str, body, status: int = 200, headers: dict | None = None) -> None:
        self.routes[path] = lambda req: (status, headers or {}, json.dumps(body).encode())


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def hourly(n: int, start: datetime, key: str = "carbonIntensity", tkey: str = "datetime", base: float = 300.0):
    return [{tkey: (start + timedelta(hours=i)).isoformat().replace("+00:00", "Z"), key: base + i} for i in range(n)]


# ---- Electricity Maps -----------------------------------------------------------------
def em(server, **kw) -> ElectricityMapsSource:
    return ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, sleep=lambda s: None,
                                 utcnow=lambda: NOW, **kw)


def test_em_latest_history_forecast(server):
    server.json("/v3/carbon-intensity/latest", {"zone": "DE", "carbonIntensity": 302, "datetime": "2024-05-01T11:00:00.000Z",
                                                "updatedAt": "2024-05-01T11:40:00.000Z", "emissionFactorType": "lifecycle"})
    server.json("/v3/carbon-intensity/history", {"zone": "DE", "history": hourly(24, NOW - timedelta(hours=24))})
    server.json("/v3/carbon-intensity/forecast", {"zone": "DE", "forecast": hourly(72, NOW), "updatedAt": "2024-05-01T11:55:00Z"})
    src = em(server)
    cur = src.current("DE", NOW)
    assert cur.values.tolist() == [302.0] and cur.source == "electricitymaps"
    h = src.history("DE", NOW - timedelta(hours=6), NOW)
    assert len(h) == 6 and h.values[-1] == 323
    f = src.forecast("DE", NOW, timedelta(hours=24))
    assert len(f) == 24 and f.values[0] == 300 and f.issued_at == datetime(2024, 5, 1, 11, 55, tzinfo=timezone.utc)
    assert server.requests[0]["headers"]["auth-token"] == TOKEN
    assert server.requests[0]["query"] == {"zone": "DE"}


def test_em_gaps_are_interpolated(server):
    rows = hourly(6, NOW - timedelta(hours=6))
    rows[2]["carbonIntensity"] = None      # a null value
    del rows[4]                            # a missing hour
    server.json("/v3/carbon-intensity/history", {"zone": "DE", "history": rows})
    h = em(server).history("DE", NOW - timedelta(hours=6), NOW)
    np.testing.assert_allclose(h.values, [300, 301, 302, 303, 304, 305])
    assert h.meta["filled"] == 2


@pytest.mark.parametrize("status, reason", [(401, "Unauthorized"), (403, "Unauthorized"), (429, "RateLimited"),
                                            (500, "ServerError"), (503, "ServerError"), (404, "UnknownZone")])
def test_em_http_errors_map_to_reasons(server, status, reason):
    server.json("/v3/carbon-intensity/latest", {"error": "x"}, status=status, headers={"Retry-After": "0"})
    with pytest.raises(SignalError) as exc:
        em(server).current("DE", NOW)
    assert exc.value.reason == reason and str(status) in str(exc.value)
    retried = reason == "ServerError"   # a 429 is not retried inline: the provider is blocked, the chain falls back
    assert len(server.requests) == (2 if retried else 1)


def test_em_retry_after_beyond_limit_gives_up_at_once(server):
    server.json("/v3/carbon-intensity/latest", {}, status=429, headers={"Retry-After": "3600"})
    with pytest.raises(SignalError) as exc:
        em(server).current("DE", NOW)
    assert exc.value.reason == "RateLimited" and "3600" in str(exc.value) and len(server.requests) == 1


def test_em_timeout(server):
    def slow(req):
        time.sleep(0.6)
        return 200, {}, b"{}"
    server.routes["/v3/carbon-intensity/latest"] = slow
    t0 = time.monotonic()
    with pytest.raises(SignalError) as exc:
        em(server).current("DE", NOW)
    assert exc.value.reason == "Timeout" and time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"zone": "DE"}', b'{"history": "nope"}',
                                  b'{"history": [{"datetime": "yesterday", "carbonIntensity": 1}]}',
                                  b'{"history": [{"datetime": "2024-05-01T10:00Z", "carbonIntensity": "high"}]}'])
def test_em_malformed_bodies(server, body):
    server.routes["/v3/carbon-intensity/history"] = lambda req: (200, {}, body)
    server.routes["/v3/carbon-intensity/latest"] = lambda req: (200, {}, body)
    src = em(server)
    for call in (lambda: src.history("DE", NOW - timedelta(hours=2), NOW), lambda: src.current("DE", NOW)):
        with pytest.raises(SignalError) as exc:
            call()
        assert exc.value.reason == "Malformed"


def test_credentials_never_leak(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.json("/v3/carbon-intensity/latest", {"echo": TOKEN}, status=401)
    server.json("/v3/carbon-intensity/forecast", {}, status=500)
    src = em(server)
    assert TOKEN not in repr(src)
    chain = FallbackChain(src)
    f = chain.forecast("DE", NOW, timedelta(hours=3))
    c = chain.current("DE", NOW)
    texts = [repr(src), repr(chain), json.dumps(f.meta), json.dumps(c.meta), caplog.text]
    try:
        src.current("DE", NOW)
    except SignalError as exc:
        texts += [str(exc), repr(exc)]
    assert c.meta["fallback"][0]["reason"] == "Unauthorized"
    assert not any(TOKEN in t for t in texts)
    settings = Settings(provider="electricitymaps", provider_token=TOKEN, provider_password=PASSWORD)
    assert TOKEN not in repr(settings) and TOKEN not in repr(build_source(settings))


def test_client_scrubs_secrets_from_messages():
    c = JsonClient("x", "https://example.invalid", secrets=("s3cr3t",))
    assert "s3cr3t" not in str(c._error("failed with s3cr3t", "Malformed"))


def test_urls_validated():
    with pytest.raises(SignalError, match="plain http") as exc:
        ElectricityMapsSource(TOKEN, base_url="http://api.example.com")
    assert exc.value.reason == "Misconfigured" and TOKEN not in str(exc.value)
    with pytest.raises(SignalError, match="http"):
        check_url("ftp://x", credentials=False, what="t")
    assert ElectricityMapsSource(TOKEN)._client.base_url.startswith("https://")
    assert UKCarbonSource(base_url="http://plain.example.com")._client.base_url == "http://plain.example.com"


# ---- WattTime -------------------------------------------------------------------------
def moer(n: int, start: datetime, lbs: float = 1000.0, step_min: int = 5) -> list[dict]:
    return [{"point_time": (start + timedelta(minutes=step_min * i)).isoformat(), "value": lbs} for i in range(n)]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def watttime_server(server, tokens: list[str]):
    def login(req):
        user, pw = base64.b64decode(req["headers"]["Authorization"].split()[1]).decode().split(":", 1)
        if (user, pw) != ("alice", PASSWORD):
            return 401, {}, b'{"error": "bad"}'
        tokens.append(f"tok{len(tokens)}")
        return 200, {}, json.dumps({"token": tokens[-1]}).encode()

    def guarded(body):
        def fn(req):
            if req["headers"].get("Authorization") != f"Bearer {tokens[-1] if tokens else ''}":
                return 401, {}, b'{"error": "expired"}'
            return 200, {}, json.dumps(body).encode()
        return fn

    server.routes["/login"] = login
    meta = {"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
            "data_point_period_seconds": 300, "generated_at": NOW.isoformat()}
    server.routes["/v3/forecast"] = guarded({"data": moer(24 * 12, NOW), "meta": meta})
    server.routes["/v3/historical"] = guarded({"data": moer(12, NOW - timedelta(hours=1), 800), "meta": meta})


def test_watttime_login_convert_and_refresh(server):
    tokens: list[str] = []
    watttime_server(server, tokens)
    clock = FakeClock()
    src = WattTimeSource("alice", PASSWORD, base_url=server.url, policy=FAST, clock=clock, sleep=lambda s: None)
    f = src.forecast("CAISO_NORTH", NOW, timedelta(hours=2))
    assert f.kind == "marginal" and len(f) == 24 and f.step == timedelta(minutes=5)
    assert f.values[0] == pytest.approx(453.592) and f.issued_at == NOW
    assert server.requests[-1]["query"]["region"] == "CAISO_NORTH"
    cur = src.current("CAISO_NORTH", NOW)
    assert cur.values[0] == pytest.approx(800 * 0.453592) and len(cur) == 1
    assert tokens == ["tok0"]                      # token reused
    clock.t += 26 * 60                             # past the refresh time
    src.history("CAISO_NORTH", NOW - timedelta(hours=1), NOW)
    assert tokens == ["tok0", "tok1"]
    tokens.append("rotated-server-side")          # server invalidates our token: one re-login
    src.history("CAISO_NORTH", NOW - timedelta(hours=1), NOW)
    assert tokens[-1] == "tok3"
    assert PASSWORD not in repr(src)


def test_watttime_bad_password_and_units(server):
    tokens: list[str] = []
    watttime_server(server, tokens)
    bad = WattTimeSource("alice", "wrong-password", base_url=server.url, policy=FAST, sleep=lambda s: None)
    with pytest.raises(SignalError) as exc:
        bad.forecast("CAISO_NORTH", NOW, timedelta(hours=1))
    assert exc.value.reason == "Unauthorized" and "wrong-password" not in str(exc.value)
    server.routes["/v3/forecast"] = lambda req: (200, {}, json.dumps({"data": moer(3, NOW), "meta": {"units": "furlongs"}}).encode())
    good = WattTimeSource("alice", PASSWORD, base_url=server.url, policy=FAST, sleep=lambda s: None)
    with pytest.raises(SignalError, match="units") as exc:
        good.forecast("CAISO_NORTH", NOW, timedelta(hours=1))
    assert exc.value.reason == "Malformed"


def test_watttime_client_rate_limit(server):
    tokens: list[str] = []
    watttime_server(server, tokens)
    src = WattTimeSource("alice", PASSWORD, base_url=server.url, policy=FAST, clock=FakeClock(), sleep=lambda s: None)
    src._client.limiter.limit = 3  # login + 2 calls
    src.history("CAISO_NORTH", NOW - timedelta(hours=1), NOW)
    src.history("CAISO_NORTH", NOW - timedelta(hours=1), NOW)
    n = len(server.requests)
    with pytest.raises(SignalError) as exc:
        src.history("CAISO_NORTH", NOW - timedelta(hours=1), NOW)
    assert exc.value.reason == "RateLimited" and len(server.requests) == n  # refused before any request


# ---- UK Carbon Intensity ---------------------------------------------------------------
def uk_periods(n: int, start: datetime, actual: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        a = start + timedelta(minutes=30 * i)
        out.append({"from": a.strftime("%Y-%m-%dT%H:%MZ"), "to": (a + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%MZ"),
                    "intensity": {"forecast": 200 + i, "actual": (100 + i) if actual else None, "index": "moderate"}})
    return out


def test_uk_national_and_regional(server):
    server.json("/intensity/2024-05-01T12:00Z/fw48h", {"data": uk_periods(96, NOW, actual=False)})
    server.json("/intensity", {"data": uk_periods(1, NOW)})
    server.json("/intensity/2024-05-01T10:00Z/2024-05-01T12:00Z", {"data": uk_periods(4, NOW - timedelta(hours=2))})
    server.json("/regional/intensity/2024-05-01T12:00Z/fw48h/regionid/13",
                {"data": {"regionid": 13, "shortname": "London", "data": uk_periods(96, NOW, actual=False)}})
    server.json("/regional/regionid/13", {"data": [{"regionid": 13, "data": uk_periods(1, NOW, actual=False)}]})
    src = UKCarbonSource(base_url=server.url, policy=FAST)
    f = src.forecast("GB", NOW, timedelta(hours=48))
    assert len(f) == 96 and f.step == timedelta(minutes=30) and f.values[0] == 200
    assert src.current("GB", NOW).values[0] == 100                # actual preferred
    h = src.history("GB", NOW - timedelta(hours=2), NOW)
    assert h.values.tolist() == [100, 101, 102, 103]
    assert src.forecast("GB-13", NOW, timedelta(hours=1)).values.tolist() == [200, 201]
    assert src.current("GB-13", NOW).values[0] == 200             # regional: forecast only
    with pytest.raises(SignalError) as exc:
        src.current("DE", NOW)
    assert exc.value.reason == "UnknownZone"


def test_uk_outage_falls_back_in_chain(server):
    server.json("/intensity/2024-05-01T12:00Z/fw48h", {"error": {"code": "500"}}, status=500)
    chain = FallbackChain(UKCarbonSource(base_url=server.url, policy=FAST, sleep=lambda s: None))
    f = chain.forecast("GB", NOW, timedelta(hours=24))
    assert f.source == "embedded" and f.meta["fallback"][0] == {
        "link": "ukcarbon", "reason": "ServerError",
        "message": "ukcarbon: GET /intensity/2024-05-01T12:00Z/fw48h: HTTP 500"}
    assert f.end >= NOW + timedelta(hours=24)


def test_build_source_wires_providers(server):
    s = build_source(Settings(provider="ukcarbon", provider_url=server.url))
    assert s.primary.name == "ukcarbon"
    with pytest.raises(SignalError, match="provider_token"):
        build_source(Settings(provider="electricitymaps"))
    with pytest.raises(SignalError, match="provider_username"):
        build_source(Settings(provider="watttime"))
