"""TrainingJob handlers: thin. Everything they decide comes from greenml.services.trainingjob.

Intent is persisted in status (``progress.runningSince``): the Job is reconciled to
match it, so a restart at any point loses nothing, creates no duplicate (deterministic
name + adoption on 409) and still meets the deadline.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any, Mapping

import kopf

from greenml.controllers.context import Context
from greenml.controllers.operator import accounting_of, metrics_of
from greenml.metrics import record_board, record_decision, record_trainingjob
from greenml.kube import ApiError, Conflict, Transient
from greenml.services.trainingjob import (
    LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY, InvalidSpec, JobObservation, Outcome, Progress,
    check_feasible, decide, job_manifest, job_name, owned_by, resolve,
)
from greenml.timeutil import format_time

log = logging.getLogger("greenml.trainingjob")
RESOURCE = ("greenml.io", "v1alpha1", "trainingjobs")
FINAL = ("Succeeded", "Failed")


# ------------------------------------------------------------------ Job index
@kopf.index("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
def greenml_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Owned Jobs by (namespace, TrainingJob name): the operator reads these, never GETs per tick."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or not labels.get(LABEL_OWNER):
        return {}   # the emulator ignores label selectors: filter here too
    return {(meta.get("namespace"), labels[LABEL_OWNER]): {"metadata": dict(meta), "spec": dict(body.get("spec") or {}),
                                                             "status": dict(body.get("status") or {})}}


def _observed(index: kopf.Index, namespace: str, name: str) -> Mapping[str, Any] | None:
    store = index.get((namespace, name))
    if not store:
        return None
    for job in store:
        return job
    return None


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


def post_event(body: Mapping[str, Any], warning: bool, reason: str, message: str) -> None:
    kopf.event(body, type="Warning" if warning else "Normal", reason=reason, message=message)


# ------------------------------------------------------------------ invalid specs
def reject(body: Mapping[str, Any], status: Mapping[str, Any], patch: kopf.Patch, err: InvalidSpec,
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


def name_conflict(body: Mapping[str, Any], status: Mapping[str, Any], patch: kopf.Patch, job: str,
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
WRITTEN_TTL = 60.0   # seconds the last written status bridges the watch's lag


def object_key(kind: str, body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body.get("metadata", {})
    return kind, meta.get("namespace") or "", meta.get("name") or ""


async def serialized(kind: str, fn, body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch,
                     memo: kopf.Memo, **kwargs: Any) -> None:
    """One reconcile at a time per object, on the freshest status.

    kopf runs an object's change handlers and its timer concurrently, and hands each the
    status of the body it was triggered by; it writes a handler's status only after the
    handler returns. Two interleaved reconciles would both create the Job, and one started
    on a stale snapshot would decide on old progress and drop conditions written meanwhile
    (a SignalsDegraded that then never cleared). So: a lock per object, and the status this
    operator last wrote laid over the snapshot for as long as the watch may lag behind it
    (only this operator writes status; a peer taking over waits longer than the TTL).
    """
    extras = memo.ctx.extras
    key = object_key(kind, body)
    lock = extras.setdefault("locks", {}).setdefault(key, asyncio.Lock())
    async with lock:
        pending = extras.setdefault("written", {})
        fresh = dict(status or {})
        written = pending.get(key)
        if written is not None:
            if time.monotonic() - written[0] >= WRITTEN_TTL or all(fresh.get(k) == v for k, v in written[1].items()):
                written = None              # the watch caught up (or too old to trust): forget it
                pending.pop(key, None)
            else:
                fresh.update(written[1])
        await fn(body=body, status=fresh, patch=patch, memo=memo, **kwargs)
        # remember only what this write changes (steady-state ticks change little or nothing)
        changed = {k: v for k, v in dict(patch.status).items() if fresh.get(k) != v}
        if changed:
            pending[key] = (time.monotonic(), {**(written[1] if written else {}), **changed})


def forget_object(ctx: Context, kind: str, body: Mapping[str, Any]) -> None:
    """Drop the per-object memories keyed by ``object_key`` (lock, pending status, applied fields)."""
    for table in ("locks", "written", "applied"):
        ctx.extras.get(table, {}).pop(object_key(kind, body), None)


async def _reconcile(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, memo: kopf.Memo,
                     greenml_jobs: kopf.Index, **_: Any) -> None:
    ctx: Context = memo.ctx
    now = ctx.clock()
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    status = dict(status or {})
    if status.get("phase") in FINAL and status.get("observedGeneration") == generation:
        return
    ns, name = meta.get("namespace"), meta.get("name")
    try:
        req = resolve(body, ctx.defaults_now())
    except InvalidSpec as err:
        ctx.board.forget((ns, name))
        reject(body, status, patch, err, now, generation)
        return
    progress = Progress.from_status(status)
    job = _observed(greenml_jobs, ns, name)
    if job is None and (status.get("jobName") or (ns, name) in ctx.extras.get("created", {})):
        # the watch-fed index can lag a Job we just created: ask the API before creating again
        try:
            job = await asyncio.to_thread(ctx.kube.get_job, ns, job_name(name))
        except ApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=10) from None
    if job is not None and not owned_by(job, req):
        name_conflict(body, status, patch, job_name(name), now, generation)
        return
    if job is None and not status.get("jobName"):
        try:
            check_feasible(req, now, ctx.defaults)
        except InvalidSpec as err:
            ctx.board.forget((ns, name))
            reject(body, status, patch, err, now, generation)
            return
    observed = JobObservation.from_job(job)
    # our persisted intent says whether the job runs; the Job is brought in line with it
    intended = replace(observed, suspended=progress.running_since is None) if observed.exists else observed

    windows, plan, failure = None, None, None
    if not (observed.succeeded or observed.failed):
        ctx.board.observe(req, progress, running=progress.running_since is not None)
        plan, failure = await asyncio.to_thread(ctx.board.plan_for, req.key, now)
        windows = list(plan.windows) if plan else None
    else:
        ctx.board.forget(req.key)
    outcome = decide(req, progress, intended, windows, now, ctx.defaults, plan_reason=plan.reason if plan else None)

    try:
        await asyncio.to_thread(apply, ctx, req, body, outcome, observed, job)
    except JobNameTaken:
        name_conflict(body, status, patch, job_name(name), now, generation)
        return
    except Transient as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from None
    except ApiError as exc:
        raise kopf.TemporaryError(f"{exc} (will retry)", delay=60) from None

    signal = ctx.board.signals.get(req.zone)
    measured = await asyncio.to_thread(measure, ctx, req, outcome, now) if outcome.progress.runs else None
    write_status(body, status, patch, req, outcome, plan, failure, now, generation,
                 intensity=signal.now if signal else None, measured=measured)
    record_board(metrics_of(ctx), ctx.board)
    record_trainingjob(metrics_of(ctx), req, patch.status, plan, accounting_of(ctx))
    if outcome.phase in FINAL:
        ctx.board.forget(req.key)


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


def apply(ctx: Context, req, body: Mapping[str, Any], outcome: Outcome, observed: JobObservation,
          job: Mapping[str, Any] | None) -> None:
    """Bring the Job in line with the decision (idempotent)."""
    kube = ctx.kube
    name = job_name(req.name)
    if outcome.action == "create":
        manifest = job_manifest(req, body["spec"]["template"])
        try:
            kube.create_job(manifest)
            ctx.extras.setdefault("created", {})[req.key] = True   # until status/index show it
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


def write_status(body, status, patch: kopf.Patch, req, outcome: Outcome, plan, failure, now: datetime,
                 generation: int | None, intensity: float | None = None,
                 measured: tuple[float, str] | None = None) -> None:
    """``intensity`` (g/kWh, the planner's current slot): usage.grams accrues the energy used since
    the last status at it (IT energy; PUE and embodied are added by accounting/metrics/report)."""
    prev = status.get("conditions")
    conds = [condition("InvalidSpec", False, "Valid", "spec accepted", now, generation, prev)]
    if plan is not None:
        src = f"{plan.source}{' (estimate)' if plan.estimate else ''}"
        conds.append(condition("Planned", True, plan.reason, f"planned on the {src} forecast", now, generation, prev))
        patch.status["plan"] = {
            "windows": [{"start": format_time(s), "end": format_time(e)} for s, e in plan.windows],
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
    kwh = round(measured[0] if measured else run_s * req.watts / 3.6e6, 6)
    source = f"prometheus ({measured[1]})" if measured else f"power-model ({req.power_source})"
    grams = float(used.get("grams") or 0.0)
    if used.get("source") not in (None, source) and intensity is not None:
        grams = kwh * intensity          # the energy source changed: re-base on the new figure
    elif intensity is not None:
        grams += max(0.0, kwh - float(used.get("energyKwh") or 0.0)) * intensity
    patch.status["phase"] = outcome.phase
    patch.status["jobName"] = job_name(req.name)
    patch.status["zone"] = req.zone
    patch.status["deadline"] = format_time(req.deadline)
    patch.status["progress"] = outcome.progress.to_status()
    patch.status["usage"] = {"energyKwh": kwh, "grams": round(grams, 3), "source": source}
    patch.status["conditions"] = merge_conditions(prev, conds)
    patch.status["observedGeneration"] = generation
    last = status.get("lastDecision") or {}
    if outcome.changes_job or outcome.phase != status.get("phase") or last.get("reason") != outcome.reason:
        patch.status["lastDecision"] = {"time": format_time(now), "action": outcome.action,
                                        "reason": outcome.reason, "message": outcome.message}
        warning = outcome.phase == "Failed" or outcome.reason in ("DeadlineForced", "ForecastUnavailable")
        post_event(body, warning, outcome.reason if outcome.action == "none" else outcome.action.capitalize(),
                   outcome.message)


# ------------------------------------------------------------------ registration
def _tick(memo_settings: Any = None) -> float:
    from greenml.settings import load_settings
    try:
        return load_settings().tick_interval
    except Exception:  # settings errors are reported at start-up by `greenml run`
        return 30.0


TICK = _tick()


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_change(**kwargs: Any) -> None:
    await observed_reconcile(kwargs)


@kopf.timer(*RESOURCE, interval=TICK, initial_delay=TICK)
async def on_tick(**kwargs: Any) -> None:
    await observed_reconcile(kwargs)


async def observed_reconcile(kwargs: dict[str, Any], kind: str = "TrainingJob", fn=None) -> None:
    """A kind's reconcile, serialized per object and timed; then its decision and phase
    recorded in the metrics."""
    metrics = metrics_of(kwargs["memo"].ctx)
    with metrics.reconcile_timer(kind):
        await serialized(kind, fn or _reconcile, **kwargs)
    meta = kwargs["body"].get("metadata", {})
    record_decision(metrics, kind, meta.get("namespace", ""), meta.get("name", ""), kwargs["patch"].status)


@kopf.on.delete(*RESOURCE, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Owner references let the garbage collector remove the Job; delete it too in case GC is off."""
    ctx: Context = memo.ctx
    meta = body.get("metadata", {})
    key = (meta.get("namespace"), meta.get("name"))
    ctx.board.forget(key)
    for table in ("created", "measured"):
        ctx.extras.get(table, {}).pop(key, None)
    forget_object(ctx, "TrainingJob", body)
    metrics_of(ctx).forget(meta.get("namespace", ""), meta.get("name", ""), "TrainingJob")
    try:
        await asyncio.to_thread(ctx.kube.delete_job, meta.get("namespace"), job_name(meta.get("name")))
    except ApiError as exc:
        log.warning("could not delete Job: %s", exc)
