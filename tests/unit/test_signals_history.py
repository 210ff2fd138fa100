"""The local record of provider history (issue 15, item 1): merging, bounds, encoding, and
the record serving the forecaster weeks of history on a plan that answers only 24 h.

The provider side is the real ElectricityMapsSource against a server on 127.0.0.1 that
answers the way the free tier does: /past-range refused, /history the last 24 h (in the
shape of the real /history body, ../shared/data/api_payloads/em_history_DE_24h.json).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.signals import FallbackChain, SignalError
from greenml.signals.base import IntensitySeries
from greenml.signals.history import (
    CONFIGMAP_MAX_BYTES, ConfigMapHistoryStore, HistoryStoreError, MemoryHistoryStore, RecordedHistory,
    RecordPolicy, decode, encode, merge, record_key,
)
from greenml.signals.providers import ElectricityMapsSource
from greenml.signals.robust import RetryPolicy
from greenml.timeutil import format_time
from tests.unit.test_signals_providers import TOKEN, FakeClock, Server, server  # noqa: F401 (fixture)

UTC = timezone.utc
H = timedelta(hours=1)
T0 = datetime(2024, 3, 1, tzinfo=UTC)
FAST = RetryPolicy(attempts=1, base_delay=0.0, timeout=2.0)


def series(start: datetime, values, step: timedelta = H, kind: str = "average") -> IntensitySeries:
    return IntensitySeries(start, step, np.asarray(values, dtype=float), source="electricitymaps", kind=kind)


def truth(t: datetime) -> float:
    """A deterministic 'grid': a daily shape plus a slow drift (0.1 g resolution)."""
    h = (t - T0).total_seconds() / 3600
    return round(300 + 80 * np.sin(2 * np.pi * h / 24) + h * 0.05, 1)


# ------------------------------------------------------------------------------ merge
def test_merge_new_wins_and_extends():
    old = series(T0, [1, 2, 3, 4])
    new = series(T0 + 2 * H, [30, 40, 50])
    m = merge(old, new)
    assert m.start == T0 and m.values.tolist() == [1, 2, 30, 40, 50] and m.meta["filled"] == 0


def test_merge_fills_a_short_gap_with_the_day_before_and_cuts_before_a_long_one():
    day = [float(i) for i in range(24)]
    old = series(T0, day * 2)                             # two days
    new = series(T0 + 50 * H, [100.0, 101.0])             # 2 h missing (48, 49)
    m = merge(old, new)
    assert m.start == T0 and len(m) == 52 and m.values[48:50].tolist() == [0.0, 1.0] and m.meta["filled"] == 2
    far = series(T0 + 48 * H + timedelta(days=4), [7.0, 8.0])   # 4 days missing: older part cut
    m = merge(old, far)
    assert m.start == far.start and m.values.tolist() == [7.0, 8.0]


def test_merge_keeps_retention_and_never_mixes_kinds():
    old = series(T0, np.arange(100.0))
    m = merge(old, series(T0 + 100 * H, [5.0]), retention=timedelta(hours=10))
    assert len(m) == 10 and m.end == T0 + 101 * H and m.values[-1] == 5.0
    m = merge(old, series(T0 + 100 * H, [5.0], kind="marginal"))
    assert m.kind == "marginal" and m.values.tolist() == [5.0]


def test_merge_puts_a_record_of_another_step_on_the_new_grid():
    old = series(T0, [10.0, 20.0])                               # hourly
    new = series(T0 + 2 * H, [30.0, 30.0], step=timedelta(minutes=30))
    m = merge(old, new)
    assert m.step == timedelta(minutes=30) and m.values.tolist() == [10, 10, 20, 20, 30, 30]


# ------------------------------------------------------------------------------ encoding
def test_encoding_round_trips_at_0_1_g_and_stays_small():
    n = 35 * 24
    s = series(T0, [truth(T0 + i * H) for i in range(n)])
    text = encode(s)
    back = decode(text)
    assert back.start == s.start and back.step == s.step and back.kind == "average"
    assert np.allclose(back.values, s.values, atol=0.05)
    assert len(text) < 3000   # five weeks hourly (real Electricity Maps DE: 2.1 KiB)
    five_min = series(T0, 250 + 400 * np.random.default_rng(1).random(35 * 288), step=timedelta(minutes=5))
    assert len(encode(five_min)) < 30_000
    big = series(T0, [7000.0, 1.0])   # past uint16 at 0.1 g: still exact
    assert decode(encode(big)).values.tolist() == [7000.0, 1.0]
    for bad in ("", "{}", '{"format": 1, "dtype": "<u2", "values": "%%%"}', "[1]"):
        with pytest.raises(ValueError):
            decode(bad)


def test_record_key_is_a_configmap_key():
    assert record_key("watttime", "CAISO_NORTH") == "watttime.CAISO_NORTH"
    assert record_key("x", "a/b c") == "x.a_b_c"


# ------------------------------------------------------------------------------ the source, free tier
class FreeTier:
    """Electricity Maps as a free-tier key sees it: /past-range 401, /history the 24 h
    before the (moving) wall clock, each item shaped as in the real /history body."""

    def __init__(self, server: Server, clock: list[datetime]) -> None:
        self.clock = clock
        server.json("/v3/carbon-intensity/past-range", {"message": "Unauthorized: not in your plan"}, status=401)
        server.routes["/v3/carbon-intensity/history"] = self.history

    def history(self, req):
        end = self.clock[0].replace(minute=0, second=0, microsecond=0)
        items = [{"zone": "DE", "carbonIntensity": truth(end - (24 - i) * H), "datetime": format_time(end - (24 - i) * H),
                  "updatedAt": format_time(end), "createdAt": format_time(end), "emissionFactorType": "lifecycle",
                  "isEstimated": False, "estimationMethod": None} for i in range(24)]
        return 200, {}, json.dumps({"zone": "DE", "history": items}).encode()


def free_tier_chain(server, wall: list[datetime], store) -> tuple[FallbackChain, ElectricityMapsSource]:
    em = ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0], clock=FakeClock())
    return FallbackChain(RecordedHistory(em, store)), em


def test_free_tier_forecaster_gets_weeks_of_history_after_days_of_running(server):
    """Before: /past-range refused → 24 h of history → the own forecaster had one day at
    most. Now each day's /history is recorded, so after 15 days (and a restart: a new
    chain over the same store) the forecaster has its two weeks."""
    wall = [T0 + timedelta(days=1)]
    FreeTier(server, wall)
    store = MemoryHistoryStore()
    for day in range(15):
        wall[0] = T0 + timedelta(days=1 + day, hours=0, minutes=30)
        chain, _ = free_tier_chain(server, wall, store)       # a restart every day
        chain.history("DE", wall[0] - timedelta(days=14), wall[0])
    chain, _ = free_tier_chain(server, wall, store)
    hist = chain.history("DE", wall[0] - timedelta(days=14), wall[0])
    assert hist.meta["link"] == "provider" and not hist.meta.get("partial")
    assert len(hist) == 14 * 24 and hist.start == wall[0].replace(minute=0) - timedelta(days=14)
    assert hist.meta["recorded"]["points"] == 15 * 24 + 1 - 1   # 15 days at one point an hour
    assert np.allclose(hist.values, [truth(t) for t in hist.times()], atol=0.05)
    # the chain's forecaster reads the provider's history: two weeks, not one day
    f = chain.forecast("DE", wall[0], timedelta(hours=24))
    assert f.meta["link"] == "forecaster" and f.meta["history_days"] == pytest.approx(14, abs=0.1)


def test_without_a_record_the_free_tier_has_one_day(server):
    """The state before the record: the same server, the provider alone."""
    wall = [T0 + timedelta(days=10, minutes=30)]
    FreeTier(server, wall)
    em = ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0], clock=FakeClock())
    h = FallbackChain(em).history("DE", wall[0] - timedelta(days=14), wall[0])
    assert len(h) == 24 and h.meta["partial"]


def test_record_asks_only_for_what_it_lacks(server):
    wall = [T0 + timedelta(days=3, minutes=30)]
    FreeTier(server, wall)
    store = MemoryHistoryStore()
    src = RecordedHistory(ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0]),
                          store)
    src.history("DE", wall[0] - timedelta(days=2), wall[0])
    wall[0] += timedelta(hours=5)
    n = len(server.requests)
    src.history("DE", wall[0] - timedelta(days=2), wall[0])
    # the record starts a day before the range: only its tail was asked, from /history
    assert [r["path"] for r in server.requests[n:]] == ["/v3/carbon-intensity/history"]


def test_a_recorded_past_range_is_served_from_the_record(server):
    """A range the record holds (accounting a past period) is served without a request;
    before, the provider was asked for an empty tail and the chain fell back to the profile."""
    wall = [T0 + timedelta(days=3, minutes=30)]
    FreeTier(server, wall)
    src = RecordedHistory(ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0]),
                          MemoryHistoryStore())
    src.history("DE", wall[0] - timedelta(days=1), wall[0])
    n = len(server.requests)
    a = wall[0].replace(minute=0) - timedelta(hours=20)
    h = FallbackChain(src).history("DE", a, a + timedelta(hours=3))
    assert len(server.requests) == n and h.meta["link"] == "provider" and len(h) == 3
    assert h.values.tolist() == pytest.approx([truth(a + i * H) for i in range(3)], abs=0.05)


def test_record_serves_through_a_provider_outage_and_says_so(server):
    wall = [T0 + timedelta(days=2, minutes=30)]
    FreeTier(server, wall)
    store = MemoryHistoryStore()
    em = ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0])
    RecordedHistory(em, store).history("DE", wall[0] - timedelta(days=1), wall[0])
    server.json("/v3/carbon-intensity/history", {"message": "down"}, status=503)
    wall[0] += timedelta(hours=3)
    h = RecordedHistory(em, store).history("DE", wall[0] - timedelta(days=1), wall[0])
    assert h.meta["recorded"]["provider_error"] == "ServerError" and len(h) == 21
    wall[0] += timedelta(days=2)   # the record ends too long ago: the provider's error stands
    with pytest.raises(SignalError) as exc:
        RecordedHistory(em, store).history("DE", wall[0] - timedelta(days=1), wall[0])
    assert exc.value.reason == "ServerError"


class BrokenStore:
    def load(self, key):
        raise HistoryStoreError("forbidden: configmaps")

    def save(self, key, text):
        raise HistoryStoreError("forbidden: configmaps")


def test_a_broken_store_never_fails_a_call(server, caplog):
    wall = [T0 + timedelta(days=2, minutes=30)]
    FreeTier(server, wall)
    src = RecordedHistory(ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0]),
                          BrokenStore())
    for _ in range(3):
        assert len(src.history("DE", wall[0] - timedelta(hours=6), wall[0])) == 6
    assert sum("signal history record" in r.getMessage() for r in caplog.records) == 2   # read, write: once each


class FakeKube:
    def __init__(self, fail: Exception | None = None) -> None:
        self.cm: dict | None = None
        self.patches: list[dict] = []
        self.fail = fail

    def request(self, *a, **k):  # marks it as a Kube, not a factory
        raise AssertionError

    def get(self, api_version, plural, ns, name):
        if self.fail:
            raise self.fail
        return self.cm

    def merge_configmap_data(self, ns, name, data, labels=None):
        self.patches.append(dict(data))
        self.cm = {"data": {**((self.cm or {}).get("data") or {}), **data}}
        return self.cm


def test_configmap_store_reads_once_writes_one_key_and_refuses_past_its_size():
    kube = FakeKube()
    kube.cm = {"data": {"other.Z": "x" * 100}}
    made = []
    store = ConfigMapHistoryStore("greenml", "hist", lambda: made.append(1) or kube, max_bytes=1000)
    assert store.load("electricitymaps.DE") is None
    store.save("electricitymaps.DE", "abc")
    assert store.load("electricitymaps.DE") == "abc" and kube.patches == [{"electricitymaps.DE": "abc"}]
    assert made == [1]
    with pytest.raises(HistoryStoreError, match="limit 1000"):
        store.save("electricitymaps.FR", "y" * 900)
    assert CONFIGMAP_MAX_BYTES < 1024 * 1024


def test_configmap_store_api_error_is_a_store_error():
    from greenml.kube.client import ApiError

    store = ConfigMapHistoryStore("greenml", "hist", FakeKube(fail=ApiError("get configmaps greenml/hist: HTTP 403")))
    with pytest.raises(HistoryStoreError, match="403"):
        store.load("k")


def test_record_policy_defaults():
    p = RecordPolicy()
    assert p.retention == timedelta(days=35) and p.max_gap == timedelta(days=3)


def test_build_source_records_an_http_providers_history(tmp_path, monkeypatch):
    from greenml.settings import Settings
    from greenml.signals import build_source, history

    monkeypatch.setattr(history, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "absent"))

    kube = FakeKube()
    on = build_source(Settings(provider="electricitymaps", provider_token=TOKEN, history_namespace="greenml"), kube=kube)
    assert isinstance(on.primary, RecordedHistory) and on.primary.name == "electricitymaps"
    assert isinstance(on.primary.store, ConfigMapHistoryStore) and on.primary.store.name == "greenml-signal-history"
    assert on.primary.kind == "average" and on.primary.policy.retention == timedelta(days=35)
    off = build_source(Settings(provider="electricitymaps", provider_token=TOKEN, history_namespace="greenml",
                                history_configmap=""), kube=kube)
    assert isinstance(off.primary, ElectricityMapsSource)
    # outside a cluster, without a namespace, the record is off (a CLI run never writes ConfigMaps)
    assert not isinstance(build_source(Settings(provider="ukcarbon"), kube=kube).primary, RecordedHistory)
    csv = tmp_path / "ci.csv"
    csv.write_text("datetime_utc,ci\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n")
    assert not isinstance(build_source(Settings(provider="file", intensity_file=str(csv), history_namespace="x"),
                                       kube=kube).primary, RecordedHistory)


def test_a_cluster_less_store_is_off_not_an_error(server):
    """No in-cluster config and no kubeconfig: the factory fails, the record is off, history serves."""
    wall = [T0 + timedelta(days=2, minutes=30)]
    FreeTier(server, wall)

    def no_cluster():
        raise RuntimeError("Service host/port is not set")

    src = RecordedHistory(ElectricityMapsSource(TOKEN, base_url=server.url, policy=FAST, utcnow=lambda: wall[0]),
                          ConfigMapHistoryStore("greenml", "hist", no_cluster))
    assert len(src.history("DE", wall[0] - timedelta(hours=6), wall[0])) == 6


def test_own_namespace_is_the_service_accounts(tmp_path):
    from greenml.signals.history import own_namespace

    (tmp_path / "namespace").write_text("greenml-system\n")
    assert own_namespace(str(tmp_path / "namespace")) == "greenml-system"
    assert own_namespace(str(tmp_path / "absent")) is None
