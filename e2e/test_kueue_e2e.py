"""Real Kueue (built from its pinned Go module, e2e/cluster/kueue) on the suite's control plane.

- A batch/v1 Job labelled for a LocalQueue is suspended by Kueue's webhook, admitted against a
  ClusterQueue's nvidia.com/gpu quota, runs on the kwok GPU nodes and completes.
- With the AdmissionCheck ``greenml.io/carbon-window`` on the ClusterQueue the Job stays
  suspended while the check is Pending; the check's states are written exactly as the
  controller will write them (services/kueue.py → Kube.apply_workload_check): Pending with the
  planned start, Ready when the window opens (the Job runs and completes), and for an
  interruptible workload Retry when its window closes (Kueue evicts it, requeues it after
  requeueAfterSeconds, and readmits it when the check is Ready again, its run time kept).

The carbon plan itself is given (windows relative to now): the planner is tested elsewhere;
what is tested here is Kueue's side of the contract.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from e2e.cluster.controlplane import REGION_LABEL, RUN_FOR
from greenml.kube.client import path_for
from greenml.services import kueue as kq
from greenml.services.board import PlanBoard, PlannedJob
from greenml.services.trainingjob import Defaults
from greenml.signals.base import IntensitySeries
from greenml.signals.series import SeriesSource
from tests.integration.harness import wait_for

KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NODES = {"gpu-node-a", "gpu-node-b"}
# one-second slots: a window that opens in 8 s is not "within one slot" (decide() keeps a run
# going through a gap shorter than a slot)
DEFAULTS = Defaults(zone="DE", safety_margin=timedelta(minutes=5), min_run=timedelta(seconds=1),
                    step=timedelta(seconds=1))


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_queues(kube, namespace: str, with_check: bool):
    """ResourceFlavor → ClusterQueue (8 GPUs) → LocalQueue, the ClusterQueue with the
    carbon-window AdmissionCheck when ``with_check``; yields their names, then deletes the
    cluster-scoped ones."""
    suffix = uuid.uuid4().hex[:6]
    names = {"flavor": f"e2e-gpu-{suffix}", "cq": f"e2e-cq-{suffix}", "lq": "team", "check": f"carbon-window-{suffix}"}
    created: list[tuple[str, str]] = []

    def create(plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
        kube.request("POST", path_for(KUEUE, plural, namespace), f"create {plural}", body=body)
        if namespace is None:
            created.append((plural, body["metadata"]["name"]))

    create("resourceflavors", {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": names["flavor"]},
                               "spec": {"nodeLabels": {REGION_LABEL: "europe-west3"}}})
    cq_spec: dict[str, Any] = {"namespaceSelector": {}, "resourceGroups": [{
        "coveredResources": ["cpu", "nvidia.com/gpu"],
        "flavors": [{"name": names["flavor"], "resources": [{"name": "cpu", "nominalQuota": "64"},
                                                            {"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]}
    if with_check:
        create("admissionchecks", {"apiVersion": KUEUE, "kind": "AdmissionCheck", "metadata": {"name": names["check"]},
                                   "spec": {"controllerName": kq.CONTROLLER_NAME}})
        cq_spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": names["check"]}]}
    create("clusterqueues", {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": names["cq"]},
                             "spec": cq_spec})
    create("localqueues", {"apiVersion": KUEUE, "kind": "LocalQueue",
                           "metadata": {"name": names["lq"], "namespace": namespace},
                           "spec": {"clusterQueue": names["cq"]}}, namespace)
    yield names
    # Kueue holds finalizers on Workloads and queues: clean up while it runs (it stops with the
    # module), Jobs first (their Workloads go with them), so no namespace is left Terminating
    for job in kube.request("GET", path_for("batch/v1", "jobs", namespace), "list Jobs").get("items") or []:
        kube.delete_job(namespace, job["metadata"]["name"])
    # not left to the garbage collector: it watches a new CRD's objects only from its next resync
    kube.request("DELETE", path_for(KUEUE, "workloads", namespace), "delete Workloads")
    gone("Workloads", lambda: not kube.list_workloads(namespace))
    kube.request("DELETE", path_for(KUEUE, "localqueues", namespace, names["lq"]), "delete LocalQueue")
    for plural, name in reversed(created):
        kube.request("DELETE", path_for(KUEUE, plural, None, name), f"delete {plural}")
    gone("queues, flavor and check", lambda: all(kube.get(KUEUE, plural, None, name) is None for plural, name in created)
         and kube.get(KUEUE, "localqueues", namespace, names["lq"]) is None)


def gone(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not deleted in {timeout:.0f} s"
        time.sleep(0.5)


@pytest.fixture
def queues(kube, kueue_namespace):
    yield from make_queues(kube, kueue_namespace, with_check=False)


@pytest.fixture
def checked_queues(kube, kueue_namespace):
    yield from make_queues(kube, kueue_namespace, with_check=True)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == kind and c["status"] == "True"), None)


def cq_active(kube, name: str) -> bool:
    return condition(kube.get(KUEUE, "clusterqueues", None, name), "Active") is not None


def job_manifest(name: str, ns: str, gpus: int, *, run_for: str | None = "5s", **annotations: str) -> dict[str, Any]:
    pod_ann = {RUN_FOR: run_for} if run_for else {}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ns, "labels": {QUEUE_LABEL: "team"}, "annotations": annotations},
            "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 0, "template": {
                "metadata": {"annotations": pod_ann},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "train", "image": "example/train:1",
                    "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": str(gpus)},
                                  "limits": {"nvidia.com/gpu": str(gpus)}}}]}}}}


def workload_of(kube, ns: str, job: str) -> dict[str, Any] | None:
    for wl in kube.list_workloads(ns):
        if any(r.get("kind") == "Job" and r.get("name") == job for r in wl["metadata"].get("ownerReferences") or []):
            return wl
    return None


def pods(kube, ns: str, job: str) -> list[dict[str, Any]]:
    items = kube.request("GET", path_for("v1", "pods", ns), "list pods", params={"labelSelector": f"job-name={job}"})
    return [p for p in items.get("items") or [] if not p["metadata"].get("deletionTimestamp")]


def job_done(kube, ns: str, name: str) -> bool:
    return condition(kube.get_job(ns, name), "Complete") is not None


def write_check(kube, ns: str, job: str, check: str, plan: PlannedJob | None, owner: dict[str, Any],
                flavor: dict[str, Any]) -> kq.CheckDecision:
    """What the controller does for one Workload: observe, resolve, decide, write."""
    wl = workload_of(kube, ns, job)
    obs = kq.observe(wl, check)
    zone = kq.flavor_zone(flavor, REGION_LABEL, {"europe-west3": "DE"})
    req = kq.resolve(wl, owner, DEFAULTS, zone=zone)
    decision = kq.decide_check(req, obs, plan, now(), DEFAULTS)
    kube.apply_workload_check(kq.check_patch(wl, check, decision, obs, now()))
    return decision


def planned(start: datetime, end: datetime) -> PlannedJob:
    return PlannedJob(((start, end),), 60.0, 100.0, "Planned", "e2e", False, now())


async def test_job_admitted_by_kueue_runs_on_the_gpu_nodes(kube, kueue_namespace, queues):
    ns = kueue_namespace
    await wait_for("ClusterQueue Active", lambda: cq_active(kube, queues["cq"]), 30)
    created = kube.create_job(job_manifest("admitted", ns, gpus=4))
    assert created["spec"]["suspend"] is True, "Kueue's mutating webhook suspends a queued Job at creation"
    wl = await wait_for("Workload admitted", lambda: condition(workload_of(kube, ns, "admitted"), "Admitted")
                        and workload_of(kube, ns, "admitted"), 60)
    assert wl["status"]["admission"]["clusterQueue"] == queues["cq"]
    assert kq.assigned_flavors(wl) == (queues["flavor"],)
    assert kq.workload_gpus(wl) == 4
    ran = await wait_for("a pod on a kwok GPU node", lambda: [p for p in pods(kube, ns, "admitted")
                                                               if p["spec"].get("nodeName") in NODES], 60)
    # the flavor's node labels became the pod's node selector
    assert ran[0]["spec"]["nodeSelector"][REGION_LABEL] == "europe-west3"
    await wait_for("the Job completes", lambda: job_done(kube, ns, "admitted"), 60)
    await wait_for("Workload Finished", lambda: condition(workload_of(kube, ns, "admitted"), "Finished"), 30)


async def test_carbon_window_check_holds_the_job_until_ready(kube, kueue_namespace, checked_queues):
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    # Kueue keeps a ClusterQueue whose check no controller reports Active inactive
    assert not cq_active(kube, queues["cq"])
    kube.set_admission_check_status(check, kq.admission_check_status(now()))
    await wait_for("ClusterQueue Active with the check", lambda: cq_active(kube, queues["cq"]), 30)

    ann = {kq.ANN_ESTIMATED_DURATION: "20m", kq.ANN_MAX_DELAY: "6h"}
    owner = kube.create_job(job_manifest("shifted", ns, gpus=2, **ann))
    flavor = kube.get(KUEUE, "resourceflavors", None, queues["flavor"])
    wl = await wait_for("quota reserved, the check Pending", lambda: (
        (w := workload_of(kube, ns, "shifted")) and condition(w, "QuotaReserved")
        and kq.observe(w, check).check_state == kq.PENDING and w), 60)
    assert not condition(wl, "Admitted")

    # the window opens in an hour: Pending, with the planned start in the message
    start = now() + timedelta(hours=1)
    d = write_check(kube, ns, "shifted", check, planned(start, start + timedelta(hours=1)), owner, flavor)
    assert d.state == kq.PENDING and "planned start" in d.message
    await wait_for("the message in the Workload", lambda: kq.observe(workload_of(kube, ns, "shifted"), check)
                   .check_message == d.message, 15)
    await asyncio.sleep(3)                       # Kueue had every chance to admit it
    assert kube.get_job(ns, "shifted")["spec"]["suspend"] is True
    assert pods(kube, ns, "shifted") == []
    wl = workload_of(kube, ns, "shifted")
    assert not condition(wl, "Admitted")
    assert kq.observe(wl, check).check_state == kq.PENDING

    # the window opens: Ready → admitted, un-suspended, runs on the GPU nodes, completes
    d = write_check(kube, ns, "shifted", check, planned(now() - timedelta(seconds=5), now() + timedelta(hours=1)),
                    owner, flavor)
    assert d.state == kq.READY
    await wait_for("Workload admitted", lambda: condition(workload_of(kube, ns, "shifted"), "Admitted"), 30)
    await wait_for("the Job completes", lambda: job_done(kube, ns, "shifted"), 60)


async def test_interruptible_workload_retried_when_its_window_closes(kube, kueue_namespace, checked_queues):
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    kube.set_admission_check_status(check, kq.admission_check_status(now()))
    await wait_for("ClusterQueue Active", lambda: cq_active(kube, queues["cq"]), 30)
    ann = {kq.ANN_ESTIMATED_DURATION: "30m", kq.ANN_MAX_DELAY: "6h", kq.ANN_INTERRUPTIBLE: "true"}
    owner = kube.create_job(job_manifest("pausable", ns, gpus=2, run_for=None, **ann))   # runs until deleted
    flavor = kube.get(KUEUE, "resourceflavors", None, queues["flavor"])
    await wait_for("the check Pending", lambda: (w := workload_of(kube, ns, "pausable"))
                   and kq.observe(w, check).check_state == kq.PENDING, 60)
    write_check(kube, ns, "pausable", check, planned(now() - timedelta(seconds=5), now() + timedelta(minutes=1)),
                owner, flavor)
    await wait_for("a running pod", lambda: [p for p in pods(kube, ns, "pausable")
                                             if (p.get("status") or {}).get("phase") == "Running"], 60)

    await asyncio.sleep(3)                       # it runs a while (past its 1 s minimum run)
    # the window closed: Retry, requeued when the next window opens (in 8 s)
    nxt = now() + timedelta(seconds=8)
    p = PlannedJob(((now() - timedelta(minutes=1), now() - timedelta(seconds=1)), (nxt, nxt + timedelta(hours=1))),
                   60.0, 100.0, "Planned", "e2e", False, now())
    d = write_check(kube, ns, "pausable", check, p, owner, flavor)
    assert d.state == kq.RETRY and 1 <= d.requeue_after <= 8, d   # up to the next window (less on a slow machine)
    await wait_for("Kueue evicts it: the Job suspended, its pods gone", lambda: (
        kube.get_job(ns, "pausable")["spec"]["suspend"] is True and not pods(kube, ns, "pausable")), 60)
    wl = await wait_for("the check reset to Pending, run time kept", lambda: (
        (w := workload_of(kube, ns, "pausable")) and kq.observe(w, check).check_state == kq.PENDING
        and not condition(w, "Admitted") and w), 30)
    obs = kq.observe(wl, check)
    assert obs.progress.total(now()) > 0, "Kueue's accumulatedPastExecutionTimeSeconds carries the first run"
    assert obs.requeue_after == d.requeue_after

    # requeued after the delay, quota reserved again; Ready in the next window → runs again
    await wait_for("quota reserved again", lambda: condition(workload_of(kube, ns, "pausable"), "QuotaReserved"), 60)
    write_check(kube, ns, "pausable", check, planned(now() - timedelta(seconds=1), now() + timedelta(hours=1)),
                owner, flavor)
    await wait_for("running again", lambda: [p for p in pods(kube, ns, "pausable")
                                             if (p.get("status") or {}).get("phase") == "Running"], 60)
    assert kube.get_job(ns, "pausable")["spec"].get("suspend") is False


async def test_a_kueue_restart_loses_nothing(kube, kueue_namespace, checked_queues, kueue):
    """The check's state lives in the Workload: a restarted Kueue keeps the Job held while the
    check is Pending, and admits it once it is Ready."""
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    kube.set_admission_check_status(check, kq.admission_check_status(now()))
    await wait_for("ClusterQueue Active", lambda: cq_active(kube, queues["cq"]), 30)
    owner = kube.create_job(job_manifest("survivor", ns, gpus=2, **{kq.ANN_ESTIMATED_DURATION: "20m",
                                                                     kq.ANN_MAX_DELAY: "6h"}))
    flavor = kube.get(KUEUE, "resourceflavors", None, queues["flavor"])
    await wait_for("the check Pending", lambda: (w := workload_of(kube, ns, "survivor"))
                   and kq.observe(w, check).check_state == kq.PENDING, 60)
    start = now() + timedelta(hours=1)
    pending = write_check(kube, ns, "survivor", check, planned(start, start + timedelta(hours=1)), owner, flavor)
    await wait_for("the message in the Workload", lambda: kq.observe(workload_of(kube, ns, "survivor"), check)
                   .check_message == pending.message, 15)

    kueue.stop_kueue()
    kueue.kueue()
    await asyncio.sleep(3)                       # the new Kueue has synced and had every chance to admit it
    wl = workload_of(kube, ns, "survivor")
    obs = kq.observe(wl, check)
    assert (obs.check_state, obs.check_message) == (kq.PENDING, pending.message)
    assert obs.quota_reserved and not obs.admitted
    assert kube.get_job(ns, "survivor")["spec"]["suspend"] is True
    write_check(kube, ns, "survivor", check, planned(now() - timedelta(seconds=5), now() + timedelta(hours=1)),
                owner, flavor)
    await wait_for("the Job completes", lambda: job_done(kube, ns, "survivor"), 60)


def carbon_board(t0: datetime, clean_from: timedelta, capacity: int | None) -> tuple[PlanBoard, Defaults]:
    """A board on a forecast that is dirty (400 g/kWh) from ``t0`` until ``clean_from`` later,
    then clean (100 g/kWh), in 1-minute slots over 12 h."""
    defaults = Defaults(zone="DE", safety_margin=timedelta(minutes=5), min_run=timedelta(minutes=1),
                        step=timedelta(minutes=1))
    values = np.full(12 * 60, 400.0)
    values[int(clean_from / timedelta(minutes=1)):] = 100.0
    series = IntensitySeries(t0, timedelta(minutes=1), values, source="e2e")
    return PlanBoard(defaults, SeriesSource(series), horizon=timedelta(hours=12), capacity=capacity), defaults


async def test_the_controller_step_on_real_kueue_objects(kube, kueue_namespace, checked_queues):
    """services.kueue.evaluate on what the API server serves: the owner found by owner_of, the zone
    from the real ResourceFlavor, the capacity from the real ClusterQueue, a real PlanBoard; the
    written state read back unchanged (no second write), then Ready on a clean forecast."""
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    ac = kube.get(KUEUE, "admissionchecks", None, check)
    kube.set_admission_check_status(check, kq.admission_check_status(now(), None, ac))
    await wait_for("ClusterQueue Active", lambda: cq_active(kube, queues["cq"]), 30)
    ac = kube.get(KUEUE, "admissionchecks", None, check)
    assert kq.admission_check_status(now(), None, ac) is None, "Active already: nothing to write again"
    kube.create_job(job_manifest("stepped", ns, gpus=2, **{kq.ANN_ESTIMATED_DURATION: "10m",
                                                           kq.ANN_MAX_DELAY: "4h"}))
    wl = await wait_for("the check Pending", lambda: (w := workload_of(kube, ns, "stepped"))
                        and kq.observe(w, check).check_state == kq.PENDING and w, 60)
    api, plural, name = kq.owner_of(wl)
    owner = kube.get(api, plural, ns, name)
    [flavor] = kq.assigned_flavors(wl)
    zone = kq.flavor_zone(kube.get(KUEUE, "resourceflavors", None, flavor), REGION_LABEL, {"europe-west3": "DE"})
    capacity = kq.queue_capacity(kube.get(KUEUE, "clusterqueues", None, kq.cluster_queue_of(wl)))
    assert (zone, capacity) == ("DE", 8)

    t0 = now().replace(second=0, microsecond=0)
    board, defaults = carbon_board(t0, timedelta(hours=1), capacity)
    ev = kq.evaluate(wl, owner, check, board, now(), defaults, zone=zone)
    assert ev.decision.state == kq.PENDING
    assert abs(ev.plan.planned_start - (t0 + timedelta(hours=1))) < timedelta(minutes=1)   # the clean hour
    assert ev.req.zone == "DE" and ev.req.gpus == 2 and ev.patch is not None
    kube.apply_workload_check(ev.patch)
    wl = workload_of(kube, ns, "stepped")
    assert kq.evaluate(wl, owner, check, board, now(), defaults, zone=zone).patch is None
    await asyncio.sleep(2)
    assert kube.get_job(ns, "stepped")["spec"]["suspend"] is True

    board, defaults = carbon_board(t0, timedelta(0), capacity)          # clean now: the window is open
    ev = kq.evaluate(workload_of(kube, ns, "stepped"), owner, check, board, now(), defaults, zone=zone)
    assert ev.decision.state == kq.READY
    kube.apply_workload_check(ev.patch)
    await wait_for("the Job completes", lambda: job_done(kube, ns, "stepped"), 60)


async def test_the_operator_holds_a_queued_job_until_its_carbon_window(kube, kueue_namespace, checked_queues, tmp_path):
    """`greenml run` with GREENML_KUEUE_ENABLED: the operator itself marks the AdmissionCheck
    Active, plans the queued Job's Workload on the ClusterQueue's board (8 GPUs of quota) on
    the intensity file — dirty for the first 12 s, clean after — sets the check Pending with
    the planned start while it is dirty (the Job stays suspended: Kueue does not admit it), and
    Ready when the window opens: Kueue admits it, it runs on the kwok GPU nodes and completes."""
    import json as _json

    from e2e.test_trainingjob_e2e import grid_start, operator_on
    from tests.integration.harness import run_operator

    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    t0 = grid_start()
    env = operator_on(tmp_path, ns, t0, [400.0] * 6 + [40.0] * 300, kueue_enabled="true", kueue_interval="1",
                      zone_map=_json.dumps({"europe-west3": "DE"}))
    with run_operator(tmp_path, env) as op:
        await wait_for("the check marked Active by the operator", lambda: cq_active(kube, queues["cq"]), 30, op=op)
        kube.create_job(job_manifest("carbon", ns, gpus=2, run_for="4s",
                                     **{kq.ANN_ESTIMATED_DURATION: "4s", kq.ANN_MAX_DELAY: "2m"}))
        wl = await wait_for("the check Pending with the planned start", lambda: (
            (w := workload_of(kube, ns, "carbon")) and "planned start" in (kq.observe(w, check).check_message or "")
            and kq.observe(w, check).check_state == kq.PENDING and w), 30, op=op)
        assert datetime.now(timezone.utc) < t0 + timedelta(seconds=12), "the window was already open"
        assert not condition(wl, "Admitted") and kube.get_job(ns, "carbon")["spec"]["suspend"] is True
        await wait_for("the check Ready in the window", lambda: kq.observe(workload_of(kube, ns, "carbon"), check)
                       .check_state == kq.READY, 40, op=op)
        assert datetime.now(timezone.utc) >= t0 + timedelta(seconds=10), "Ready before the window"
        await wait_for("Workload admitted", lambda: condition(workload_of(kube, ns, "carbon"), "Admitted"), 30, op=op)
        await wait_for("the Job completes", lambda: job_done(kube, ns, "carbon"), 60, op=op)
        assert op.alive()
