"""Namespace deletion and a SIGKILL mid-run, on the real control plane.

What kmock cannot show: the namespace controller (kube-controller-manager) deleting every
object of a Terminating namespace and waiting for their finalizers, and pods that really
run (kwok) while the operator is killed and comes back.

The operator puts no finalizer on its objects (kopf only watches; the planning loop does the
time-driven work; the Job goes with its TrainingJob through its ownerReference). So a
namespace holding TrainingJobs and InferenceBudgets goes at once — with the operator
running (cluster-wide or namespaced), stopped, or uninstalled — and objects that an earlier
version left with ``greenml.io/finalizer`` lose it when the operator first sees them.
"""
from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from e2e.cluster.controlplane import RUN_FOR
from e2e.test_inferencebudget_e2e import IB, budget
from e2e.test_reliability_e2e import FAR_WINDOW, FINALIZER, JOBS, env_for, jobs_of, planned, status
from e2e.test_trainingjob_e2e import TJ, create, tj
from greenml.kube.client import path_for
from greenml.timeutil import parse_time
from tests.integration.harness import run_operator, wait_for

pytestmark = pytest.mark.slow


def new_namespace(kube) -> str:
    name = f"greenml-ns-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", "create namespace",
                 body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def chat_deployment(kube, ns: str) -> None:
    kube.request("POST", path_for("apps/v1", "deployments", ns), "create Deployment", body={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}},
                 "template": {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [
                     {"name": "server", "image": "busybox:1.36", "args": ["sleep", "3600"]}]}}}})


def namespace_state(kube, ns: str) -> dict | None:
    return kube.get("v1", "namespaces", None, ns)


def why_not_gone(kube, ns: str) -> str:
    """The namespace's conditions and what greenml objects are left, for a failure message."""
    obj = namespace_state(kube, ns) or {}
    lines = [f"{c['type']}={c['status']}: {c.get('message', '')}" for c in (obj.get("status") or {}).get("conditions") or []
             if c["status"] == "True"]
    for api in (TJ, IB):
        for o in kube.request("GET", path_for(*api, ns), "list").get("items") or []:
            lines.append(f"{o['kind']} {o['metadata']['name']}: finalizers={o['metadata'].get('finalizers')}")
    return "\n".join(lines)


async def wait_gone(kube, ns: str, op, timeout: float) -> float:
    t0 = time.monotonic()
    try:
        await wait_for("the namespace to go", lambda: namespace_state(kube, ns) is None, op=op, timeout=timeout,
                       interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{why_not_gone(kube, ns)}\n{exc}") from None
    return time.monotonic() - t0


async def populate(kube, ns: str, op) -> None:
    """A TrainingJob with its Job, and an InferenceBudget on a Deployment, both handled."""
    create(kube, tj("llm", ns, maxDelay="9m"))
    chat_deployment(kube, ns)
    kube.request("POST", path_for(*IB, ns), "create InferenceBudget", body=budget(ns))
    await wait_for("a plan", planned(kube, ns, "llm"), op=op, timeout=60)
    await wait_for("the Job", lambda: kube.get(*JOBS, ns, "llm-run"), op=op, timeout=30)
    await wait_for("the budget's decision",
                   lambda: ((kube.get(*IB, ns, "chat-budget") or {}).get("status") or {}).get("activeVariant"),
                   op=op, timeout=60)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
def test_namespace_deletion_with_the_operator_running(kube, crds, tmp_path, scope):
    """The namespace goes, cluster-wide and namespaced alike: nothing of greenml holds it.
    (With kopf's timers the namespaced operator left its finalizer on objects of a
    Terminating namespace for good — kopf stops watching such a namespace, nolar/kopf#1088.)"""
    ns = new_namespace(kube)
    env = env_for(tmp_path, ns, FAR_WINDOW)
    if scope == "cluster-wide":
        env.pop("GREENML_NAMESPACE", None)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            await populate(kube, ns, op)
            assert_no_finalizers(kube, ns)
            kube.request("DELETE", f"/api/v1/namespaces/{ns}", "delete namespace")
            took = await wait_gone(kube, ns, op, 120)
            print(f"namespace deleted in {took:.1f} s with the operator running ({scope})")
            assert op.alive()

    asyncio.run(scenario())


def assert_no_finalizers(kube, ns: str) -> None:
    for api, name in ((TJ, "llm"), (IB, "chat-budget")):
        fins = kube.get(*api, ns, name)["metadata"].get("finalizers") or []
        assert not fins, (name, fins)


@pytest.mark.timeout(240)
def test_namespace_deletion_with_the_operator_gone_completes_at_once(kube, crds, tmp_path):
    """Operator stopped (or uninstalled): deleting the namespace completes by itself —
    TrainingJob, its Job, the InferenceBudget and its Deployment all go."""
    ns = new_namespace(kube)
    env = env_for(tmp_path, ns, FAR_WINDOW)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            await populate(kube, ns, op)
            assert_no_finalizers(kube, ns)
        assert not op.alive()
        kube.request("DELETE", f"/api/v1/namespaces/{ns}", "delete namespace")
        took = await wait_gone(kube, ns, None, 120)
        print(f"namespace deleted in {took:.1f} s with the operator stopped")

    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_the_finalizer_an_earlier_version_left_is_removed(kube, namespace, tmp_path):
    """Objects written by the version with kopf timers still carry ``greenml.io/finalizer``:
    the operator drops it when it first sees them (and goes on reconciling them); deleting one
    afterwards completes with the operator stopped."""
    legacy = tj("old", namespace, maxDelay="9m")
    legacy["metadata"]["finalizers"] = [FINALIZER]
    create(kube, legacy)
    chat_deployment(kube, namespace)
    ib = budget(namespace)
    ib["metadata"]["finalizers"] = [FINALIZER]
    kube.request("POST", path_for(*IB, namespace), "create InferenceBudget", body=ib)
    env = env_for(tmp_path, namespace, FAR_WINDOW)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            for api, name in ((TJ, "old"), (IB, "chat-budget")):
                await wait_for(f"the legacy finalizer of {name} removed",
                               lambda api=api, name=name: not (kube.get(*api, namespace, name)["metadata"]
                                                               .get("finalizers")), op=op, timeout=30)
            await wait_for("a plan", planned(kube, namespace, "old"), op=op, timeout=60)
        kube.request("DELETE", path_for(*TJ, namespace, "old"), "delete")
        await wait_for("the old TrainingJob to go (operator stopped)", lambda: kube.get(*TJ, namespace, "old") is None,
                       timeout=30)

    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_sigkill_mid_run_loses_no_run_time_and_duplicates_nothing(kube, namespace, tmp_path):
    """The Job's pod really runs (kwok) for 16 s; the operator is SIGKILLed 4 s into the run
    and restarted 6 s later. One Job, never re-suspended, completes; the run time in status
    is the real run's (from the Job's own timestamps), not the 10 s lost nor counted twice."""
    run_for = 16
    obj = tj("killed", namespace, maxDelay="3m", estimatedDuration=f"{run_for}s")
    obj["spec"]["template"]["spec"]["template"]["metadata"] = {"annotations": {RUN_FOR: f"{run_for}s"}}
    # a low window at once: the job starts immediately
    env = env_for(tmp_path, namespace, [50.0] * 30 + [400.0] * 300)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            create(kube, obj)

            def pod_running():
                pods = kube.request("GET", path_for("v1", "pods", namespace), "list pods",
                                    params={"labelSelector": "job-name=killed-run"}).get("items") or []
                return pods if any((p.get("status") or {}).get("phase") == "Running" for p in pods) else None

            await wait_for("the pod to run", pod_running, op=op, timeout=60)
            await asyncio.sleep(4)
            op.kill(signal.SIGKILL)
        uid = kube.get(*JOBS, namespace, "killed-run")["metadata"]["uid"]
        await asyncio.sleep(6)
        with run_operator(tmp_path, env) as op:
            st = await wait_for("Succeeded", lambda: (s := status(kube, namespace, "killed")).get("phase") == "Succeeded" and s,
                                op=op, timeout=90)
        jobs = jobs_of(kube, namespace, "killed")
        assert [j["metadata"]["uid"] for j in jobs] == [uid], "the Job was recreated"
        job = jobs[0]
        real = (parse_time(job["status"]["completionTime"]) - parse_time(job["status"]["startTime"])).total_seconds()
        got = st["progress"]["runSeconds"]
        assert st["progress"]["runs"] == 1, st["progress"]
        # the pod ran run_for seconds; the Job's startTime precedes the pod's start by the scheduling time
        assert real >= run_for
        assert abs(got - real) <= 4.0, (got, real)

    asyncio.run(scenario())
