"""InferenceBudget handlers: thin. Decisions come from greenml.services.inferencebudget.

Each tick: read signals (intensity now + forecast to the period end from the same
source chain the planner uses; load from `spec.loadQuery` — its current value and two
weeks of history, forecast by greenml.planning.loadforecast, the current value held flat while
the history is short — or, without one, the replicas the Deployment's owner (or its HPA)
asked for, before greenml's throttle, taken as what the load needs), decide, apply the
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
from greenml.controllers.loop import NEVER, Patch, post_event, reconcile_object, watch_event
from greenml.controllers.operator import metrics_of
from greenml.controllers.trainingjob import condition, merge_conditions, reject
from greenml.services.board import grid_origin
from greenml.services import inferencebudget as svc
from greenml.services.trainingjob import InvalidSpec
from greenml.signals.base import SignalError
from greenml.signals.chain import describe
from greenml.timeutil import format_time

log = logging.getLogger("greenml.inferencebudget")
RESOURCE = ("greenml.io", "v1alpha1", "inferencebudgets")
API_VERSION = "greenml.io/v1alpha1"
KIND = "InferenceBudget"


@kopf.on.event(*RESOURCE)
async def on_budget(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    meta = body.get("metadata", {})
    if type == "DELETED":
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        ctx.store.pop(KIND, ns, name)
        ctx.loop.forget((KIND, ns, name))
        ctx.extras.get("applied", {}).pop((ns, name), None)
        metrics_of(ctx).forget(ns, name, KIND)
        return
    watch_event(ctx, KIND, body)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers")
async def on_hpa(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """HPAs by (namespace, HPA name) → target Deployment; an HPA appearing, going or
    retargeted wakes the budgets of its Deployment (the cap moves to it, or back to replicas)."""
    ctx: Context = memo.ctx
    meta = body.get("metadata", {})
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    hpas = ctx.store.kind("HPA")
    old = (hpas.get((ns, name)) or {}).get("target")
    ref = (body.get("spec") or {}).get("scaleTargetRef") or {}
    target = ref.get("name") if ref.get("kind") == "Deployment" else None
    if type == "DELETED" or not target:
        hpas.pop((ns, name), None)
    else:
        hpas[(ns, name)] = {"metadata": {"namespace": ns, "name": name}, "target": target}
    if type == "DELETED" or old != target:
        for t in {old, target} - {None}:
            for bns, bname in ctx.store.keys(KIND):
                b = ctx.store.get(KIND, bns, bname) or {}
                if bns == ns and ((b.get("spec") or {}).get("targetRef") or {}).get("name") == t:
                    ctx.loop.wake((KIND, bns, bname))


def hpa_for(ctx: Context, ns: str, target: str) -> str | None:
    """The HPA (by name, the first in name order) that scales the Deployment."""
    names = sorted(n for (hns, n), h in ctx.store.kind("HPA").items() if hns == ns and h.get("target") == target)
    return names[0] if names else None


def read_signals(ctx: Context, zone: str, spec, model, deployment: Mapping[str, Any], status: Mapping[str, Any] | None,
                 now: datetime, end: datetime, step: timedelta, owner: svc.OwnerReplicas | None = None) -> svc.Signals:
    """``owner``: the replicas the load is assumed from without a loadQuery (svc.owner_replicas
    of the Deployment and ``status``, without an HPA, unless given)."""
    n = max(1, int(-(-(end - now).total_seconds() // step.total_seconds())))
    degraded, estimate = None, False
    try:
        series = ctx.board.source.forecast(zone, now, end - now)
        estimate = series.estimate
        forecast = series.resample(now, step, n)
        current_ci = float(forecast[0])
        source = f"{series.source}{' (estimate)' if series.estimate else ''}"
        info = describe(series)
        # the failing link's reason (as TrainingJobs report it), or a fallback of another kind (a
        # marginal signal replaced by an average one): never silent. (A forecast shorter than the
        # period is the rule for a budget — a day or a month — not a degradation.)
        degraded = (info.degraded_reason if info.degraded_reason != "ShortForecast" else None) \
            or ("KindChanged" if info.kind_changed else None)
        if info.fallback:
            source += f" via the {info.link} link after: " + "; ".join(f"{l}: {r}" for l, r in info.fallback)
        if info.kind_changed:
            source += f" ({info.kind} standing in for the provider's {info.provider_kind} signal)"
    except SignalError as exc:
        failed = getattr(exc, "failures", None) or []
        # the provider's reason, not the last link's (the embedded profile's UnknownZone)
        forecast, current_ci, source = None, None, f"none: {exc}"
        degraded = failed[0]["reason"] if failed else exc.reason
    # the owner's replicas, not the Deployment's (greenml's throttle lowers those)
    assumed, assumed_from = svc.assumed_load(model, owner or svc.owner_replicas(model, status, deployment))
    current, history = read_load(ctx, spec.load_query, now, step)
    load = svc.load_signals(model, now, step, n, assumed, current, history, assumed_from)
    return svc.Signals(current_ci, forecast, load.now, load.forecast, source, load.source,
                       degraded or load.degraded_reason, estimate, load.error)


def read_load(ctx: Context, query: str | None, now: datetime, step: timedelta):
    """``spec.loadQuery`` read from Prometheus: the instant value and the last
    ``LOAD_HISTORY`` as a range query (reused for ``LOAD_HISTORY_TTL`` per query), each a
    value or the SignalError it raised; both None without a query or a Prometheus URL.
    What they mean is svc.load_signals's."""
    if not query or not ctx.settings.prometheus_url:
        return None, None
    from greenml.signals.promql import Prometheus

    prom = Prometheus(ctx.settings.prometheus_url)
    try:
        current = svc.instant_load(prom.instant(query, now))
    except SignalError as exc:
        return exc, None
    hstep = svc.load_history_step(step)
    cache = ctx.extras.setdefault("load_history", {})
    fetched_at, history = cache.get((query, hstep), (None, None))
    if fetched_at is None or not timedelta(0) <= now - fetched_at < svc.LOAD_HISTORY_TTL:
        start = grid_origin(now - svc.LOAD_HISTORY, hstep)
        n = int((now - start) / hstep) + 1
        try:
            rows = prom.range(query, start, start + hstep * (n - 1), hstep)
            history = (start, hstep, svc.range_load(rows, start, hstep, n))
        except SignalError as exc:
            return current, exc
        for key in [k for k, (t, _) in cache.items() if not timedelta(0) <= now - t < svc.LOAD_HISTORY_TTL]:
            del cache[key]   # queries no budget asked for lately (deleted, edited) go
        cache[(query, hstep)] = (now, history)
    return current, history


async def reconcile(ctx: Context, body: Mapping[str, Any], status: Mapping[str, Any], patch: Patch) -> datetime | None:
    """One budget: decide, apply the variant (and an HPA's cap), fill ``patch.status``;
    returns the next wake-up: the next planning step, the end of the dwell time or of the
    period, whichever comes first."""
    now = ctx.clock()
    meta = body.get("metadata", {})
    ns, name, generation = meta.get("namespace"), meta.get("name"), meta.get("generation")
    status = dict(status or {})
    try:
        spec, model = svc.parse_spec(body)
    except InvalidSpec as err:
        reject(body, status, patch, err, now, generation)
        return NEVER
    target = spec.target_ref.name
    deployment = await asyncio.to_thread(ctx.kube.get, "apps/v1", "deployments", ns, target)
    if deployment is None:
        msg = f"target Deployment {ns}/{target} not found; retrying"
        prev = status.get("conditions")
        patch.status["phase"] = "Pending"
        patch.status["conditions"] = merge_conditions(prev, [condition("TargetFound", False, "TargetNotFound", msg, now, generation, prev)])
        if (status.get("lastDecision") or {}).get("reason") != "TargetNotFound":
            patch.status["lastDecision"] = {"time": format_time(now), "action": "none", "reason": "TargetNotFound", "message": msg}
            post_event(body, True, "TargetNotFound", msg)
        return now + TARGET_RETRY

    step = ctx.defaults.step
    previous, _ = svc.state_from_status(status)
    end = (previous.period_end if previous and previous.period_start <= now < previous.period_end
           else svc.core.new_state(model, now).period_end)
    hpa = hpa_for(ctx, ns, target)
    # read now, not from the watch's store: whether its maxReplicas is still greenml's cap
    # must not hinge on a watch event that has not arrived yet
    hpa_obj = (await asyncio.to_thread(ctx.kube.get, "autoscaling/v2", "horizontalpodautoscalers", ns, hpa)
               if hpa else None)
    if hpa_obj is None:
        hpa = None
    owner = svc.owner_replicas(model, status, deployment, hpa_obj)
    signals = await asyncio.to_thread(read_signals, ctx, spec.zone or ctx.cluster_zone(), spec, model, deployment,
                                      status, now, end, step, owner)
    outcome = svc.reconcile(spec, model, status, now, signals, step)
    d = outcome.decision

    body_ = svc.deployment_apply_body(ns, target, spec, d.variant, None if hpa else d.replicas)
    # drift: the fields the operator applied were changed (or the Deployment recreated) by
    # someone else. Compared with what the server stored after the last apply (its
    # normalised form), else with the body itself (after a restart).
    applied, key = ctx.extras.setdefault("applied", {}), (ns, name)
    last = applied.get(key) or {}
    drifted = svc.applied_fields(deployment, body_) != last.get("deployment", body_)
    if outcome.switched or status.get("observedGeneration") != generation or drifted or "deployment" not in last:
        stored = await asyncio.to_thread(ctx.kube.apply, "apps/v1", "deployments", ns, target, body_)
        last = applied[key] = {**last, "deployment": svc.applied_fields(stored, body_) if (stored or {}).get("spec")
                               else body_}
        if drifted and not outcome.switched and status.get("observedGeneration") == generation:
            post_event(body, True, "TargetDrifted", f"Deployment {target} no longer carried variant {d.variant} "
                                                    "(changed or recreated by someone else): re-applied")
    applied_cap = svc.f.integer(status.get("appliedMaxReplicas"), None, minimum=0) if hpa else None
    if hpa:
        # the cap follows the decision, also onto an HPA created after the budget
        cap = d.replicas if d.throttled else model.max_replicas
        # applied with the variant (a switch, a new spec, drift), on an HPA not capped yet
        # (one created after the budget), and whenever its maxReplicas is not the cap. (The
        # load assumed without a loadQuery comes from the owner's figure, owner_replicas,
        # not from the replicas the cap lowers.)
        first = (last.get("hpa") or (None,))[0] != hpa
        live_max = ((hpa_obj or {}).get("spec") or {}).get("maxReplicas")
        if first or outcome.switched or status.get("observedGeneration") != generation or drifted or live_max != cap:
            await asyncio.to_thread(ctx.kube.apply, "autoscaling/v2", "horizontalpodautoscalers", ns, hpa,
                                    svc.hpa_apply_body(ns, hpa, cap))
            applied[key] = {**last, "hpa": (hpa, cap)}
            applied_cap = cap

    prev = status.get("conditions")
    conds = [condition("TargetFound", True, "TargetFound", f"Deployment {target}", now, generation, prev)]
    conds += [condition(t, s, r, m, now, generation, prev) for t, s, r, m in outcome.conditions]
    patch.status["phase"] = outcome.phase
    patch.status["activeVariant"] = d.variant
    patch.status["replicas"] = d.replicas
    patch.status.update(owner.to_status())
    patch.status["appliedMaxReplicas"] = applied_cap
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
    times = [grid_origin(now, step) + step, outcome.state.period_end]
    if outcome.state.switched_at is not None:
        times.append(outcome.state.switched_at + model.min_dwell)
    return min(t for t in times if t > now) if any(t > now for t in times) else now + step


TARGET_RETRY = timedelta(seconds=30)   # the target Deployment is missing: look again


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


async def reconcile_key(ctx: Context, key: tuple[str, str, str]) -> datetime | None:
    return await reconcile_object(ctx, KIND, API_VERSION, "inferencebudgets", key, reconcile)
