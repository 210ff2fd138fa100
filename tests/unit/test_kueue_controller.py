"""controllers/kueue.step with an in-memory API: what the operator writes for a Workload over
its life — the check, the record annotation (plan, usage), Events only when the state or
reason changes (also across an operator restart: the record says what was said), metrics of
kind Workload (dropped when the Workload goes), and an owner it may not read (fails open).

The real API server and a real Kueue: e2e/test_kueue_e2e.py.
"""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from greenml.controllers import kueue as ctl
from greenml.controllers.context import Context
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

    def list_objects(self, api: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return copy.deepcopy(self.objects[plural])

    def get(self, api: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if plural in self.forbidden:
            raise ApiError(f"get {plural} {namespace}/{name}: 403 Forbidden", 403)
        if plural == "configmaps":
            return None
        return copy.deepcopy(self.owners.get((plural, name)))

    def set_admission_check_status(self, name: str, status: dict[str, Any]) -> None:
        self.objects["admissionchecks"][0]["status"] = status

    def list_workloads(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return copy.deepcopy(self.workloads)

    def _wl(self, name: str) -> dict[str, Any]:
        return next(w for w in self.workloads if w["metadata"]["name"] == name)

    def apply_workload_check(self, body: dict[str, Any]) -> None:
        self.applied.append(body)
        checks = self._wl(body["metadata"]["name"])["status"].setdefault("admissionChecks", [])
        for entry in body["status"]["admissionChecks"]:
            checks[:] = [c for c in checks if c["name"] != entry["name"]] + [entry]

    def annotate_workload(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.annotated += 1
        self._wl(name)["metadata"].setdefault("annotations", {}).update(annotations)

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], type_, reason))


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
    nxt = ctl.step(ctx)
    assert kube.objects["admissionchecks"][0]["status"]["conditions"][0]["status"] == "True"
    rec = record(kube, "job-train")
    assert (rec["state"], rec["reason"], rec["phase"], rec["zone"]) == ("Pending", "Planned", "Waiting", "DE")
    assert rec["plan"]["plannedStart"] == format_time(T0 + 4 * H)
    assert kube.events == [("job-train", "Normal", "Planned")]
    assert nxt == T0 + H + timedelta(seconds=30)            # nothing due sooner: the interval
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
    ctl.step(ctx)
    assert (len(kube.applied), kube.annotated) == writes and len(kube.events) == 1
    assert record(kube, "job-train") == rec

    # the window opens: Ready, an Event; Kueue admits it
    clock[0] = T0 + 4 * H
    ctl.step(ctx)
    assert kube._wl("job-train")["status"]["admissionChecks"][0]["state"] == "Ready"
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]
    kube._wl("job-train")["status"]["conditions"].append(cond("Admitted", T0 + 4 * H))
    clock[0] = T0 + 5 * H
    ctl.step(ctx)
    rec = record(kube, "job-train")
    assert rec["phase"] == "Running" and rec["usage"]["runSeconds"] == 3600.0
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]      # admitted: Ready still, no Event
    assert get(ctx.extras["metrics"], "greenml_object_phase", **lab, phase="Running") == 1.0
    assert get(ctx.extras["metrics"], "greenml_energy_joules", **lab) > 0
    # it finishes: the record keeps the last plan; no Event for Kueue's own ending
    kube._wl("job-train")["status"]["conditions"].append(cond("Finished", T0 + 6 * H))
    clock[0] = T0 + 7 * H
    ctl.step(ctx)
    rec = record(kube, "job-train")
    assert rec["phase"] == "Finished" and rec["usage"]["runSeconds"] == 7200.0 and "plan" in rec
    assert [e[2] for e in kube.events] == ["Planned", "RunNow"]
    # the Workload is deleted: its series go
    kube.workloads.clear()
    ctl.step(ctx)
    assert get(ctx.extras["metrics"], "greenml_object_phase", **lab, phase="Finished") is None
    assert ctx.extras["kueue_workloads"] == set()


def test_an_owner_the_operator_may_not_read_fails_open_with_a_warning():
    kube = FakeKube([workload("jobset-trainer", ("jobset.x-k8s.io/v1alpha2", "JobSet", "trainer"))], {})
    kube.forbidden.add("jobsets")
    ctx = context(kube, [T0 + H])
    ctl.step(ctx)
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
    ctl.step(ctx)
    assert kube._wl("job-train")["status"]["admissionChecks"][0]["state"] == "Ready"
    assert kube.events == [("job-train", "Warning", "DeadlineForced")]
    assert record(kube, "job-train")["reason"] == "DeadlineForced"
