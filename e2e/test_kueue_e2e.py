"""Real Kueue (built from its pinned Go module, e2e/cluster/kueue) on the suite's control plane.

- A batch/v1 Job labelled for a LocalQueue is suspended by Kueue's webhook, admitted against a
  ClusterQueue's nvidia.com/gpu quota, runs on the kwok GPU nodes and completes.
- With the AdmissionCheck ``greenml.io/carbon-window`` on the ClusterQueue the Job stays
  suspended while the check is Pending and is admitted when it is Ready (states written
  by hand, exactly as the controller writes them; and the controller's step for one Workload,
  ``services.kueue.evaluate``, on the real objects).
- ``greenml run`` itself, on an intensity file the test writes (2-second slots, so windows
  last seconds): a queued Job held until its window; an interruptible Job evicted by ``Retry``
  when its first window closes, requeued by Kueue for the next and readmitted there, with a
  Job of a zone without any forecast admitted at its latest safe start (deadlines fail open);
  the record, Events and metrics of the Workloads; and a greenml restart (SIGKILL) followed by
  a Kueue restart while a Workload waits, which lose nothing.
"""
from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from e2e.cluster.controlplane import REGION_LABEL, RUN_FOR
from e2e.test_trainingjob_e2e import grid_start
from greenml.kube.client import path_for
from greenml.services import kueue as kq
from greenml.services.board import PlanBoard, PlannedJob
from greenml.services.trainingjob import Defaults
from greenml.signals.base import IntensitySeries
from greenml.signals.series import SeriesSource
from greenml.timeutil import format_time, parse_time
from tests.integration.harness import run_operator, wait_for

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


# ------------------------------------------------------------------ the operator across windows and restarts
W1, GAP, W2 = (14, 24), (24, 40), (40, 100)         # seconds after t0: clean, dirty, cleanish


def two_windows() -> list[float]:
    """2-second slots from t0: dirty (400) until W1, clean (40) in W1, dirty in the gap, 60 in W2, dirty after."""
    return [400.0] * 7 + [40.0] * 5 + [400.0] * 8 + [60.0] * 30 + [400.0] * 200


def kueue_operator_env(tmp_path, ns: str, t0: datetime, values: list[float]) -> dict[str, str]:
    """The operator with the check on, a 1 s Kueue interval, the flavor's region mapped to DE;
    the intensity file served for zone DE only (a directory of <zone>.csv), so a workload of
    another zone has no forecast at all."""
    import json as _json
    import shutil

    from e2e.test_trainingjob_e2e import operator_on

    env = operator_on(tmp_path, ns, t0, values, kueue_enabled="true", kueue_interval="1",
                      zone_map=_json.dumps({"europe-west3": "DE"}))
    zones = tmp_path / f"zones-{uuid.uuid4().hex[:6]}"
    zones.mkdir()
    shutil.copyfile(env["GREENML_INTENSITY_FILE"], zones / "DE.csv")
    env["GREENML_INTENSITY_FILE"] = str(zones)
    return env


class Timeline:
    """Samples Workloads every 0.25 s in the background: when each was admitted / lost its
    admission, and every state of our check (what a test cannot see by waiting for the end)."""

    def __init__(self, kube, ns: str, check: str, jobs: tuple[str, ...]) -> None:
        self.kube, self.ns, self.check, self.jobs = kube, ns, check, jobs
        self.admitted: dict[str, list[tuple[datetime, bool]]] = {j: [] for j in jobs}
        self.states: dict[str, list[tuple[datetime, str, str]]] = {j: [] for j in jobs}
        self.task: asyncio.Task | None = None
        self.last: dict[str, Any] = {}
        self.evicted: dict[str, list[str]] = {j: [] for j in jobs}     # Kueue's Evicted reasons

    def sample(self) -> None:
        for j in self.jobs:
            wl = workload_of(self.kube, self.ns, j)
            if wl is None:
                continue
            t = now()
            adm = condition(wl, "Admitted") is not None
            if condition(wl, "Finished"):
                pass                             # finishing ends the admission: not an eviction
            elif not self.admitted[j] or self.admitted[j][-1][1] != adm:
                self.admitted[j].append((t, adm))
            st = wl.get("status") or {}
            summary = (sorted(f"{c['type']}={c['status']}" for c in st.get("conditions") or []),
                       [(c.get("name"), c.get("state"), c.get("requeueAfterSeconds")) for c in st.get("admissionChecks") or []],
                       st.get("requeueState"), st.get("accumulatedPastExecutionTimeSeconds"))
            if summary != self.last.get(j):      # printed: pytest shows it when the test fails
                self.last[j] = summary
                print(f"{t.strftime('%H:%M:%S.%f')[:-3]} {j}: {summary}")
            ev = condition(wl, "Evicted")
            if ev and (not self.evicted[j] or self.evicted[j][-1] != ev.get("reason")):
                self.evicted[j].append(ev.get("reason"))
            obs = kq.observe(wl, self.check)
            if obs.check_state and (not self.states[j] or self.states[j][-1][1:] != (obs.check_state, obs.check_message)):
                self.states[j].append((t, obs.check_state, obs.check_message))

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.25)

    def __enter__(self) -> "Timeline":
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()

    def admissions(self, job: str) -> list[datetime]:
        return [t for t, adm in self.admitted[job] if adm]

    def evictions(self, job: str) -> list[datetime]:
        return [t for t, adm in self.admitted[job][1:] if not adm]

    def first(self, job: str, state: str) -> datetime | None:
        return next((t for t, s, _ in self.states[job] if s == state), None)


def workload_events(kube, ns: str, wl_name: str, component: str | None = "greenml-operator") -> list[dict[str, Any]]:
    """Events posted about a Workload (by greenml unless `component` says otherwise; None: by anyone),
    oldest first."""
    items = kube.request("GET", path_for("v1", "events", ns), "list Events").get("items") or []
    mine = [e for e in items if (e.get("involvedObject") or {}).get("kind") == "Workload"
            and e["involvedObject"].get("name") == wl_name
            and (component is None or (e.get("source") or {}).get("component") == component)]
    return sorted(mine, key=lambda e: e["metadata"]["creationTimestamp"])


def scrape(op) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{op.env['GREENML_METRICS_PORT']}/metrics", timeout=5).read().decode()


def since(t0: datetime, t: datetime | None) -> float:
    assert t is not None
    return (t - t0).total_seconds()


async def test_an_interruptible_workload_is_evicted_between_two_windows_and_a_deadline_fails_open(
        kube, kueue_namespace, checked_queues, tmp_path):
    """`greenml run` with the check on, on an intensity file with two windows (W1 clean 40 g/kWh
    from 14 s to 24 s, a dirty gap, W2 at 60 g/kWh from 40 s): an interruptible Job whose work
    (26 s) needs both is admitted in W1, gets `Retry` when W1 closes — Kueue evicts it at once
    (Job suspended, pods gone, quota released), resets the check to Pending and requeues it;
    the check holds it Pending with W2's start — is not admitted in the gap, is admitted
    again in W2 with its first run kept (accumulatedPastExecutionTimeSeconds)
    and completes (its second pod runs its full 14 s). A Job of a zone with no forecast at all
    waits and is admitted at its latest safe start (deadlines fail open: DeadlineForced, a
    Warning Event). Status as for TrainingJobs: the record annotation (plan, usage), Events on
    the Workloads, metrics of kind Workload."""
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    t0 = grid_start()
    env = kueue_operator_env(tmp_path, ns, t0, two_windows())
    with run_operator(tmp_path, env) as op, Timeline(kube, ns, check, ("pausable", "urgent")) as tl:
        await wait_for("the check marked Active by the operator", lambda: cq_active(kube, queues["cq"]), 30, op=op)
        kube.create_job(job_manifest("pausable", ns, gpus=2, run_for="14s", **{
            kq.ANN_ESTIMATED_DURATION: "26s", kq.ANN_MAX_DELAY: "3m", kq.ANN_INTERRUPTIBLE: "true"}))
        urgent = kube.create_job(job_manifest("urgent", ns, gpus=2, run_for="3s", **{
            kq.ANN_ESTIMATED_DURATION: "4s", kq.ANN_MAX_DELAY: "8s", kq.ANN_ZONE: "XX"}))
        created = parse_time(urgent["metadata"]["creationTimestamp"])

        # the deadline fails open: no forecast for XX, Pending, then Ready at the latest safe start
        await wait_for("urgent: Pending without a forecast", lambda: (w := workload_of(kube, ns, "urgent"))
                       and "no source could serve" in kq.observe(w, check).check_message, 30, op=op)
        await wait_for("urgent admitted", lambda: tl.admissions("urgent"), 30, op=op)
        latest = created + timedelta(seconds=8)            # deadline (created + 8 s + 4 s) - 4 s of work
        ready = tl.first("urgent", kq.READY)
        assert ready >= latest - timedelta(seconds=1), f"admitted {since(latest, ready):.1f} s before its latest start"
        assert ready <= latest + timedelta(seconds=4), f"admitted {since(latest, ready):.1f} s after its latest start"
        assert "admitted without waiting longer" in tl.states["urgent"][-1][2]
        await wait_for("urgent completes", lambda: job_done(kube, ns, "urgent"), 30, op=op)

        # W1: admitted in the window, evicted when it closes
        await wait_for("pausable admitted in W1", lambda: tl.admissions("pausable"), 40, op=op)
        held = [(since(t0, t), m) for t, s, m in tl.states["pausable"] if s == kq.PENDING and "planned start" in m]
        assert held and held[0][0] < W1[0], f"never held with its planned start before W1: {tl.states['pausable']}"
        assert format_time(t0 + timedelta(seconds=W1[0])) in held[0][1], held
        assert since(t0, tl.first("pausable", kq.READY)) >= W1[0] - 1, tl.states["pausable"]
        assert since(t0, tl.admissions("pausable")[0]) >= W1[0] - 1, tl.states["pausable"]
        await wait_for("a running pod", lambda: [p for p in pods(kube, ns, "pausable")
                                                 if (p.get("status") or {}).get("phase") == "Running"], 30, op=op)
        await wait_for("Retry when W1 closes: Kueue evicts it", lambda: tl.evictions("pausable"), 30, op=op)
        name = workload_of(kube, ns, "pausable")["metadata"]["name"]
        # Kueue's reason: our Retry. Its Evicted=True condition lasts only until it reserves quota
        # again (then Evicted=False, reason QuotaReserved) and a busy machine's sampler can miss
        # it; its Event stays.
        kueue_evictions = await wait_for("Kueue's eviction Event", lambda: [
            e["reason"] for e in workload_events(kube, ns, name, component=None) if e["reason"].startswith("Evicted")], 15, op=op)
        assert kueue_evictions == ["EvictedDueToAdmissionCheck"], kueue_evictions
        assert set(tl.evicted["pausable"]) <= {"AdmissionCheck"}, tl.evicted
        [closed] = [e for e in workload_events(kube, ns, name) if e["reason"] == "WindowClosed"]
        retry = parse_time(closed["firstTimestamp"])                         # whole seconds
        assert W1[1] - 1 <= since(t0, retry) <= W1[1] + 3, f"Retry at {since(t0, retry):.1f} s, W1 ends at {W1[1]} s"
        await wait_for("the Job suspended, its pods gone", lambda: kube.get_job(ns, "pausable")["spec"]["suspend"] is True
                       and not pods(kube, ns, "pausable"), 30, op=op)
        evicted = tl.evictions("pausable")[0]
        assert since(t0, evicted) <= W1[1] + 4, f"evicted at {since(t0, evicted):.1f} s, not when W1 closed"
        wl = await wait_for("requeued by Kueue: quota reserved again, the check Pending until W2", lambda: (
            (w := workload_of(kube, ns, "pausable")) and condition(w, "QuotaReserved")
            and (o := kq.observe(w, check)).check_state == kq.PENDING and "planned start" in o.check_message
            and not o.admitted and w), 30, op=op)
        assert format_time(t0 + timedelta(seconds=W2[0])) in kq.observe(wl, check).check_message
        first_run = wl["status"].get("accumulatedPastExecutionTimeSeconds") or 0
        assert 5 <= first_run <= W1[1] - W1[0] + 2, f"the first run, as Kueue kept it: {first_run} s"

        # W2: not admitted in the gap; admitted again in W2, completes
        await wait_for("pausable admitted again", lambda: len(tl.admissions("pausable")) >= 2, 40, op=op)
        again = tl.admissions("pausable")[1]
        assert since(t0, again) >= W2[0] - 1, f"readmitted at {since(t0, again):.1f} s, in the dirty gap"
        await wait_for("pausable completes", lambda: job_done(kube, ns, "pausable"), 60, op=op)
        await wait_for("Workload Finished", lambda: condition(workload_of(kube, ns, "pausable"), "Finished"), 30, op=op)
        assert len(tl.admissions("pausable")) == 2 and len(tl.evictions("pausable")) == 1, tl.admitted["pausable"]
        states: list[str] = []
        for _, st, _ in tl.states["pausable"]:          # Retry may last less than a sample: left out
            if st != kq.RETRY and (not states or states[-1] != st):
                states.append(st)
        assert states == [kq.PENDING, kq.READY, kq.PENDING, kq.READY], tl.states["pausable"]

        # status and observability: the record, Events, metrics
        wl = workload_of(kube, ns, "pausable")
        rec = await wait_for("the record says Finished", lambda: (r := kq.read_record(workload_of(kube, ns, "pausable")))
                             .get("phase") == "Finished" and r, 15, op=op)
        total = kq.observe(wl, check).progress.total(now())
        assert rec["usage"]["runSeconds"] == pytest.approx(total, abs=2.0) and rec["usage"]["energyKwh"] > 0
        assert rec["zone"] == "DE" and rec["gpus"] == 2 and rec["plan"]["plannedStart"]
        reasons = [e["reason"] for e in workload_events(kube, ns, wl["metadata"]["name"])]
        assert reasons[0] == "Planned" and "WindowClosed" in reasons, reasons
        assert reasons.count("WindowClosed") == 1, reasons
        forced = [e for e in workload_events(kube, ns, workload_of(kube, ns, "urgent")["metadata"]["name"])
                  if e["reason"] == "DeadlineForced"]
        assert forced and forced[0]["type"] == "Warning"
        text = scrape(op)
        assert f'greenml_object_phase{{kind="Workload",name="{name}",namespace="{ns}",phase="Finished"}} 1.0' in text
        assert 'greenml_decisions_total{kind="Workload",reason="WindowClosed"} 1.0' in text
        assert 'greenml_decisions_total{kind="Workload",reason="DeadlineForced"} 1.0' in text
        assert f'greenml_carbon_expected_grams{{kind="Workload",name="{name}",namespace="{ns}"}}' in text
        assert op.alive()


async def test_a_greenml_restart_and_a_kueue_restart_lose_nothing(kube, kueue_namespace, checked_queues, kueue,
                                                                  tmp_path):
    """The check's state lives in the Workload, the plan's record on it: the operator is
    killed (SIGKILL) while the Workload waits for its window; a new operator plans it to the
    same start and writes nothing (the check, its transition time and the record unchanged, no
    Event repeated); then Kueue is restarted — the Job stays held — and when the window opens
    the check turns Ready, Kueue admits it, it runs and completes."""
    ns, queues = kueue_namespace, checked_queues
    check = queues["check"]
    t0 = grid_start()
    window = 44                                       # seconds after t0: clean (40 g/kWh) from here
    values = [400.0] * (window // 2) + [40.0] * 200
    env = kueue_operator_env(tmp_path, ns, t0, values)
    with run_operator(tmp_path, env) as first:
        await wait_for("the check marked Active", lambda: cq_active(kube, queues["cq"]), 30, op=first)
        kube.create_job(job_manifest("survivor", ns, gpus=2, run_for="4s",
                                     **{kq.ANN_ESTIMATED_DURATION: "4s", kq.ANN_MAX_DELAY: "3m"}))
        wl = await wait_for("Pending with the planned start, its Event and its record", lambda: (
            (w := workload_of(kube, ns, "survivor")) and "planned start" in kq.observe(w, check).check_message
            and kq.read_record(w).get("plan") and workload_events(kube, ns, w["metadata"]["name"]) and w), 30, op=first)
        first.kill(signal.SIGKILL)                    # mid-plan: no clean shutdown
    obs, rec = kq.observe(wl, check), kq.read_record(wl)
    assert obs.check_state == kq.PENDING and obs.quota_reserved and not obs.admitted
    assert rec["plan"]["plannedStart"] == format_time(t0 + timedelta(seconds=window))
    events = workload_events(kube, ns, wl["metadata"]["name"])
    assert [e["reason"] for e in events] == ["Planned"]

    with run_operator(tmp_path, env) as second:
        await wait_for("the new operator's first pass over Workloads", lambda: "greenml operator started" in second.logs()
                       and kq.observe(workload_of(kube, ns, "survivor"), check).check_state == kq.PENDING, 30, op=second)
        await asyncio.sleep(3)                        # several passes (1 s interval)
        wl2 = workload_of(kube, ns, "survivor")
        obs2 = kq.observe(wl2, check)
        assert (obs2.check_state, obs2.check_message, obs2.check_since) == (obs.check_state, obs.check_message,
                                                                            obs.check_since), "the check was rewritten"
        assert kq.read_record(wl2) == rec, "the record was rewritten"
        assert len(workload_events(kube, ns, wl["metadata"]["name"])) == 1, "an Event was repeated"

        kueue.stop_kueue()                            # and Kueue restarts while the Workload waits
        kueue.kueue()
        await asyncio.sleep(2)
        assert now() < t0 + timedelta(seconds=window - 2), "the window opened during the restarts: nothing tested"
        wl3 = workload_of(kube, ns, "survivor")
        assert kq.observe(wl3, check).check_state == kq.PENDING and not condition(wl3, "Admitted")
        assert kube.get_job(ns, "survivor")["spec"]["suspend"] is True and pods(kube, ns, "survivor") == []

        await wait_for("Ready in the window", lambda: kq.observe(workload_of(kube, ns, "survivor"), check)
                       .check_state == kq.READY, window + 10, op=second)
        assert now() >= t0 + timedelta(seconds=window - 1), "Ready before the window"
        await wait_for("Workload admitted", lambda: condition(workload_of(kube, ns, "survivor"), "Admitted"), 30,
                       op=second)
        await wait_for("the Job completes", lambda: job_done(kube, ns, "survivor"), 60, op=second)
        assert second.alive()
