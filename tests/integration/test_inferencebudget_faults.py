"""Fault injection for InferenceBudgets: the real operator (`greenml run`) against kmock
and a scripted fake Electricity Maps server (``FakeProvider`` from test_faults.py).

Faults, and what must hold under each:

- Signal loss (the provider down *and* no fallback link able to serve) with
  ``policy.onSignalLoss: failClosed`` → the active variant and its replicas are kept,
  nothing is applied to the Deployment, ``SignalsDegraded`` is True with the provider's
  reason, provider requests stay bounded; nothing is charged while no intensity is known
  (``spend.accountedUntil`` holds) and the time is charged once it returns; the signal
  back → the condition clears.
- The same with ``failCheap`` → a switch (Event ``Switch``) to the most efficient variant
  whose quality is at or above ``policy.qualityFloor`` (never one below it).
- Degraded but served (the provider down, the embedded profile knows the zone) → the
  budget is still paced on the fallback's forecast, no signal-loss policy fires, and
  ``SignalsDegraded`` names why.
- API faults on the Deployment (server-side apply answered 409, then 500) → retried with
  backoff (bounded apply count), applied in the end, status right, operator alive.
- The target changed by another controller (the container image set back by another
  field manager) or deleted and recreated → the operator re-applies the active variant
  on its next reconcile, once (Event ``TargetDrifted``), without flapping.
- Throughout: one decision → one apply and one Switch Event (kopf's resume/create
  handlers and the timer must not each act on a decision not yet in status).

How a true signal loss is produced: the operator's source is the fallback chain
provider → own forecaster on the provider's history → embedded profile
(``greenml.signals.build_source``). The embedded profile knows DE, GB, FR, US-CAL-CISO and
US-MIDA-PJM; for those a provider outage is only *degraded* (the profile serves). The
loss tests therefore use zone ``PL``, which the fake provider serves while it is up (see
``AnyZoneProvider``) and which the embedded profile lacks; the own forecaster needs the
provider's history, which fails with the same fault. (The chain fetches history only
after the forecast fails, so nothing is cached from the healthy phase.)

kmock gaps that shape the assertions: it merges server-side-apply patches as plain dicts
and records no managedFields, so field ownership (the other manager's image taking the
field away from ``greenml-operator``) is not visible — the tests assert on the apply
*requests* and on the stored object's values; it ignores generateName, so Events are
asserted on the POSTed requests; and it stores writes before an injected error answers,
so a 409/500 on the apply is the "committed, reply lost" case.
"""
from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import operator_env, run_operator, wait_for
from tests.integration.test_faults import FakeProvider, Fault, provider_env
from tests.integration.test_inferencebudget_operator import (
    DEPLOY, IB, NS, applies, deployment, intensity_file, status_of,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

LOST_ZONE = "PL"            # served by the fake provider, unknown to the embedded profile
STEP = timedelta(seconds=2)
IMAGES = {"full": "llm:13b", "medium": "llm:7b", "tiny": "llm:1b"}
FLOOR = 0.5


class AnyZoneProvider(FakeProvider):
    """The fake Electricity Maps server, answering for ``LOST_ZONE`` as for DE (the base
    class 404s every zone but DE)."""

    _asked = threading.local()

    def handle(self, h: Any) -> None:
        self._asked.lost = f"zone={LOST_ZONE}" in h.path
        h.path = h.path.replace(f"zone={LOST_ZONE}", "zone=DE")
        super().handle(h)

    def body(self, path: str) -> dict:
        # the real API names the zone asked for in its answer (and the provider checks it)
        body = super().body(path)
        if getattr(self._asked, "lost", False):
            body = {**body, "zone": LOST_ZONE}
        return body


@pytest.fixture
def provider():
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with AnyZoneProvider(now - timedelta(seconds=10), [300.0] * 900, STEP) as p:
        yield p


def budget(name: str, target: str, *, zone: str = LOST_ZONE, on_signal_loss: str = "failClosed",
           grams: float = 1e6) -> dict:
    """Three variants; ``tiny`` is the cheapest but below the quality floor, so failCheap
    must pick ``medium``. A huge budget: with signals, the best variant (``full``)."""
    def variant(vname: str, quality: float, watts: float) -> dict:
        return {"name": vname, "quality": quality, "capacityRps": 10, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": IMAGES[vname]}]}}}}}
    return {"apiVersion": "greenml.io/v1alpha1", "kind": "InferenceBudget",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"targetRef": {"name": target}, "zone": zone,
                     "budget": {"carbonGrams": grams, "period": "day"},
                     "policy": {"qualityFloor": FLOOR, "minReplicas": 1, "maxReplicas": 6, "minDwell": "1s",
                                "onSignalLoss": on_signal_loss},
                     "variants": [variant("full", 1.0, 400), variant("medium", 0.8, 150), variant("tiny", 0.3, 40)]}}


def conds_of(st: dict) -> dict[str, dict]:
    return {c["type"]: c for c in st.get("conditions") or []}


def variant_of_apply(body: dict) -> str | None:
    return ((body.get("metadata") or {}).get("annotations") or {}).get("greenml.io/variant")


def image_of_apply(body: dict) -> str | None:
    containers = (((body.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return containers[0].get("image") if containers else None


def switch_events(api, name: str) -> list[dict]:
    return [e for e in api.posted_events(name) if e.get("reason") == "Switch"]


async def _decided(api, name: str, variant: str, *, degraded: bool | None = None) -> dict | None:
    st = await status_of(api, name)
    if st.get("activeVariant") != variant:
        return None
    if degraded is not None:
        c = conds_of(st).get("SignalsDegraded")
        if not c or c["status"] != ("True" if degraded else "False"):
            return None
    return st


async def _degraded(api, name: str) -> dict | None:
    st = await status_of(api, name)
    c = conds_of(st).get("SignalsDegraded")
    return st if c and c["status"] == "True" else None


async def _healthy_start(api, op, name: str, target: str, **kw: Any) -> dict:
    await api.create(DEPLOY, deployment(target))
    await api.create(IB, budget(name, target, **kw))
    st = await wait_for("a first decision with the provider up",
                        lambda: _decided(api, name, "full", degraded=False), timeout=40, op=op)
    assert st["lastDecision"]["reason"] == "WithinBudget", st["lastDecision"]
    assert conds_of(st)["SignalsDegraded"]["reason"] == "SignalsOK"
    await wait_for("the full variant applied", lambda: applies(api, f"/deployments/{target}"), op=op)
    await asyncio.sleep(1.5)
    # one decision → one apply and one Switch Event (the create handler and the timer
    # must not both act on the same, not yet persisted, first decision)
    sent = applies(api, f"/deployments/{target}")
    assert len(sent) == 1 and variant_of_apply(sent[0][1]) == "full", [b for _, b in sent]
    assert len(switch_events(api, name)) == 1, [e["message"] for e in switch_events(api, name)]
    return st


async def provider_rate(provider: FakeProvider, op, seconds: float) -> float:
    n0, t0 = len(provider.seen), time.monotonic()
    while time.monotonic() - t0 < seconds:
        assert op.alive(), op.logs()[-3000:]
        await asyncio.sleep(0.25)
    return (len(provider.seen) - n0) / (time.monotonic() - t0)


REASONS = {"500": "ServerError", "malformed": "Malformed", "401": "Unauthorized"}


# ------------------------------------------------------------------ signal loss
@pytest.mark.parametrize("outage", ["500", "malformed", "401"])
async def test_signal_loss_fail_closed_keeps_the_variant_then_recovers(api, kubeconfig, tmp_path, provider, outage):
    """failClosed: the provider goes down (and no fallback serves PL) → the active variant
    and replicas are kept, no apply, no Switch, phase Degraded, SignalsDegraded True with
    the provider's reason (the chain in its message); provider requests bounded (per
    0.5 s tick: one forecast + one history call, each tried ≤ 3× with backoff on 5xx);
    spend held, then charged; the provider back → SignalsDegraded False, phase Active."""
    with run_operator(tmp_path, provider_env(tmp_path, kubeconfig, provider, forecast_ttl="1")) as op:
        before = await _healthy_start(api, op, "fc", "fc-dep", on_signal_loss="failClosed")
        n_applies, n_switches = len(applies(api, "/deployments/fc-dep")), len(switch_events(api, "fc"))

        provider.mode = outage
        st = await wait_for("SignalsDegraded", lambda: _degraded(api, "fc"), timeout=40, op=op)
        c = conds_of(st)["SignalsDegraded"]
        # the provider's reason (not the last link's "UnknownZone"), and the chain in the message
        assert c["reason"] == REASONS[outage], c
        assert "electricitymaps" in c["message"] and "embedded" in c["message"], c
        assert st["phase"] == "Degraded"
        assert st["activeVariant"] == "full" and st["replicas"] == before["replicas"], st
        assert st["lastDecision"]["reason"] == "SignalsDegraded" and "failClosed keeps full" in st["lastDecision"]["message"]
        lost = st
        rate = await provider_rate(provider, op, 6.0)
        assert rate <= 6.0, f"{rate:.1f} provider requests/s during the outage: hot retry loop"
        st = await status_of(api, "fc")
        assert st["activeVariant"] == "full" and st["replicas"] == before["replicas"], st
        assert_spend_held(lost, st)
        later = applies(api, "/deployments/fc-dep")[n_applies:]
        assert all(variant_of_apply(b) == "full" for _, b in later), [b for _, b in later]
        assert len(later) == 0, f"{len(later)} applies during the outage (nothing changed)"
        assert len(switch_events(api, "fc")) == n_switches
        assert (await api.get(DEPLOY, NS, "fc-dep"))["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["full"]

        provider.mode = "ok"
        st = await wait_for("SignalsDegraded cleared", lambda: _decided(api, "fc", "full", degraded=False),
                            timeout=40, op=op)
        assert conds_of(st)["SignalsDegraded"]["reason"] == "SignalsOK"
        assert st["lastDecision"]["reason"] == "WithinBudget", st["lastDecision"]
        assert st["phase"] == "Active"
        assert_spend_charged(lost, st, watts=800.0)       # 2 replicas of "full" at full load
        assert len(applies(api, "/deployments/fc-dep")) == n_applies
        assert op.alive()


def _t(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def assert_spend_held(lost: dict, later: dict) -> None:
    """While no intensity is known nothing is charged, and ``spend.accountedUntil`` ("spend
    is counted up to this time") stays where charging stopped, not moving on uncharged."""
    assert later["spend"]["accountedUntil"] == lost["spend"]["accountedUntil"], (lost["spend"], later["spend"])
    assert later["spend"]["energyKwh"] == lost["spend"]["energyKwh"], (lost["spend"], later["spend"])


def assert_spend_charged(lost: dict, back: dict, *, watts: float) -> None:
    """Once the intensity is known again the time served during the loss is charged:
    the energy added covers every second from the held mark to the new one."""
    seconds = (_t(back["spend"]["accountedUntil"]) - _t(lost["spend"]["accountedUntil"])).total_seconds()
    joules = (float(back["spend"]["energyKwh"]) - float(lost["spend"]["energyKwh"])) * 3.6e6
    assert seconds >= 4.0, (lost["spend"], back["spend"])
    assert joules >= watts * (seconds - 0.5), (
        f"{joules:.0f} J charged for {seconds:.0f} s at {watts:.0f} W: the outage was not charged",
        lost["spend"], back["spend"])
    assert float(back["spend"]["grams"]) > float(lost["spend"]["grams"]), (lost["spend"], back["spend"])


async def test_signal_loss_fail_cheap_switches_to_the_cheapest_variant_above_the_floor(
        api, kubeconfig, tmp_path, provider):
    """failCheap: signal loss → one switch (apply + Switch Event) to ``medium``, the most
    efficient variant at/above the floor (``tiny`` is cheaper but below it), held while
    the loss lasts (no flapping, bounded provider requests); the signal back →
    SignalsDegraded clears and the pacer returns to ``full`` (huge budget, minDwell 1 s)."""
    with run_operator(tmp_path, provider_env(tmp_path, kubeconfig, provider, forecast_ttl="1")) as op:
        await _healthy_start(api, op, "cheap", "cheap-dep", on_signal_loss="failCheap")
        n_applies = len(applies(api, "/deployments/cheap-dep"))

        provider.mode = "500"
        st = await wait_for("failCheap switch", lambda: _decided(api, "cheap", "medium", degraded=True),
                            timeout=40, op=op)
        assert conds_of(st)["SignalsDegraded"]["reason"] == "ServerError", conds_of(st)["SignalsDegraded"]
        assert st["lastDecision"]["reason"] == "SignalsDegraded" and st["lastDecision"]["action"] == "switch"
        assert "failCheap" in st["lastDecision"]["message"], st["lastDecision"]
        assert st["replicas"] == 2, st          # 20 req/s (2 × full) at 10 req/s per replica
        lost = st
        sent = await wait_for("the medium variant applied", lambda: [
            b for _, b in applies(api, "/deployments/cheap-dep")[n_applies:] if variant_of_apply(b) == "medium"], op=op)
        assert image_of_apply(sent[0]) == IMAGES["medium"] and sent[0]["spec"]["replicas"] == 2, sent[0]
        ev = await wait_for("a Switch Event", lambda: [e for e in switch_events(api, "cheap") if "→ medium" in e["message"]],
                            op=op)
        assert ev[0]["type"] == "Warning" and ev[0]["message"].startswith("full → medium"), ev
        rate = await provider_rate(provider, op, 4.0)
        assert rate <= 6.0, f"{rate:.1f} provider requests/s during the outage: hot retry loop"
        later = applies(api, "/deployments/cheap-dep")[n_applies:]
        assert [variant_of_apply(b) for _, b in later] == ["medium"], "one switch, held: no flapping"
        assert all(image_of_apply(b) != IMAGES["tiny"] for _, b in later), "below the quality floor"
        assert len(switch_events(api, "cheap")) == 2
        assert_spend_held(lost, await status_of(api, "cheap"))
        dep = await api.get(DEPLOY, NS, "cheap-dep")
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["medium"]

        provider.mode = "ok"
        st = await wait_for("the signal back: full again, SignalsDegraded cleared",
                            lambda: _decided(api, "cheap", "full", degraded=False), timeout=40, op=op)
        assert conds_of(st)["SignalsDegraded"]["reason"] == "SignalsOK"
        assert_spend_charged(lost, st, watts=300.0)       # served during the loss: 2 × medium
        await wait_for("the Switch back to full", lambda: [e for e in switch_events(api, "cheap")
                                                           if e["message"].startswith("medium → full")], op=op)
        assert op.alive()


async def test_provider_down_but_fallback_serves_is_degraded_not_lost(api, kubeconfig, tmp_path, provider):
    """Zone DE: the provider 500s but the embedded profile knows DE → the budget is still
    paced (on the embedded forecast), failCheap does *not* fire, SignalsDegraded says the
    provider's reason and which link served; the provider back → cleared."""
    with run_operator(tmp_path, provider_env(tmp_path, kubeconfig, provider, forecast_ttl="1")) as op:
        await _healthy_start(api, op, "served", "served-dep", zone="DE", on_signal_loss="failCheap")
        n_applies = len(applies(api, "/deployments/served-dep"))
        provider.mode = "500"
        st = await wait_for("SignalsDegraded", lambda: _degraded(api, "served"), timeout=40, op=op)
        c = conds_of(st)["SignalsDegraded"]
        assert c["reason"] == "ServerError" and "embedded" in c["message"], c
        assert st["activeVariant"] == "full" and st["lastDecision"]["reason"] == "WithinBudget", st
        assert st["carbonPrice"] is not None          # paced: a λ from the embedded forecast
        await asyncio.sleep(2.0)
        st = await status_of(api, "served")
        assert st["activeVariant"] == "full" and st["lastDecision"]["reason"] == "WithinBudget", st
        assert len(applies(api, "/deployments/served-dep")) == n_applies
        provider.mode = "ok"
        await wait_for("SignalsDegraded cleared", lambda: _decided(api, "served", "full", degraded=False),
                       timeout=40, op=op)
        assert op.alive()



# ------------------------------------------------------------------ API faults on the target
def ours(api, target: str) -> list[dict]:
    """Server-side applies to the Deployment under the operator's field manager."""
    return [b for r, b in applies(api, f"/deployments/{target}") if r.params.get("fieldManager") == "greenml-operator"]


@pytest.mark.timeout(150)
async def test_apply_conflict_then_server_errors_are_retried_with_backoff(api, kubeconfig, tmp_path):
    """The Deployment's server-side apply answered 409 three times (every handler's first
    try: a conflict storm while someone else writes the Deployment), then 500 twice: the
    operator's loop backs off for that object (controllers/loop.BACKOFF: 1, 2, 5, 10, 30 s,
    ±20 %), applies in the end, and only then writes status and posts the one Switch
    Event; it never crashes. (kmock stores a write before the injected error
    answers, so the object cannot show *when* the apply took; status and the Event can.)"""
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/api-dep"
    is_ours = lambda p: p.get("fieldManager") == "greenml-operator"  # noqa: E731
    hits: list[float] = []
    conflict = Fault("patch", path, times=3, params=is_ours, on_hit=lambda r: hits.append(time.monotonic()))
    api.k[conflict] << 409 << {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                               "reason": "Conflict", "message": "injected: the object has been modified"}
    server = Fault("patch", path, times=2, params=is_ours, on_hit=lambda r: hits.append(time.monotonic()))
    api.k[server] << 500 << {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                             "message": "injected"}
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("api-dep"))
        await api.create(IB, budget("api", "api-dep", zone="DE"))
        await wait_for("the first 409", lambda: conflict.hits, timeout=20, op=op)
        await asyncio.sleep(1.0)
        assert not (await status_of(api, "api")).get("activeVariant"), "status written although the apply failed"
        assert not switch_events(api, "api"), "Switch Event posted although the apply failed"
        st = await wait_for("applied after the faults", lambda: _decided(api, "api", "full"), timeout=90, op=op)
        assert (len(conflict.hits), len(server.hits)) == (3, 2)
        await asyncio.sleep(1.5)
        sent = ours(api, "api-dep")
        assert len(sent) == 6, f"{len(sent)} apply requests: 5 failures + 1 success expected"
        assert all(variant_of_apply(b) == "full" and image_of_apply(b) == IMAGES["full"] for b in sent)
        # one try at a time, each retry after the object's own backoff
        from greenml.controllers.loop import BACKOFF, JITTER
        gaps = [hits[i + 1] - hits[i] for i in range(len(hits) - 1)]
        assert all(g >= BACKOFF[i] * (1 - JITTER) - 0.05 for i, g in enumerate(gaps)), \
            f"retries not backed off: {[round(h - hits[0], 2) for h in hits]}"
        assert st["phase"] == "Active" and st["lastDecision"]["action"] == "switch", st
        assert conds_of(st)["TargetFound"]["status"] == "True"
        assert len(switch_events(api, "api")) == 1
        assert op.alive()
        assert "Traceback" not in op.logs(), op.logs()[-3000:]


# ------------------------------------------------------------------ target changed by someone else
async def _other_manager_sets_image(api, target: str, image: str) -> None:
    """Another controller (its own field manager) server-side-applies the container image."""
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": target, "namespace": NS},
            "spec": {"template": {"spec": {"containers": [{"name": "server", "image": image}]}}}}
    async with aiohttp.ClientSession() as s:
        r = await s.patch(api._path(DEPLOY, NS, target), json=body,
                          params={"fieldManager": "rollout-controller", "force": "true"},
                          headers={"Content-Type": "application/apply-patch+yaml"})
        assert r.status == 200, await r.text()


async def _medium_start(api, op, name: str, target: str) -> None:
    """A tight budget (30 g/day at 400 g/kWh): the cheapest variant above the floor."""
    await api.create(DEPLOY, deployment(target))
    await api.create(IB, budget(name, target, zone="DE", grams=30.0))
    await wait_for("medium chosen", lambda: _decided(api, name, "medium"), op=op)
    await wait_for("medium applied", lambda: [b for b in ours(api, target) if variant_of_apply(b) == "medium"], op=op)
    await asyncio.sleep(1.0)
    assert len(ours(api, target)) == 1, ours(api, target)


async def test_image_changed_by_another_controller_is_reasserted_without_flapping(api, kubeconfig, tmp_path):
    """Another field manager sets the container image back to the full model's: on its
    next reconcile the operator re-applies the active variant (an apply with exactly the
    variant's fields + a TargetDrifted Event), once — no flapping, no Switch (the variant
    did not change), status unchanged. (kmock keeps no managedFields: ownership moving to
    the other manager is e2e's to show.)"""
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await _medium_start(api, op, "drift", "drift-dep")
        n_switches = len(switch_events(api, "drift"))

        await _other_manager_sets_image(api, "drift-dep", IMAGES["full"])
        again = await wait_for("the variant re-applied", lambda: ours(api, "drift-dep")[1:], timeout=20, op=op)
        body = again[0]
        assert body["spec"]["template"]["spec"]["containers"] == [{"name": "server", "image": IMAGES["medium"]}]
        assert variant_of_apply(body) == "medium" and body["spec"]["replicas"] == 2
        dep = await api.get(DEPLOY, NS, "drift-dep")
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["medium"]
        await wait_for("a TargetDrifted Event", lambda: [e for e in api.posted_events("drift")
                                                         if e.get("reason") == "TargetDrifted"], op=op)
        await asyncio.sleep(4.0)                      # ~8 ticks
        assert len(ours(api, "drift-dep")) == 2, "re-applied once, then left alone (no flapping)"
        assert len(switch_events(api, "drift")) == n_switches
        st = await status_of(api, "drift")
        assert st["activeVariant"] == "medium" and st["replicas"] == 2, st
        assert op.alive()


async def test_target_deleted_then_recreated_gets_the_active_variant_again(api, kubeconfig, tmp_path):
    """The Deployment deleted under an active budget: TargetFound False (+ a TargetNotFound
    Event), the operator keeps running; recreated from its original manifest (the full
    image): the active variant is applied again, once, and TargetFound is True."""
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await _medium_start(api, op, "gone", "gone-dep")
        await api.delete(DEPLOY, NS, "gone-dep")

        async def lost():
            st = await status_of(api, "gone")
            c = conds_of(st).get("TargetFound")
            return st if c and c["status"] == "False" else None

        st = await wait_for("TargetFound False", lost, op=op)
        assert st["phase"] == "Pending" and st["lastDecision"]["reason"] == "TargetNotFound", st
        await wait_for("a TargetNotFound Event", lambda: [e for e in api.posted_events("gone")
                                                          if e.get("reason") == "TargetNotFound"], op=op)
        await asyncio.sleep(1.5)
        assert len(ours(api, "gone-dep")) == 1, "nothing applied to a missing Deployment"

        await api.create(DEPLOY, deployment("gone-dep"))
        await wait_for("the variant applied to the new Deployment", lambda: ours(api, "gone-dep")[1:], op=op)

        async def found():
            st = await status_of(api, "gone")
            c = conds_of(st).get("TargetFound")
            return st if c and c["status"] == "True" else None

        st = await wait_for("TargetFound True", found, op=op)
        assert st["activeVariant"] == "medium", st
        dep = await api.get(DEPLOY, NS, "gone-dep")
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["medium"]
        await asyncio.sleep(2.0)
        assert len(ours(api, "gone-dep")) == 2, "applied once to the recreated Deployment"
        assert op.alive()
