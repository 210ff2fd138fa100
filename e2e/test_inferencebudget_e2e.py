"""InferenceBudget against a real API server: apply-time validation, and the variant switch
by server-side apply — checked where the emulator cannot: containers merged by name
(the Deployment keeps its args), and managedFields showing the `greenml-operator`
manager owning exactly the fields the variant names.
"""
from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone

import pytest

from greenml.kube import ApiError
from greenml.kube.client import path_for
from tests.integration.harness import free_port, operator_env, run_operator, wait_for, write_intensity

IB = ("greenml.io/v1alpha1", "inferencebudgets")


def budget(ns: str, **over) -> dict:
    def variant(name, quality, watts, image):
        return {"name": name, "quality": quality, "capacityRps": 10, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": image}]}}}}}
    spec = {"targetRef": {"name": "chat"}, "zone": "DE", "budget": {"carbonGrams": 30, "period": "day"},
            "policy": {"minReplicas": 1, "maxReplicas": 4, "minDwell": "1s"},
            "variants": [variant("full", 1.0, 400, "busybox:1.36"), variant("small", 0.8, 100, "busybox:1.35")]}
    spec.update(over)
    return {"apiVersion": "greenml.io/v1alpha1", "kind": "InferenceBudget",
            "metadata": {"name": "chat-budget", "namespace": ns}, "spec": spec}


@pytest.mark.parametrize("mutate, needle", [
    (lambda o: o["spec"]["variants"][0].update(quality=1.5), "quality"),
    (lambda o: o["spec"]["budget"].update(carbonGrams=0), "carbonGrams"),
    (lambda o: o["spec"]["budget"].pop("carbonGrams"), "carbonGrams"),
    (lambda o: o["spec"]["variants"][1].update(name="full"), "unique"),
    (lambda o: o["spec"]["variants"][0].pop("patch"), "patch"),
])
def test_invalid_budgets_are_rejected_at_apply_time(kube, namespace, mutate, needle):
    obj = budget(namespace)
    mutate(obj)
    with pytest.raises(ApiError) as err:
        kube.request("POST", path_for(*IB, namespace), "create", body=obj, params={"fieldValidation": "Strict"})
    assert err.value.status in (400, 422) and needle in str(err.value), str(err.value)


def test_variant_switch_by_server_side_apply(kube, namespace, tmp_path):
    kube.request("POST", path_for("apps/v1", "deployments", namespace), "create Deployment", body={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "chat"}},
                 "template": {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [
                     {"name": "server", "image": "busybox:1.36", "args": ["sleep", "3600"]}]}}}})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    intensity = write_intensity(tmp_path / "ci.csv", now - timedelta(seconds=10), timedelta(seconds=2), [400.0] * 400)
    env = operator_env(tmp_path, tmp_path / "unused", intensity, namespace=namespace)
    env["KUBECONFIG"] = os.environ["KUBECONFIG"]
    env["GREENML_HEALTH_PORT"] = str(free_port())

    async def scenario():
        with run_operator(tmp_path, env) as op:
            kube.request("POST", path_for(*IB, namespace), "create", body=budget(namespace))

            def switched():
                d = kube.get("apps/v1", "deployments", namespace, "chat") or {}
                c = d["spec"]["template"]["spec"]["containers"][0]
                return d if c["image"] == "busybox:1.35" else None

            d = await wait_for("the small variant applied", switched, op=op, timeout=60)
            c = d["spec"]["template"]["spec"]["containers"][0]
            assert c["args"] == ["sleep", "3600"], "SSA must merge containers by name, keeping other fields"
            managers = {m["manager"]: m for m in d["metadata"].get("managedFields", [])}
            assert "greenml-operator" in managers and managers["greenml-operator"]["operation"] == "Apply"
            st = (kube.get(*IB, namespace, "chat-budget") or {}).get("status") or {}
            assert st["activeVariant"] == "small" and st["observedGeneration"] == 1

    asyncio.run(scenario())
