"""InferenceBudget handlers: thin. Decisions come from greenml.services.inferencebudget.

Each tick: read signals (intensity now + forecast to the period end from the same
source chain the planner uses; load from `spec.loadQuery` or, without one, the
Deployment's current replicas taken as what the load needs), decide, apply the
variant by server-side apply under the `greenml-operator` field manager (only the
fields the variant patch names), and throttle through an HPA's maxReplicas when one
targets the Deployment (never fighting it over replicas).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Mapping

import kopf
import numpy as np

from greenml.controllers.context import Context
from greenml.controllers.operator import metrics_of
from greenml.controllers.trainingjob import (
    TICK, condition, forget_object, merge_conditions, object_key, observed_reconcile, post_event, reject,
)
from greenml.kube import ApiError, Conflict, Transient
from greenml.services import inferencebudget as svc
from greenml.services.trainingjob import InvalidSpec
from greenml.signals.base import SignalError
from greenml.timeutil import format_time

log = logging.getLogger("greenml.inferencebudget")
RESOURCE = ("greenml.io", "v1alpha1", "inferencebudgets")


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")
def greenml_hpas(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """HPAs by (namespace, target Deployment name) → HPA name."""
    ref = (body.get("spec") or {}).get("scaleTargetRef") or {}
    if ref.get("kind") != "Deployment" or not ref.get("name"):
        return {}
    meta = body.get("metadata", {})
    return {(meta.get("namespace"), ref["name"]): meta.get("name")}


def read_signals(ctx: Context, zone: str, spec, model, deployment: Mapping[str, Any], active: str | None,
                 now: datetime, end: datetime, step: timedelta) -> svc.Signals:
    n = max(1, int(-(-(end - now).total_seconds() // step.total_seconds())))
    degraded = None
    try:
        series = ctx.board.source.forecast(zone, now, end - now)
        forecast = series.resample(now, step, n)
        current = float(forecast[0])
        source = f"{series.source}{' (estimate)' if series.estimate else ''}"
        link = series.meta.get("link") if isinstance(series.meta, dict) else None
        if link and link not in ("provider", "primary"):
            failed = series.meta.get("fallback") or []
            # the failing link's reason (as TrainingJobs report it), and who served after what
            degraded = failed[0]["reason"] if failed else f"Fallback:{link}"
            if failed:
                source += f" via the {link} link after: " + "; ".join(f"{f['link']}: {f['reason']}" for f in failed)
    except SignalError as exc:
        failed = getattr(exc, "failures", None) or []
        # the provider's reason, not the last link's (the embedded profile's UnknownZone)
        forecast, current, source = None, None, f"none: {exc}"
        degraded = failed[0]["reason"] if failed else exc.reason
    replicas_now = int((deployment.get("spec") or {}).get("replicas") or model.min_replicas)
    load, load_source = None, "assumed: current replicas at full capacity (no spec.loadQuery)"
    if spec.load_query and ctx.settings.prometheus_url:
        try:
            from greenml.signals.promql import Prometheus

            rows = Prometheus(ctx.settings.prometheus_url).instant(spec.load_query)
            load = sum(float(r["value"][1]) for r in rows) if rows else 0.0
            load_source = "prometheus"
        except (SignalError, KeyError, ValueError, IndexError) as exc:
            degraded = degraded or getattr(exc, "reason", "LoadQueryFailed")
    if load is None:
        idx = model.index(active) if active else 0
        load = replicas_now * model.variants[idx if idx is not None else 0].capacity_rps
    return svc.Signals(current, forecast, load, np.full(n, load), source, load_source, degraded)


async def reconcile(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, memo: kopf.Memo,
                    greenml_hpas: kopf.Index, **_: Any) -> None:
    ctx: Context = memo.ctx
    now = ctx.clock()
    meta = body.get("metadata", {})
    ns, name, generation = meta.get("namespace"), meta.get("name"), meta.get("generation")
    status = dict(status or {})
    try:
        spec, model = svc.parse_spec(body)
    except InvalidSpec as err:
        reject(body, status, patch, err, now, generation)
        return
    target = spec.target_ref.name
    try:
        deployment = await asyncio.to_thread(ctx.kube.get, "apps/v1", "deployments", ns, target)
    except ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=30) from None
    if deployment is None:
        msg = f"target Deployment {ns}/{target} not found; retrying"
        prev = status.get("conditions")
        patch.status["phase"] = "Pending"
        patch.status["conditions"] = merge_conditions(prev, [condition("TargetFound", False, "TargetNotFound", msg, now, generation, prev)])
        if (status.get("lastDecision") or {}).get("reason") != "TargetNotFound":
            patch.status["lastDecision"] = {"time": format_time(now), "action": "none", "reason": "TargetNotFound", "message": msg}
            post_event(body, True, "TargetNotFound", msg)
        return

    step = ctx.defaults.step
    previous, _ = svc.state_from_status(status)
    end = (previous.period_end if previous and previous.period_start <= now < previous.period_end
           else svc.core.new_state(model, now).period_end)
    signals = await asyncio.to_thread(read_signals, ctx, spec.zone or ctx.cluster_zone(), spec, model, deployment,
                                      status.get("activeVariant"), now, end, step)
    outcome = svc.reconcile(spec, model, status, now, signals, step)
    d = outcome.decision

    hpa = None
    for item in greenml_hpas.get((ns, target), []):
        hpa = item
    body_ = svc.deployment_apply_body(ns, target, spec, d.variant, None if hpa else d.replicas)
    # drift: the fields the operator applied were changed (or the Deployment recreated) by
    # someone else. Compared with what the server stored after the last apply (its
    # normalised form), else with the body itself (after a restart).
    applied, key = ctx.extras.setdefault("applied", {}), object_key("InferenceBudget", body)
    drifted = svc.applied_fields(deployment, body_) != applied.get(key, body_)
    try:
        if outcome.switched or status.get("observedGeneration") != generation or drifted:
            stored = await asyncio.to_thread(ctx.kube.apply, "apps/v1", "deployments", ns, target, body_)
            applied[key] = svc.applied_fields(stored, body_) if (stored or {}).get("spec") else body_
            if hpa:
                cap = d.replicas if d.throttled else model.max_replicas
                await asyncio.to_thread(ctx.kube.apply, "autoscaling/v2", "horizontalpodautoscalers", ns, hpa,
                                        svc.hpa_apply_body(ns, hpa, cap))
            if drifted and not outcome.switched and status.get("observedGeneration") == generation:
                post_event(body, True, "TargetDrifted", f"Deployment {target} no longer carried variant {d.variant} "
                                                        "(changed or recreated by someone else): re-applied")
    except (Transient, Conflict) as exc:   # a conflict is resolved by trying again on fresh state
        raise kopf.TemporaryError(str(exc), delay=10) from None
    except ApiError as exc:
        raise kopf.TemporaryError(f"{exc} (will retry)", delay=60) from None

    prev = status.get("conditions")
    conds = [condition("TargetFound", True, "TargetFound", f"Deployment {target}", now, generation, prev)]
    conds += [condition(t, s, r, m, now, generation, prev) for t, s, r, m in outcome.conditions]
    patch.status["phase"] = outcome.phase
    patch.status["activeVariant"] = d.variant
    patch.status["replicas"] = d.replicas
    patch.status["switchedAt"] = format_time(outcome.state.switched_at) if outcome.state.switched_at else None
    patch.status["spend"] = outcome.spend_status(model, "power-model")
    patch.status["carbonPrice"] = None if not np.isfinite(d.carbon_price) else round(float(d.carbon_price), 9)
    patch.status["conditions"] = merge_conditions(prev, conds)
    patch.status["observedGeneration"] = generation
    record_budget(ctx, ns, name, model, outcome)
    last = status.get("lastDecision") or {}
    if outcome.switched or last.get("reason") != d.reason:
        patch.status["lastDecision"] = {"time": format_time(now), "action": "switch" if outcome.switched else "none",
                                        "reason": d.reason, "message": d.message}
        if outcome.switched:
            post_event(body, d.reason not in ("WithinBudget", "Dwell"), "Switch",
                       f"{status.get('activeVariant') or '-'} → {d.variant} ×{d.replicas}: {d.message}")


def record_budget(ctx: Context, ns: str, name: str, model, outcome: svc.BudgetOutcome) -> None:
    s, d = outcome.state, outcome.decision
    m = metrics_of(ctx)
    m.budget(ns, name,
             grams={"spent": s.grams_spent, "limit": model.carbon_grams, "projected": d.projected_grams,
                    "remaining": None if model.carbon_grams is None else model.carbon_grams - s.grams_spent},
             joules={"spent": s.kwh_spent * 3.6e6, "projected": d.projected_kwh * 3.6e6,
                     "limit": None if model.energy_kwh is None else model.energy_kwh * 3.6e6,
                     "remaining": None if model.energy_kwh is None else (model.energy_kwh - s.kwh_spent) * 3.6e6})
    m.active_variant(ns, name, d.variant)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_change(**kwargs: Any) -> None:
    await observed_reconcile(kwargs, "InferenceBudget", reconcile)


@kopf.timer(*RESOURCE, interval=TICK, initial_delay=TICK)
async def on_tick(**kwargs: Any) -> None:
    await observed_reconcile(kwargs, "InferenceBudget", reconcile)


@kopf.on.delete(*RESOURCE, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata", {})
    metrics_of(memo.ctx).forget(meta.get("namespace", ""), meta.get("name", ""), "InferenceBudget")
    forget_object(memo.ctx, "InferenceBudget", body)
