"""Kueue AdmissionCheck ``greenml.io/carbon-window``: a Kueue Workload planned like a TrainingJob.

Kueue admits a Workload once its quota is reserved and every AdmissionCheck on its
ClusterQueue is ``Ready``. This module is the check's logic, pure: it knows nothing of kopf
or the Kubernetes client, and ``now`` is always a parameter. The controller reads the
objects, calls these functions and writes what they return (``greenml.kube.Kube``):

- ``our_checks(admission_checks)``                 names of the AdmissionChecks this controller owns
- ``admission_check_status(now, problem, current)``  their ``Active`` condition (a ClusterQueue with an
                                                   inactive check admits nothing); None: unchanged
- ``queue_checks(cluster_queue)``                  the checks a ClusterQueue names
- ``cluster_queue_of(workload, local_queues)``     which ClusterQueue (so which board) a Workload is on
- ``owner_of(workload)``                           (apiVersion, plural, name) of its owner, for its annotations
- ``CheckDefaults.from_mapping(configmap_data)``   the check's defaults (ConfigMap named like the check)
- ``queue_capacity(cluster_queue)``                nominal ``nvidia.com/gpu`` quota: the board's capacity
- ``flavor_zone(flavor, zone_label, zone_map)``    grid zone from a ResourceFlavor's node labels
- ``observe(workload, check, now)``                what the check needs from a Workload's status
- ``resolve(workload, owner, defaults, ...)``      the same ``JobRequirements`` a TrainingJob resolves to
- ``decide_check(req, obs, plan, now, defaults)``  Pending / Ready / Retry, with the message
- ``check_patch(workload, check, decision, obs, now)``  the server-side-apply body for the Workload status
- ``evaluate(workload, owner, check, board, now, defaults, ...)``  all of the above for one Workload

Run time is Kueue's own: ``status.accumulatedPastExecutionTimeSeconds`` plus the time since
the ``Admitted`` condition turned True, so a restart of greenml (or of Kueue) loses nothing.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from greenml.services import status_fields as f
from greenml.services.board import PlanBoard, PlannedJob
from greenml.services.trainingjob import (
    GPU_RESOURCE,
    Defaults,
    InvalidSpec,
    JobObservation,
    JobRequirements,
    Progress,
    decide,
    latest_start,
    resolve as resolve_trainingjob,
)
from greenml.timeutil import format_time

CONTROLLER_NAME = "greenml.io/carbon-window"
KUEUE_API = "kueue.x-k8s.io/v1beta2"

PENDING, READY, RETRY, REJECTED = "Pending", "Ready", "Retry", "Rejected"

# Annotations on the Workload's owner (the batch/v1 Job, JobSet, RayJob, …) — or on the
# Workload itself — that say how the workload may be shifted. Values as in a TrainingJob's
# spec.schedule / spec.carbon / spec.power.
ANN_DEADLINE = "greenml.io/deadline"                        # RFC 3339, absolute
ANN_MAX_DELAY = "greenml.io/max-delay"                      # duration: deadline = creation + maxDelay + duration
ANN_ESTIMATED_DURATION = "greenml.io/estimated-duration"    # duration (default: maximumExecutionTimeSeconds)
ANN_INTERRUPTIBLE = "greenml.io/interruptible"              # "true" | "false"
ANN_MIN_RUN = "greenml.io/min-run-duration"                 # duration, interruptible workloads
ANN_ZONE = "greenml.io/zone"                                # grid zone; default from the ResourceFlavor
ANN_GPU_MODEL = "greenml.io/gpu-model"                      # e.g. H100 (watts from the GPU table)
ANN_WATTS_PER_GPU = "greenml.io/watts-per-gpu"
ANN_MAX_INTENSITY = "greenml.io/max-intensity"              # gCO2e/kWh

#: ConfigMap key (the check's defaults) → annotation that overrides it
DEFAULT_KEYS = {
    "maxDelay": ANN_MAX_DELAY, "estimatedDuration": ANN_ESTIMATED_DURATION, "interruptible": ANN_INTERRUPTIBLE,
    "minRunDuration": ANN_MIN_RUN, "zone": ANN_ZONE, "gpuModel": ANN_GPU_MODEL, "wattsPerGpu": ANN_WATTS_PER_GPU,
    "maxIntensity": ANN_MAX_INTENSITY,
}

#: a TrainingJob spec field (as resolve() reports it) → the annotation a user sets
_ANNOTATION_OF = {
    "spec.schedule": f"{ANN_DEADLINE} / {ANN_MAX_DELAY}",
    "spec.schedule.deadline": ANN_DEADLINE, "spec.schedule.maxDelay": ANN_MAX_DELAY,
    "spec.schedule.estimatedDuration": ANN_ESTIMATED_DURATION, "spec.schedule.interruptible": ANN_INTERRUPTIBLE,
    "spec.schedule.minRunDuration": ANN_MIN_RUN, "spec.carbon.zone": ANN_ZONE,
    "spec.carbon.maxIntensity": ANN_MAX_INTENSITY, "spec.power.gpuModel": ANN_GPU_MODEL,
    "spec.power.wattsPerGpu": ANN_WATTS_PER_GPU,
}

#: resolve() needs a Job template; a Workload's pod sets are not one (a JobSet's or a
#: RayJob's need not be Job-shaped), so GPUs are passed explicitly and this stands in
_TEMPLATE = {"spec": {"template": {"spec": {"containers": [{"name": "workload", "image": "kueue-workload"}]}}}}


# ---------------------------------------------------------------- the check itself

def our_checks(admission_checks: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the AdmissionChecks whose ``spec.controllerName`` is greenml's."""
    return frozenset(f.mapping(ac.get("metadata")).get("name") for ac in admission_checks
                     if f.mapping(ac.get("spec")).get("controllerName") == CONTROLLER_NAME)


def admission_check_status(now: datetime, problem: str | None = None,
                           current: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The AdmissionCheck's status: ``Active`` True (Kueue keeps a ClusterQueue with an inactive
    check inactive), or False with ``problem`` (e.g. unreadable defaults). With the ``current``
    AdmissionCheck: None when its condition already says so (nothing to write)."""
    status, reason = ("False", "BadParameters") if problem else ("True", "Active")
    message = problem or "greenml plans workloads into low-carbon windows before their deadlines"
    old = next((c for c in f.mapping(f.mapping(current).get("status")).get("conditions") or []
                if f.mapping(c).get("type") == "Active"), None)
    if old and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return None
    return {"conditions": [{"type": "Active", "status": status, "reason": reason, "message": message,
                            "lastTransitionTime": format_time(now)}]}


@dataclass(frozen=True)
class CheckDefaults:
    """Defaults for workloads whose owner does not say: the data of a ConfigMap named like the
    AdmissionCheck, in the operator's namespace (keys: ``DEFAULT_KEYS``; Kueue's
    ``spec.parameters`` needs an API group, so a core ConfigMap cannot be named there)."""

    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "CheckDefaults":
        unknown = sorted(set(data or {}) - set(DEFAULT_KEYS))
        if unknown:
            raise InvalidSpec("data", f"unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_KEYS)})")
        return cls(tuple(sorted((k, str(v)) for k, v in (data or {}).items() if v is not None and str(v) != "")))

    def annotations(self) -> dict[str, str]:
        return {DEFAULT_KEYS[k]: v for k, v in self.values}


# ---------------------------------------------------------------- the ClusterQueue and flavors

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(raw: Any) -> float:
    """A Kubernetes resource quantity ("4", "500m", "2k") as a number; ValueError otherwise."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    m = _QUANTITY.match(str(raw).strip())
    if not m:
        raise ValueError(f"not a quantity: {raw!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def queue_capacity(cluster_queue: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int | None:
    """The ClusterQueue's nominal quota of ``resource`` over all its flavors (None: it has no
    quota for it). Borrowing from a cohort is not counted: it is not guaranteed."""
    total, seen = 0.0, False
    for group in f.mapping(cluster_queue.get("spec")).get("resourceGroups") or []:
        for flavor in f.mapping(group).get("flavors") or []:
            for res in f.mapping(flavor).get("resources") or []:
                if f.mapping(res).get("name") == resource:
                    try:
                        total += quantity(res.get("nominalQuota", 0))
                        seen = True
                    except ValueError:
                        continue
    return int(math.floor(total + 1e-9)) if seen else None


def queue_checks(cluster_queue: Mapping[str, Any]) -> frozenset[str]:
    """The AdmissionChecks a ClusterQueue names (v1beta1 ``admissionChecks`` and, in both
    versions, ``admissionChecksStrategy``)."""
    spec = f.mapping(cluster_queue.get("spec"))
    names = {str(n) for n in spec.get("admissionChecks") or []}
    names |= {str(f.mapping(r).get("name")) for r in f.mapping(spec.get("admissionChecksStrategy")).get("admissionChecks") or []}
    return frozenset(names)


def flavor_zone(flavor: Mapping[str, Any] | None, zone_label: str, zone_map: Mapping[str, str]) -> str | None:
    """The grid zone of a ResourceFlavor: its ``nodeLabels[zone_label]`` through ``zone_map``
    (the operator's settings.zone_map, as for nodes), or None when it says nothing."""
    region = f.mapping(f.mapping(f.mapping(flavor).get("spec")).get("nodeLabels")).get(zone_label)
    return zone_map.get(region) if region else None


def assigned_flavors(workload: Mapping[str, Any], resource: str = GPU_RESOURCE) -> tuple[str, ...]:
    """Flavors Kueue assigned to ``resource`` when it reserved quota (empty before that)."""
    admission = f.mapping(f.mapping(workload.get("status")).get("admission"))
    out = []
    for psa in admission.get("podSetAssignments") or []:
        name = f.mapping(f.mapping(psa).get("flavors")).get(resource)
        if name and name not in out:
            out.append(str(name))
    return tuple(out)


def cluster_queue_of(workload: Mapping[str, Any],
                     local_queues: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> str | None:
    """The ClusterQueue of a Workload: the one that reserved its quota, else the one its
    LocalQueue (``spec.queueName``; ``local_queues`` keyed by (namespace, name)) points at —
    an evicted Workload has no admission but stays planned on its queue's board."""
    admitted = f.mapping(f.mapping(workload.get("status")).get("admission")).get("clusterQueue")
    if admitted or local_queues is None:
        return admitted or None
    ns = f.mapping(workload.get("metadata")).get("namespace")
    lq = local_queues.get((ns, f.mapping(workload.get("spec")).get("queueName")))
    return f.mapping(f.mapping(lq).get("spec")).get("clusterQueue") or None


# ---------------------------------------------------------------- the Workload

def workload_gpus(workload: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """GPUs of all pod sets: count × the containers' requests (limits where no request)."""
    total = 0
    for i, ps in enumerate(f.mapping(workload.get("spec")).get("podSets") or []):
        ps = f.mapping(ps)
        pod = f.mapping(f.mapping(ps.get("template")).get("spec"))
        per_pod = 0
        for c in pod.get("containers") or []:
            res = f.mapping(f.mapping(c).get("resources"))
            raw = f.mapping(res.get("requests")).get(resource, f.mapping(res.get("limits")).get(resource, 0))
            try:
                per_pod += int(quantity(raw))
            except ValueError:
                raise InvalidSpec(f"spec.podSets[{i}]", f"{resource} must be a whole number, got {raw!r}") from None
        try:
            count = int(ps.get("count", 1))
        except (TypeError, ValueError):
            raise InvalidSpec(f"spec.podSets[{i}].count", f"not an integer: {ps.get('count')!r}") from None
        total += per_pod * max(0, count)
    return total


#: plural resource names of the kinds Kueue integrates whose plural is not kind + "s"
_PLURALS = {"LeaderWorkerSet": "leaderworkersets", "AppWrapper": "appwrappers"}


def owner_of(workload: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(apiVersion, plural, name) of the Workload's controlling owner (the Job, JobSet, RayJob …),
    ready for ``Kube.get(api_version, plural, namespace, name)``."""
    refs = f.mapping(workload.get("metadata")).get("ownerReferences") or []
    for ref in sorted(refs, key=lambda r: not f.mapping(r).get("controller")):
        ref = f.mapping(ref)
        if ref.get("apiVersion") and ref.get("kind") and ref.get("name"):
            kind = str(ref["kind"])
            return str(ref["apiVersion"]), _PLURALS.get(kind, kind.lower() + "s"), str(ref["name"])
    return None


def resolve(workload: Mapping[str, Any], owner: Mapping[str, Any] | None, defaults: Defaults,
            check_defaults: CheckDefaults = CheckDefaults(), *, zone: str | None = None) -> JobRequirements:
    """The request the board plans, exactly as for a TrainingJob (``trainingjob.resolve``).

    Annotations of the owner win over the Workload's, which win over ``check_defaults``;
    ``zone`` (from the assigned ResourceFlavor, ``flavor_zone``) is used when none names one,
    then the operator's default zone. ``greenml.io/max-delay`` counts from the owner's
    creation. Without an estimated duration, Kueue's ``spec.maximumExecutionTimeSeconds``
    stands in (an upper bound: deadlines stay safe). Raises InvalidSpec naming the annotation.
    """
    wl_meta = f.mapping(workload.get("metadata"))
    own_meta = f.mapping(f.mapping(owner).get("metadata"))
    ann = {**check_defaults.annotations(), **(wl_meta.get("annotations") or {}), **(own_meta.get("annotations") or {})}
    if ANN_ZONE not in ann and zone:
        ann[ANN_ZONE] = zone
    if ANN_ESTIMATED_DURATION not in ann:
        max_s = f.mapping(workload.get("spec")).get("maximumExecutionTimeSeconds")
        if isinstance(max_s, int) and not isinstance(max_s, bool) and max_s > 0:
            ann[ANN_ESTIMATED_DURATION] = f"{max_s}s"
        else:
            raise InvalidSpec(ANN_ESTIMATED_DURATION, "not set (nor the check's estimatedDuration, nor Kueue's "
                              "maximumExecutionTimeSeconds): the planner needs how long the workload runs")
    schedule: dict[str, Any] = {"estimatedDuration": ann[ANN_ESTIMATED_DURATION]}
    if ANN_DEADLINE in ann and ANN_MAX_DELAY in {**(wl_meta.get("annotations") or {}), **(own_meta.get("annotations") or {})}:
        raise InvalidSpec(f"{ANN_DEADLINE} / {ANN_MAX_DELAY}", "set one of them, not both")
    if ANN_DEADLINE in ann:
        schedule["deadline"] = ann[ANN_DEADLINE]
    elif ANN_MAX_DELAY in ann:
        schedule["maxDelay"] = ann[ANN_MAX_DELAY]
    if ANN_INTERRUPTIBLE in ann:
        raw = str(ann[ANN_INTERRUPTIBLE]).strip().lower()
        if raw not in ("true", "false"):
            raise InvalidSpec(ANN_INTERRUPTIBLE, f"must be \"true\" or \"false\", got {ann[ANN_INTERRUPTIBLE]!r}")
        schedule["interruptible"] = raw == "true"
    if ANN_MIN_RUN in ann:
        schedule["minRunDuration"] = ann[ANN_MIN_RUN]
    power: dict[str, Any] = {"gpus": workload_gpus(workload)}
    if ANN_WATTS_PER_GPU in ann:
        power["wattsPerGpu"] = ann[ANN_WATTS_PER_GPU]
    if ANN_GPU_MODEL in ann:
        power["gpuModel"] = ann[ANN_GPU_MODEL]
    carbon: dict[str, Any] = {}
    if ANN_ZONE in ann:
        carbon["zone"] = ann[ANN_ZONE]
    if ANN_MAX_INTENSITY in ann:
        carbon["maxIntensity"] = ann[ANN_MAX_INTENSITY]
    body = {"metadata": {"namespace": wl_meta.get("namespace"), "name": wl_meta.get("name"), "uid": wl_meta.get("uid"),
                         "creationTimestamp": own_meta.get("creationTimestamp") or wl_meta.get("creationTimestamp")},
            "spec": {"template": _TEMPLATE, "schedule": schedule, "power": power, "carbon": carbon}}
    try:
        return resolve_trainingjob(body, defaults)
    except InvalidSpec as exc:
        field = exc.field.split(" ")[0]
        raise InvalidSpec(_ANNOTATION_OF.get(field, field), exc.message) from None


@dataclass(frozen=True)
class WorkloadObservation:
    """What the check needs from a Workload's status."""

    check_state: str | None          # our check's state (None: Kueue has not added it yet)
    check_message: str
    check_since: datetime | None     # its lastTransitionTime
    requeue_after: int | None        # its requeueAfterSeconds
    quota_reserved: bool
    admitted: bool
    finished: bool
    progress: Progress               # Kueue's accumulated admitted time (+ the current admission)
    evicted: bool = False            # the Evicted condition is True (Kueue evicts it, or did)

    @property
    def running(self) -> bool:
        return self.admitted and not self.finished


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if f.mapping(c).get("type") == kind and c.get("status") == "True":
            return c
    return None


def observe(workload: Mapping[str, Any], check: str) -> WorkloadObservation:
    st = f.mapping(workload.get("status"))
    mine = next((f.mapping(c) for c in st.get("admissionChecks") or [] if f.mapping(c).get("name") == check), None)
    admitted = _condition(st, "Admitted")
    finished = _condition(st, "Finished")
    past = f.number(st.get("accumulatedPastExecutionTimeSeconds"), 0.0, minimum=0.0)
    since = f.time((admitted or {}).get("lastTransitionTime")) if admitted else None
    ended = f.time((finished or {}).get("lastTransitionTime")) if finished else None
    if since is not None and ended is not None:       # the last run ended when it finished
        past, since = past + max(0.0, (ended - since).total_seconds()), None
    requeue = (mine or {}).get("requeueAfterSeconds")
    return WorkloadObservation(
        check_state=(mine or {}).get("state"), check_message=str((mine or {}).get("message") or ""),
        check_since=f.time((mine or {}).get("lastTransitionTime")),
        requeue_after=requeue if isinstance(requeue, int) and not isinstance(requeue, bool) else None,
        quota_reserved=_condition(st, "QuotaReserved") is not None,
        admitted=admitted is not None,
        finished=finished is not None,
        progress=Progress(run_seconds=past, running_since=since, runs=1 if (past or since) else 0),
        evicted=_condition(st, "Evicted") is not None,
    )


# ---------------------------------------------------------------- deciding

@dataclass(frozen=True)
class CheckDecision:
    state: str                        # Pending | Ready | Retry
    reason: str                       # CamelCase, also the Event reason
    message: str
    requeue_after: int | None = None  # Retry: seconds until Kueue may admit it again (its next window)
    next_check: datetime | None = None  # when the decision may change (requeue the workload then)

    def differs(self, obs: WorkloadObservation) -> bool:
        """Does the Workload's status need writing? Not while our ``Retry`` stands and Kueue
        still holds the quota (the eviction runs): Kueue evicts with strict
        (resourceVersion-checked) patches, which each rewrite would make fail again; an
        admitted workload's Retry is replaced only by a decision to run on (Ready). Once the
        quota is released a Retry still standing is replaced (Kueue resets it to Pending on
        eviction, but a later patch of its own, from a stale copy, was seen to put Retry back —
        and a Workload with a Retry check is not requeued) — nor written while Kueue evicts it
        (``Evicted`` with the quota still held: it reset the check to Pending itself, and a
        Retry written again then was seen to keep it from being requeued at all). Nor is an admitted workload's
        ``Ready`` rewritten for its message alone (e.g. "admitted without waiting longer …" →
        "a running non-interruptible job is never stopped"): Kueue has acted on it, the record
        says the reason, and each write is one more conflict for Kueue's patches."""
        if obs.admitted and obs.check_state == READY == self.state:
            return False
        if self.state == RETRY and obs.evicted and obs.quota_reserved:
            return False      # evicting: Kueue reset the check itself; a Retry now keeps it from requeueing
        if obs.check_state == RETRY:
            if obs.admitted:
                return self.state == READY
            if obs.quota_reserved:
                return False
        return obs.check_state != self.state or obs.check_message != self.message


def _next_start(windows, now: datetime) -> datetime | None:
    return min((s for s, _ in windows if s > now), default=None)


def decide_check(req: JobRequirements, obs: WorkloadObservation, plan: PlannedJob | None, now: datetime,
                 defaults: Defaults, *, forecast_problem: str | None = None) -> CheckDecision:
    """The check's state, from the same decision a TrainingJob's Job gets (``trainingjob.decide``):

    - the plan's window is open (or the latest safe start is reached: deadlines fail open, also
      without a forecast) → ``Ready``; a running non-interruptible workload stays Ready;
    - otherwise ``Pending``, its message naming the planned start;
    - an admitted interruptible workload whose window closed (past its minimum run) → ``Retry``
      (``requeue_after``: the seconds to its next window, said in the message, not written —
      see ``check_patch``): Kueue evicts it, releases the quota, resets the check to Pending
      and requeues it; the check holds it Pending until that window;
    - a finished workload keeps the state it has.
    """
    if obs.finished:
        return CheckDecision(obs.check_state or READY, "Finished", obs.check_message or "workload finished")
    windows = plan.windows if plan is not None else None
    job = JobObservation(exists=True, suspended=not obs.admitted)
    out = decide(req, obs.progress, job, windows, now, defaults, plan_reason=plan.reason if plan else None)
    latest = out.latest_start
    nxt = _next_start(windows or (), now)
    savings = f" ({plan.savings_percent:g} % less carbon than now)" if plan is not None and plan.run_now_grams > 0 else ""
    if out.action in ("start", "resume") or (out.action == "none" and out.phase == "Running"):
        end = next((e for s, e in windows or () if s <= now < e), None)
        msg = out.message.removeprefix("starting: ").removeprefix("resuming: ")
        if out.reason == "DeadlineForced":
            msg = f"admitted without waiting longer: {msg} (deadline {format_time(req.deadline)})"
        elif end is not None:
            # no "% less than now" here: it moves with every slot while the window is open, and
            # each rewrite of the Workload's status is one more conflict for Kueue's own patches
            msg = f"low-carbon window open until {format_time(end)}"
        return CheckDecision(READY, out.reason, msg,
                             next_check=min(end, latest) if (req.interruptible and end) else None)
    if out.action == "pause":
        wait = max(0, math.ceil(((min(nxt, latest) if nxt else latest) - now).total_seconds()))
        when = format_time(nxt) if nxt else f"the latest safe start {format_time(latest)}"
        return CheckDecision(RETRY, "WindowClosed", f"low-carbon window closed after "
                             f"{timedelta(seconds=round(obs.progress.total(now)))} of run time; next window at {when}",
                             requeue_after=min(wait, 2**31 - 1), next_check=min(nxt, latest) if nxt else latest)
    # waiting (never started or paused)
    if windows is None:
        why = forecast_problem or "no forecast"
        msg = f"{why}; admitted at the latest safe start {format_time(latest)} at the latest"
        return CheckDecision(PENDING, "ForecastUnavailable", msg, next_check=latest)
    start = nxt or latest
    return CheckDecision(PENDING, "Planned", f"planned start {format_time(start)}{savings}; "
                         f"deadline {format_time(req.deadline)}", next_check=min(start, latest))


def decide_invalid(exc: InvalidSpec) -> CheckDecision:
    """Annotations the check cannot plan with: fail open (admit now), and say why."""
    return CheckDecision(READY, "InvalidAnnotations", f"not shifted, admitted as is: {exc}")


def check_patch(workload: Mapping[str, Any], check: str, decision: CheckDecision, obs: WorkloadObservation,
                now: datetime) -> dict[str, Any]:
    """The server-side-apply body (``Kube.apply_workload_check``) that sets only this check's
    entry of ``status.admissionChecks`` (a list keyed by name): Kueue's own entries and other
    controllers' stay theirs. The uid makes it fail (409) on a recreated Workload."""
    meta = f.mapping(workload.get("metadata"))
    since = obs.check_since if (obs.check_state == decision.state and obs.check_since) else now
    entry: dict[str, Any] = {"name": check, "state": decision.state, "message": decision.message[:32768],
                             "lastTransitionTime": format_time(since)}
    # no requeueAfterSeconds with Retry: Kueue v0.15 turns it into status.requeueState.requeueAt
    # *before* it evicts, and its Workload controller waits for that backoff to pass before it
    # evicts — the workload would run on through the dirty hours and be evicted only when the
    # next window opens (seen on the real Kueue, e2e/test_kueue_e2e.py). Without it Kueue evicts
    # at once, requeues, and the check holds the workload Pending until its next window.
    return {"apiVersion": KUEUE_API, "kind": "Workload",
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                         **({"uid": meta["uid"]} if meta.get("uid") else {})},
            "status": {"admissionChecks": [entry]}}


# ---------------------------------------------------------------- one Workload, end to end

@dataclass(frozen=True)
class Evaluation:
    """One Workload's turn: what was decided, and the status body to write (None: nothing changed)."""

    decision: CheckDecision
    patch: dict[str, Any] | None
    req: JobRequirements | None = None          # None when its annotations could not be resolved
    plan: PlannedJob | None = None
    invalid: InvalidSpec | None = None          # for a Warning Event
    obs: WorkloadObservation | None = None


def evaluate(workload: Mapping[str, Any], owner: Mapping[str, Any] | None, check: str, board: PlanBoard,
             now: datetime, defaults: Defaults, check_defaults: CheckDefaults = CheckDefaults(), *,
             zone: str | None = None, owner_problem: InvalidSpec | None = None) -> Evaluation:
    """The controller's whole step for one Workload that carries ``check``: observe its status,
    resolve its request, keep it on ``board`` (the board of its ClusterQueue, whose capacity is
    ``queue_capacity``), take its plan, decide, and build the patch when the state changes.
    A finished Workload leaves the board. ``zone``: ``flavor_zone`` of its assigned flavor.
    Nothing is written before Kueue has added the check to the Workload's status (it does so
    for the checks its ClusterQueue names): an entry of ours would only fight its sync.
    ``owner_problem``: the owner could not be read (``owner_read_problem``): its annotations are
    unknown, so the Workload is not shifted — it fails open, as for annotations that do not parse."""
    obs = observe(workload, check)
    meta = f.mapping(workload.get("metadata"))
    key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
    try:
        if owner_problem is not None:
            raise owner_problem
        req = resolve(workload, owner, defaults, check_defaults, zone=zone)
    except InvalidSpec as exc:
        board.forget(key)
        d = decide_invalid(exc)
        write = obs.check_state is not None and d.differs(obs)
        return Evaluation(d, check_patch(workload, check, d, obs, now) if write else None, invalid=exc, obs=obs)
    if obs.finished:
        board.forget(req.key)
        return Evaluation(decide_check(req, obs, None, now, defaults), None, req, obs=obs)
    board.observe(req, obs.progress, obs.running)
    plan, failure = board.plan_for(req.key, now)
    d = decide_check(req, obs, plan, now, defaults, forecast_problem=failure.message if failure else None)
    write = obs.check_state is not None and d.differs(obs)
    return Evaluation(d, check_patch(workload, check, d, obs, now) if write else None, req, plan, obs=obs)


def owner_read_problem(ref: tuple[str, str, str], status: int | None, error: str) -> InvalidSpec:
    """The owner named by ``ref`` (``owner_of``) could not be read (``status``: the HTTP status,
    403 when the operator's role lacks ``get`` on that kind): what ``evaluate`` reports."""
    api, plural, name = ref
    group = api.rpartition("/")[0] or "core"
    hint = (f": grant the operator get on {plural} ({group}); the chart's kueue.ownerResources lists them"
            if status == 403 else "")
    return InvalidSpec(f"owner {plural}/{name}", f"cannot read its annotations ({error}){hint}")


# ---------------------------------------------------------------- the watched Workload: what is kept, what wakes it

#: the parts of a Workload's status the check reads (``observe``, ``assigned_flavors``, ``cluster_queue_of``)
_STATUS_KEYS = ("conditions", "admission", "admissionChecks", "accumulatedPastExecutionTimeSeconds")
#: conditions whose change can change the decision (Kueue's others — PodsReady, Requeued … — cannot)
_DECISION_CONDITIONS = ("QuotaReserved", "Admitted", "Finished", "Evicted")


def lean_workload(workload: Mapping[str, Any], resource: str = GPU_RESOURCE) -> dict[str, Any]:
    """A Workload as the controller keeps it: metadata (less what ``lean_meta`` drops, done by
    the store), ``spec.queueName`` and ``maximumExecutionTimeSeconds``, each pod set's name,
    count and its containers' ``resource`` requests and limits (the rest of the pod template —
    images, commands, env, volumes — is most of a Workload and no decision reads it), and
    the status fields in ``_STATUS_KEYS``."""
    spec = f.mapping(workload.get("spec"))
    pod_sets = []
    for ps in spec.get("podSets") or []:
        ps = f.mapping(ps)
        containers = []
        for c in f.mapping(f.mapping(ps.get("template")).get("spec")).get("containers") or []:
            res = f.mapping(f.mapping(c).get("resources"))
            kept = {k: {resource: res[k][resource]} for k in ("requests", "limits")
                    if resource in f.mapping(res.get(k))}
            containers.append({"resources": kept} if kept else {})
        pod_sets.append({**{k: ps[k] for k in ("name", "count") if k in ps},
                         "template": {"spec": {"containers": containers}}})
    lean_spec: dict[str, Any] = {k: spec[k] for k in ("queueName", "maximumExecutionTimeSeconds") if k in spec}
    lean_spec["podSets"] = pod_sets
    st = f.mapping(workload.get("status"))
    out = {k: workload[k] for k in ("apiVersion", "kind", "metadata") if k in workload}
    return {**out, "spec": lean_spec, "status": {k: st[k] for k in _STATUS_KEYS if k in st}}


def decision_inputs(workload: Mapping[str, Any]) -> tuple:
    """What a change of the Workload must wake the check for: its identity and owner, the
    greenml annotations users set (not the record: that is ours), its queue and pod sets,
    Kueue's admission and reservation, the admission checks' states, run time, and the
    conditions in ``_DECISION_CONDITIONS``. Equal for Kueue's own bookkeeping churn (a
    resourceVersion, a PodsReady or Requeued condition, a condition's message, requeueState,
    resourceRequests) and for the echo of our own writes (the store keeps the written body)."""
    meta, st = f.mapping(workload.get("metadata")), f.mapping(workload.get("status"))
    ann = {k: v for k, v in (meta.get("annotations") or {}).items()
           if k.startswith("greenml.io/") and k != ANN_RECORD}
    conds = sorted((str(c.get("type")), c.get("status"), c.get("lastTransitionTime"))
                   for c in map(f.mapping, st.get("conditions") or []) if c.get("type") in _DECISION_CONDITIONS)
    checks = sorted((str(c.get("name")), c.get("state")) for c in map(f.mapping, st.get("admissionChecks") or []))
    return (meta.get("uid"), bool(meta.get("deletionTimestamp")), repr(meta.get("ownerReferences")), sorted(ann.items()),
            repr(lean_workload(workload)["spec"]),
            repr(st.get("admission")), checks, st.get("accumulatedPastExecutionTimeSeconds"), conds)


# ---------------------------------------------------------------- the record: status and accounting

#: on the Workload: what greenml planned and accounted for it (JSON), the status a TrainingJob
#: keeps in ``status.plan`` / ``status.usage``; read back after a restart and by ``greenml report``
ANN_RECORD = "greenml.io/carbon-window"
#: how often a changed record is written when only its figures moved (usage, run-now grams)
RECORD_INTERVAL = timedelta(minutes=5)


def workload_phase(obs: WorkloadObservation) -> str:
    """Waiting (not admitted: held, or evicted and requeued), Running (admitted), Finished."""
    return "Finished" if obs.finished else "Running" if obs.admitted else "Waiting"


def read_record(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The Workload's record (``ANN_RECORD``); {} when there is none or it does not parse."""
    raw = (f.mapping(workload.get("metadata")).get("annotations") or {}).get(ANN_RECORD)
    try:
        rec = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def plan_record(plan: PlannedJob, latest_start: datetime | None) -> dict[str, Any]:
    return {"plannedStart": format_time(plan.planned_start) if plan.planned_start else None,
            "latestStart": format_time(latest_start) if latest_start else None,
            "expectedGrams": round(plan.expected_grams, 3), "runNowGrams": round(plan.run_now_grams, 3),
            "savingsPercent": plan.savings_percent,
            "forecastSource": f"{plan.source}{' (estimate)' if plan.estimate else ''}"}


def build_record(ev: Evaluation, previous: Mapping[str, Any], now: datetime, defaults: Defaults,
                 intensity: float | None) -> dict[str, Any]:
    """The Workload's record after ``ev``: the check's state and reason, its phase, the request
    (zone, GPUs, watts, deadline), the plan (the last one is kept once it finished), and usage —
    run time as Kueue counts it × the request's watts; grams accrue the energy used since the
    previous record at ``intensity`` (g/kWh, the planner's current slot), as a TrainingJob's
    ``status.usage.grams`` does."""
    d, obs, req = ev.decision, ev.obs, ev.req
    rec: dict[str, Any] = {"state": d.state, "reason": d.reason}
    if obs is not None:
        rec["phase"] = workload_phase(obs)
    if req is None:
        return {**rec, "updatedAt": format_time(now)}
    rec.update(zone=req.zone, gpus=req.gpus, watts=round(req.watts, 3), deadline=format_time(req.deadline))
    if ev.plan is not None:
        rec["plan"] = plan_record(ev.plan, latest_start(req, obs.progress if obs else Progress(), now, defaults))
    elif isinstance(previous.get("plan"), Mapping):
        rec["plan"] = dict(previous["plan"])
    run_s = obs.progress.total(now) if obs is not None else 0.0
    kwh = round(run_s * req.watts / 3.6e6, 6)
    used = f.mapping(previous.get("usage"))
    grams = f.number(used.get("grams"), 0.0, minimum=0.0)
    if intensity is not None:
        grams += max(0.0, kwh - f.number(used.get("energyKwh"), 0.0, minimum=0.0)) * intensity
    rec["usage"] = {"runSeconds": round(run_s, 1), "energyKwh": kwh, "grams": round(grams, 3),
                    "source": f"power-model ({req.power_source})"}
    return {**rec, "updatedAt": format_time(now)}


def record_patch(previous: Mapping[str, Any], record: Mapping[str, Any], now: datetime) -> str | None:
    """The record to write (JSON), or None: written when the state, reason, phase or planned
    start changed, and otherwise at most every ``RECORD_INTERVAL`` while its figures move."""
    def same(*keys: str) -> bool:
        return all(previous.get(k) == record.get(k) for k in keys)

    if not previous:
        return json.dumps(record, sort_keys=True)
    plans = (f.mapping(previous.get("plan")).get("plannedStart"), f.mapping(record.get("plan")).get("plannedStart"))
    if not same("state", "reason", "phase", "zone", "gpus", "watts", "deadline") or plans[0] != plans[1]:
        return json.dumps(record, sort_keys=True)
    drop = ("updatedAt",)
    if {k: v for k, v in previous.items() if k not in drop} == {k: v for k, v in record.items() if k not in drop}:
        return None
    last = f.time(previous.get("updatedAt"))
    return json.dumps(record, sort_keys=True) if last is None or now - last >= RECORD_INTERVAL else None


__all__ = [
    "ANN_DEADLINE", "ANN_ESTIMATED_DURATION", "ANN_INTERRUPTIBLE", "ANN_MAX_DELAY", "CONTROLLER_NAME",
    "CheckDecision", "CheckDefaults", "Evaluation", "PENDING", "READY", "RETRY", "WorkloadObservation",
    "admission_check_status", "assigned_flavors", "check_patch", "cluster_queue_of", "decide_check", "decide_invalid",
    "decision_inputs", "evaluate", "flavor_zone", "lean_workload", "observe", "ANN_RECORD", "build_record", "owner_read_problem", "read_record",
    "record_patch", "workload_phase",
    "our_checks", "owner_of", "queue_capacity", "queue_checks", "resolve", "workload_gpus",
]
