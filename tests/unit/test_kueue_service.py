"""The Kueue AdmissionCheck greenml.io/carbon-window (services/kueue.py): pure, `now` pinned.

Builders in the style of Kueue's own tests (``MakeWorkload(...).Obj()``): plain dicts, shaped
as the API server serves kueue.x-k8s.io/v1beta2 objects.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.services import kueue as kq
from greenml.services.board import PlanBoard, PlannedJob
from greenml.services.trainingjob import Defaults, InvalidSpec, resolve as resolve_trainingjob
from greenml.signals.base import IntensitySeries
from greenml.signals.series import SeriesSource
from greenml.timeutil import format_time

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
CHECK = "carbon-window"
DEFAULTS = Defaults(zone="DE", safety_margin=timedelta(minutes=15), min_run=timedelta(minutes=30))


# ---------------------------------------------------------------- builders

def job(name: str = "train", **annotations: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ml", "uid": "job-uid", "creationTimestamp": format_time(T0),
                         "annotations": dict(annotations)}}


def workload(name: str = "job-train-1a2b3", gpus: int = 2, count: int = 1, *, checks: list[dict] | None = None,
             conditions: tuple[str, ...] = (), admitted_at: datetime | None = None, accumulated: int | None = None,
             flavor: str = "h100-eu", **spec) -> dict:
    conds = [{"type": c, "status": "True", "reason": c, "message": "",
              "lastTransitionTime": format_time(admitted_at or T0)} for c in conditions]
    status: dict = {"conditions": conds, "admissionChecks": checks or []}
    if "QuotaReserved" in conditions:
        status["admission"] = {"clusterQueue": "gpu", "podSetAssignments": [
            {"name": "main", "flavors": {"nvidia.com/gpu": flavor}, "count": count}]}
    if accumulated is not None:
        status["accumulatedPastExecutionTimeSeconds"] = accumulated
    return {"apiVersion": kq.KUEUE_API, "kind": "Workload",
            "metadata": {"name": name, "namespace": "ml", "uid": "wl-uid", "creationTimestamp": format_time(T0),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                                              "uid": "job-uid", "controller": True}]},
            "spec": {"queueName": "team", "podSets": [{"name": "main", "count": count, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "trainer",
                                                          "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]}}}],
                     **spec},
            "status": status}


def state(s: str, message: str = "", at: datetime = T0) -> dict:
    return {"name": CHECK, "state": s, "message": message, "lastTransitionTime": format_time(at)}


def cluster_queue(*quotas: str, checks=("carbon-window",), strategy: bool = False) -> dict:
    flavors = [{"name": f"f{i}", "resources": [{"name": "cpu", "nominalQuota": "64"},
                                              {"name": "nvidia.com/gpu", "nominalQuota": q}]}
               for i, q in enumerate(quotas)]
    spec: dict = {"resourceGroups": [{"coveredResources": ["cpu", "nvidia.com/gpu"], "flavors": flavors}]}
    if strategy:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": c} for c in checks]}
    else:
        spec["admissionChecks"] = list(checks)
    return {"apiVersion": kq.KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": "gpu"}, "spec": spec}


def plan(*windows: tuple[datetime, datetime], grams: float = 60.0, now_grams: float = 100.0) -> PlannedJob:
    return PlannedJob(tuple(windows), grams, now_grams, "Planned", "test", False, T0)


WINDOW = (T0 + 4 * H, T0 + 6 * H)


def req_for(wl: dict, owner: dict | None = None, **kw):
    return kq.resolve(wl, owner if owner is not None else job(**{kq.ANN_ESTIMATED_DURATION: "2h",
                                                                 kq.ANN_MAX_DELAY: "10h"}), DEFAULTS, **kw)


# ---------------------------------------------------------------- the ClusterQueue and flavors

@pytest.mark.parametrize("quotas, expected", [(("8",), 8), (("4", "4"), 8), (("2k",), 2000), ((), None)])
def test_queue_capacity_is_the_nominal_gpu_quota(quotas, expected):
    assert kq.queue_capacity(cluster_queue(*quotas)) == expected


def test_queue_checks_both_api_shapes():
    assert kq.queue_checks(cluster_queue("8")) == {"carbon-window"}
    assert kq.queue_checks(cluster_queue("8", checks=("a", "b"), strategy=True)) == {"a", "b"}


def test_our_checks_by_controller_name():
    acs = [{"metadata": {"name": "carbon-window"}, "spec": {"controllerName": kq.CONTROLLER_NAME}},
           {"metadata": {"name": "prov"}, "spec": {"controllerName": "kueue.x-k8s.io/provisioning-request"}}]
    assert kq.our_checks(acs) == {"carbon-window"}


def test_admission_check_active_condition():
    ok = kq.admission_check_status(T0)["conditions"][0]
    bad = kq.admission_check_status(T0, "unknown key(s) foo")["conditions"][0]
    assert (ok["type"], ok["status"], ok["reason"]) == ("Active", "True", "Active")
    assert (bad["status"], bad["reason"], bad["message"]) == ("False", "BadParameters", "unknown key(s) foo")
    current = {"metadata": {"name": "carbon-window"}, "status": {"conditions": [ok]}}
    assert kq.admission_check_status(T0 + H, None, current) is None              # unchanged: nothing to write
    assert kq.admission_check_status(T0 + H, "bad", current)["conditions"][0]["status"] == "False"


def test_owner_and_cluster_queue_of_an_evicted_workload():
    assert kq.owner_of(workload()) == ("batch/v1", "jobs", "train")
    lqs = {("ml", "team"): {"spec": {"clusterQueue": "gpu-eu"}}}
    assert kq.cluster_queue_of(workload(), lqs) == "gpu-eu"                      # no admission: via its LocalQueue
    assert kq.cluster_queue_of(workload(conditions=("QuotaReserved",)), lqs) == "gpu"
    assert kq.cluster_queue_of(workload(), {}) is None


def test_flavor_zone_through_the_zone_map():
    flavor = {"spec": {"nodeLabels": {"topology.kubernetes.io/region": "europe-west3"}}}
    assert kq.flavor_zone(flavor, "topology.kubernetes.io/region", {"europe-west3": "DE"}) == "DE"
    assert kq.flavor_zone(flavor, "topology.kubernetes.io/region", {}) is None
    assert kq.flavor_zone({"spec": {}}, "topology.kubernetes.io/region", {"europe-west3": "DE"}) is None


def test_assigned_flavors_and_cluster_queue():
    wl = workload(conditions=("QuotaReserved",))
    assert kq.assigned_flavors(wl) == ("h100-eu",)
    assert kq.cluster_queue_of(wl) == "gpu"
    assert kq.assigned_flavors(workload()) == () and kq.cluster_queue_of(workload()) is None


# ---------------------------------------------------------------- resolving

def test_resolve_builds_the_same_request_as_a_trainingjob():
    """The board plans a Workload exactly as the TrainingJob it would have been."""
    owner = job(**{kq.ANN_DEADLINE: format_time(T0 + 12 * H), kq.ANN_ESTIMATED_DURATION: "3h",
                   kq.ANN_INTERRUPTIBLE: "true", kq.ANN_MIN_RUN: "45m", kq.ANN_GPU_MODEL: "H100"})
    got = kq.resolve(workload(gpus=2, count=2), owner, DEFAULTS, zone="FR")
    tj = {"metadata": {"name": "job-train-1a2b3", "namespace": "ml", "uid": "wl-uid",
                       "creationTimestamp": format_time(T0)},
          "spec": {"template": {"spec": {"template": {"spec": {"containers": [
              {"name": "c", "image": "trainer", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}}, "parallelism": 2}},
              "schedule": {"deadline": format_time(T0 + 12 * H), "estimatedDuration": "3h", "interruptible": True,
                           "minRunDuration": "45m"},
              "power": {"gpuModel": "H100"}, "carbon": {"zone": "FR"}}}
    assert got == resolve_trainingjob(tj, DEFAULTS)
    assert (got.gpus, got.zone, got.interruptible, got.deadline) == (4, "FR", True, T0 + 12 * H)


def test_resolve_precedence_owner_over_workload_over_check_defaults():
    defaults = kq.CheckDefaults.from_mapping({"maxDelay": "6h", "estimatedDuration": "1h", "zone": "GB"})
    wl = workload()
    wl["metadata"]["annotations"] = {kq.ANN_ESTIMATED_DURATION: "2h"}
    req = kq.resolve(wl, job(**{kq.ANN_MAX_DELAY: "3h"}), DEFAULTS, defaults, zone="FR")
    assert req.duration == 2 * H                          # workload over check default
    assert req.deadline == T0 + 3 * H + 2 * H             # owner's max-delay over the default's, from creation
    assert req.zone == "GB"                               # the check's zone over the flavor's
    assert kq.resolve(wl, job(), DEFAULTS, kq.CheckDefaults.from_mapping({"maxDelay": "6h"}), zone="FR").zone == "FR"
    assert kq.resolve(wl, job(), DEFAULTS, kq.CheckDefaults.from_mapping({"maxDelay": "6h"})).zone == "DE"


def test_a_deadline_on_the_owner_wins_over_a_default_max_delay():
    defaults = kq.CheckDefaults.from_mapping({"maxDelay": "6h", "estimatedDuration": "1h"})
    req = kq.resolve(workload(), job(**{kq.ANN_DEADLINE: format_time(T0 + 20 * H)}), DEFAULTS, defaults)
    assert req.deadline == T0 + 20 * H


def test_max_execution_time_stands_in_for_the_estimate():
    req = kq.resolve(workload(maximumExecutionTimeSeconds=5400), job(**{kq.ANN_MAX_DELAY: "1h"}), DEFAULTS)
    assert req.duration == timedelta(minutes=90)


@pytest.mark.parametrize("annotations, field", [
    ({kq.ANN_MAX_DELAY: "1h"}, kq.ANN_ESTIMATED_DURATION),                                   # no estimate at all
    ({kq.ANN_ESTIMATED_DURATION: "1h"}, f"{kq.ANN_DEADLINE} / {kq.ANN_MAX_DELAY}"),          # no deadline
    ({kq.ANN_ESTIMATED_DURATION: "1h", kq.ANN_MAX_DELAY: "1h", kq.ANN_DEADLINE: "2026-03-03T00:00:00Z"},
     f"{kq.ANN_DEADLINE} / {kq.ANN_MAX_DELAY}"),                                               # both
    ({kq.ANN_ESTIMATED_DURATION: "soon", kq.ANN_MAX_DELAY: "1h"}, kq.ANN_ESTIMATED_DURATION),
    ({kq.ANN_ESTIMATED_DURATION: "1h", kq.ANN_MAX_DELAY: "1h", kq.ANN_INTERRUPTIBLE: "yes"}, kq.ANN_INTERRUPTIBLE),
    ({kq.ANN_ESTIMATED_DURATION: "1h", kq.ANN_MAX_DELAY: "1h", kq.ANN_GPU_MODEL: "Z80"}, kq.ANN_GPU_MODEL),
    ({kq.ANN_ESTIMATED_DURATION: "1h", kq.ANN_MAX_DELAY: "1h", kq.ANN_WATTS_PER_GPU: "-3"}, kq.ANN_WATTS_PER_GPU),
])
def test_invalid_annotations_name_the_annotation(annotations, field):
    with pytest.raises(InvalidSpec) as err:
        kq.resolve(workload(), job(**annotations), DEFAULTS)
    assert err.value.field == field


def test_invalid_annotations_fail_open():
    d = kq.decide_invalid(InvalidSpec(kq.ANN_INTERRUPTIBLE, "must be true or false"))
    assert d.state == kq.READY and kq.ANN_INTERRUPTIBLE in d.message


def test_unknown_default_keys_are_rejected():
    with pytest.raises(InvalidSpec, match="deadlineX"):
        kq.CheckDefaults.from_mapping({"deadlineX": "1h"})


def test_bad_gpu_quantity_in_a_pod_set():
    wl = workload()
    wl["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "lots"
    with pytest.raises(InvalidSpec, match="podSets"):
        req_for(wl)


# ---------------------------------------------------------------- observing

def test_progress_is_kueues_admitted_time():
    wl = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=T0 + H, accumulated=600,
                  checks=[state("Ready", "open")])
    obs = kq.observe(wl, CHECK)
    assert obs.admitted and obs.quota_reserved and obs.running and obs.check_state == "Ready"
    assert obs.progress.total(T0 + 2 * H) == 600 + 3600
    nothing = kq.observe(workload(), CHECK)
    assert nothing.check_state is None and not nothing.admitted and nothing.progress.total(T0) == 0


# ---------------------------------------------------------------- deciding

def decide(wl: dict, p: PlannedJob | None, now: datetime, owner: dict | None = None):
    return kq.decide_check(req_for(wl, owner), kq.observe(wl, CHECK), p, now, DEFAULTS)


def test_pending_with_the_planned_start_then_ready_in_the_window():
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    d = decide(wl, plan(WINDOW), T0 + H)
    assert d.state == kq.PENDING and d.reason == "Planned"
    assert format_time(WINDOW[0]) in d.message and "40 % less carbon" in d.message
    assert d.next_check == WINDOW[0]
    d = decide(wl, plan(WINDOW), WINDOW[0])
    assert d.state == kq.READY and format_time(WINDOW[1]) in d.message


def test_admitted_non_interruptible_stays_ready_after_its_window():
    wl = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=WINDOW[0], checks=[state("Ready")])
    d = decide(wl, plan(WINDOW), WINDOW[1] + H)
    assert d.state == kq.READY and d.reason == "Running"


def test_interruptible_retry_when_its_window_closes_with_requeue_to_the_next():
    owner = job(**{kq.ANN_ESTIMATED_DURATION: "3h", kq.ANN_MAX_DELAY: "20h", kq.ANN_INTERRUPTIBLE: "true"})
    second = (T0 + 9 * H, T0 + 11 * H)
    running = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=WINDOW[0], checks=[state("Ready")])
    d = decide(running, plan((WINDOW[0], WINDOW[0] + H), second), WINDOW[0] + H, owner)
    assert d.state == kq.RETRY and d.reason == "WindowClosed"
    assert d.requeue_after == int((second[0] - (WINDOW[0] + H)).total_seconds())
    assert format_time(second[0]) in d.message
    # Kueue evicted it and reset the check to Pending; requeued, it waits, then runs again
    evicted = workload(conditions=("QuotaReserved",), accumulated=3600, checks=[state("Pending", "Reset to Pending")])
    assert decide(evicted, plan(second), T0 + 7 * H, owner).state == kq.PENDING
    assert decide(evicted, plan(second), second[0], owner).state == kq.READY


def test_interruptible_keeps_running_until_its_minimum_run():
    owner = job(**{kq.ANN_ESTIMATED_DURATION: "3h", kq.ANN_MAX_DELAY: "20h", kq.ANN_INTERRUPTIBLE: "true",
                   kq.ANN_MIN_RUN: "1h"})
    wl = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=WINDOW[0], checks=[state("Ready")])
    d = decide(wl, plan((WINDOW[0], WINDOW[0] + 10 * timedelta(minutes=5))), WINDOW[0] + timedelta(minutes=50), owner)
    assert d.state == kq.READY and d.reason == "MinRunDuration"


def test_deadline_fails_open_without_a_forecast():
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    req = req_for(wl)            # 2 h estimate, deadline T0 + 12 h, safety 15 min → latest start T0 + 9h45
    latest = T0 + 9 * H + timedelta(minutes=45)
    d = kq.decide_check(req, kq.observe(wl, CHECK), None, T0 + H, DEFAULTS, forecast_problem="provider down")
    assert d.state == kq.PENDING and d.reason == "ForecastUnavailable" and "provider down" in d.message
    assert d.next_check == latest
    d = kq.decide_check(req, kq.observe(wl, CHECK), None, latest, DEFAULTS)
    assert d.state == kq.READY and d.reason == "DeadlineForced"


def test_deadline_fails_open_when_the_plan_is_too_late():
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    late = plan((T0 + 11 * H, T0 + 13 * H))
    assert decide(wl, late, T0 + 9 * H + timedelta(minutes=45)).state == kq.READY


def test_finished_keeps_its_state():
    wl = workload(conditions=("QuotaReserved", "Admitted", "Finished"), checks=[state("Ready", "open")])
    d = decide(wl, plan(WINDOW), T0 + 20 * H)
    assert d.state == kq.READY and not d.differs(kq.observe(wl, CHECK))


# ---------------------------------------------------------------- writing

def test_check_patch_sets_only_our_entry_and_keeps_the_transition_time():
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending", "old", at=T0)])
    obs = kq.observe(wl, CHECK)
    d = decide(wl, plan(WINDOW), T0 + H)
    body = kq.check_patch(wl, CHECK, d, obs, T0 + H)
    assert body["metadata"] == {"name": "job-train-1a2b3", "namespace": "ml", "uid": "wl-uid"}
    [entry] = body["status"]["admissionChecks"]
    assert entry["state"] == "Pending" and entry["lastTransitionTime"] == format_time(T0)   # state unchanged
    assert "requeueAfterSeconds" not in entry and d.differs(obs)
    ready = kq.decide_check(req_for(wl), obs, plan(WINDOW), WINDOW[0], DEFAULTS)
    entry = kq.check_patch(wl, CHECK, ready, obs, WINDOW[0])["status"]["admissionChecks"][0]
    assert entry["state"] == "Ready" and entry["lastTransitionTime"] == format_time(WINDOW[0])
    # Retry without requeueAfterSeconds: Kueue v0.15 would defer the eviction itself until then
    retry = kq.CheckDecision(kq.RETRY, "WindowClosed", "closed", requeue_after=600)
    entry = kq.check_patch(wl, CHECK, retry, obs, T0)["status"]["admissionChecks"][0]
    assert entry["state"] == "Retry" and "requeueAfterSeconds" not in entry


def test_unchanged_decision_is_not_written_again():
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    d = decide(wl, plan(WINDOW), T0 + H)
    wl["status"]["admissionChecks"] = [state(d.state, d.message)]
    assert not decide(wl, plan(WINDOW), T0 + H).differs(kq.observe(wl, CHECK))


# ---------------------------------------------------------------- with the real board

def test_with_the_board_capacity_from_the_cluster_queue():
    """Two 4-GPU workloads on a ClusterQueue of 4 GPUs are not planned into the same window."""
    vals = np.full(48, 400.0)
    vals[8:12] = 100.0                                      # one clean 2 h stretch (30 min steps)
    source = SeriesSource(IntensitySeries(T0, timedelta(minutes=30), vals, source="test"))
    defaults = replace(DEFAULTS, step=timedelta(minutes=30))
    board = PlanBoard(defaults, source, capacity=kq.queue_capacity(cluster_queue("4")))
    owner = job(**{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "18h"})
    decisions = []
    for name in ("a", "b"):
        wl = workload(name=name, gpus=4, conditions=("QuotaReserved",), checks=[state("Pending")])
        req = kq.resolve(wl, owner, defaults)
        obs = kq.observe(wl, CHECK)
        board.observe(req, obs.progress, obs.running)
        decisions.append((wl, req, obs))
    now = T0 + 4 * H
    states = []
    for wl, req, obs in decisions:
        p, failure = board.plan_for(req.key, now)
        assert failure is None and p is not None
        states.append(kq.decide_check(req, obs, p, now, defaults).state)
    assert sorted(states) == [kq.PENDING, kq.READY]


# ---------------------------------------------------------------- one Workload, end to end (evaluate)

class DownSource:
    """A carbon source whose provider is down."""

    def forecast(self, zone, now, horizon):
        from greenml.signals.base import SignalError

        raise SignalError("provider unreachable", reason="Unavailable")


def clean_board(capacity=None) -> PlanBoard:
    vals = np.full(48, 400.0)
    vals[8:12] = 100.0                                      # clean from T0 + 4 h to T0 + 6 h
    return PlanBoard(replace(DEFAULTS, step=timedelta(minutes=30)),
                     SeriesSource(IntensitySeries(T0, timedelta(minutes=30), vals, source="test")), capacity=capacity)


def test_evaluate_plans_writes_once_then_forgets_the_finished():
    defaults = replace(DEFAULTS, step=timedelta(minutes=30))
    board = clean_board()
    owner = job(**{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "18h"})
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending", "Reset")])
    ev = kq.evaluate(wl, owner, CHECK, board, T0 + H, defaults, zone="DE")
    assert ev.decision.state == kq.PENDING and ev.plan.planned_start == T0 + 4 * H and len(board) == 1
    assert ev.patch["status"]["admissionChecks"][0]["message"] == ev.decision.message
    wl["status"]["admissionChecks"] = ev.patch["status"]["admissionChecks"]          # as the API server stores it
    assert kq.evaluate(wl, owner, CHECK, board, T0 + H, defaults).patch is None       # nothing changed: no write
    ready = kq.evaluate(wl, owner, CHECK, board, T0 + 4 * H, defaults)
    assert ready.decision.state == kq.READY and ready.patch is not None
    done = workload(conditions=("QuotaReserved", "Admitted", "Finished"), checks=ready.patch["status"]["admissionChecks"])
    assert kq.evaluate(done, owner, CHECK, board, T0 + 7 * H, defaults).patch is None and len(board) == 0
    queued = workload(name="queued")                         # Kueue has not added the check yet: planned, not written
    ev = kq.evaluate(queued, owner, CHECK, board, T0 + H, defaults)
    assert ev.decision.state == kq.PENDING and ev.patch is None and len(board) == 1


def test_evaluate_fails_open_on_bad_annotations_and_without_a_forecast():
    defaults = replace(DEFAULTS, step=timedelta(minutes=30))
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    bad = kq.evaluate(wl, job(**{kq.ANN_MAX_DELAY: "1h", kq.ANN_ESTIMATED_DURATION: "1h", kq.ANN_INTERRUPTIBLE: "yes"}),
                      CHECK, clean_board(), T0, defaults)
    assert bad.decision.state == kq.READY and bad.invalid.field == kq.ANN_INTERRUPTIBLE and bad.patch is not None
    board = PlanBoard(defaults, DownSource())
    down = kq.evaluate(wl, job(**{kq.ANN_MAX_DELAY: "4h", kq.ANN_ESTIMATED_DURATION: "1h"}), CHECK, board, T0, defaults)
    assert down.decision.state == kq.PENDING and "provider unreachable" in down.decision.message
    latest = T0 + 4 * H + H - defaults.safety_margin - H
    late = kq.evaluate(wl, job(**{kq.ANN_MAX_DELAY: "4h", kq.ANN_ESTIMATED_DURATION: "1h"}), CHECK, board, latest, defaults)
    assert late.decision.state == kq.READY and late.decision.reason == "DeadlineForced"


def test_a_finished_workloads_run_ends_when_it_finished():
    wl = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=T0 + H, accumulated=600)
    wl["status"]["conditions"].append({"type": "Finished", "status": "True", "reason": "Succeeded", "message": "",
                                       "lastTransitionTime": format_time(T0 + 2 * H)})
    obs = kq.observe(wl, CHECK)
    assert obs.finished and not obs.running
    assert obs.progress.total(T0 + 9 * H) == 600 + 3600        # not counting on after it finished


def test_an_unreadable_owner_fails_open_naming_the_missing_rule():
    ref = ("jobset.x-k8s.io/v1alpha2", "jobsets", "trainer")
    problem = kq.owner_read_problem(ref, 403, "get jobsets ml/trainer: 403 Forbidden")
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    board = clean_board()
    ev = kq.evaluate(wl, None, CHECK, board, T0, replace(DEFAULTS, step=timedelta(minutes=30)), owner_problem=problem)
    assert ev.decision.state == kq.READY and ev.decision.reason == "InvalidAnnotations" and len(board) == 0
    assert "grant the operator get on jobsets (jobset.x-k8s.io)" in ev.decision.message
    assert ev.patch["status"]["admissionChecks"][0]["state"] == kq.READY
    other = kq.owner_read_problem(("batch/v1", "jobs", "train"), 500, "boom")
    assert "grant" not in other.message and "jobs/train" in other.field


def test_the_record_keeps_plan_and_usage_and_is_written_when_it_matters():
    """The Workload's record (ANN_RECORD): state, reason, phase, request, plan, usage. Written
    at once when the state, reason, phase or planned start change; when only figures move, at
    most every RECORD_INTERVAL; grams accrue the energy since the last record at the intensity
    of now; the last plan stays once the Workload finished."""
    defaults = replace(DEFAULTS, step=timedelta(minutes=30))
    board = clean_board()
    owner = job(**{kq.ANN_ESTIMATED_DURATION: "2h", kq.ANN_MAX_DELAY: "18h", kq.ANN_WATTS_PER_GPU: "500"})
    wl = workload(conditions=("QuotaReserved",), checks=[state("Pending")])
    ev = kq.evaluate(wl, owner, CHECK, board, T0 + H, defaults, zone="DE")
    rec = kq.build_record(ev, {}, T0 + H, defaults, 400.0)
    assert (rec["state"], rec["reason"], rec["phase"], rec["zone"], rec["gpus"], rec["watts"]) == \
        ("Pending", "Planned", "Waiting", "DE", 2, 1000.0)
    assert rec["plan"]["plannedStart"] == format_time(T0 + 4 * H) and rec["plan"]["savingsPercent"] == ev.plan.savings_percent
    assert rec["plan"]["latestStart"] == format_time(T0 + 18 * H + 2 * H - DEFAULTS.safety_margin - 2 * H)
    assert rec["usage"] == {"runSeconds": 0.0, "energyKwh": 0.0, "grams": 0.0, "source": "power-model (spec)"}
    text = kq.record_patch({}, rec, T0 + H)
    assert text is not None
    wl["metadata"]["annotations"] = {kq.ANN_RECORD: text}
    assert kq.read_record(wl) == rec
    # the same decision a minute later: nothing to write
    again = kq.build_record(kq.evaluate(wl, owner, CHECK, board, T0 + H + timedelta(minutes=1), defaults), rec,
                            T0 + H + timedelta(minutes=1), defaults, 400.0)
    assert kq.record_patch(rec, again, T0 + H + timedelta(minutes=1)) is None
    # admitted in its window: a new phase and state — written at once
    running = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=T0 + 4 * H, checks=[state("Ready")])
    ev = kq.evaluate(running, owner, CHECK, board, T0 + 4 * H + timedelta(minutes=6), defaults)
    run_rec = kq.build_record(ev, rec, T0 + 4 * H + timedelta(minutes=6), defaults, 100.0)
    assert (run_rec["state"], run_rec["phase"]) == ("Ready", "Running")
    assert run_rec["usage"]["energyKwh"] == pytest.approx(0.1) and run_rec["usage"]["grams"] == pytest.approx(10.0)
    assert kq.record_patch(rec, run_rec, T0 + 4 * H + timedelta(minutes=6)) is not None
    # running on: only the usage moves — written again only after RECORD_INTERVAL
    later = T0 + 4 * H + timedelta(minutes=8)
    moved = kq.build_record(kq.evaluate(running, owner, CHECK, board, later, defaults), run_rec, later, defaults, 100.0)
    assert moved["usage"]["grams"] == pytest.approx(10.0 + 1000 * 120 / 3.6e6 * 100.0, abs=1e-3)
    assert kq.record_patch(run_rec, moved, later) is None
    assert kq.record_patch(run_rec, moved, T0 + 4 * H + timedelta(minutes=6) + kq.RECORD_INTERVAL) is not None
    # finished: no plan any more (off the board), the last one kept; a bad annotation reads as none
    done = workload(conditions=("QuotaReserved", "Admitted"), admitted_at=T0 + 4 * H, checks=[state("Ready")])
    done["status"]["conditions"].append({"type": "Finished", "status": "True", "reason": "Succeeded", "message": "",
                                         "lastTransitionTime": format_time(T0 + 6 * H)})
    fin = kq.build_record(kq.evaluate(done, owner, CHECK, board, T0 + 7 * H, defaults), moved, T0 + 7 * H, defaults,
                          None)
    assert fin["phase"] == "Finished" and fin["plan"] == moved["plan"] and fin["usage"]["runSeconds"] == 7200.0
    assert fin["usage"]["grams"] == moved["usage"]["grams"]          # no intensity: nothing accrued
    assert kq.record_patch(moved, fin, T0 + 7 * H) is not None
    assert kq.read_record({"metadata": {"annotations": {kq.ANN_RECORD: "{oops"}}}) == {}


def test_a_standing_retry_is_left_to_kueue():
    """Kueue evicts with resourceVersion-checked patches: our Retry is not rewritten while it
    stands, nor replaced by Pending while the eviction runs (the quota still reserved) — Kueue
    resets it to Pending itself; a decision to run on (Ready) while still admitted replaces it,
    and so does any decision once the quota is released and Retry is still there."""
    retry = kq.CheckDecision(kq.RETRY, "WindowClosed", "closed", requeue_after=10)
    later = kq.CheckDecision(kq.RETRY, "WindowClosed", "closed, later", requeue_after=9)
    admitted = kq.observe(workload(conditions=("QuotaReserved", "Admitted"),
                                   checks=[{**state("Retry", "closed"), "requeueAfterSeconds": 10}]), CHECK)
    evicting = kq.observe(workload(conditions=("QuotaReserved",),
                                   checks=[{**state("Retry", "closed"), "requeueAfterSeconds": 10}]), CHECK)
    assert not retry.differs(admitted) and not later.differs(admitted)
    assert not kq.CheckDecision(kq.PENDING, "Planned", "planned start …").differs(evicting)
    assert not kq.CheckDecision(kq.READY, "DeadlineForced", "forced").differs(evicting)
    assert kq.CheckDecision(kq.READY, "DeadlineForced", "forced").differs(admitted)
    assert not kq.CheckDecision(kq.PENDING, "Planned", "planned start …").differs(admitted)
    # evicted, the quota released, and Retry still there: replaced, or it would never be requeued
    evicted = kq.observe(workload(checks=[state("Retry", "closed")]), CHECK)
    assert kq.CheckDecision(kq.PENDING, "Planned", "planned start …").differs(evicted)


def test_an_admitted_workloads_ready_is_not_rewritten_for_its_message_alone():
    from greenml.services.trainingjob import Progress as P
    obs = lambda admitted, state: kq.WorkloadObservation(state, "admitted without waiting longer", None, None,  # noqa: E731
                                                         True, admitted, False, P())
    running = kq.CheckDecision(kq.READY, "Running", "a running non-interruptible job is never stopped")
    assert not running.differs(obs(True, kq.READY))
    assert running.differs(obs(False, kq.READY))            # not admitted yet: the message is news
    assert running.differs(obs(True, kq.PENDING))           # a new state always is


def test_a_retry_is_not_written_again_while_kueue_evicts():
    """Kueue evicts on our Retry and resets the check to Pending while it still holds the
    quota: writing Retry again then kept the workload from being requeued (e2e)."""
    from greenml.services.trainingjob import Progress as P
    obs = lambda evicted, reserved: kq.WorkloadObservation(kq.PENDING, "", None, None, reserved, True, False, P(),  # noqa: E731
                                                           evicted=evicted)
    retry = kq.CheckDecision(kq.RETRY, "WindowClosed", "low-carbon window closed")
    assert not retry.differs(obs(True, True))
    assert retry.differs(obs(False, True))              # not evicted yet: the Retry is written
