"""The real operator against the kmock emulator: an InferenceBudget switches its Deployment's
variant by server-side apply, throttles through an HPA, and reports a missing target.

kmock merges patches as plain dicts (a real server merges containers by name under
server-side apply), so these tests assert on the apply *requests* the operator sends:
content type, field manager, force, and that only the variant's fields are in them.
Field ownership itself is checked in e2e/ against a real API server.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.harness import operator_env, run_operator, wait_for, write_intensity

pytestmark = [pytest.mark.timeout(120)]

IB = "greenml.io/v1alpha1/inferencebudgets"
DEPLOY = "apps/v1/deployments"
HPA = "autoscaling/v2/horizontalpodautoscalers"
NS = "serving"


def deployment(name: str, replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                         {"name": "server", "image": "llm:13b", "args": ["--port", "8080"]}]}}}}


def budget(name: str, target: str, grams: float = 30.0) -> dict:
    def variant(vname, quality, watts, image):
        return {"name": vname, "quality": quality, "capacityRps": 10, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": image}]}}}}}
    return {"apiVersion": "greenml.io/v1alpha1", "kind": "InferenceBudget",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"targetRef": {"name": target}, "zone": "DE",
                     "budget": {"carbonGrams": grams, "period": "day"},
                     "policy": {"minReplicas": 1, "maxReplicas": 6, "minDwell": "1s"},
                     "variants": [variant("full", 1.0, 400, "llm:13b"), variant("small", 0.8, 100, "llm:7b-int8")]}}


def intensity_file(tmp_path):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return write_intensity(tmp_path / "ci.csv", now - timedelta(seconds=10), timedelta(seconds=2), [400.0] * 400)


async def status_of(api, name):
    return ((await api.get(IB, NS, name)) or {}).get("status") or {}


def applies(api, path):
    out = []
    for r in api.requests_to("patch", path):
        if "apply-patch" in r.headers.get("Content-Type", ""):
            out.append((r, json.loads(r.text or r.body or "{}")))
    return out


async def test_over_budget_switches_to_the_cheaper_variant_by_server_side_apply(api, kubeconfig, tmp_path):
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("chat"))
        await api.create(IB, budget("chat-budget", "chat"))

        async def active():
            st = await status_of(api, "chat-budget")
            return st if st.get("activeVariant") else None

        st = await wait_for("a decision", active, op=op)
        # 2 replicas of the full model: ~0.8 kWh/h at 400 g/kWh ≫ 30 g/day → the small variant
        assert st["activeVariant"] == "small", st
        assert st["spend"]["periodStart"] and st["spend"]["remainingGrams"] <= 30
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Degraded"]["status"] == "True"
        assert conds["InvalidSpec"]["status"] == "False"

        sent = applies(api, "/deployments/chat")
        assert sent, "no server-side apply to the Deployment"
        req, body = sent[-1]
        assert req.params.get("fieldManager") == "greenml-operator" and req.params.get("force") == "true"
        containers = body["spec"]["template"]["spec"]["containers"]
        assert containers == [{"name": "server", "image": "llm:7b-int8"}]   # only the variant's fields
        assert "selector" not in body["spec"]
        assert body["metadata"]["annotations"]["greenml.io/variant"] == "small"
        assert body["spec"]["replicas"] == st["replicas"]                      # no HPA: the operator owns replicas
        events = await wait_for("a Switch event", lambda: [e for e in api.posted_events("chat-budget")
                                                            if e.get("reason") == "Switch"], op=op)
        assert "small" in events[0]["message"]

        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{op.env['GREENML_METRICS_PORT']}/metrics", timeout=5).read().decode()
        assert 'greenml_active_variant_info{name="chat-budget",namespace="serving",variant="small"} 1.0' in text
        spent = [ln for ln in text.splitlines() if ln.startswith('greenml_budget_limit_grams{name="chat-budget"')]
        assert spent and spent[0].endswith(" 30.0"), spent
        assert op.alive()


async def test_with_an_hpa_replicas_are_left_to_it(api, kubeconfig, tmp_path):
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("vision"))
        await api.create(HPA, {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                               "metadata": {"name": "vision-hpa", "namespace": NS},
                               "spec": {"minReplicas": 1, "maxReplicas": 10,
                                        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vision"}}})
        await api.create(IB, budget("vision-budget", "vision"))
        await wait_for("an apply to the HPA", lambda: applies(api, "/horizontalpodautoscalers/vision-hpa"), op=op)
        _, dep_body = applies(api, "/deployments/vision")[-1]
        assert "replicas" not in dep_body.get("spec", {}), "must not fight the HPA over replicas"
        _, hpa_body = applies(api, "/horizontalpodautoscalers/vision-hpa")[-1]
        assert set(hpa_body["spec"]) == {"maxReplicas"} and 1 <= hpa_body["spec"]["maxReplicas"] <= 6

        async def recorded():
            st = await status_of(api, "vision-budget")
            return st if st.get("appliedMaxReplicas") == hpa_body["spec"]["maxReplicas"] else None

        st = await wait_for("the cap recorded in status", recorded, op=op)
        # the HPA's own maxReplicas is remembered (greenml's apply replaced it); without a
        # desiredReplicas (no metrics) the load is the Deployment's replicas before the cap
        replicas = deployment("vision")["spec"]["replicas"]
        assert (st["ownerMaxReplicas"], st["ownerReplicas"]) == (10, replicas) and replicas < 10, st


async def test_missing_target_is_reported_and_recovered(api, kubeconfig, tmp_path):
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(IB, budget("orphan", "nowhere"))

        async def not_found():
            st = await status_of(api, "orphan")
            c = {x["type"]: x for x in st.get("conditions", [])}.get("TargetFound")
            return st if c and c["status"] == "False" else None

        st = await wait_for("TargetNotFound", not_found, op=op)
        assert st["phase"] == "Pending" and "nowhere" in st["lastDecision"]["message"]
        await api.create(DEPLOY, deployment("nowhere"))

        async def found():
            st = await status_of(api, "orphan")
            return st if st.get("activeVariant") else None

        await wait_for("recovery once the Deployment exists", found, op=op, timeout=40)
        assert op.alive()


def _seeded(name: str, target: str, *, grams: float, status: dict) -> dict:
    obj = budget(name, target, grams=grams)
    obj["status"] = status   # as an earlier operator run left it (kmock stores what it is given)
    return obj


async def test_dwell_time_holds_a_recent_switch(api, kubeconfig, tmp_path):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    day0 = now.replace(hour=0, minute=0, second=0)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("dwell"))
        # a huge budget prefers the full model, but the switch to "small" was 1 minute ago and minDwell is 1h
        obj = _seeded("dwell-budget", "dwell", grams=1e9, status={
            "activeVariant": "small", "replicas": 2, "switchedAt": iso(now - timedelta(minutes=1)),
            "spend": {"periodStart": iso(day0), "periodEnd": iso(day0 + timedelta(days=1)),
                      "accountedUntil": iso(now), "grams": 1.0, "energyKwh": 0.001}})
        obj["spec"]["policy"]["minDwell"] = "1h"
        await api.create(IB, obj)

        async def decided():
            st = await status_of(api, "dwell-budget")
            return st if st.get("lastDecision") else None

        st = await wait_for("a decision", decided, op=op)
        assert st["activeVariant"] == "small" and st["lastDecision"]["reason"] == "Dwell", st["lastDecision"]
        assert not applies(api, "/deployments/dwell") or all(
            b["spec"]["template"]["spec"]["containers"][0]["image"] == "llm:7b-int8" for _, b in applies(api, "/deployments/dwell"))


async def test_a_new_period_resets_the_spend(api, kubeconfig, tmp_path):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    yesterday = now.replace(hour=0, minute=0, second=0) - timedelta(days=1)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("reset"))
        await api.create(IB, _seeded("reset-budget", "reset", grams=30.0, status={
            "activeVariant": "small", "replicas": 2, "switchedAt": iso(yesterday),
            "spend": {"periodStart": iso(yesterday), "periodEnd": iso(yesterday + timedelta(days=1)),
                      "accountedUntil": iso(yesterday + timedelta(hours=23, minutes=59)),
                      "grams": 29.5, "energyKwh": 0.07}}))

        async def rolled():
            st = await status_of(api, "reset-budget")
            return st if (st.get("spend") or {}).get("periodStart", "").startswith(iso(yesterday + timedelta(days=1))[:10]) else None

        st = await wait_for("the period to roll over", rolled, op=op)
        assert st["spend"]["grams"] < 1.0, st["spend"]            # yesterday's 29.5 g do not carry over
        assert st["spend"]["periodEnd"] == iso(yesterday + timedelta(days=2))


async def test_throttling_without_a_load_query_keeps_the_owners_load(api, kubeconfig, tmp_path):
    """Its own throttle lowers the Deployment's replicas; the next reconciles still assume the
    owner's 6 replicas at full capacity (status.ownerReplicas), not the throttled count."""
    owner = 6
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("paced", replicas=owner))
        obj = budget("paced-budget", "paced", grams=0.5)   # not even the small variant fits: throttle
        obj["spec"]["policy"].update({"onBudgetBreach": "throttle", "maxReplicas": 8})
        await api.create(IB, obj)

        def written():
            """The status patches of the budget, in order (one per reconcile: spend moves on)."""
            return [json.loads(r.text or r.body or "{}").get("status") or {}
                    for r in api.requests_to("patch", "/paced-budget/status")]

        def messages(kind):
            return [c["message"] for w in written() for c in w.get("conditions") or [] if c["type"] == kind]

        first = await wait_for("a throttled decision", lambda: messages("Throttled"), op=op)
        # later reconciles: the conditions are written again whenever one of them changes (the
        # grams spent so far move on), each with the Throttled condition's "replicas/needed"
        await wait_for("two more writes of the conditions", lambda: len(messages("Throttled")) >= 3, op=op, timeout=60)
        st = await status_of(api, "paced-budget")
        dep = await api.get(DEPLOY, NS, "paced")
        assert dep["spec"]["replicas"] == st["replicas"] < owner, (dep["spec"], st)   # greenml throttled it
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Throttled"]["status"] == "True" and conds["Throttled"]["message"] == first[0], conds
        assert set(messages("Throttled")) == {first[0]}   # never re-sized for less load
        assumed = messages("SignalsDegraded")
        assert len(assumed) >= 3 and len(set(assumed)) == 1 and f"{owner} × full" in assumed[0], assumed
        assert st["ownerReplicas"] == owner
        assert op.alive()
