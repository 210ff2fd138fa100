"""controllers/kueue with an in-memory API, its watch events fed by hand: what wakes a Workload
(its decision inputs, not Kueue's churn nor our own writes' echo), what is stored (lean), the
API requests N idle Workloads cost on the real planning loop, and what the operator writes for
a Workload over its life — the check, the record annotation (plan, usage), Events only when the state or
reason changes (also across an operator restart: the record says what was said), metrics of
kind Workload (dropped when the Workload goes), and an owner it may not read (fails open).

The real API server and a real Kueue: e2e/test_kueue_e2e.py.
"""
from __future__ import annotations

import asyncio
import copy
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf
import numpy as np

from greenml.controllers import kueue as ctl
from greenml.controllers.context import Context
from greenml.controllers.loop import NEVER
from greenml.kube import ApiError
from greenml.services import kueue as kq
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import Defaults
from greenml.settings import Settings
from greenml.signals.base import IntensitySeries
from greenml.signals.series import SeriesSource
from greenml.timeutil import format_time
from tests.unit.test_metrics import get

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
STEP = timedelta(minutes=30)


class FakeKube:
    """The calls step() makes, on dicts; a status apply merges our check's entry by name."""

    def __init__(self, workloads: list[dict[str, Any]], owners: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            "admissionchecks": [{"metadata": {"name": "carbon-window"},
                                 "spec": {"controllerName": kq.CONTROLLER_NAME}}],
            "clusterqueues": [{"metadata": {"name": "gpu"}, "spec": {
                "admissionChecksStrategy": {"admissionChecks": [{"name": "carbon-window"}]},
                "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"], "flavors": [
                    {"name": "h100-eu", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]}}],
            "resourceflavors": [{"metadata": {"name": "h100-eu"},
                                 "spec": {"nodeLabels": {"topology.kubernetes.io/region": "europe-west3"}}}],
            "localqueues": [{"metadata": {"name": "team", "namespace": "ml"}, "spec": {"clusterQueue": "gpu"}}],
        }
        self.workloads = workloads
        self.owners = owners
        self.forbidden: set[str] = set()
        self.events: list[tuple[str, str, str]] = []
        self.applied: list[dict[str, Any]] = []
        self.annotated = 0
        self.calls: Counter[str] = Counter()      # API requests by method and resource

    def list_objects(self, api: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls[f"list {plural}"] += 1
        return copy.deepcopy(self.objects[plural])

    def get(self, api: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls[f"get {plural}"] += 1
        if plural in self.forbidden:
            raise ApiError(f"get {plural} {namespace}/{name}: 403 Forbidden", 403)
        if plural == "configmaps":
            return None
        return copy.deepcopy(self.owners.get((plural, name)))

    def set_admission_check_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls["patch admissionchecks/status"] += 1
        self.objects["admissionchecks"][0]["status"] = status
        return copy.deepcopy(self.objects["admissionchecks"][0])

    def list_workloads(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.list_objects(kq.KUEUE_API, "workloads")

    def _wl(self, name: str) -> dict[str, Any]:
        return next(w for w in self.workloads if w["metadata"]["name"] == name)

    def apply_workload_check(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls["apply workloads/status"] += 1
        self.applied.append(body)
        checks = self._wl(body["metadata"]["name"])["status"].setdefault("admissionChecks", [])
        for entry in body["status"]["admissionChecks"]:
            checks[:] = [c for c in checks if c["name"] != entry["name"]] + [entry]
        return copy.deepcopy(self._wl(body["metadata"]["name"]))

    def annotate_workload(self, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        self.calls["patch workloads"] += 1
        self.annotated += 1
        self._wl(name)["metadata"].setdefault("annotations", {}).update(annotations)
        return copy.deepcopy(self._wl(name))

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls["post events"] += 1
        self.events.append((obj["metadata"]["name"], type_, reason))


def watch(ctx: Context, kube: FakeKube) -> None:
    """What kopf's watches deliver: every object as it is now (an event per object)."""
    for plural, kind in ctl.CATALOGUE.items():
        for obj in kube.objects[plural]:
            ctl.catalogue_event(ctx, kind, "MODIFIED", copy.deepcopy(obj))
    for wl in kube.workloads:
        ctl.workload_event(ctx, "MODIFIED", copy.deepcopy(wl))


def due(ctx: Context) -> set[tuple[str, str, str]]:
    return set(ctx.loop._due)


def step(ctx: Context, kube: FakeKube) -> datetime:
    """The watches' events, then the slow pass and every Workload due (as the loop would);
    the earliest next wake-up of a Workload."""
    watch(ctx, kube)
    ctl.check_pass(ctx)
    ctx.loop._due.pop(ctl.KEY, None)
    now, nxt = ctx.clock(), []
    for key in sorted(k for k, ts in ctx.loop._due.items() if k[0] == ctl.KIND and ts <= now.timestamp()):
        ctx.loop._due.pop(key)
        n = ctl.reconcile(ctx, key[1], key[2])
        if n is not NEVER:
            n = n or now + ctx.loop.max_sleep
            ctx.loop.schedule(key, n)
            nxt.append(n)
    return min(nxt, default=None)


def job(name: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ml", "creationTimestamp": format_time(T0),
                         "annotations": annotations}}


def workload(name: str, owner: tuple[str, str, str] = ("batch/v1", "Job", "train")) -> dict[str, Any]:
    return {"apiVersion": kq.KUEUE_API, "kind": "Workload",
            "metadata": {"name": name, "namespace": "ml", "uid": f"{name}-uid", "creationTimestamp": format_time(T0),
                         "ownerReferences": [{"apiVersion": owner[0], "kind": owner[1], "name": owner[2],
                                              "controller": True}]},
            "spec": {"queueName": "team", "podSets": [{"name": "main", "count": 1, "template": {"spec": {
                "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "2"}}}]}}}]},
            "status": {"conditions": [cond("QuotaReserved", T0)],
                       "admission": {"clusterQueue": "gpu", "podSetAssignments": [
                           {"name": "main", "flavors": {"nvidia.com/gpu": "h100-eu"}, "count": 1}]},
                       "admissionChecks": [{"name": "carbon-window", "state": "Pending", "message": "",
                                            "lastTransitionTime": format_time(T0)}]}}


def cond(kind: str, at: datetime) -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": kind, "message": "", "lastTransitionTime": format_time(at)}


def context(kube: FakeKube, clock: list[datetime]) -> Context:
    defaults = Defaults(zone="DE", safety_margin=timedelta(minutes=15), min_run=timedelta(minutes=30), step=STEP)
    vals = np.full(48, 400.0)
    vals[8:12] = 100.0                                      # clean from T0 + 4 h to T0 + 6 h
    source = SeriesSource(IntensitySeries(T0, STEP, vals, source="test"))
    settings = Settings(kueue_enabled=True, zone_map={"europe-west3": "DE"}, metrics_port=0)
    board = PlanBoard(defaults, source, replan_interval=H, horizon=timedelta(hours=24))
    return Context(settings=settings, kube=kube, defaults=defaults, board=board, clock=lambda: clock[0])


def record(kube: FakeKube, name: str) -> dict[str, Any]:
    return kq.read_record(kube._wl(name))


def test_a_workloads_life_written_by_the_step_and_an_operator_restart_repeats_nothing():
    owner = job("train", **{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "18h"})
    kube = FakeKube([workload("job-train")], {("jobs", "train"): owner})
    clock = [T0 + H]
    ctx = context(kube, clock)
    nxt = step(ctx, kube)
    assert kube.objects["admissionchecks"][0]["status"]["conditions"][0]["status"] == "True"
    rec = record(kube, "job-train")
    assert (rec["state"], rec["reason"], rec["phase"], rec["zone"]) == ("Pending", "Planned", "Waiting", "DE")
    assert rec["plan"]["plannedStart"] == format_time(T0 + 4 * H)
    assert kube.events == [("job-train", "Normal", "Planned")]
    assert nxt == T0 + 4 * H            # woken next when its window opens (no pass before that)
    m = ctx.extras["metrics"]
    lab = {"namespace": "ml", "name": "job-train", "kind": "Workload"}
    assert get(m, "greenml_object_phase", **lab, phase="Waiting") == 1.0
    assert get(m, "greenml_carbon_expected_grams", **lab) == rec["plan"]["expectedGrams"]
    assert get(m, "greenml_decisions_total", kind="Workload", reason="Planned") == 1.0
    # the ClusterQueue's board replanned to plan it: counted under its own board label
    replans = ctx.extras["kueue_boards"]["gpu"].stats.replans
    assert replans >= 1 and get(m, "greenml_replans_total", board="kueue/gpu") == replans
    assert get(m, "greenml_planned_jobs", board="kueue/gpu") == 1
    assert get(m, "greenml_replans_total", board="trainingjobs") is None     # the TrainingJob board did not

    # a greenml restart: a new context (empty board, fresh metrics) plans it again to the same
    # start; the check and the record are unchanged, so nothing is written and no Event repeats
    writes = (len(kube.applied), kube.annotated)
    clock[0] = T0 + H + timedelta(minutes=5)
    ctx = context(kube, clock)
    step(ctx, kube)
    assert (len(kube.applied), kube.annotated) == writes and len(kube.events) == 1
    assert record(kube, "job-train") == rec

    # the window opens: Ready, an Event; Kueue admits it
    clock[0] = T0 + 4 * H
    step(ctx, kube)
    assert kube._wl("job-train")["status"]["admissionChecks"][0]["state"] == "Ready"
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]
    kube._wl("job-train")["status"]["conditions"].append(cond("Admitted", T0 + 4 * H))
    clock[0] = T0 + 5 * H
    step(ctx, kube)
    rec = record(kube, "job-train")
    assert rec["phase"] == "Running" and rec["usage"]["runSeconds"] == 3600.0
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]      # admitted: Ready still, no Event
    assert get(ctx.extras["metrics"], "greenml_object_phase", **lab, phase="Running") == 1.0
    assert get(ctx.extras["metrics"], "greenml_energy_joules", **lab) > 0
    # it finishes: the record keeps the last plan; no Event for Kueue's own ending
    kube._wl("job-train")["status"]["conditions"].append(cond("Finished", T0 + 6 * H))
    clock[0] = T0 + 7 * H
    step(ctx, kube)
    rec = record(kube, "job-train")
    assert rec["phase"] == "Finished" and rec["usage"]["runSeconds"] == 7200.0 and "plan" in rec
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]
    # the Workload is deleted: its series go
    ctl.workload_event(ctx, "DELETED", kube.workloads.pop())
    step(ctx, kube)
    assert get(ctx.extras["metrics"], "greenml_object_phase", **lab, phase="Finished") is None
    assert ctx.extras["kueue_workloads"] == set()


def test_an_owner_the_operator_may_not_read_fails_open_with_a_warning():
    kube = FakeKube([workload("jobset-trainer", ("jobset.x-k8s.io/v1alpha2", "JobSet", "trainer"))], {})
    kube.forbidden.add("jobsets")
    ctx = context(kube, [T0 + H])
    step(ctx, kube)
    entry = kube._wl("jobset-trainer")["status"]["admissionChecks"][0]
    assert entry["state"] == "Ready" and "grant the operator get on jobsets (jobset.x-k8s.io)" in entry["message"]
    assert kube.events == [("jobset-trainer", "Warning", "InvalidAnnotations")]
    assert record(kube, "jobset-trainer")["reason"] == "InvalidAnnotations" and len(ctx.board) == 0


def test_a_deadline_forced_admission_is_a_warning():
    """Its deadline leaves no time for the clean window: admitted at the latest safe start."""
    owner = job("train", **{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "1h"})
    kube = FakeKube([workload("job-train")], {("jobs", "train"): owner})
    clock = [T0 + H]
    ctx = context(kube, clock)
    step(ctx, kube)
    assert kube._wl("job-train")["status"]["admissionChecks"][0]["state"] == "Ready"
    assert kube.events == [("job-train", "Warning", "DeadlineForced")]
    assert record(kube, "job-train")["reason"] == "DeadlineForced"


def idle_setup(n: int, quota: int = 8) -> tuple[FakeKube, Context, list[datetime]]:
    owner = job("train", **{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "18h"})
    kube = FakeKube([workload(f"job-{i}") for i in range(n)], {("jobs", "train"): owner})
    kube.objects["clusterqueues"][0]["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = str(quota)
    clock = [T0 + H]
    ctx = context(kube, clock)
    ctx.loop.max_sleep = timedelta(seconds=ctx.settings.tick_interval)     # as start_loop sets it
    ctl.install(ctx, kopf.OperatorRegistry())
    watch(ctx, kube)
    return kube, ctx, clock


async def run_loop(ctx: Context, clock: list[datetime], until: datetime) -> None:
    """The real planning loop's wake-ups (Loop._one: next wake-up, the tick_interval cap),
    on the test's clock: each due key in turn, the clock jumping to the next."""
    loop, sem = ctx.loop, asyncio.Semaphore(1)
    while (ts := loop._next_ts()) is not None and ts <= until.timestamp():
        clock[0] = max(clock[0], datetime.fromtimestamp(ts, timezone.utc))
        for key in loop._pop_due(clock[0].timestamp(), 1):
            await sem.acquire()
            loop._inflight.add(key)
            await loop._one(key, sem)
    clock[0] = until


def test_idle_workloads_cost_no_list_and_a_few_owner_reads_an_hour():
    """N Workloads waiting for a window hours away, nothing changing: after their first turn
    the check lists nothing and writes nothing; each is read (its owner) only when the loop's
    cap (tick_interval) wakes it — the poll this replaced listed every Workload and read every
    owner every 30 s."""
    n = 20
    kube, ctx, clock = idle_setup(n, quota=2 * n)       # all fit in the window: no plan moves
    asyncio.run(run_loop(ctx, clock, T0 + H + timedelta(minutes=1)))
    assert kube.annotated == n and len(kube.events) == n        # each planned once, said once
    kube.calls.clear()
    hour = timedelta(hours=1)
    asyncio.run(run_loop(ctx, clock, clock[0] + hour))
    lists = {k: v for k, v in kube.calls.items() if k.startswith("list")}
    writes = {k: v for k, v in kube.calls.items() if not k.startswith(("get", "list"))}
    assert lists == {} and writes == {}, kube.calls
    per_workload_bound = -(-hour.total_seconds() // (0.8 * ctx.settings.tick_interval))     # the cap's shortest jitter
    assert 0 < kube.calls["get jobs"] <= n * per_workload_bound
    # the slow pass: one ConfigMap read per kueue_interval, nothing else
    assert kube.calls["get configmaps"] <= hour.total_seconds() / ctx.settings.kueue_interval + 1
    print(f"\n{n} idle Workloads, 1 h: {dict(kube.calls)}")


def test_only_decision_inputs_wake_a_workload_and_our_own_writes_do_not():
    kube, ctx, clock = idle_setup(1)
    key = (ctl.KIND, "ml", "job-0")
    assert key in due(ctx)
    step(ctx, kube)                              # planned: the check and the record written
    assert kube.applied and kube.annotated
    ctx.loop._due.clear()
    watch(ctx, kube)                             # the echo of our writes
    assert due(ctx) == set()

    def changed(mutate) -> bool:
        ctx.loop._due.clear()
        body = copy.deepcopy(kube.workloads[0])
        mutate(body)
        ctl.workload_event(ctx, "MODIFIED", body)
        woken = key in due(ctx)
        ctl.workload_event(ctx, "MODIFIED", copy.deepcopy(kube.workloads[0]))     # back as it was
        return woken

    st = lambda b: b["status"]                   # noqa: E731
    churn = {
        "resourceVersion": lambda b: b["metadata"].update(resourceVersion="999", managedFields=[{"manager": "kueue"}]),
        "PodsReady": lambda b: st(b)["conditions"].append(cond("PodsReady", T0 + 2 * H)),
        "Requeued": lambda b: st(b)["conditions"].append(cond("Requeued", T0 + 2 * H)),
        "a condition's message": lambda b: st(b)["conditions"][0].update(message="quota reserved in gpu"),
        "requeueState": lambda b: st(b).update(requeueState={"count": 1}),
        "resourceRequests": lambda b: st(b).update(resourceRequests=[{"name": "main", "resources": {"cpu": "1"}}]),
        "the check's message": lambda b: st(b)["admissionChecks"][0].update(message="rewritten"),
        "another annotation": lambda b: b["metadata"].setdefault("annotations", {}).update({"team": "x"}),
        "our record (another replica's write)": lambda b: b["metadata"]["annotations"].update({kq.ANN_RECORD: "{}"}),
        "an image": lambda b: b["spec"]["podSets"][0]["template"]["spec"]["containers"][0].update(image="v2"),
    }
    inputs = {
        "admitted": lambda b: st(b)["conditions"].append(cond("Admitted", T0 + 2 * H)),
        "quota released": lambda b: st(b).update(conditions=[], admission=None),
        "evicted": lambda b: st(b)["conditions"].append(cond("Evicted", T0 + 2 * H)),
        "finished": lambda b: st(b)["conditions"].append(cond("Finished", T0 + 2 * H)),
        "the check reset": lambda b: st(b)["admissionChecks"][0].update(state="Retry"),
        "another check": lambda b: st(b)["admissionChecks"].append({"name": "other", "state": "Pending"}),
        "run time": lambda b: st(b).update(accumulatedPastExecutionTimeSeconds=60),
        "a greenml annotation": lambda b: b["metadata"].setdefault("annotations", {}).update({kq.ANN_DEADLINE: "x"}),
        "GPUs": lambda b: b["spec"]["podSets"][0].update(count=2),
        "recreated": lambda b: b["metadata"].update(uid="other-uid"),
        "deleting": lambda b: b["metadata"].update(deletionTimestamp=format_time(T0)),
    }
    assert [what for what, m in churn.items() if changed(m)] == []
    assert [what for what, m in inputs.items() if not changed(m)] == []


def test_stored_workloads_are_lean_and_plan_the_same():
    kube, ctx, _ = idle_setup(1)
    full = copy.deepcopy(kube.workloads[0])
    pod = full["spec"]["podSets"][0]["template"]["spec"]
    pod["containers"][0].update(image="trainer:v1", command=["python", "train.py"], env=[{"name": "X", "value": "y" * 500}],
                                resources={"requests": {"nvidia.com/gpu": "2", "cpu": "8"}, "limits": {"memory": "64Gi"}})
    pod["containers"].append({"name": "sidecar", "image": "s", "resources": {"limits": {"nvidia.com/gpu": "1"}}})
    pod["volumes"] = [{"name": "data", "emptyDir": {}}]
    full["metadata"]["managedFields"] = [{"manager": "kueue", "fieldsV1": {"f:status": {}}}]
    full["status"]["resourceRequests"] = [{"name": "main", "resources": {"cpu": "8"}}]
    ctl.workload_event(ctx, "MODIFIED", full)
    stored = ctx.store.get(ctl.KIND, "ml", "job-0")
    assert "managedFields" not in stored["metadata"] and "resourceRequests" not in stored["status"]
    assert stored["spec"]["podSets"][0]["template"]["spec"] == {"containers": [
        {"resources": {"requests": {"nvidia.com/gpu": "2"}}}, {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    assert kq.workload_gpus(stored) == kq.workload_gpus(full) == 3
    assert kq.observe(stored, "carbon-window") == kq.observe(full, "carbon-window")


def test_a_queues_quota_replans_its_board_and_status_churn_wakes_nothing():
    kube, ctx, clock = idle_setup(3)
    step(ctx, kube)
    board = ctx.extras["kueue_boards"]["gpu"]
    assert board.capacity() == 8
    board.replan(clock[0])
    assert not board.stale(clock[0])
    ctx.loop._due.clear()
    cq = kube.objects["clusterqueues"][0]
    cq["status"] = {"flavorsUsage": [{"name": "h100-eu", "resources": [{"name": "nvidia.com/gpu", "total": "6"}]}]}
    watch(ctx, kube)
    assert due(ctx) == set()                                       # Kueue's usage bookkeeping
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "4"
    watch(ctx, kube)
    assert due(ctx) == {(ctl.BOARD, "", "gpu")} and board.capacity() == 4 and board.stale(clock[0])
    # 2 GPUs each: 3 no longer fit in one window. A Workload's turn replans (the board is stale)
    # and wakes the others whose plan moved; so does the board's own replan
    clock[0] += board.min_replan_gap            # past the gap in which a turn only fills in
    ctl.reconcile(ctx, "ml", "job-0")
    assert {k for k in due(ctx) if k[0] == ctl.KIND} - {(ctl.KIND, "ml", "job-0")}
    ctx.loop._due.clear()
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "2"
    watch(ctx, kube)
    asyncio.run(ctx.loop.handlers[ctl.BOARD]((ctl.BOARD, "", "gpu")))
    assert {k for k in due(ctx) if k[0] == ctl.KIND}
    ctx.loop._due.clear()
    cq["spec"]["admissionChecksStrategy"]["admissionChecks"] = []  # the check off the queue: its Workloads
    watch(ctx, kube)
    assert {k for k in due(ctx) if k[0] == ctl.KIND} == {(ctl.KIND, "ml", f"job-{i}") for i in range(3)}


def test_a_changed_defaults_configmap_wakes_the_workloads_at_the_slow_pass():
    kube, ctx, clock = idle_setup(2)
    step(ctx, kube)
    ctx.loop._due.clear()
    ctl.check_pass(ctx)
    assert due(ctx) == set()                          # unchanged: nothing woken
    kube.get = lambda api, plural, ns, name: {"data": {"maxDelay": "2h"}} if plural == "configmaps" else None
    ctl.check_pass(ctx)
    assert due(ctx) == {(ctl.KIND, "ml", "job-0"), (ctl.KIND, "ml", "job-1")}


def test_the_watches_are_registered_once_per_registry_on_kueues_resources():
    registry = kopf.OperatorRegistry()
    assert ctl.register_watches(registry) and not ctl.register_watches(registry)
    handlers = registry._watching.get_all_handlers()
    assert sorted(h.selector.any_name for h in handlers) == sorted(["workloads", *ctl.CATALOGUE])
    assert {(h.selector.group, h.selector.version) for h in handlers} == {tuple(kq.KUEUE_API.split("/"))}
