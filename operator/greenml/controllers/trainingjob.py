"""TrainingJob handlers: thin. Everything they decide comes from greenml.services.trainingjob.

kopf's watches feed the operator's store (``on.event``: no finalizer); the planning loop
(controllers/loop.py) reconciles a TrainingJob when it is woken — by its spec changing, its
Job changing, its plan changing, or the next moment its decision can change
(``services.trainingjob.next_wakeup``). Status is written only when it changes.

Intent is persisted in status (``progress.runningSince``): the Job is reconciled to
match it, so a restart at any point loses nothing, creates no duplicate (deterministic
name + adoption on 409) and still meets the deadline.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

import kopf

from greenml.controllers.context import Context
from greenml.controllers.loop import NEVER, Patch, compact, lean_meta, post_event, reconcile_object, watch_event
from greenml.controllers.operator import accounting_of, metrics_of
from greenml.metrics import record_board, record_trainingjob
from greenml.kube import ApiError, Conflict, NotFound
from greenml.kube.client import FIELD_MANAGER
from greenml.planning.power import window_caps
from greenml.services.trainingjob import (
    LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY, InvalidSpec, JobObservation, Outcome, Progress, capped_segment, capped_view,
    after_create, capped_usage, carbon_aware, carried_cap, check_feasible, decide, job_manifest, job_name, next_wakeup, owned_by, persist_capped,
    pods_signature, pods_to_cap, power_cap_annotation, resolve,
)
from greenml.timeutil import format_time

log = logging.getLogger("greenml.trainingjob")
RESOURCE = ("greenml.io", "v1alpha1", "trainingjobs")
API_VERSION = "greenml.io/v1alpha1"
KIND = "TrainingJob"
FINAL = ("Succeeded", "Failed")


# ------------------------------------------------------------------ watches → store → loop
@kopf.on.event(*RESOURCE)
async def on_trainingjob(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """Store the latest body; wake it when its spec (generation), deletion or finalizers changed.
    (The watch handlers are coroutines: a sync one costs kopf a thread hop per event — 8 % of
    the operator's CPU in a 5,000-object start-up — and the store and the loop's wake-ups are
    then touched from the event loop only.)"""
    ctx: Context = memo.ctx
    meta = body.get("metadata", {})
    if type == "DELETED":
        forget(ctx, meta.get("namespace", ""), meta.get("name", ""))
        if ctx.loop.is_leading():
            # the garbage collector removes the Job through its ownerReference; deleting it
            # here too covers clusters without one (and saves the GC's delay)
            try:
                await asyncio.to_thread(ctx.kube.delete_job, meta.get("namespace"), job_name(meta.get("name", "")))
            except ApiError as exc:
                log.warning("could not delete Job: %s", exc)
        return
    watch_event(ctx, KIND, body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def on_job(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """Owned Jobs by (namespace, TrainingJob name): a change of one wakes its TrainingJob."""
    ctx: Context = memo.ctx
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or not labels.get(LABEL_OWNER):
        return   # the emulator ignores label selectors: filter here too
    ns, owner = meta.get("namespace") or "", labels[LABEL_OWNER]
    jobs = ctx.store.kind("Job")
    old = jobs.get((ns, owner))
    if type == "DELETED":
        if old is not None and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
            jobs.pop((ns, owner), None)
    else:
        jobs[(ns, owner)] = lean_job(body)
    if old is None or type == "DELETED" or _job_view(old) != _job_view(jobs.get((ns, owner)) or {}):
        ctx.loop.wake((KIND, ns, owner))


def lean_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What of an owned Job the store keeps: metadata, status, and of the spec all but the pod
    template's spec (a decision reads ``suspend`` and the template's cap annotation; the pod
    spec, a copy of the TrainingJob's, is never read back)."""
    spec = dict(job.get("spec") or {})
    template = spec.get("template")
    if isinstance(template, Mapping):
        spec["template"] = {"metadata": dict(template.get("metadata") or {})}
    return compact({"metadata": lean_meta(job.get("metadata") or {}), "spec": spec, "status": job.get("status") or {}})


def _job_view(job: Mapping[str, Any]) -> tuple:
    """What of a Job a decision reads: what ``decide`` observes of it and its pod counts (the
    power caps' ``pods_signature``). The Job controller's own bookkeeping (a ``Suspended``
    condition, its timestamps) wakes nothing — at 5,000 that was 2,900 reconciles that wrote
    nothing, 3 minutes after start-up. Unset and zero counts are the same (the controller
    writes ``ready: 0`` on a suspended Job), and pods cannot run while it is suspended."""
    obs = JobObservation.from_job(job)
    if obs.suspended:
        obs = replace(obs, pods_running=None)
    return (job.get("metadata", {}).get("uid"), obs, tuple(c or 0 for c in pods_signature(job, 0)[1:]))


def _observed(ctx: Context, namespace: str, name: str) -> Mapping[str, Any] | None:
    return ctx.store.kind("Job").get((namespace, name))


def forget(ctx: Context, ns: str, name: str) -> None:
    """The TrainingJob is gone: its board entry, memories and metrics go too (its Job is
    removed by the garbage collector through the ownerReference)."""
    key = (ns, name)
    ctx.store.pop(KIND, ns, name)
    ctx.loop.forget((KIND, ns, name))
    ctx.board.forget(key)
    ctx.extras.get("measured", {}).pop(key, None)
    ctx.extras.get(CAPS, {}).pop(key, None)
    metrics_of(ctx).forget(ns, name, KIND)


# ------------------------------------------------------------------ status helpers
def condition_reason(text: str) -> str:
    """A reason the API server accepts (CamelCase, `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`)."""
    words = re.split(r"[^A-Za-z0-9_,:]+", text or "")
    out = "".join(w[:1].upper() + w[1:] for w in words if w).lstrip("0123456789_,:").rstrip(",:")
    return out[:1024] or "Unknown"


def condition(type_: str, status: bool, reason: str, message: str, now: datetime, generation: int | None,
              previous: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    reason = condition_reason(reason)
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    st = "True" if status else "False"
    changed = old is None or old.get("status") != st
    return {"type": type_, "status": st, "reason": reason, "message": message[:32000],
            "lastTransitionTime": format_time(now) if changed else old.get("lastTransitionTime", format_time(now)),
            "observedGeneration": generation}


def merge_conditions(previous: list[Mapping[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_type = {c.get("type"): dict(c) for c in previous or []}
    for c in new:
        by_type[c["type"]] = c
    return list(by_type.values())


# ------------------------------------------------------------------ invalid specs
def reject(body: Mapping[str, Any], status: Mapping[str, Any], patch: Patch, err: InvalidSpec,
           now: datetime, generation: int | None) -> None:
    message = f"invalid spec: {err.field}: {err.message}"
    conds = merge_conditions(status.get("conditions"), [
        condition("InvalidSpec", True, "InvalidSpec", message, now, generation, status.get("conditions")),
        condition("Ready", False, "InvalidSpec", message, now, generation, status.get("conditions")),
    ])
    already = (status.get("lastDecision") or {}).get("message") == message
    patch.status["phase"] = "Failed"
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = generation
    patch.status["lastDecision"] = {"time": format_time(now), "action": "reject", "reason": "InvalidSpec", "message": message}
    if not already:
        post_event(body, True, "InvalidSpec", message)


class JobNameTaken(Exception):
    """A Job with the TrainingJob's Job name exists and is not owned by it."""


def name_conflict(body: Mapping[str, Any], status: Mapping[str, Any], patch: Patch, job: str,
                  now: datetime, generation: int | None) -> None:
    """Not final: the other Job may be on its way out (e.g. awaiting garbage collection);
    every tick looks again, and the condition clears once the name is free."""
    msg = f"a Job named {job} exists and is not owned by this TrainingJob; waiting for it to go"
    prev = status.get("conditions")
    patch.status["phase"] = "Pending"
    patch.status["conditions"] = merge_conditions(prev, [
        condition("JobNameConflict", True, "JobNameConflict", msg, now, generation, prev),
        condition("Ready", False, "JobNameConflict", msg, now, generation, prev)])
    if (status.get("lastDecision") or {}).get("reason") != "JobNameConflict":
        patch.status["lastDecision"] = {"time": format_time(now), "action": "none", "reason": "JobNameConflict",
                                        "message": msg}
        post_event(body, True, "JobNameConflict", msg)


# ------------------------------------------------------------------ reconcile
async def reconcile(ctx: Context, body: Mapping[str, Any], status: Mapping[str, Any], patch: Patch) -> datetime | None:
    """One TrainingJob: decide, bring the Job in line, fill ``patch.status``; returns the
    next wake-up (None: only the safety net; NEVER: only an event)."""
    now = ctx.clock()
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    status = dict(status or {})
    if status.get("phase") in FINAL and status.get("observedGeneration") == generation:
        return NEVER
    ns, name = meta.get("namespace"), meta.get("name")
    try:
        req = resolve(body, ctx.defaults_now())
    except InvalidSpec as err:
        ctx.board.forget((ns, name))
        reject(body, status, patch, err, now, generation)
        return NEVER
    progress = Progress.from_status(status)
    job = _observed(ctx, ns, name)
    if job is None and status.get("jobName"):
        # the watch can lag a Job created a moment ago: ask the API before creating again
        job = await asyncio.to_thread(ctx.kube.get_job, ns, job_name(name))
    if job is not None and not owned_by(job, req):
        name_conflict(body, status, patch, job_name(name), now, generation)
        return now + NAME_CONFLICT_RETRY
    if job is None and not status.get("jobName"):
        try:
            check_feasible(req, now, ctx.defaults)
        except InvalidSpec as err:
            ctx.board.forget((ns, name))
            reject(body, status, patch, err, now, generation)
            return NEVER
    observed = JobObservation.from_job(job)
    # our persisted intent says whether the job runs; the Job is brought in line with it
    intended = replace(observed, suspended=progress.running_since is None) if observed.exists else observed
    # carbon-aware power caps: the open run segment counts at the speed of the cap it runs under
    # (and minRunDuration from the run's start, not from the last change of cap)
    ran, run_start, pods = (await asyncio.to_thread(segment_cap, ctx, req, progress, job)
                            if carbon_aware(req) and progress.running_since is not None else (None, None, None))
    speed = req.cap.level(ran).speed if carbon_aware(req) else 1.0
    view = capped_view(progress, speed, now, run_start)

    windows, plan, failure = None, None, None
    if not (observed.succeeded or observed.failed):
        ctx.board.observe(req, view, running=progress.running_since is not None)
        plan, failure = await asyncio.to_thread(ctx.board.plan_for, req.key, now)
        windows = list(plan.windows) if plan else None
    else:
        ctx.board.forget(req.key)
    outcome = decide(req, view, intended, windows, now, ctx.defaults, plan_reason=plan.reason if plan else None)
    outcome = persist_capped(req, progress, view, outcome, speed, now)
    if carbon_aware(req):
        outcome = await asyncio.to_thread(publish_cap, ctx, req, progress, outcome, observed, job,
                                          (ran, run_start, pods), speed, now)

    try:
        await asyncio.to_thread(apply, ctx, req, body, outcome, observed, job, now)
    except JobNameTaken:
        name_conflict(body, status, patch, job_name(name), now, generation)
        return now + NAME_CONFLICT_RETRY
    if outcome.action == "create":
        outcome = after_create(req, progress, view, outcome, windows, plan.reason if plan else None, speed, now,
                               ctx.defaults)

    signal = ctx.board.signals.get(req.zone)
    measured = await asyncio.to_thread(measure, ctx, req, outcome, now) if outcome.progress.runs else None
    write_status(body, status, patch, req, outcome, plan, failure, now, generation,
                 intensity=signal.now if signal else None, measured=measured,
                 signal_info=signal.info if signal else None, cap_watts=ran)
    record_board(metrics_of(ctx), ctx.board)
    record_trainingjob(metrics_of(ctx), req, patch.status, plan, accounting_of(ctx))
    for other in ctx.board.take_changed():          # a replan moved other jobs' plans: tell them
        if other != req.key:
            ctx.loop.wake((KIND, *other))
    if outcome.phase in FINAL:
        ctx.board.forget(req.key)
        return NEVER
    return next_wakeup(req, outcome, windows, now, ctx.defaults)


NAME_CONFLICT_RETRY = timedelta(seconds=30)   # another Job holds the name: look again



def measure(ctx: Context, req, outcome: Outcome, now: datetime) -> tuple[float, str] | None:
    """Measured energy (kWh, source) of the Job's pods since the TrainingJob was created, from
    Prometheus (DCGM energy counter, DCGM power, Kepler — greenml.signals.energy), at most every
    `measure_interval` per object and once more when it finishes; None without Prometheus or when
    nothing matched (the power model then stands, and status says so)."""
    if not ctx.settings.prometheus_url:
        return None
    cache = ctx.extras.setdefault("measured", {})
    last = cache.get(req.key)
    if last is not None and now - last[0] < ctx.settings.duration("measure_interval") and outcome.phase not in FINAL:
        return last[1]
    from greenml.signals.base import SignalError
    from greenml.signals.energy import EnergyMeter

    meter = ctx.extras.get("meter") or ctx.extras.setdefault("meter", EnergyMeter(ctx.settings.prometheus_url))
    try:
        reading = meter.energy_joules(req.namespace, f"{re.escape(job_name(req.name))}-.*", req.created, now)
    except (SignalError, ValueError) as exc:
        log.warning("energy measurement failed for %s/%s: %s", req.namespace, req.name, exc)
        return last[1] if last else None
    value = None if reading.source == "model" else (reading.value / 3.6e6, reading.source)
    cache[req.key] = (now, value)
    return value


# ------------------------------------------------------------------ GPU power caps (docs/power-caps.md)
CAPS = "power_caps"      # ctx.extras: (namespace, name) → PublishedCap of a running carbon-aware job


@dataclass(frozen=True)
class PublishedCap:
    """The cap published on a running job's pods (None: none), and ``pods_signature`` of its
    Job then. Kept in memory only (status has no field for it): after a restart the pods'
    own annotations say what was published, and the cap is published again."""

    watts: float | None
    pods: tuple
    since: datetime | None       # the run segment it was published for (progress.runningSince)
    run_start: datetime | None   # when the run began: a change of cap rebases the segment, not the run


def _whole(t: datetime | None) -> datetime | None:
    return t.replace(microsecond=0) if t is not None else None


def _list_pods(ctx: Context, req) -> list[dict[str, Any]] | None:
    try:
        return ctx.kube.list_pods(req.namespace, f"job-name={job_name(req.name)}")
    except ApiError as exc:
        log.warning("could not list the pods of %s/%s: %s", req.namespace, job_name(req.name), exc)
        return None


def segment_cap(ctx: Context, req, progress: Progress,
                job: Mapping[str, Any] | None) -> tuple[float | None, datetime | None, list | None]:
    """The cap the job's open run segment runs under and when its run began — as published for
    it; else (a restart, a segment another replica opened) what its pods (else its pod
    template) carry, the run taken to begin with the segment — and the pods when they had to
    be listed for it."""
    last = ctx.extras.get(CAPS, {}).get(req.key)
    if last is not None and _whole(last.since) == _whole(progress.running_since):   # status keeps seconds
        return last.watts, last.run_start, None
    pods = _list_pods(ctx, req)
    return carried_cap(pods or [], job_name(req.name), job), progress.running_since, pods


def publish_cap(ctx: Context, req, before: Progress, outcome: Outcome, observed: JobObservation,
                job: Mapping[str, Any] | None, segment: tuple, speed: float, now: datetime) -> Outcome:
    """While a carbon-aware job runs, the cap of now (``PlanBoard.cap_for``) on each of its
    pods (the pod template of a running Job cannot change): merge-patched where a pod carries
    another, when the cap changed since it was last published, the Job may have new pods, or
    after a restart. A run segment whose cap changes is rebased (counted at its old cap's
    speed up to now). A failed write is logged and tried again next time, never an error of
    the job. ``segment``: ``segment_cap``'s answer. Returns the outcome, with the rebased
    progress."""
    ran, run_start, pods = segment
    caps = ctx.extras.setdefault(CAPS, {})
    prog = outcome.progress
    if prog.running_since is None or not observed.exists or outcome.phase in FINAL:
        caps.pop(req.key, None)
        return outcome
    want = ctx.board.cap_for(req.key, now, forced=outcome.reason == "DeadlineForced")
    # a change of cap rebases the segment, on the second, as status keeps it
    outcome, run_start = capped_segment(before, outcome, ran, run_start, want, speed, _whole(now))
    prog = outcome.progress
    published = PublishedCap(want, pods_signature(job, prog.runs), prog.running_since, run_start)
    if caps.get(req.key) == published:
        return outcome
    unpublished = replace(published, pods=("unpublished",))   # the segment runs at it; the pods get it next time
    pods = pods if pods is not None else _list_pods(ctx, req)
    if pods is None:
        caps[req.key] = unpublished
        return outcome
    name = job_name(req.name)
    try:
        for pod in pods_to_cap(pods, name, want):
            try:
                ctx.kube.annotate_pod(req.namespace, pod, power_cap_annotation(want), field_manager=FIELD_MANAGER)
            except NotFound:
                continue
            log.info("GPU power cap %s on pod %s/%s (TrainingJob %s)", f"{want:g} W" if want is not None else "removed",
                     req.namespace, pod, req.name)
    except ApiError as exc:
        log.warning("could not publish the GPU power cap on the pods of %s/%s: %s", req.namespace, name, exc)
        caps[req.key] = unpublished
        return outcome
    caps[req.key] = published
    return outcome


def apply(ctx: Context, req, body: Mapping[str, Any], outcome: Outcome, observed: JobObservation,
          job: Mapping[str, Any] | None, now: datetime | None = None) -> None:
    """Bring the Job in line with the decision (idempotent). A Job is created with the GPU
    power cap of now on its pod template (for the node agent; docs/power-caps.md)."""
    kube = ctx.kube
    name = job_name(req.name)
    if outcome.action == "create":
        cap = (ctx.board.cap_for(req.key, now or ctx.clock(), forced=outcome.reason == "DeadlineForced")
               if req.cap is not None else None)
        manifest = job_manifest(req, body["spec"]["template"], power_cap_watts=cap)
        try:
            created = kube.create_job(manifest)
            if created.get("metadata"):                  # the store holds it until the watch does
                ctx.store.kind("Job")[req.key] = lean_job(created)
        except Conflict:
            existing = kube.get_job(req.namespace, name)
            if existing is None or not owned_by(existing, req):
                raise JobNameTaken(name) from None
        return
    if not observed.exists or observed.succeeded or observed.failed:
        return
    want_suspended = outcome.progress.running_since is None
    if observed.suspended != want_suspended:
        kube.set_job_suspended(req.namespace, name, want_suspended)


def write_status(body, status, patch: Patch, req, outcome: Outcome, plan, failure, now: datetime,
                 generation: int | None, intensity: float | None = None,
                 measured: tuple[float, str] | None = None, signal_info: Any = None,
                 cap_watts: float | None = None) -> None:
    """``intensity`` (g/kWh, the planner's current slot): usage.grams accrues the energy used since
    the last status at it (IT energy; PUE and embodied are added by accounting/metrics/report).
    ``cap_watts``: the cap a carbon-aware job's open run segment ran under (``segment_cap``):
    its energy counts at that cap's draw (``services.trainingjob.capped_usage``)."""
    prev = status.get("conditions")
    conds = [condition("InvalidSpec", False, "Valid", "spec accepted", now, generation, prev)]
    if plan is not None:
        src = f"{plan.source}{' (estimate)' if plan.estimate else ''}"
        conds.append(condition("Planned", True, plan.reason, f"planned on the {src} forecast", now, generation, prev))
        patch.status["plan"] = {
            "windows": [{"start": format_time(s), "end": format_time(e), **({"capWatts": c} if c is not None else {})}
                        for (s, e), c in zip(plan.windows, window_caps(req.cap, plan.windows, plan.caps))],
            "plannedStart": format_time(plan.planned_start) if plan.planned_start else None,
            "latestStart": format_time(outcome.latest_start),
            "expectedGrams": round(plan.expected_grams, 3),
            "runNowGrams": round(plan.run_now_grams, 3),
            "savingsPercent": plan.savings_percent,
            "forecastSource": src,
            "computedAt": format_time(plan.computed_at),
        }
        if plan.fallback:
            tried = "; ".join(f"{link}: {reason}" for link, reason in plan.fallback)
            conds.append(condition("SignalsDegraded", True, plan.fallback[0][1],
                                   f"forecast served by the {plan.link} link ({src}) after: {tried}",
                                   now, generation, prev))
        elif any(c.get("type") == "SignalsDegraded" for c in prev or []):
            conds.append(condition("SignalsDegraded", False, "ProviderServing",
                                   f"forecast served by the {plan.link} link ({src})", now, generation, prev))
        if signal_info is not None:
            # the chain's own account (signals.chain.SignalInfo): a short provider forecast
            # continued by other links degrades too, and a fallback of another kind (a
            # marginal signal replaced by an average profile) is never silent
            for type_, on, reason, msg in signal_info.conditions():
                if type_ == "SignalsDegraded" and on and not plan.fallback:
                    conds.append(condition(type_, True, reason, msg, now, generation, prev))
                elif type_ == "SignalKindChanged" and (on or any(c.get("type") == type_ for c in prev or [])):
                    conds.append(condition(type_, on, reason, msg, now, generation, prev))
        # capacity verdicts of the planner (planning.capacity): said at once, never a silent miss
        for type_, on, reason, msg in (
                ("Unplaceable", plan.unplaceable, "ExceedsCapacity",
                 f"needs {req.gpus} GPUs, more than the cluster's capacity: it cannot run until the cluster grows"),
                ("DeadlineAtRisk", plan.at_risk and not plan.unplaceable, "CapacityConflict",
                 f"no schedule within the GPU capacity meets its deadline {format_time(req.deadline)} "
                 "together with the work already admitted")):
            was = any(c.get("type") == type_ and c.get("status") == "True" for c in prev or [])
            if on or any(c.get("type") == type_ for c in prev or []):
                conds.append(condition(type_, on, reason if on else "Fits", msg if on else "fits the capacity",
                                       now, generation, prev))
            if on and not was:
                post_event(body, True, type_, msg)
        if req.budget_grams is not None and plan.expected_grams > req.budget_grams:
            conds.append(condition("OverBudget", True, "OverBudget",
                                   f"expected {plan.expected_grams:.0f} g exceeds budgetGrams {req.budget_grams:.0f} g",
                                   now, generation, prev))
    if failure is not None:
        conds.append(condition("ForecastUnavailable", True, failure.reason,
                               f"no forecast for zone {failure.zone}: {failure.message}; the job starts by its "
                               f"latest safe start {format_time(outcome.latest_start)}", now, generation, prev))
    elif any(c.get("type") == "ForecastUnavailable" for c in prev or []):
        conds.append(condition("ForecastUnavailable", False, "ForecastAvailable", "forecast available", now, generation, prev))
    if any(c.get("type") == "JobNameConflict" and c.get("status") == "True" for c in prev or []):
        conds.append(condition("JobNameConflict", False, "JobNameFree", f"the Job {job_name(req.name)} is ours",
                               now, generation, prev))
    ready = outcome.phase not in ("Failed",)
    conds.append(condition("Ready", ready, outcome.reason, outcome.message, now, generation, prev))
    if outcome.reason == "DeadlineForced":
        conds.append(condition("DeadlineForced", True, "DeadlineForced", outcome.message, now, generation, prev))

    run_s = outcome.progress.total(now)
    used = status.get("usage") or {}
    counted = wall = None
    if measured:
        kwh = round(measured[0], 6)
    elif carbon_aware(req):
        # each stretch at the draw of the cap it ran under (``segment_cap``'s, for the work since the last status)
        energy, counted, wall = capped_usage(req, outcome.progress, now, used, cap_watts)
        kwh = round(energy, 6)
    else:
        kwh = round(run_s * req.watts / 3.6e6, 6)     # a static cap: watts and run time are already the capped ones
    source = f"prometheus ({measured[1]})" if measured else f"power-model ({req.power_source})"
    grams = float(used.get("grams") or 0.0)
    if used.get("source") not in (None, source) and intensity is not None:
        grams = kwh * intensity          # the energy source changed: re-base on the new figure
    elif intensity is not None:
        # a run closed a moment before the last status (whole-second completionTime) takes its sliver back
        grams = max(0.0, grams + (kwh - float(used.get("energyKwh") or 0.0)) * intensity)
    patch.status["phase"] = outcome.phase
    patch.status["jobName"] = job_name(req.name)
    patch.status["zone"] = req.zone
    patch.status["deadline"] = format_time(req.deadline)
    patch.status["progress"] = outcome.progress.to_status()
    patch.status["usage"] = {"energyKwh": kwh, "grams": round(grams, 3), "source": source,
                             **({"countedRunSeconds": round(counted, 3), "wallSeconds": round(wall, 3)}
                                if counted is not None else {})}
    patch.status["conditions"] = merge_conditions(prev, conds)
    patch.status["observedGeneration"] = generation
    last = status.get("lastDecision") or {}
    if outcome.changes_job or outcome.phase != status.get("phase") or last.get("reason") != outcome.reason:
        patch.status["lastDecision"] = {"time": format_time(now), "action": outcome.action,
                                        "reason": outcome.reason, "message": outcome.said}
        warning = outcome.phase == "Failed" or outcome.reason in ("DeadlineForced", "ForecastUnavailable")
        post_event(body, warning, outcome.reason if outcome.action == "none" else outcome.action.capitalize(),
                   outcome.said)


# ------------------------------------------------------------------ the loop's handler
async def reconcile_key(ctx: Context, key: tuple[str, str, str]) -> datetime | None:
    return await reconcile_object(ctx, KIND, API_VERSION, "trainingjobs", key, reconcile,
                                  volatile={"plan": "computedAt"})
