"""Answers real servers give that the happy path does not (issue 15): non-finite samples,
a 200 without data, bad queries, Kepler without GPU joules, 429 blocks, short forecasts.
Served from a local HTTP server on 127.0.0.1 to the real code."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.signals import EmbeddedSource, FallbackChain, SignalError
from greenml.signals.base import IntensitySeries
from greenml.signals.energy import EnergyMeter, EnergyPolicy, PowerModel
from greenml.signals.forecaster import forecast_from_history
from greenml.signals.promql import Prometheus, PromQLSource
from greenml.signals.providers import ElectricityMapsSource
from greenml.signals.robust import RetryPolicy
from greenml.signals.series import SeriesSource
from tests.unit.test_signals_providers import TOKEN, FakeClock, server  # noqa: F401  (the fixture)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)


def vector(*values: str) -> dict:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": {}, "value": [NOW.timestamp(), v]} for v in values]}}


def matrix(*values: str, step: int = 300) -> dict:
    t0 = (NOW - H).timestamp()
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[t0 + step * i, v] for i, v in enumerate(values)]}]}}


# ---- item 4: NaN / ±Inf samples ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["NaN", "+Inf", "-Inf", "-5"])
def test_non_finite_intensity_is_malformed(server, bad):
    server.json("/api/v1/query", vector(bad))
    server.json("/api/v1/query_range", matrix("300", bad, "310"))
    src = PromQLSource(server.url)
    for call in (lambda: src.current("DE", NOW), lambda: src.history("DE", NOW - H, NOW)):
        with pytest.raises(SignalError) as exc:
            call()
        assert exc.value.reason == "Malformed"


@pytest.mark.parametrize("bad", ["NaN", "+Inf", "-Inf"])
def test_non_finite_energy_falls_through_to_the_next_link(server, bad):
    server.json("/api/v1/query", vector(bad, "1000"))
    meter = EnergyMeter(server.url, EnergyPolicy(backends=("dcgm",)))
    r = meter.energy_joules("ml", "x-.*", NOW - H, NOW, model=PowerModel(2, 100))
    assert r.source == "model" and r.estimate and np.isfinite(r.value) and r.value == 2 * 100 * 3600
    assert [f["reason"] for f in r.fallback] == ["Malformed", "Malformed"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_json_tokens_from_a_provider_are_malformed(server, token):
    body = b'{"zone": "DE", "carbonIntensity": ' + token + b', "datetime": "2024-05-01T11:00:00.000Z"}'
    server.routes["/v3/carbon-intensity/latest"] = lambda req: (200, {}, body)
    src = ElectricityMapsSource(TOKEN, base_url=server.url, policy=RetryPolicy(attempts=1), utcnow=lambda: NOW)
    with pytest.raises(SignalError) as exc:
        src.current("DE", NOW)
    assert exc.value.reason == "Malformed"


# ---- item 8: every malformed answer is the domain error ------------------------------------------
@pytest.mark.parametrize("body", [{"status": "success"}, {"status": "success", "data": None},
                                  {"status": "success", "data": {"result": "x"}}, {"status": "error"},
                                  [1, 2], {"status": "success", "data": {"result": [1]}}])
def test_prometheus_200_without_data_is_malformed(server, body):
    server.json("/api/v1/query", body)
    server.json("/api/v1/query_range", body)
    prom = Prometheus(server.url)
    for call in (lambda: prom.instant("up"), lambda: prom.range("up", NOW - H, NOW, timedelta(minutes=5))):
        with pytest.raises(SignalError) as exc:
            call()
        assert exc.value.reason == "Malformed"
    chain = FallbackChain(PromQLSource(server.url))
    assert chain.current("DE", NOW).meta["fallback"][0]["reason"] == "Malformed"
    r = EnergyMeter(server.url).energy_joules("ml", "x", NOW - H, NOW, model=PowerModel(1, 100))
    assert r.source == "model" and {f["reason"] for f in r.fallback} == {"Malformed"}


# ---- item 12: 400/422 are a bad query ----------------------------------------------------------------
@pytest.mark.parametrize("status, kind", [(400, "bad_data"), (422, "execution")])
def test_prometheus_client_errors_are_bad_queries(server, status, kind):
    body = {"status": "error", "errorType": kind, "error": "1:5: parse error: unexpected end of input"}
    server.json("/api/v1/query", body, status=status)
    with pytest.raises(SignalError) as exc:
        Prometheus(server.url).instant("sum(")
    assert exc.value.reason == "BadQuery" and "parse error" in str(exc.value) and str(status) in str(exc.value)
    assert len(server.requests) == 1
    server.json("/api/v1/query", {"status": "error", "error": "overloaded"}, status=500)
    with pytest.raises(SignalError) as exc:
        Prometheus(server.url).instant("up")
    assert exc.value.reason == "ServerError"


# ---- item 3: Kepler is not GPU energy --------------------------------------------------------------
def test_kepler_cpu_energy_is_never_gpu_energy(server):
    """Stock Kepler 0.10/0.11 exports CPU/DRAM joules and no GPU joules: the job's GPU
    energy then comes from the power model (an estimate), not from its CPU energy."""
    def answer(req):
        q = req["query"]["query"]
        served = vector("5000") if "kepler_pod_cpu_joules_total" in q else vector()
        return 200, {}, json.dumps(served).encode()
    server.routes["/api/v1/query"] = answer
    meter = EnergyMeter(server.url, EnergyPolicy(backends=("kepler",)))
    r = meter.energy_joules("ml", "train-.*", NOW - H, NOW, model=PowerModel(1, 300))
    assert r.source == "model" and r.estimate and r.value == 300 * 3600
    assert r.fallback[0] == {"link": "kepler", "reason": "NoData", "message": "query matched no series"}
    assert not any("cpu" in q["query"]["query"] for q in server.requests)
    p = meter.power_watts_now("ml", "train-.*", model=PowerModel(1, 300))
    assert p.source == "model"


def test_kepler_gpu_joules_serve_when_exported(server):
    def answer(req):
        q = req["query"]["query"]
        return 200, {}, json.dumps(vector("7200") if "kepler_pod_gpu_joules_total" in q else vector("99")).encode()
    server.routes["/api/v1/query"] = answer
    r = EnergyMeter(server.url, EnergyPolicy(backends=("kepler",))).energy_joules("ml", "t", NOW - H, NOW)
    assert r.source == "kepler" and not r.estimate and r.value == 7200


def test_dcgm_for_some_of_the_gpus_is_partial_and_topped_up_by_the_model(server):
    """Item 3: partial coverage is labelled: DCGM measured 1 of the job's 4 GPUs (an exporter
    missing on a node); before, that GPU's energy was reported as the job's, measured."""
    counted = {"n": "1"}

    def answer(req):
        q = req["query"]["query"]
        if q.startswith("count("):
            body = vector(counted["n"])
        elif "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in q:
            body = vector("1080000000")      # mJ: 1.08 MJ = 300 W for an hour, one GPU
        else:
            body = vector("300")
        return 200, {}, json.dumps(body).encode()
    server.routes["/api/v1/query"] = answer
    meter = EnergyMeter(server.url, EnergyPolicy(backends=("dcgm",)))
    r = meter.energy_joules("ml", "train-.*", NOW - H, NOW, model=PowerModel(4, 250))
    assert r.source == "dcgm" and r.partial and r.estimate
    assert r.coverage == {"gpus_measured": 1, "gpus": 4}
    assert r.value == pytest.approx(1.08e6 + 3 * 250 * 3600) and "model for 3 of 4 GPU" in r.query
    p = meter.power_watts_now("ml", "train-.*", model=PowerModel(4, 250))
    assert p.partial and p.value == pytest.approx(300 + 3 * 250)
    counted["n"] = "4"   # every GPU measured: not partial, not an estimate
    full = meter.energy_joules("ml", "train-.*", NOW - H, NOW, model=PowerModel(4, 250))
    assert not full.partial and not full.estimate and full.value == pytest.approx(1.08e6)
    alone = meter.energy_joules("ml", "train-.*", NOW - H, NOW)   # no model: counted, not topped up
    assert alone.coverage == {"gpus_measured": 4, "gpus": None} and not alone.partial


# ---- item 6: a 429 falls back at once and is remembered ------------------------------------------------
def test_429_falls_back_at_once_and_comes_back_after_retry_after(server):
    server.json("/v3/carbon-intensity/forecast", {"message": "rate limit"}, status=429, headers={"Retry-After": "120"})
    server.json("/v3/carbon-intensity/latest", {"zone": "DE", "carbonIntensity": 300, "datetime": "2024-05-01T12:00:00Z"})
    clock, sleeps = FakeClock(), []
    src = ElectricityMapsSource(TOKEN, base_url=server.url, policy=RetryPolicy(attempts=3, base_delay=1.0),
                                sleep=sleeps.append, clock=clock, utcnow=lambda: NOW)
    chain = FallbackChain(src, clock=clock)
    f = chain.forecast("DE", NOW, timedelta(hours=6))
    assert f.meta["link"] == "embedded" and f.meta["fallback"][0]["reason"] == "RateLimited"
    assert sleeps == [] and len(server.requests) == 1        # no inline sleep, no retry
    c = chain.current("DE", NOW)                              # blocked: no request at all
    assert c.meta["link"] == "embedded" and c.meta["fallback"][0]["reason"] == "RateLimited"
    assert len(server.requests) == 1
    clock.t += 121
    assert chain.current("DE", NOW).meta["link"] == "provider" and len(server.requests) == 2


def test_429_without_retry_after_blocks_for_a_default(server):
    server.json("/v3/carbon-intensity/latest", {}, status=429)
    clock = FakeClock()
    src = ElectricityMapsSource(TOKEN, base_url=server.url, policy=RetryPolicy(attempts=3, base_delay=0.0),
                                clock=clock, utcnow=lambda: NOW, sleep=lambda s: None)
    for _ in range(2):
        with pytest.raises(SignalError, match="rate limit"):
            src.current("DE", NOW)
    assert len(server.requests) == 1


# ---- item 7: a short forecast covers what was returned only ---------------------------------------------
class ShortForecasts:
    name = "short"

    def __init__(self, length: timedelta) -> None:
        self.length, self.calls = length, 0
        t = np.arange(24 * 30)
        self.series = IntensitySeries(NOW - timedelta(days=20), H, 300 + 100 * np.sin(2 * np.pi * t / 24),
                                      source="short")

    def current(self, zone, now):
        return self.series.window(now - H, now)

    def history(self, zone, start, end):
        return self.series.window(start, end)

    def forecast(self, zone, now, horizon):
        self.calls += 1
        return self.series.window(now, now + min(horizon, self.length))


def test_short_forecast_is_not_served_as_covering_a_longer_horizon():
    clock, prov = FakeClock(), ShortForecasts(timedelta(hours=2))
    chain = FallbackChain(prov, clock=clock)
    f = chain.forecast("DE", NOW, timedelta(hours=6))
    assert f.meta["short"] and f.meta["covers_until"] == (NOW + 2 * H).isoformat()
    # the rest comes from the next link (the own forecaster on the provider's history), labelled
    assert f.end == NOW + 6 * H and f.meta["link"] == "provider"
    assert f.meta["extended"] == [{"link": "forecaster", "source": "forecaster(short)",
                                   "from": (NOW + 2 * H).isoformat(), "to": (NOW + 6 * H).isoformat()}]
    assert f.values[:2].tolist() == prov.series.window(NOW, NOW + 2 * H).values.tolist()
    own = forecast_from_history(prov.series.window(NOW - timedelta(days=14), NOW), NOW, timedelta(hours=6))
    assert f.values[2:].tolist() == pytest.approx(own.window(NOW + 2 * H, NOW + 6 * H).values.tolist())
    # within what was asked for: served from the cache (the provider's part as returned)
    g = chain.forecast("DE", NOW + timedelta(minutes=30), timedelta(hours=4))
    assert prov.calls == 1 and g.meta["covers_until"] == (NOW + 2 * H).isoformat() and g.meta["short"]
    # an hour on, the same 6 h horizon reaches beyond what was asked for: ask again
    chain.forecast("DE", NOW + H, timedelta(hours=6))
    assert prov.calls == 2
    # a request the forecast covers is not short
    h = chain.forecast("DE", NOW + H, timedelta(hours=1))
    assert prov.calls == 2 and not h.meta["short"]


def test_short_forecast_continued_by_forecaster_then_embedded_for_a_week():
    """The board asks 7 days: the provider's 2 h, the own forecaster's 72 h, then the profile."""
    chain = FallbackChain(ShortForecasts(timedelta(hours=2)))
    f = chain.forecast("DE", NOW, timedelta(days=7))
    assert f.end == NOW + timedelta(days=7) and [p["link"] for p in f.meta["extended"]] == ["forecaster", "embedded"]
    assert f.meta["extended"][1]["from"] == (NOW + timedelta(hours=72)).isoformat()
    tail = EmbeddedSource().forecast("DE", NOW, timedelta(days=7)).window(NOW + timedelta(hours=72), f.end)
    assert f.window(NOW + timedelta(hours=72), f.end).values.tolist() == pytest.approx(tail.values.tolist())


class MarginalShort(ShortForecasts):
    """A marginal provider (WattTime-like) with a short forecast and no history."""

    name, kind = "watttime", "marginal"

    def __init__(self):
        super().__init__(timedelta(hours=2))
        self.series = replace(self.series, kind="marginal", source="watttime")

    def history(self, zone, start, end):
        raise SignalError("historical: plan", reason="Forbidden")


def test_short_marginal_forecast_is_never_continued_by_an_average_profile():
    f = FallbackChain(MarginalShort()).forecast("CAISO_NORTH", NOW, timedelta(hours=6))
    assert f.kind == "marginal" and f.end == NOW + 2 * H and f.meta["short"] and f.meta["extended"] == []
    assert [(x["link"], x["reason"]) for x in f.meta["extend_failed"]] == [("forecaster", "Forbidden"),
                                                                          ("embedded", "KindMismatch")]


def test_a_failed_history_is_not_asked_again_on_every_call():
    """Each forecast call continued a short forecast by asking history again, refused or not."""
    class Counting(MarginalShort):
        asked = 0

        def history(self, zone, start, end):
            self.asked += 1
            return super().history(zone, start, end)

    clock, prov = FakeClock(), Counting()
    chain = FallbackChain(prov, clock=clock)
    for _ in range(10):
        chain.forecast("CAISO_NORTH", NOW, timedelta(hours=6))
    assert prov.asked == 1
    clock.t += chain.policy.history_retry + 1
    chain.forecast("CAISO_NORTH", NOW, timedelta(hours=6))
    assert prov.asked == 2


def test_full_forecast_is_not_marked_short():
    chain = FallbackChain(SeriesSource(ShortForecasts(H).series))
    f = chain.forecast("DE", NOW, timedelta(hours=6))
    assert f.meta["link"] == "provider" and not f.meta["short"]


# ---- item 2: providers' zone names reach the embedded profile; the kind is carried ------------------------
class Down:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def current(self, zone, now):
        raise SignalError("down", reason="ServerError")

    history = forecast = lambda self, *a: self.current(None, None)


@pytest.mark.parametrize("zone, profile", [("GB-13", "GB"), ("GB-18", "GB"), ("CAISO_NORTH", "US-CAL-CISO"),
                                           ("PJM_DC", "US-MIDA-PJM"), ("GB", "GB")])
def test_provider_zone_names_fall_back_to_their_profile(zone, profile):
    chain = FallbackChain(Down("ukcarbon", "average"))
    f = chain.forecast(zone, NOW, timedelta(hours=6))
    assert f.meta["link"] == "embedded" and f.meta["zone"] == profile and "kind_changed" not in f.meta


def test_marginal_provider_replaced_by_average_profile_says_so():
    chain = FallbackChain(Down("watttime", "marginal"))
    c = chain.current("CAISO_NORTH", NOW)
    assert c.kind == "average" and c.meta["kind_changed"] == {"provider": "marginal", "served": "average"}


def test_other_grids_named_gb_are_not_gb():
    with pytest.raises(SignalError) as exc:
        FallbackChain(Down("electricitymaps", "average")).current("GB-NIR", NOW)
    assert exc.value.reason == "UnknownZone"
