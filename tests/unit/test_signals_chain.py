"""FallbackChain, build_source, forecaster basics, robustness helpers."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.settings import Settings
from greenml.signals import FallbackChain, SignalError, build_source
from greenml.signals.base import IntensitySeries
from greenml.signals.forecaster import forecast_from_history
from greenml.signals.robust import RateLimiter, RetryPolicy, TTLCache, call_with_retry
from greenml.signals.series import SeriesSource

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Failing:
    """A provider whose calls raise a given reason (or serve ``series`` when reason is None)."""

    name = "fake"

    def __init__(self, reason: str | None, series: IntensitySeries | None = None, history_ok: bool = False):
        self.reason, self.series, self.history_ok, self.calls = reason, series, history_ok, 0

    def _maybe_fail(self):
        self.calls += 1
        if self.reason:
            raise SignalError(f"fake failed ({self.reason})", reason=self.reason)

    def current(self, zone, now):
        self._maybe_fail()
        return self.series.window(now - H, now)

    def history(self, zone, start, end):
        if not self.history_ok:
            self._maybe_fail()
        return self.series.window(start, end)

    def forecast(self, zone, now, horizon):
        self._maybe_fail()
        return self.series.window(now, now + horizon)


def daily_series(days: int = 20, start: datetime = NOW - timedelta(days=20)) -> IntensitySeries:
    t = np.arange(days * 24)
    return IntensitySeries(start, H, 300 + 100 * np.sin(2 * np.pi * t / 24), source="fake")


def test_provider_serves_when_healthy():
    s = daily_series(30)
    chain = FallbackChain(Failing(None, s))
    f = chain.forecast("DE", NOW, timedelta(hours=6))
    assert f.meta["link"] == "provider" and f.meta["fallback"] == [] and f.source == "fake"


def test_forecast_cache_serves_shrinking_horizons_without_calling_the_provider():
    """A budget asks for a forecast to its period's end: a new horizon every tick. One provider
    call per zone per TTL serves them all; a longer horizon, or the TTL's end, fetches again."""
    clock, s = FakeClock(), daily_series(30)
    prov = Failing(None, s)
    chain = FallbackChain(prov, clock=clock)
    for i in range(10):                                   # 10 ticks, 30 s apart, horizon shrinking
        now = NOW + timedelta(seconds=30 * i)
        f = chain.forecast("DE", now, timedelta(hours=6) - timedelta(seconds=30 * i))
        assert f.meta["link"] == "provider"
        clock.t += 30
    assert prov.calls == 1
    chain.forecast("DE", NOW + timedelta(minutes=5), timedelta(hours=12))   # longer than cached
    assert prov.calls == 2
    chain.forecast("GB", NOW + timedelta(minutes=5), timedelta(hours=1))    # another zone
    assert prov.calls == 3
    clock.t += chain.policy.forecast_ttl + 1
    chain.forecast("DE", NOW + timedelta(minutes=11), timedelta(hours=1))   # TTL over
    assert prov.calls == 4


@pytest.mark.parametrize("reason", ["Timeout", "Unauthorized", "RateLimited", "ServerError", "Malformed"])
def test_forecast_falls_back_to_own_forecaster_with_reason(reason):
    chain = FallbackChain(Failing(reason, daily_series(), history_ok=True))
    f = chain.forecast("DE", NOW, timedelta(hours=24))
    assert f.meta["link"] == "forecaster" and f.estimate
    assert f.meta["fallback"][0]["reason"] == reason and f.meta["fallback"][0]["link"] == "fake"
    assert f.source == "forecaster(fake)" and f.end >= NOW + timedelta(hours=24)


def test_everything_down_ends_at_embedded():
    chain = FallbackChain(Failing("Timeout", daily_series()))
    f = chain.forecast("GB", NOW, timedelta(hours=24))
    assert f.source == "embedded" and f.estimate and f.meta["link"] == "embedded"
    assert [x["reason"] for x in f.meta["fallback"]] == ["Timeout", "Timeout"]
    c = chain.current("GB", NOW)
    assert c.meta["link"] == "embedded" and c.meta["fallback"][0]["reason"] == "Timeout"


def test_unknown_zone_everywhere_raises_with_all_reasons():
    chain = FallbackChain(Failing("UnknownZone", daily_series()))
    with pytest.raises(SignalError) as exc:
        chain.forecast("XX", NOW, H)
    assert exc.value.reason == "UnknownZone" and "embedded: UnknownZone" in str(exc.value)


def test_stale_current_is_rejected():
    old = daily_series(5, start=NOW - timedelta(days=9))  # ends 4 days ago
    chain = FallbackChain(Failing(None, old))
    c = chain.current("DE", NOW - timedelta(days=4) + 2 * H)
    # served by the provider's last hour? no: window(now-1h, now) is empty there -> Malformed
    assert c.meta["link"] == "embedded"
    src = SeriesSource(old)
    chain2 = FallbackChain(src)
    c2 = chain2.current("DE", old.end + timedelta(hours=3))
    assert c2.meta["link"] == "embedded" and c2.meta["fallback"][0]["reason"] == "Stale"


def test_cached_history_is_reused_after_outage():
    clock = FakeClock()
    prov = Failing("ServerError", daily_series(), history_ok=True)
    chain = FallbackChain(prov, clock=clock)
    chain.forecast("DE", NOW, H)
    prov.history_ok = False  # history endpoint now fails too
    clock.t += 7200  # cache TTL (1 h) expired, but history still within 24 h
    f = chain.forecast("DE", NOW + timedelta(minutes=30), H)
    assert f.meta["link"] == "forecaster"


def test_build_source_defaults_and_misconfiguration(tmp_path):
    chain = build_source(Settings(provider="embedded"))
    assert chain.primary is None and chain.current("DE", NOW).source == "embedded"
    with pytest.raises(SignalError, match="intensity_file") as exc:
        build_source(Settings(provider="file"))
    assert exc.value.reason == "Misconfigured"
    p = tmp_path / "i.csv"
    p.write_text("datetime_utc,v\n2024-03-10T11:00:00Z,123\n2024-03-10T12:00:00Z,124\n")
    s = build_source(Settings(provider="file", intensity_file=str(p))).current("DE", NOW)
    assert s.values[0] == 124 and s.meta["link"] == "provider"


def test_forecaster_tracks_daily_shape_and_level():
    hist = daily_series(20)
    f = forecast_from_history(hist.window(hist.start, NOW), NOW, timedelta(hours=72))
    assert f.start == NOW and len(f) == 72 and f.issued_at == NOW and f.estimate
    truth = 300 + 100 * np.sin(2 * np.pi * np.arange(72) / 24)
    assert np.abs(f.values[12:] - truth[12:]).max() < 1.0  # beyond the persistence blend: the exact shape
    assert np.abs(f.values - truth).max() < 30
    with pytest.raises(SignalError) as exc:
        forecast_from_history(hist.window(hist.start, hist.start + 5 * H), hist.start + 5 * H, H)
    assert exc.value.reason == "InsufficientHistory"


def test_forecaster_carries_recent_anomaly_and_decays():
    hist = daily_series(20)
    vals = hist.values.copy()
    vals[-3:] += 100  # the last 3 hours are 100 above the usual shape
    shifted = IntensitySeries(hist.start, H, vals, source="fake")
    f = forecast_from_history(shifted, hist.end, timedelta(hours=48))
    truth = 300 + 100 * np.sin(2 * np.pi * np.arange(48) / 24)
    err = f.values - truth
    assert 60 < err[0] <= 101 and abs(err[36]) < 30 < err[6]  # the anomaly fades with lead
    assert 5 < err[-1] < 40  # the raised slots of the day weigh in the recency-weighted profile


def test_retry_backoff_and_give_up():
    sleeps: list[float] = []
    attempts = {"n": 0}

    def flaky():
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise SignalError("boom", reason="ServerError")
        return "ok"

    policy = RetryPolicy(attempts=3, base_delay=1.0, jitter=0.5)
    assert call_with_retry(flaky, policy, sleep=sleeps.append, rng=random.Random(1)) == "ok"
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0
    with pytest.raises(SignalError):
        call_with_retry(lambda: (_ for _ in ()).throw(SignalError("no", reason="Unauthorized")), policy,
                        sleep=sleeps.append)
    assert len(sleeps) == 2  # not retried


def test_rate_limiter_and_cache():
    clock = FakeClock()
    rl = RateLimiter(2, 10.0, clock=clock)
    rl.acquire("x"), rl.acquire("x")
    with pytest.raises(SignalError) as exc:
        rl.acquire("x")
    assert exc.value.reason == "RateLimited"
    clock.t += 10
    rl.acquire("x")
    rl.block_for(30)
    clock.t += 29
    with pytest.raises(SignalError, match="rate limited"):
        rl.acquire("x")
    cache: TTLCache[int] = TTLCache(5, clock=clock)
    cache.put("k", 1)
    clock.t += 6
    assert cache.get("k") is None and cache.get_stale("k") == 1
