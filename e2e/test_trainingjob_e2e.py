"""TrainingJob against a real control plane: schema rejection at apply time, and the
lifecycle with real scheduling.

What the emulator cannot show is checked here: structural-schema and CEL validation,
the status subresource, generation/observedGeneration, the Job controller running the
owned Job's pods on kwok's fake GPU nodes (the scheduler places them, kwok runs them for
``RUN_FOR``, the Job controller marks the Job Complete — no test writes a Job's status),
run time counted from the real pods, and garbage collection of the Job through its owner
reference.

Shared with test_scheduling_e2e.py and test_reliability_e2e.py: ``tj``, ``create`` and the
helpers below.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from e2e.cluster.controlplane import RUN_FOR
from greenml.kube import ApiError
from greenml.kube.client import path_for
from greenml.timeutil import parse_time
from tests.integration.harness import free_port, operator_env, run_operator, wait_for, write_intensity

TJ = ("greenml.io/v1alpha1", "trainingjobs")
JOBS = ("batch/v1", "jobs")
STEP = timedelta(seconds=2)
TICK = 0.5                                      # GREENML_TICK_INTERVAL of operator_env
GPU_NODES = {"gpu-node-a", "gpu-node-b"}        # kwok's fake nodes (controlplane.DEFAULT_NODES), 4 GPUs each
#: run time as the operator counts it may differ from the pods' by about one tick (it sees
#: a pod Ready / the Job suspended at its next reconcile) plus one step, and whole seconds
#: in status and in the Job's times
RUN_TOLERANCE = TICK + STEP.total_seconds() + 1.0


def tj(name: str, ns: str, *, gpus: int = 1, run_for: str | None = None, **schedule) -> dict:
    """A TrainingJob; ``run_for`` (e.g. "6s") has kwok complete each of its pods after that long."""
    pod_meta = {"annotations": {RUN_FOR: run_for}} if run_for else {}
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schedule": {"maxDelay": "40s", "estimatedDuration": "4s", **schedule},
            "template": {"spec": {"template": {"metadata": pod_meta, "spec": {"restartPolicy": "Never", "containers": [
                {"name": "train", "image": "busybox:1.36", "command": ["true"],
                 "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}},
        },
    }


def create(kube, obj, strict=True):
    ns = obj["metadata"]["namespace"]
    return kube.request("POST", path_for(*TJ, ns), "create TrainingJob", body=obj,
                        params={"fieldValidation": "Strict"} if strict else None)


# ------------------------------------------------------------------ helpers (real scheduling)
def grid_start() -> datetime:
    """Now, rounded down to the 2 s planning grid (the intensity file starts here)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return now - timedelta(seconds=now.second % 2)


def operator_on(tmp_path, namespace: str, t0: datetime, values: list[float], **settings: str) -> dict[str, str]:
    """The operator's environment on this cluster with an intensity file from ``t0``: GPU
    capacity read from the nodes (8) unless ``gpu_capacity`` is given."""
    intensity = write_intensity(tmp_path / f"ci-{uuid.uuid4().hex[:6]}.csv", t0, STEP, values)
    env = operator_env(tmp_path, tmp_path / "unused", intensity, namespace=namespace, **settings)
    if "gpu_capacity" not in settings:
        env.pop("GREENML_GPU_CAPACITY")
    env["KUBECONFIG"] = os.environ["KUBECONFIG"]
    env["GREENML_HEALTH_PORT"] = str(free_port())
    return env


def status(kube, ns: str, name: str) -> dict[str, Any]:
    return (kube.get(*TJ, ns, name) or {}).get("status") or {}


def in_phase(kube, ns: str, name: str, *phases: str):
    def check():
        st = status(kube, ns, name)
        return st if st.get("phase") in phases else None
    return check


def pods_of(kube, ns: str, job: str) -> list[dict[str, Any]]:
    """The Job's pods, by the label the Job controller sets (a real label selector)."""
    return kube.request("GET", f"/api/v1/namespaces/{ns}/pods", "list pods",
                        params={"labelSelector": f"batch.kubernetes.io/job-name={job}"}).get("items") or []


def running_on_gpu_nodes(kube, ns: str, job: str, count: int = 1):
    """Check: ``count`` live pods of the Job Running on the fake GPU nodes (the pods, else None)."""
    def check():
        pods = [p for p in pods_of(kube, ns, job) if not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") == "Running"]
        if len(pods) >= count and all(p["spec"].get("nodeName") in GPU_NODES for p in pods):
            return pods
        return None
    return check


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in ((job or {}).get("status") or {}).get("conditions") or []
                 if c.get("type") == type_ and c.get("status") == "True"), None)


def job_complete(kube, ns: str, job: str):
    def check():
        j = kube.get(*JOBS, ns, job)
        return j if job_condition(j, "Complete") else None
    return check


def seconds_between(a: str, b: str) -> float:
    return (parse_time(b) - parse_time(a)).total_seconds()


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


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_lifecycle_with_real_scheduling(kube, namespace, tmp_path, local_plane):
    """Waiting → started in the planned window → a pod Running on a fake GPU node → the Job
    completes by itself → Succeeded, with run time that of the real pod (to the Job's
    completionTime, not to when the operator noticed); deleting the TrainingJob removes the Job."""
    t0 = grid_start()
    window = t0 + 8 * STEP                         # [400]*8, then 3 low slots
    env = operator_on(tmp_path, namespace, t0, [400.0] * 8 + [50.0] * 3 + [400.0] * 300)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            create(kube, tj("llm", namespace, run_for="6s", estimatedDuration="6s"))
            job = await wait_for("the Job", lambda: kube.get(*JOBS, namespace, "llm-run"), op=op, timeout=60)
            assert job["spec"]["suspend"] is True
            assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"

            def planned():
                st = status(kube, namespace, "llm")
                return st if st.get("phase") == "Waiting" and (st.get("plan") or {}).get("plannedStart") else None

            st = await wait_for("a plan in status (status subresource)", planned, op=op, timeout=60)
            assert st["observedGeneration"] == 1
            assert st["plan"]["savingsPercent"] > 0
            # the planner's slots start at its `now`, not on the file's grid: within one step
            assert abs(parse_time(st["plan"]["plannedStart"]) - window) <= STEP, st["plan"]
            assert pods_of(kube, namespace, "llm-run") == [], "a suspended Job has no pods"

            def unsuspended():
                j = kube.get(*JOBS, namespace, "llm-run")
                return j if j and j["spec"].get("suspend") is False else None

            await wait_for("un-suspension in the planned window", unsuspended, op=op, timeout=60)
            assert datetime.now(timezone.utc) >= window - STEP
            pods = await wait_for("the pod Running on a fake GPU node", running_on_gpu_nodes(kube, namespace, "llm-run"),
                                  op=op, timeout=30)
            assert len(pods) == 1
            st = await wait_for("phase Running", in_phase(kube, namespace, "llm", "Running"), op=op, timeout=10)
            assert st["progress"]["runs"] == 1

            # no test writes the Job's status: kwok ends the pod after RUN_FOR, the Job controller completes the Job
            job = await wait_for("the Job Complete (Job controller)", job_complete(kube, namespace, "llm-run"),
                                 op=op, timeout=60)
            st = await wait_for("Succeeded", in_phase(kube, namespace, "llm", "Succeeded"), op=op, timeout=30)
            pod = pods_of(kube, namespace, "llm-run")[0]
            assert pod["status"]["phase"] == "Succeeded" and pod["spec"]["nodeName"] in GPU_NODES
            real = seconds_between(pod["status"]["startTime"], job["status"]["completionTime"])
            counted = st["progress"]["runSeconds"]
            print(f"pod ran {real:.1f} s (startTime → the Job's completionTime); the operator counted {counted:.1f} s")
            assert real >= 6
            assert abs(counted - real) <= RUN_TOLERANCE, (counted, real, st["progress"])
            assert st["progress"].get("runningSince") is None and st["progress"]["runs"] == 1

            # deletion: the operator's handler (and kube-controller-manager's GC) removes the Job and its pod
            kube.request("DELETE", path_for(*TJ, namespace, "llm"), "delete TrainingJob")
            await wait_for("the Job to go", lambda: kube.get(*JOBS, namespace, "llm-run") is None,
                           op=op, timeout=60)
            await wait_for("its pod to go", lambda: pods_of(kube, namespace, "llm-run") == [], op=op, timeout=60)

    asyncio.run(scenario())
