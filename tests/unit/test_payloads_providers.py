"""The providers against response bodies the real APIs sent (issue 15).

Bodies come from ``../shared/data/api_payloads`` (providers' docs and OpenAPI files,
client libraries' fixtures, answers quoted in issues; sources in its SOURCES.json) and
are served, unchanged, from a local HTTP server on 127.0.0.1 to the real provider code.
Every test skips cleanly when the directory is absent.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from greenml.signals import FallbackChain, SignalError
from greenml.signals.base import IntensitySeries
from greenml.signals.energy import EnergyMeter, EnergyPolicy, PowerModel
from greenml.signals.promql import PromQLSource
from greenml.signals.providers import ElectricityMapsSource, UKCarbonSource, WattTimeSource
from greenml.signals.robust import RetryPolicy
from tests.conftest import SHARED_DATA, shared_data_file
from tests.unit.test_signals_providers import PASSWORD, TOKEN, FakeClock, Server

FAST = RetryPolicy(attempts=2, base_delay=0.0, timeout=2.0)
PAYLOADS = SHARED_DATA / "api_payloads"
UTC = timezone.utc


def payload(name: str) -> bytes:
    return shared_data_file(f"api_payloads/{name}").read_bytes()


class CatchAll(dict):
    """Routes with a default: every path not routed gets ``default``."""

    default = None

    def get(self, key, fallback=None):  # noqa: D102
        return super().get(key) or self.default or fallback


@pytest.fixture
def server():
    s = Server()
    s.routes = CatchAll()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def serve(server: Server, path: str | None, body: bytes, status: int = 200, ctype: str = "application/json") -> None:
    fn = lambda req: (status, {"Content-Type": ctype}, body)  # noqa: E731
    if path is None:
        server.routes.default = fn
    else:
        server.routes[path] = fn


def em(server, now: datetime, **kw) -> ElectricityMapsSource:
    return ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, sleep=lambda s: None,
                                 utcnow=lambda: now, **kw)


def login_ok(server) -> None:
    server.routes["/login"] = lambda req: (200, {}, json.dumps({"token": "tok"}).encode())


def wt(server, **kw) -> WattTimeSource:
    return WattTimeSource("alice", PASSWORD, base_url=server.url, policy=FAST, sleep=lambda s: None, **kw)


# ---- Electricity Maps ---------------------------------------------------------------------
def test_em_history_real_answer(server):
    serve(server, "/v3/carbon-intensity/history", payload("em_history_DE_24h.json"))
    now = datetime(2024, 3, 6, 20, tzinfo=UTC)
    h = em(server, now).history("DE", now - timedelta(hours=24), now)
    assert len(h) == 24 and h.step == timedelta(hours=1) and h.values[0] == 599
    assert server.requests[-1]["path"] == "/v3/carbon-intensity/history"


def test_em_zone_of_the_answer_must_be_the_zone_asked_for(server):
    """Item 5: an answer for FR is not an answer for DE."""
    serve(server, "/v3/carbon-intensity/latest", payload("em_latest_FR_codecarbon.json"))
    now = datetime(2025, 11, 21, 19, 30, tzinfo=UTC)
    assert em(server, now).current("FR", now).values[0] == pytest.approx(58.765447504659946)
    with pytest.raises(SignalError, match="zone 'FR', not 'DE'") as exc:
        em(server, now).current("DE", now)
    assert exc.value.reason == "Malformed"
    serve(server, "/v3/carbon-intensity/past-range", payload("em_past_range_DK-DK2.json"))
    with pytest.raises(SignalError) as exc:
        em(server, now).history("DK-DK1", datetime(2024, 3, 18, tzinfo=UTC), datetime(2024, 3, 19, tzinfo=UTC))
    assert exc.value.reason == "Malformed"


def test_em_latest_is_one_hour(server):
    """Item 10: the latest value covers the API's hourly granularity, stated, not guessed."""
    serve(server, "/v3/carbon-intensity/latest", payload("em_latest_US-CAR-DUK_estimated.json"))
    now = datetime(2024, 3, 6, 19, 30, tzinfo=UTC)
    cur = em(server, now).current("US-CAR-DUK", now)
    assert cur.values.tolist() == [216.0] and cur.step == timedelta(hours=1)


def test_em_past_range_chosen_by_position_and_free_tier_falls_back_to_history(server):
    """Item 12 (/history by the range's position) and item 1 (free tier: no /past-range)."""
    serve(server, "/v3/carbon-intensity/past-range", payload("em_past_range_DK-DK2.json"))
    serve(server, "/v3/carbon-intensity/history", payload("em_history_DE_24h.json"))
    a = datetime(2024, 3, 18, 2, tzinfo=UTC)
    h = em(server, datetime(2024, 5, 1, tzinfo=UTC)).history("DK-DK2", a, a + timedelta(hours=2))
    assert h.values.tolist() == [161, 167] and server.requests[-1]["path"] == "/v3/carbon-intensity/past-range"
    # free tier: /past-range answers 401; the part /history covers is served, marked partial
    serve(server, "/v3/carbon-intensity/past-range", b'{"message": "Unauthorized: plan"}', status=401)
    now, clock = datetime(2024, 3, 6, 20, tzinfo=UTC), FakeClock()
    src = em(server, now, clock=clock)
    h = src.history("DE", now - timedelta(days=14), now)
    assert len(h) == 24 and h.meta["partial"] and h.meta["endpoint"] == "history"
    with pytest.raises(SignalError) as exc:   # nothing of the range in the last 24 h
        src.history("DE", now - timedelta(days=14), now - timedelta(days=7))
    assert exc.value.reason == "Unauthorized"
    paths = [r["path"] for r in server.requests[-3:]]   # refused once: not asked again for an hour
    assert paths == ["/v3/carbon-intensity/past-range", "/v3/carbon-intensity/history",
                     "/v3/carbon-intensity/history"]
    clock.t += ElectricityMapsSource.PAST_RANGE_RETRY
    src.history("DE", now - timedelta(days=14), now)
    assert server.requests[-2]["path"] == "/v3/carbon-intensity/past-range"


def _past_range_from_template(req):
    """/past-range answering the asked range hourly, each item the real body's first item
    (em_past_range_DK-DK2.json) with its datetime moved; more than 10 days is refused as the
    API refuses it at hourly granularity."""
    item = json.loads(payload("em_past_range_DK-DK2.json"))["data"][0]
    a, b = (datetime.fromisoformat(req["query"][k].replace("Z", "+00:00")) for k in ("start", "end"))
    if b - a > timedelta(days=10):
        return 400, {}, b'{"error": "Time range exceeds the 10 days allowed for hourly granularity"}'
    n = int((b - a) / timedelta(hours=1))
    rows = [{**item, "datetime": (a + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "carbonIntensity": i}
            for i in range(n + 1)]   # the end hour included, as the pieces then overlap
    return 200, {}, json.dumps({"zone": "DK-DK2", "data": rows}).encode()


def test_em_past_range_is_asked_in_pieces_of_ten_days(server):
    """Item 1: the chain's 14 days were one /past-range request, which the API refuses."""
    server.routes["/v3/carbon-intensity/past-range"] = _past_range_from_template
    now = datetime(2024, 3, 30, tzinfo=UTC)
    h = em(server, now).history("DK-DK2", now - timedelta(days=14), now)
    asked = [r["query"] for r in server.requests if r["path"] == "/v3/carbon-intensity/past-range"]
    assert len(asked) == 2 and len(h) == 14 * 24 and h.step == timedelta(hours=1)
    assert [q["start"] for q in asked] == ["2024-03-16T00:00:00Z", "2024-03-26T00:00:00Z"]
    assert h.meta["endpoint"] == "past-range" and "partial" not in h.meta


@pytest.mark.parametrize("status", [403, 404])
def test_em_past_range_refused_by_plan_falls_back_to_history(server, status):
    """Item 1: a plan without /past-range answers 403 (or 404); /history serves its 24 h."""
    serve(server, "/v3/carbon-intensity/past-range", b'{"message": "Not available on your plan"}', status=status)
    serve(server, "/v3/carbon-intensity/history", payload("em_history_DE_24h.json"))
    now = datetime(2024, 3, 6, 20, tzinfo=UTC)
    h = em(server, now).history("DE", now - timedelta(days=14), now)
    assert len(h) == 24 and h.meta["partial"] and h.meta["endpoint"] == "history"


def test_em_unknown_zone_is_not_a_plan_refusal(server):
    """404 from both endpoints is the zone: UnknownZone, and /past-range stays on for the others."""
    src = em(server, datetime(2024, 3, 6, 20, tzinfo=UTC))
    with pytest.raises(SignalError) as exc:
        src.history("XX", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC))
    assert exc.value.reason == "UnknownZone"
    server.routes["/v3/carbon-intensity/past-range"] = _past_range_from_template
    assert len(src.history("DK-DK2", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC))) == 24


def test_em_null_history_is_malformed(server):
    serve(server, None, payload("em_history_null_casdk.json"))
    now = datetime(2099, 1, 1, 1, tzinfo=UTC)
    with pytest.raises(SignalError) as exc:
        em(server, now).history("NL", now - timedelta(hours=2), now)
    assert exc.value.reason == "Malformed"


# ---- WattTime -----------------------------------------------------------------------------
def test_wt_historical_real_answer_uses_the_stated_period(server):
    login_ok(server)
    serve(server, "/v3/historical", payload("wt_historical_openapi.json"))
    a = datetime(2022, 7, 15, tzinfo=UTC)
    h = wt(server).history("CAISO_NORTH", a, a + timedelta(minutes=10))
    assert h.step == timedelta(minutes=5) and h.values == pytest.approx([870 * 0.453592, 860 * 0.453592])


def test_wt_single_point_takes_its_period_from_meta(server):
    """Item 10: a one-point answer covers data_point_period_seconds, not a guessed hour."""
    login_ok(server)
    body = json.loads(payload("wt_historical_openapi.json"))
    body["data"] = body["data"][:1]
    serve(server, "/v3/historical", json.dumps(body).encode())
    a = datetime(2022, 7, 15, tzinfo=UTC)
    cur = wt(server).current("CAISO_NORTH", a + timedelta(minutes=3))
    assert cur.step == timedelta(minutes=5) and cur.end == a + timedelta(minutes=5)


def test_wt_invalid_scope_says_what_the_api_said_without_relogin(server):
    """Item 9: 403 "Invalid scope" is a plan restriction, not an expired token."""
    logins = []
    server.routes["/login"] = lambda req: (logins.append(1), (200, {}, b'{"token": "tok"}'))[1]
    serve(server, "/v3/forecast", payload("wt_403_invalid_scope_aiowatttime.json"), status=403)
    with pytest.raises(SignalError) as exc:
        wt(server).forecast("PJM", datetime(2024, 5, 1, tzinfo=UTC), timedelta(hours=1))
    assert exc.value.reason == "Forbidden" and "Invalid scope" in str(exc.value)
    assert "check the credentials" not in str(exc.value) and "PJM" in str(exc.value)
    assert len(logins) == 1 and sum(r["path"] == "/v3/forecast" for r in server.requests) == 1


def test_wt_nginx_403_is_the_token_one_relogin(server):
    """aiowatttime's reading: nginx's HTML 403 is a rejected token: log in again, once."""
    logins = []
    server.routes["/login"] = lambda req: (logins.append(1), (200, {}, b'{"token": "tok"}'))[1]
    serve(server, "/v3/forecast", payload("wt_403_nginx_aiowatttime.html"), status=403, ctype="text/html")
    with pytest.raises(SignalError) as exc:
        wt(server).forecast("CAISO_NORTH", datetime(2024, 5, 1, tzinfo=UTC), timedelta(hours=1))
    assert exc.value.reason == "Unauthorized" and len(logins) == 2


def test_wt_percentile_index_is_not_an_intensity(server):
    login_ok(server)
    serve(server, "/v3/historical", payload("wt_signal_index_percentile_aiowatttime.json"))
    with pytest.raises(SignalError, match="units") as exc:
        wt(server).current("PSCO", datetime(2024, 6, 18, 18, 42, tzinfo=UTC))
    assert exc.value.reason == "Malformed"


def test_wt_429_blocks_the_provider_until_retry_after(server):
    """Item 6: a 429 is not slept inline; the provider is blocked for its Retry-After."""
    login_ok(server)
    server.routes["/v3/forecast"] = lambda req: (429, {"Retry-After": "120"}, payload("wt_error_openapi.json"))
    clock, sleeps = FakeClock(), []
    src = WattTimeSource("alice", PASSWORD, base_url=server.url, policy=FAST, sleep=sleeps.append, clock=clock)
    now = datetime(2024, 5, 1, tzinfo=UTC)
    for _ in range(3):
        with pytest.raises(SignalError) as exc:
            src.forecast("CAISO_NORTH", now, timedelta(hours=1))
        assert exc.value.reason == "RateLimited"
    assert sleeps == [] and sum(r["path"] == "/v3/forecast" for r in server.requests) == 1
    clock.t += 121
    serve(server, "/v3/forecast", payload("wt_forecast_openapi.json"))
    assert len(src.forecast("CAISO_NORTH", datetime(2022, 7, 15, tzinfo=UTC), timedelta(hours=1))) == 12


# ---- UK Carbon Intensity --------------------------------------------------------------------
def test_uk_duplicate_period_keeps_the_last(server):
    """Item 12: one period listed twice (api-definitions#17) no longer fails the call."""
    serve(server, None, payload("uk_duplicate_issue17.json"))
    a = datetime(2021, 4, 19, 19, tzinfo=UTC)
    h = UKCarbonSource(base_url=server.url, policy=FAST).history("GB", a, a + timedelta(hours=1))
    assert h.values.tolist() == [186, 171] and h.step == timedelta(minutes=30)


def test_uk_single_period_is_half_an_hour(server):
    """Item 10: the period's from/to, not a guessed hour."""
    serve(server, "/intensity", payload("uk_intensity_current_gridintensitygo.json"))
    cur = UKCarbonSource(base_url=server.url, policy=FAST).current("GB", datetime(2020, 1, 1, 0, 10, tzinfo=UTC))
    assert cur.values.tolist() == [190] and cur.step == timedelta(minutes=30)


def test_uk_regional_real_answers(server):
    serve(server, "/regional/regionid/3", payload("uk_regional_regionid_doc.json"))
    serve(server, "/regional/intensity/2023-03-13T12:00Z/fw48h/regionid/13", payload("uk_regional_fw48h_london_nmpowell.json"))
    src = UKCarbonSource(base_url=server.url, policy=FAST)
    assert src.current("GB-3", datetime(2018, 1, 20, 12, tzinfo=UTC)).values.tolist() == [266]
    f = src.forecast("GB-13", datetime(2023, 3, 13, 12, tzinfo=UTC), timedelta(hours=2))
    assert f.values.tolist()[:2] == [130, 129] and len(f) == 4


def test_uk_region_18_is_gb(server):
    """Item 12: region 18 (GB as a region) is a valid zone."""
    body = json.loads(payload("uk_regional_regionid_doc.json"))
    body["data"][0]["regionid"] = 18
    serve(server, "/regional/regionid/18", json.dumps(body).encode())
    src = UKCarbonSource(base_url=server.url, policy=FAST)
    assert src.current("GB-18", datetime(2018, 1, 20, 12, tzinfo=UTC)).values.tolist() == [266]
    with pytest.raises(SignalError) as exc:
        src.current("GB-19", datetime(2018, 1, 20, 12, tzinfo=UTC))
    assert exc.value.reason == "UnknownZone"


def test_uk_500_body_falls_back(server):
    serve(server, None, payload("uk_500_issue19.json"), status=500)
    chain = FallbackChain(UKCarbonSource(base_url=server.url, policy=FAST, sleep=lambda s: None))
    f = chain.forecast("GB", datetime(2025, 1, 13, tzinfo=UTC), timedelta(hours=6))
    assert f.meta["fallback"][0]["reason"] == "ServerError"
    assert "Requested resource not found" in f.meta["fallback"][0]["message"]


# ---- Prometheus -----------------------------------------------------------------------------
def test_prometheus_doc_answers(server):
    serve(server, "/api/v1/query", payload("prom_instant_doc.json"))
    serve(server, "/api/v1/query_range", payload("prom_range_doc.json"))
    src = PromQLSource(server.url, step=timedelta(seconds=15))
    t = datetime.fromtimestamp(1435781451.781, tz=UTC)
    assert src.current("DE", t).values.tolist() == [1.0]
    h = src.history("DE", t - timedelta(minutes=1), t)
    assert h.values.tolist() == [1, 1, 1] and h.step == timedelta(seconds=15)
    r = EnergyMeter(server.url, EnergyPolicy(backends=("dcgm",))).energy_joules("ml", "x", t - timedelta(hours=1), t)
    assert r.source == "dcgm" and r.value == pytest.approx(1e-3)   # 1 + 0 mJ summed


# ---- every body, through the real code --------------------------------------------------------
def _payload_files() -> list[str]:
    if not PAYLOADS.is_dir():
        return ["<absent>"]
    return sorted(p.name for p in PAYLOADS.iterdir() if p.is_file() and p.name not in ("README.md", "SOURCES.json"))


def _status_of(name: str) -> int:
    for code in (403, 429, 500):
        if f"_{code}_" in name:
            return code
    return 200


def _calls(name: str, url: str) -> list:
    now = datetime(2000, 1, 1, tzinfo=UTC)
    far = timedelta(days=365 * 120)
    if name.startswith("em_"):
        src = ElectricityMapsSource(TOKEN, base_url=url, policy=FAST, sleep=lambda s: None, utcnow=lambda: now)
        zone = "DE"
        try:
            zone = json.loads((PAYLOADS / name).read_text()).get("zone") or zone
        except (ValueError, AttributeError):
            pass
        return [lambda: src.current(zone, now), lambda: src.history(zone, now, now + far),   # /history
                lambda: src.history(zone, now - timedelta(days=3), now + far),                 # /past-range
                lambda: src.forecast(zone, now, far)]
    if name.startswith("wt_"):
        src = WattTimeSource("alice", PASSWORD, base_url=url, policy=FAST, sleep=lambda s: None)
        return [lambda: src.current("CAISO_NORTH", now), lambda: src.history("CAISO_NORTH", now, now + far),
                lambda: src.forecast("CAISO_NORTH", now, far)]
    if name.startswith("uk_"):
        src = UKCarbonSource(base_url=url, policy=FAST, sleep=lambda s: None)
        return [lambda z=z: src.current(z, now) for z in ("GB", "GB-13")] + \
               [lambda z=z: src.history(z, now, now + far) for z in ("GB", "GB-13")] + \
               [lambda z=z: src.forecast(z, now, far) for z in ("GB", "GB-13")]
    if name.startswith("prom_"):
        src = PromQLSource(url, timeout=2.0)
        meter = EnergyMeter(url)
        return [lambda: src.current("DE", now), lambda: src.history("DE", now, now + timedelta(hours=1)),
                lambda: meter.energy_joules("ml", "x", now, now + timedelta(hours=1), model=PowerModel(1, 100)),
                lambda: meter.power_watts_now("ml", "x")]
    raise AssertionError(f"no provider for {name}: name it em_/wt_/uk_/prom_")


@pytest.mark.parametrize("name", _payload_files())
@pytest.mark.parametrize("as_status", ["named", 200])
def test_every_payload_parses_or_raises_the_domain_error(server, name, as_status):
    """Each body, served with the status its name says (and as a 200), at every path the
    provider calls: a parsed series (or reading), or a SignalError with a reason — never
    another exception."""
    if name == "<absent>":
        pytest.skip(f"shared dataset not available: {PAYLOADS}")
    body = (PAYLOADS / name).read_bytes()
    ctype = "text/html" if name.endswith(".html") else "application/json"
    serve(server, None, body, status=_status_of(name) if as_status == "named" else 200, ctype=ctype)
    if name.startswith("wt_") and name != "wt_login_openapi.json":
        login_ok(server)
    outcomes = []
    for call in _calls(name, server.url):
        try:
            out = call()
        except SignalError as exc:
            assert exc.reason and isinstance(exc.reason, str)
            outcomes.append(exc.reason)
            continue
        assert isinstance(out, IntensitySeries) or hasattr(out, "unit"), out
        if isinstance(out, IntensitySeries):
            assert all(v == v and v >= 0 for v in out.values.tolist())
        outcomes.append("ok")
    assert outcomes


# ---- item 11: the providers' quality flags are carried -----------------------------------------------
def test_quality_flags_are_carried(server):
    serve(server, "/v3/carbon-intensity/latest", payload("em_latest_US-CAR-DUK_estimated.json"))
    now = datetime(2024, 3, 6, 19, 30, tzinfo=UTC)
    cur = em(server, now).current("US-CAR-DUK", now)
    assert cur.meta["quality"] == {"points": 1, "estimated": 1} and cur.estimate   # status/metrics: estimate
    login_ok(server)
    serve(server, "/v3/historical", payload("wt_historical_aiowatttime.json"))
    a = datetime(2022, 7, 15, tzinfo=UTC)
    wh = wt(server).history("CAISO_NORTH", a, a + timedelta(minutes=10))
    assert wh.meta["quality"] == {"points": 2, "imputed": 2} and wh.estimate
    serve(server, None, payload("uk_fw24h_national_emoncms.json"))   # actuals wanted, none yet
    b = datetime(2020, 5, 24, 20, 30, tzinfo=UTC)
    h = UKCarbonSource(base_url=server.url, policy=FAST).history("GB", b, b + timedelta(hours=2))
    assert h.meta["quality"]["forecast"] == h.meta["quality"]["points"] > 0 and h.estimate
    serve(server, None, payload("uk_pt24h_national_nmpowell.json"))
    c = datetime(2024, 1, 11, 6, tzinfo=UTC)
    actual = UKCarbonSource(base_url=server.url, policy=FAST).history("GB", c, c + timedelta(hours=1))
    assert "forecast" not in actual.meta["quality"] and not actual.estimate
    serve(server, "/v3/carbon-intensity/latest", payload("em_latest_FR_codecarbon.json"))
    fr = datetime(2025, 11, 21, 19, 30, tzinfo=UTC)
    assert not em(server, fr).current("FR", fr).estimate   # isEstimated false: measured


@pytest.mark.parametrize("mutate", [
    lambda b: b.update(meta=[]), lambda b: b.update(meta={"units": "lbs_co2_per_mwh"}, data={}),
    lambda b: b["meta"].update(data_point_period_seconds=0), lambda b: b["meta"].update(data_point_period_seconds=1e300),
    lambda b: b["meta"].update(data_point_period_seconds="300"), lambda b: b["data"][0].update(point_time=12),
    lambda b: b["data"][0].update(value=None) or b["data"][1].update(value=None), lambda b: b.update(data=[]),
    lambda b: b["data"][1].update(point_time="2022-07-15T00:02:00+00:00")])
def test_wt_mangled_answers_are_malformed(server, mutate):
    """Item 8: a real body, mangled the ways answers go wrong: the domain error, always."""
    login_ok(server)
    body = json.loads(payload("wt_historical_openapi.json"))
    mutate(body)
    serve(server, "/v3/historical", json.dumps(body).encode())
    a = datetime(2022, 7, 15, tzinfo=UTC)
    with pytest.raises(SignalError) as exc:
        wt(server).history("CAISO_NORTH", a, a + timedelta(minutes=10))
    assert exc.value.reason == "Malformed"
