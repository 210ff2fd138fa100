"""TrainingJob against a real API server: schema rejection at apply time, and the lifecycle.

What the emulator cannot show is checked here: structural-schema and CEL validation,
the status subresource, generation/observedGeneration, and (on clusters with a
controller-manager) garbage collection of the owned Job through its owner reference.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from greenml.kube import ApiError
from greenml.kube.client import path_for
from tests.integration.harness import free_port, operator_env, run_operator, wait_for, write_intensity

TJ = ("greenml.io/v1alpha1", "trainingjobs")
STEP = timedelta(seconds=2)


def tj(name: str, ns: str, **schedule) -> dict:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schedule": {"maxDelay": "40s", "estimatedDuration": "4s", **schedule},
            "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "train", "image": "busybox:1.36", "command": ["true"],
                 "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}},
        },
    }


def create(kube, obj, strict=True):
    ns = obj["metadata"]["namespace"]
    return kube.request("POST", path_for(*TJ, ns), "create TrainingJob", body=obj,
                        params={"fieldValidation": "Strict"} if strict else None)


@pytest.mark.parametrize("mutate, needle", [
    (lambda o: o["spec"]["schedule"].update(estimatedDuration="soon"), "estimatedDuration"),
    (lambda o: o["spec"]["schedule"].update(deadline="2030-01-01T00:00:00Z"), "exactly one of"),
    (lambda o: o["spec"]["schedule"].pop("maxDelay"), "exactly one of"),
    (lambda o: o["spec"].update(power={"gpus": -1}), "gpus"),
    (lambda o: o["spec"].update(surprise=True), "surprise"),
])
def test_invalid_manifests_are_rejected_at_apply_time(kube, namespace, mutate, needle):
    obj = tj("bad", namespace)
    mutate(obj)
    with pytest.raises(ApiError) as err:
        create(kube, obj)
    assert err.value.status in (400, 422) and needle in str(err.value), str(err.value)


def test_lifecycle_on_a_real_api_server(kube, namespace, tmp_path):
    kubeconfig = __import__("os").environ["KUBECONFIG"]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    t0 = now - timedelta(seconds=now.second % 2)
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [400.0] * 8 + [50.0] * 3 + [400.0] * 300)
    env = operator_env(tmp_path, tmp_path / "unused", intensity, namespace=namespace)
    env["KUBECONFIG"] = kubeconfig
    env["GREENML_HEALTH_PORT"] = str(free_port())

    async def scenario():
        with run_operator(tmp_path, env) as op:
            create(kube, tj("llm", namespace))
            job = await wait_for("the Job", lambda: kube.get("batch/v1", "jobs", namespace, "llm-run"), op=op, timeout=60)
            assert job["spec"]["suspend"] is True
            assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"

            def planned():
                st = (kube.get(*TJ, namespace, "llm") or {}).get("status") or {}
                return st if st.get("phase") == "Waiting" and (st.get("plan") or {}).get("plannedStart") else None

            st = await wait_for("a plan in status (status subresource)", planned, op=op, timeout=60)
            assert st["observedGeneration"] == 1
            assert st["plan"]["savingsPercent"] > 0

            def running():
                j = kube.get("batch/v1", "jobs", namespace, "llm-run")
                return j if j and j["spec"].get("suspend") is False else None

            await wait_for("un-suspension in the planned window", running, op=op, timeout=60)
            assert datetime.now(timezone.utc) >= t0 + timedelta(seconds=14)

            # no kubelet on a bare control plane: drive the Job to completion ourselves
            done = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            kube.request("PATCH", path_for("batch/v1", "jobs", namespace, "llm-run", "status"), "complete Job",
                         body={"status": {"completionTime": done, "succeeded": 1, "conditions": [
                             {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": done},
                             {"type": "Complete", "status": "True", "lastTransitionTime": done}]}},
                         content_type="application/merge-patch+json")

            def succeeded():
                st = (kube.get(*TJ, namespace, "llm") or {}).get("status") or {}
                return st if st.get("phase") == "Succeeded" else None

            await wait_for("Succeeded", succeeded, op=op, timeout=60)

            # deletion: the operator's handler (and, where a controller-manager runs, GC) removes the Job
            kube.request("DELETE", path_for(*TJ, namespace, "llm"), "delete TrainingJob")
            await wait_for("the Job to go", lambda: kube.get("batch/v1", "jobs", namespace, "llm-run") is None,
                           op=op, timeout=60)

    asyncio.run(scenario())
