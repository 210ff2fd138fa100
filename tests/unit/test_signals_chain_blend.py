"""FallbackChain's blend path (ChainPolicy.blend, the operator's forecast_blend setting): a
provider forecast corrected by the latest cached actual and mixed with the own forecast
(forecaster.blend_with_provider) when usable history exists, else served as issued; the
history request rate per zone; real NESO bodies served from 127.0.0.1."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.settings import Settings, load_settings
from greenml.signals import FallbackChain, SignalError, build_source
from greenml.signals import chain as chain_mod
from greenml.signals.base import IntensitySeries
from greenml.signals.chain import ChainPolicy, describe
from greenml.signals.forecaster import ForecasterPolicy, blend_with_provider
from greenml.signals.history import MemoryHistoryStore, RecordedHistory, encode, record_key
from greenml.signals.providers import UKCarbonSource
from greenml.signals.robust import RetryPolicy
from tests.conftest import shared_data_file

UTC = timezone.utc
NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
HALF = timedelta(minutes=30)
ON = ChainPolicy(blend=True)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def truth(days: int = 20, after: int = 3) -> IntensitySeries:
    """Half-hourly actuals from ``days`` before NOW to ``after`` days after it."""
    n = (days + after) * 48
    t = np.arange(n) / 2.0
    return IntensitySeries(NOW - timedelta(days=days), HALF, 300 + 100 * np.sin(2 * np.pi * t / 24)
                           + 30 * np.sin(2 * np.pi * t / 61), source="fake")


class Provider:
    """A provider serving ``actual`` as history (up to ``until``, of ``history_kind``) and the
    future actuals + ``bias`` as its forecast (``forecast_hours`` whatever the horizon, as
    NESO's fw48h); counts its calls."""

    name, kind = "fake", "average"

    def __init__(self, actual: IntensitySeries, *, bias: float = 40.0, history_reason: str | None = None,
                 history_kind: str = "average", history_from: timedelta = timedelta(days=30),
                 until: timedelta = timedelta(0), forecast_hours: float = 48) -> None:
        self.actual, self.bias = actual, bias
        self.history_reason, self.history_kind = history_reason, history_kind
        self.history_from, self.until, self.forecast_hours = history_from, until, forecast_hours
        self.history_calls = self.forecast_calls = 0

    def current(self, zone, now):
        return self.actual.window(now - HALF, now)

    def history(self, zone, start, end):
        self.history_calls += 1
        if self.history_reason:
            raise SignalError(f"fake history failed ({self.history_reason})", reason=self.history_reason)
        w = self.actual.window(max(start, NOW - self.history_from), min(end, NOW + self.until))
        return replace(w, kind=self.history_kind)

    def forecast(self, zone, now, horizon):
        self.forecast_calls += 1
        w = self.actual.window(now, now + timedelta(hours=self.forecast_hours))
        return replace(w, values=w.values + self.bias, issued_at=now, source="fake")


def as_issued(p: Provider, now: datetime = NOW, hours: int = 48) -> np.ndarray:
    return p.actual.window(now, now + timedelta(hours=hours)).values + p.bias


# ---------------------------------------------------------------------------------- the blend path
def test_history_present_serves_the_blend_labelled():
    p = Provider(truth())
    f = FallbackChain(p, policy=ON).forecast("DE", NOW, timedelta(hours=24))
    assert f.source == "fake+blend" and f.meta["link"] == "provider" and f.meta["fallback"] == []
    b = f.meta["blend"]
    assert b["applied"] is True and b["own_weight"] == pytest.approx(0.2) and b["history_to"] == "2024-03-10T12:00:00Z"
    hist = p.actual.window(NOW - timedelta(days=14), NOW)
    want = blend_with_provider(FallbackChain(p).forecast("DE", NOW, timedelta(hours=24)), hist, NOW,
                               timedelta(hours=24), ForecasterPolicy())
    assert f.start == NOW and f.kind == "average" and np.allclose(f.values, want.values)
    i = p.actual.index_of(NOW)     # the last actual (11:30) vs the provider's value there (its first, 12:00)
    assert b["correction"] == pytest.approx(p.actual.values[i - 1] - (p.actual.values[i] + 40), abs=0.01)
    # the correction carries what happened since: early leads are pulled to the truth
    err = lambda v: np.abs(v[:12] - p.actual.window(NOW, NOW + 6 * H).values).mean()   # noqa: E731
    assert err(f.values) < 0.5 * err(as_issued(p)[:12])
    info = describe(f)
    assert info.blended and info.link == "provider" and info.source == "fake+blend"
    degraded, kind = info.conditions()
    assert degraded[:3] == ("SignalsDegraded", False, "ProviderServing")        # the provider serves: not degraded
    assert "fake+blend" in degraded[3] and "corrected by the latest actual" in degraded[3]
    assert kind[:3] == ("SignalKindChanged", False, "SameKind")
    assert info.labels() == {"source": "fake+blend", "link": "provider", "kind": "average", "provider_kind": "average"}


@pytest.mark.parametrize("provider, reason", [
    (dict(history_reason="ServerError"), "NoHistory"),                     # history absent: the provider fails
    (dict(history_from=timedelta(hours=12)), "InsufficientHistory"),       # 12 h: less than the forecaster's day
    (dict(until=-timedelta(hours=5)), "Stale"),                            # ends 5 h before now
    (dict(history_kind="marginal"), "KindMismatch"),                       # never mix average and marginal
])
def test_without_usable_history_the_provider_forecast_is_served_as_issued(provider, reason):
    p = Provider(truth(), **provider)
    f = FallbackChain(p, policy=ON).forecast("DE", NOW, timedelta(hours=24))
    assert f.source == "fake" and f.meta["link"] == "provider" and f.meta["fallback"] == []
    assert np.array_equal(f.values, as_issued(p)) and f.start == NOW and not f.estimate
    assert f.meta["blend"]["applied"] is False and f.meta["blend"]["reason"] == reason, f.meta["blend"]
    assert not describe(f).blended and describe(f).conditions()[0][:3] == ("SignalsDegraded", False, "ProviderServing")


def test_off_by_default_for_a_bare_chain_and_no_history_asked():
    p = Provider(truth())
    f = FallbackChain(p).forecast("DE", NOW, timedelta(hours=24))
    assert f.source == "fake" and "blend" not in f.meta and np.array_equal(f.values, as_issued(p))
    assert p.history_calls == 0


def test_a_failing_blend_serves_the_provider_as_issued_and_logs_once(monkeypatch, caplog):
    def boom(*a, **kw):
        raise ValueError("boom")
    monkeypatch.setattr(chain_mod, "blend_with_provider", boom)
    p = Provider(truth())
    chain = FallbackChain(p, policy=ON)
    with caplog.at_level(logging.INFO, logger="greenml.signals.chain"):
        for i in range(5):
            f = chain.forecast("DE", NOW + timedelta(minutes=i), timedelta(hours=24))
            assert f.source == "fake" and f.meta["blend"]["reason"] == "BlendFailed"
            assert "ValueError: boom" in f.meta["blend"]["message"]
    lines = [r for r in caplog.records if "not blended" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "boom" in lines[0].getMessage()


def test_a_blend_returning_nonsense_is_not_served(monkeypatch):
    real = chain_mod.blend_with_provider
    monkeypatch.setattr(chain_mod, "blend_with_provider",
                        lambda *a, **kw: replace(real(*a, **kw), values=np.full(48, np.nan)))
    p = Provider(truth())
    f = FallbackChain(p, policy=ON).forecast("DE", NOW, timedelta(hours=24))
    assert f.source == "fake" and f.meta["blend"]["reason"] == "NotBlended" and np.isfinite(f.values).all()


def test_a_short_forecast_is_blended_then_continued():
    p = Provider(truth(), forecast_hours=12)
    f = FallbackChain(p, policy=ON).forecast("DE", NOW, timedelta(hours=24))
    assert f.source == "fake+blend" and f.meta["short"] and f.meta["covers_until"] == (NOW + 12 * H).isoformat()
    assert [x["link"] for x in f.meta["extended"]] == ["forecaster"] and f.end == NOW + 24 * H
    assert describe(f).conditions()[0][2] == "ShortForecast"                   # as before: the condition is unchanged
    assert p.history_calls == 1                                                # one request serves both


# ------------------------------------------------------------------------------- request rate
@pytest.mark.parametrize("history_reason", [None, "ServerError"])
def test_history_is_asked_at_most_once_per_zone_per_hour(history_reason):
    """Reconciles every 30 s for 3 h, two zones: the provider's forecast is fetched per TTL,
    its history at most once per zone per hour — whether it answers or fails."""
    clock = FakeClock()
    p = Provider(truth(), history_reason=history_reason, until=timedelta(hours=4))
    chain = FallbackChain(p, policy=ON, clock=clock)
    for i in range(360):
        now = NOW + timedelta(seconds=30 * i)
        for zone in ("DE", "FR"):
            f = chain.forecast(zone, now, timedelta(hours=24))
            assert f.meta["link"] == "provider"
            assert f.meta["blend"]["applied"] is (history_reason is None), f.meta["blend"]
        clock.t += 30
    assert p.history_calls <= 2 * 3, p.history_calls      # ≤ 1 per zone per hour (3 h)
    assert p.history_calls >= 2 * 2                       # and it is asked again each hour
    assert p.forecast_calls <= 2 * 37                     # one per zone per forecast_ttl (300 s)


# ---------------------------------------------------------------------------------- the setting
def test_setting_on_by_default_and_wired_through_build_source(monkeypatch):
    assert Settings().forecast_blend is True
    assert build_source(Settings(provider="ukcarbon"), kube=object()).policy.blend is True
    monkeypatch.setenv("GREENML_FORECAST_BLEND", "false")
    off = load_settings(provider="ukcarbon")
    assert off.forecast_blend is False and build_source(off, kube=object()).policy.blend is False


# ------------------------------------------------------------------ real NESO bodies on 127.0.0.1
@pytest.fixture
def neso():
    """NESO's fw48h (2024-01-12 06:00-10:00) and pt24h (2024-01-11 06:00-10:00) bodies as sent."""
    from tests.unit.test_signals_providers import Server

    fw = shared_data_file("api_payloads/uk_fw48h_national_nmpowell.json").read_bytes()
    pt = shared_data_file("api_payloads/uk_pt24h_national_nmpowell.json").read_bytes()
    s = Server()

    class Routes(dict):
        def get(self, path, default=None):
            return lambda req: (200, {}, fw if path.endswith("/fw48h") else pt)
    s.routes = Routes()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


FAST = RetryPolicy(attempts=1, base_delay=0.0, timeout=2.0)
T = datetime(2024, 1, 12, 6, 0, tzinfo=UTC)


def test_neso_bodies_without_recent_history_are_served_as_issued(neso):
    clock = FakeClock()
    chain = FallbackChain(UKCarbonSource(base_url=neso.url, policy=FAST, sleep=lambda s: None), policy=ON, clock=clock)
    for i in range(20):                                # 20 reconciles over 50 min
        f = chain.forecast("GB", T + timedelta(minutes=2.5 * i), timedelta(hours=3))
        clock.t += 150
    assert f.source == "ukcarbon" and f.meta["blend"]["reason"] == "Stale"      # the pt24h body ends 20 h before
    assert f.values[0] == 293 or f.start > T
    history = [r for r in neso.requests if not r["path"].endswith("/fw48h")]
    assert len(history) == 1, [r["path"] for r in neso.requests]
    assert history[0]["path"] == "/intensity/2023-12-29T06:00Z/2024-01-12T06:00Z"


def test_neso_bodies_with_a_recorded_history_are_blended(neso):
    """Two days recorded (the ConfigMap's record after a restart) + NESO's real answers: the
    fw48h forecast, corrected by the record's last actual and blended with the own forecast."""
    store = MemoryHistoryStore()
    n = 96
    rec = IntensitySeries(T - HALF * n, HALF, 250 + 40 * np.sin(np.arange(n) * np.pi / 24), source="ukcarbon")
    store.save(record_key("ukcarbon", "GB"), encode(rec))
    src = RecordedHistory(UKCarbonSource(base_url=neso.url, policy=FAST, sleep=lambda s: None), store)
    f = FallbackChain(src, policy=ON).forecast("GB", T, timedelta(hours=4))
    assert f.source == "ukcarbon+blend" and f.meta["blend"]["applied"] is True, f.meta.get("blend")
    issued = UKCarbonSource(base_url=neso.url, policy=FAST).forecast("GB", T, timedelta(hours=4))
    assert issued.values[0] == 293 and len(issued) == 8
    hist = src.history("GB", T - timedelta(days=14), T)
    want = blend_with_provider(issued, hist, T, timedelta(hours=4), ForecasterPolicy())
    assert np.allclose(f.values, want.values) and f.start == T and f.end == T + 4 * H
    assert f.meta["blend"]["correction"] == pytest.approx(round(float(rec.values[-1]) - 293, 2), abs=0.06)
    assert f.meta["blend"]["own_weight"] == pytest.approx(0.2)
    assert json.dumps(f.meta)                                                  # status-safe meta
