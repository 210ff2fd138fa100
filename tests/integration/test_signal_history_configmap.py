"""The signal-history record in a ConfigMap, through the project's Kubernetes client, against
the kmock emulator (issue 15, item 1): created when absent, one key patched per write (the
other keys kept), read back by a new store (a restart).

kmock's gaps (STYLE.md) that matter here: no PUT (the client only GETs, POSTs and merge-
PATCHes), no optimistic concurrency, create answers 200. The request shapes are asserted,
so the test does not pass only because the emulator is lenient.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import kmock
import numpy as np
import pytest

from greenml.kube import Kube
from greenml.kube.client import load_configuration
from greenml.signals.base import IntensitySeries
from greenml.signals.history import ConfigMapHistoryStore, RecordedHistory, decode, encode
from tests.integration.harness import declare_resources, run_operator, wait_for, write_kubeconfig
from tests.integration.test_faults import FakeProvider, provider_env
from tests.integration.test_trainingjob_operator import TJ, grid_start, training_job

pytestmark = pytest.mark.timeout(120)

NS, NAME = "ml", "greenml-signal-history"   # the namespace the operator under test is told to use
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)


class Hourly:
    """A provider whose history is the 24 h before ``now`` (a free-tier plan)."""

    name, kind = "electricitymaps", "average"

    def __init__(self) -> None:
        self.now = T0 + timedelta(days=1)

    def history(self, zone, start, end):
        a = max(start, self.now - timedelta(hours=24))
        n = int((min(end, self.now) - a) / H)
        return IntensitySeries(a, H, 100 + np.arange(n, dtype=float), source=self.name)


@pytest.fixture
def kube(kmock, tmp_path) -> Kube:
    declare_resources(kmock)
    kmock.resources["v1/configmaps"] = kmock_resource()
    return Kube(load_configuration(str(write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url)))))


def kmock_resource():
    return kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs={"get", "list", "watch", "create", "patch",
                                                                        "delete"})


def calls(k, path_part: str) -> list[tuple[str, object]]:
    return [(str(r.method).lower().rsplit(".", 1)[-1], r.data) for r in list(k) if path_part in str(r.url)]


async def test_record_lives_in_a_configmap_and_survives_a_restart(kmock, kube):
    provider = Hourly()
    store = ConfigMapHistoryStore(NS, NAME, kube)
    await asyncio.to_thread(RecordedHistory(provider, store).history, "DE", provider.now - timedelta(days=14), provider.now)
    cm_calls = calls(kmock, f"/namespaces/{NS}/configmaps")
    methods = [m for m, _ in cm_calls]
    assert methods[0] == "get" and "post" in methods and "put" not in methods
    created = next(d for m, d in cm_calls if m == "post")
    assert created["metadata"]["name"] == NAME and created["metadata"]["labels"]["greenml.io/record"] == "signal-history"
    assert list(created["data"]) == ["electricitymaps.DE"]

    # another zone: one merge patch of its key only
    await asyncio.to_thread(RecordedHistory(provider, store).history, "FR", provider.now - timedelta(days=1), provider.now)
    patches = [d for m, d in calls(kmock, f"/configmaps/{NAME}") if m == "patch"]
    assert patches and list(patches[-1]["data"]) == ["electricitymaps.FR"]

    # a day later, after a restart: a new store reads the record and extends it
    provider.now += timedelta(days=1)
    fresh = ConfigMapHistoryStore(NS, NAME, kube)
    h = await asyncio.to_thread(RecordedHistory(provider, fresh).history, "DE", provider.now - timedelta(days=14),
                                provider.now)
    assert len(h) == 48 and h.meta["recorded"]["points"] == 48 and h.start == T0
    got = await asyncio.to_thread(kube.get, "v1", "configmaps", NS, NAME)
    assert set(got["data"]) == {"electricitymaps.DE", "electricitymaps.FR"}
    assert len(decode(got["data"]["electricitymaps.DE"])) == 48


async def test_merge_configmap_data_creates_then_patches(kmock, kube):
    s = IntensitySeries(T0, H, [1.0, 2.0], source="x")
    await asyncio.to_thread(kube.merge_configmap_data, NS, "other", {"a": encode(s)})
    await asyncio.to_thread(kube.merge_configmap_data, NS, "other", {"b": "2"})
    got = await asyncio.to_thread(kube.get, "v1", "configmaps", NS, "other")
    assert got["data"] == {"a": encode(s), "b": "2"}
    methods = [m for m, _ in calls(kmock, "/configmaps")]
    assert methods == ["patch", "post", "patch", "get"]   # absent → 404 → created; then patched; read


# ---------------------------------------------------------------- the real operator (greenml run)
class FreeTierProvider(FakeProvider):
    """Electricity Maps as a free key sees it: /forecast refused (401), history served."""

    def handle(self, h):
        if urlsplit(h.path).path.endswith("/forecast"):
            self.seen.append((urlsplit(h.path).path, {}, {}))
            h.send_response(401)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(b'{"message": "Forecast is not part of your plan"}')
            return
        super().handle(h)


async def configmap(api, name: str = NAME):
    return await api.get("v1/configmaps", NS, name)


async def test_operator_records_provider_history_in_its_configmap_across_a_restart(api, kubeconfig, tmp_path):
    """`greenml run` with Electricity Maps on a free key: the chain's forecaster asks for
    history, and the record of it lands in the ConfigMap of the operator's namespace; a
    restarted operator reads it back (its first ConfigMap request is a GET)."""
    api.k.resources["v1/configmaps"] = kmock_resource()
    # its history lies in the past (rows from t0 on: a t0 of now races the operator's clock)
    with FreeTierProvider(grid_start() - timedelta(minutes=10), [300.0] * 50) as provider:
        env = provider_env(tmp_path, kubeconfig, provider, history_namespace=NS, replan_interval="2s")
        with run_operator(tmp_path, env) as op:
            await api.create(TJ, training_job("rec", duration="10m", max_delay="1h"))
            cm = await wait_for("the history record", lambda: configmap(api), timeout=40, op=op)
        assert set(cm["data"]) == {"electricitymaps.DE"}
        assert cm["metadata"]["labels"]["greenml.io/record"] == "signal-history"
        assert len(decode(cm["data"]["electricitymaps.DE"])) >= 1
        n = len(api.requests_to("get", f"/configmaps/{NAME}"))
        with run_operator(tmp_path, env) as op:
            await wait_for("the restarted operator reading its record",
                           lambda: len(api.requests_to("get", f"/configmaps/{NAME}")) > n, timeout=40, op=op)
            assert op.alive()
