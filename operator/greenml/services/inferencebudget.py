"""InferenceBudget service: one reconcile step, pure (no kopf, no Kubernetes client).

The operator's handler and ``greenml simulate inference`` share the decision core
(``greenml.planning.inference.decide``) and its cost model (``step_costs``); this module
adds what the live operator needs around it: the budget state kept in status, spend
accounted for the time since the last reconcile, the signal-loss policy, the
server-side-apply bodies for the target, and the conditions that explain it all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping

import numpy as np
from pydantic import ValidationError

from greenml.api.inferencebudget import InferenceBudgetSpec
from greenml.planning import inference as core
from greenml.planning.loadforecast import LoadForecastError, forecast_load
from greenml.planning.power import CAP_ANNOTATION as POWER_CAP_ANNOTATION
from greenml.services import status_fields as f
from greenml.services.trainingjob import InvalidSpec
from greenml.signals.base import SignalError
from greenml.signals.promql import finite
from greenml.timeutil import ensure_utc, format_duration, format_time


@dataclass(frozen=True)
class Signals:
    """What the operator measured/forecast for this reconcile (None: unavailable)."""

    intensity_now: float | None
    intensity_forecast: np.ndarray | None     # g/kWh per step from now (step 0 = now)
    load_now: float                           # req/s
    load_forecast: np.ndarray                 # req/s per step
    intensity_source: str = "unknown"
    load_source: str = "assumed"
    degraded_reason: str | None = None        # why signals are degraded, if they are
    intensity_estimate: bool = False          # the forecast is the operator's own (or the embedded profile)
    load_error: float | None = None           # the load forecaster's measured relative error


@dataclass(frozen=True)
class BudgetOutcome:
    decision: core.VariantDecision
    state: core.BudgetState
    accounted_until: datetime
    switched: bool
    phase: str
    conditions: list[tuple[str, bool, str, str]] = field(default_factory=list)

    def spend_status(self, model: core.BudgetModel, source: str) -> dict[str, Any]:
        s, d = self.state, self.decision
        out: dict[str, Any] = {
            "accountedUntil": format_time(self.accounted_until), "source": source,
            "periodStart": format_time(s.period_start), "periodEnd": format_time(s.period_end),
            "grams": round(s.grams_spent, 3), "energyKwh": round(s.kwh_spent, 6),
        }
        if model.carbon_grams is not None:
            out["remainingGrams"] = round(model.carbon_grams - s.grams_spent, 3)
            out["projectedGrams"] = round(d.projected_grams, 3)
        if model.energy_kwh is not None:
            out["remainingKwh"] = round(model.energy_kwh - s.kwh_spent, 6)
            out["projectedKwh"] = round(d.projected_kwh, 6)
        return out


def parse_spec(body: Mapping[str, Any]) -> tuple[InferenceBudgetSpec, core.BudgetModel]:
    """Validate (schema-level and what the schema cannot) or raise InvalidSpec naming the field."""
    try:
        spec = InferenceBudgetSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidSpec(".".join(["spec", *[str(p) for p in first["loc"]]]), first["msg"]) from None
    try:
        return spec, core.compile_spec(spec)
    except core.InferenceSpecError as exc:
        raise InvalidSpec("spec", str(exc)) from None


MAX_PERIOD = timedelta(days=31, hours=1)


def state_from_status(status: Mapping[str, Any] | None) -> tuple[core.BudgetState | None, datetime | None]:
    """The budget's state as last written (None without a readable period). Junk in a field
    reads as that field absent (services/status_fields.py), so a corrupted status costs at
    most what it lost, never a stuck object."""
    st = f.mapping(status)
    spend = f.mapping(st.get("spend"))
    start, end = f.time(spend.get("periodStart")), f.time(spend.get("periodEnd"))
    # the longest period is a month (+1 h of DST): anything else is not a period we wrote, and
    # planning to a corrupted far-future end would size arrays by it (found: 9999-12-31 → 6 GiB)
    if start is None or end is None or not timedelta(0) < end - start <= MAX_PERIOD:
        return None, None
    active = st.get("activeVariant") if isinstance(st.get("activeVariant"), str) else None
    state = core.BudgetState(
        period_start=start, period_end=end,
        grams_spent=f.number(spend.get("grams"), 0.0, minimum=0.0),
        kwh_spent=f.number(spend.get("energyKwh"), 0.0, minimum=0.0),
        active_variant=active, replicas=f.integer(st.get("replicas"), None, minimum=0),
        switched_at=f.time(st.get("switchedAt")),
        carbon_price=f.number(st.get("carbonPrice")),
    )
    return state, f.time(spend.get("accountedUntil"))


def spend_since(model: core.BudgetModel, state: core.BudgetState, seconds: float, intensity: float,
                load: float) -> tuple[float, float]:
    """(grams, kWh) of serving the active variant at its replicas for ``seconds`` — the
    same cost model the pacer plans with (``step_costs``)."""
    idx = model.index(state.active_variant)
    if idx is None or seconds <= 0 or not state.replicas:
        return 0.0, 0.0
    c = core.step_costs(model, np.array([intensity]), np.array([load]), np.array([seconds]),
                        replica_cap=int(state.replicas))
    return float(c.grams[0, idx]), float(c.kwh[0, idx])


def reconcile(spec: InferenceBudgetSpec, model: core.BudgetModel, status: Mapping[str, Any] | None,
              now: datetime, signals: Signals, step: timedelta, *,
              max_gap: timedelta = timedelta(minutes=30)) -> BudgetOutcome:
    """One decision: account the spend since the last reconcile, roll the period, decide."""
    previous, accounted_until = state_from_status(status)
    # status holds whole seconds (format_time): charge up to the mark it can hold, or every
    # reconcile would charge the truncated fraction again (~1.7 % at a 30 s tick)
    mark = now.replace(microsecond=0)
    if previous is not None and accounted_until is not None and signals.intensity_now is not None:
        # time the operator was away is accounted at the current rate, capped: beyond
        # max_gap the spend is unknown (measured energy, where configured, covers it)
        seconds = min((mark - accounted_until).total_seconds(), max_gap.total_seconds())
        grams, kwh = spend_since(model, previous, seconds, signals.intensity_now, signals.load_now)
        previous = previous.account(grams, kwh)
    state = core.new_state(model, now, previous)

    if signals.intensity_now is None or signals.intensity_forecast is None:
        if spec.policy.on_signal_loss == "failClosed" and state.active_variant is not None:
            idx = model.index(state.active_variant)
            decision = core.VariantDecision(state.active_variant, int(state.replicas or model.min_replicas),
                                            int(state.replicas or model.min_replicas),
                                            state.carbon_price if state.carbon_price is not None else math.nan,
                                            state.grams_spent, state.kwh_spent, core.SIGNALS_DEGRADED,
                                            f"signals unavailable ({signals.degraded_reason}): failClosed keeps "
                                            f"{model.variants[idx].name if idx is not None else state.active_variant}")
        else:
            decision = core.signal_loss_decision(model, state, signals.load_now, "failCheap")
    else:
        # the own forecasters err more (and more coherently over a day) than a provider's forecast
        config = core.pacing_for(signals.intensity_estimate, signals.load_error)
        decision = core.decide(model, state, signals.intensity_forecast, signals.load_forecast, step, now,
                               signals.intensity_now, signals.load_now, config=config)
    switched = decision.variant != state.active_variant or decision.replicas != state.replicas
    new = state.applied(decision, now)
    # without an intensity nothing was charged: keep the mark, so the time served during the
    # signal loss is charged (at the intensity seen next, up to max_gap) once it returns
    accounted = mark if signals.intensity_now is not None or accounted_until is None else accounted_until
    return BudgetOutcome(decision, new, accounted, switched, _phase(decision), _conditions(model, decision, new, signals))


def _phase(d: core.VariantDecision) -> str:
    return "Active" if d.reason in (core.WITHIN_BUDGET, core.DWELL) else "Degraded"


def _conditions(model: core.BudgetModel, d: core.VariantDecision, s: core.BudgetState,
                signals: Signals) -> list[tuple[str, bool, str, str]]:
    within = ((model.carbon_grams is None or d.projected_grams <= model.carbon_grams * (1 + 1e-9))
              and (model.energy_kwh is None or d.projected_kwh <= model.energy_kwh * (1 + 1e-9)))
    exhausted = ((model.carbon_grams is not None and s.grams_spent >= model.carbon_grams)
                 or (model.energy_kwh is not None and s.kwh_spent >= model.energy_kwh))
    best = max((v for v in model.variants if v.quality >= model.quality_floor), key=lambda v: v.quality)
    out = [
        ("WithinBudget", within, "OnTrack" if within else "ProjectedOverBudget",
         f"projected {d.projected_grams:.1f} g / {d.projected_kwh:.4f} kWh this period"),
        ("Degraded", d.variant != best.name, "LowerQualityVariant" if d.variant != best.name else "BestVariant",
         d.message),
        ("Throttled", d.throttled, "ReplicasCapped" if d.throttled else "NotThrottled",
         f"{d.replicas}/{d.needed_replicas} replicas"),
        ("BudgetExhausted", exhausted, "Exhausted" if exhausted else "Remaining",
         f"spent {s.grams_spent:.1f} g / {s.kwh_spent:.4f} kWh since {format_time(s.period_start)}"),
        ("SignalsDegraded", signals.degraded_reason is not None, signals.degraded_reason or "SignalsOK",
         f"intensity from {signals.intensity_source}; load {signals.load_source}"),
        ("InvalidSpec", False, "Valid", "spec accepted"),
    ]
    return out


# ---------------------------------------------------------------- load: measured, forecast or assumed

LOAD_HISTORY = timedelta(days=14)    # what the operator asks Prometheus for (a range query): two
                                     # weeks give the forecaster its weekday levels, and fit
                                     # Prometheus's default 15-day retention
LOAD_HISTORY_TTL = timedelta(minutes=10)  # a fetched history is reused this long (per query)
MAX_RANGE_POINTS = 10_000            # Prometheus refuses more than 11,000 points per series


_HISTORY_STEPS = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60))


def load_history_step(step: timedelta) -> timedelta:
    """The range query's resolution: the planning step when it divides a day and a week of
    it stays within Prometheus's points limit, else the finest of 1, 2, 5, … 60 minutes
    that is at least the step and does."""
    floor = timedelta(seconds=-(-int(LOAD_HISTORY.total_seconds()) // MAX_RANGE_POINTS))
    if step >= floor and not 86400 % step.total_seconds():
        return step
    return next((s for s in _HISTORY_STEPS if s >= max(step, floor)), _HISTORY_STEPS[-1])


def instant_load(rows: list[dict]) -> float:
    """req/s from an instant query's result: the sum over its series (no series: 0)."""
    try:
        vals = [finite(r["value"][1], "prometheus: spec.loadQuery") for r in rows]
    except (KeyError, IndexError, TypeError):
        raise SignalError("prometheus: malformed loadQuery result", reason="Malformed") from None
    if any(v < 0 for v in vals):
        raise SignalError("prometheus: spec.loadQuery returned a negative rate", reason="Malformed")
    return float(sum(vals))


def range_load(rows: list[dict], start: datetime, step: timedelta, n: int) -> np.ndarray:
    """req/s on the grid ``start + i·step`` (i < n) from a range query's matrix: the sum over
    its series per timestamp; NaN where no series has a usable sample (a gap in the scrape;
    a "NaN", ±Inf or negative sample counts as missing, not as an error, in a history)."""
    total, seen = np.zeros(n), np.zeros(n, dtype=bool)
    t0, s = ensure_utc(start).timestamp(), step.total_seconds()
    for r in rows:
        try:
            pts = np.array(r["values"], dtype=object).reshape(-1, 2)
            ts = pts[:, 0].astype(np.float64)
            vs = np.array([float(v) for v in pts[:, 1]], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise SignalError("prometheus: malformed loadQuery range result", reason="Malformed") from None
        i = np.round((ts - t0) / s).astype(np.int64)
        ok = (i >= 0) & (i < n) & np.isfinite(vs) & (vs >= 0)
        np.add.at(total, i[ok], vs[ok])
        seen[i[ok]] = True
    return np.where(seen, total, np.nan)


@dataclass(frozen=True)
class LoadSignals:
    now: float
    forecast: np.ndarray        # req/s per planning step from now (step 0 = now)
    source: str                 # for the SignalsDegraded condition's message
    degraded_reason: str | None  # a Prometheus failure (None when the load is fine or merely not forecast)
    error: float | None = None   # the forecast's measured relative error (LoadForecast.error)


def load_signals(model: core.BudgetModel, now: datetime, step: timedelta, n: int, assumed: float,
                 current: float | SignalError | None, history: tuple[datetime, timedelta, np.ndarray] | SignalError | None,
                 assumed_from: str = "the current replicas at full capacity") -> LoadSignals:
    """The load the pacer plans with, from what the controller read for ``spec.loadQuery``:
    ``current`` (the instant query's req/s, or its error), ``history`` ((start, step, values)
    of the range query, or its error); None where there is no loadQuery or no Prometheus.

    Forecast (``greenml.planning.loadforecast``, in the budget's time zone) when both
    answered and the history suffices; else the instant value held flat (the reason in
    ``source``); else ``assumed`` (``assumed_from`` says what it is: the owner's replicas at
    full capacity, ``assumed_load``) with the failure as the degraded reason.
    """
    if current is None:
        return LoadSignals(assumed, np.full(n, assumed), f"assumed: {assumed_from} "
                           "(no spec.loadQuery, or no Prometheus configured)", None)
    if isinstance(current, SignalError):
        return LoadSignals(assumed, np.full(n, assumed), f"assumed: {assumed_from} "
                           f"(spec.loadQuery failed: {current})", current.reason or "LoadQueryFailed")
    flat = np.full(n, current)
    if isinstance(history, SignalError):
        return LoadSignals(current, flat, f"prometheus, current value held flat (history query failed: {history})",
                           history.reason or "LoadQueryFailed")
    if history is None:
        return LoadSignals(current, flat, "prometheus, current value held flat (no history)", None)
    start, hstep, values = history
    try:
        fc = forecast_load(values, start, hstep, now, step * n, tz=model.time_zone)
    except LoadForecastError as exc:
        return LoadSignals(current, flat, f"prometheus, current value held flat (no forecast: {exc.reason}: {exc})",
                           None)
    err = "" if fc.error is None else f", {100 * fc.error:.0f} % error a day ahead"
    return LoadSignals(current, fc.on_grid(current, now, step, n),
                       f"prometheus, forecast ({fc.method}) from {format_duration(fc.history)} of history{err}", None,
                       fc.error)


# ---------------------------------------------------------------- the owner's replicas (the assumed load)

@dataclass(frozen=True)
class OwnerReplicas:
    """The replicas the workload's owner asked for — not the ones greenml applied — and
    the variant they are replicas of: without a load signal the pacer assumes they are
    busy (``assumed_load``). Kept in status (``to_status``), so greenml's own throttle, which
    lowers the Deployment's replicas or the HPA's maxReplicas, never lowers the load it
    assumes, across reconciles and restarts."""

    replicas: int
    variant: str | None          # None: the first variant (the owner's own, before any was applied)
    source: str                  # where the figure came from, for the SignalsDegraded message
    hpa_max_replicas: int | None = None   # with an HPA: its maxReplicas as its owner set it

    def to_status(self) -> dict[str, Any]:
        return {"ownerReplicas": self.replicas, "ownerVariant": self.variant,
                "ownerMaxReplicas": self.hpa_max_replicas}


def _variant_of(model: core.BudgetModel, name: Any) -> str | None:
    return name if isinstance(name, str) and model.index(name) is not None else None


def owner_replicas(model: core.BudgetModel, status: Mapping[str, Any] | None, deployment: Mapping[str, Any],
                   hpa: Mapping[str, Any] | None = None) -> OwnerReplicas:
    """What the owner asked for, from the target as read now and what greenml recorded.

    Without an HPA: the Deployment's ``spec.replicas`` while they differ from what greenml
    last applied (``status.replicas``: the first reconcile, or a user changed them); while
    they equal it, the owner's figure remembered in ``status.ownerReplicas``. With an HPA:
    its ``status.desiredReplicas`` when below the live maxReplicas (the cap did not bind:
    the HPA's own desire) and above 0; with none computed (0, e.g. no metrics) the
    Deployment's replicas until greenml's cap stands, then the figure remembered in
    ``status.ownerReplicas``; else its maxReplicas as its owner set it — the live one until
    greenml caps it or when someone changed it since (it differs from
    ``status.appliedMaxReplicas``), else the one remembered in ``status.ownerMaxReplicas``.
    """
    st = f.mapping(status)
    active = _variant_of(model, st.get("activeVariant"))
    if hpa is not None:
        live_max = f.integer(f.mapping(hpa.get("spec")).get("maxReplicas"), None, minimum=1)
        if live_max is not None:
            applied = f.integer(st.get("appliedMaxReplicas"), None, minimum=0)
            remembered = f.integer(st.get("ownerMaxReplicas"), None, minimum=1)
            own_max = remembered if applied == live_max and remembered is not None else live_max
            desired = f.integer(f.mapping(hpa.get("status")).get("desiredReplicas"), None, minimum=0)
            # 0 is no desire (an HPA that has not computed one, e.g. without metrics), not a load of 0
            if desired is not None and 0 < desired < live_max:
                return OwnerReplicas(desired, active, "the HPA's desired replicas", own_max)
            if not desired:
                # no desire computed: the Deployment's replicas until greenml's cap stands (they
                # are then the cap's doing), the figure remembered from then on
                remembered_r = f.integer(st.get("ownerReplicas"), None, minimum=1)
                if applied == live_max and remembered_r is not None:
                    return OwnerReplicas(remembered_r, _variant_of(model, st.get("ownerVariant")), _HPA_NO_DESIRE,
                                         own_max)
                raw = (deployment.get("spec") or {}).get("replicas")
                if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
                    return OwnerReplicas(min(raw, own_max), active, _HPA_NO_DESIRE, own_max)
            return OwnerReplicas(own_max, active, "the HPA's own maxReplicas (its desired replicas are at the cap)",
                                 own_max)
    raw = (deployment.get("spec") or {}).get("replicas")
    live = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
    remembered = f.integer(st.get("ownerReplicas"), None, minimum=0)
    applied = f.integer(st.get("replicas"), None, minimum=0)
    if remembered is not None and live is not None and live == applied:
        return OwnerReplicas(remembered, _variant_of(model, st.get("ownerVariant")), _DEPLOYMENT_OWNER)
    return OwnerReplicas(int(live or model.min_replicas), active, _DEPLOYMENT_OWNER)


_DEPLOYMENT_OWNER = "the Deployment's replicas as its owner set them"   # read now or remembered: one message
_HPA_NO_DESIRE = "the Deployment's replicas before greenml's cap (its HPA has computed no desired replicas)"


def assumed_load(model: core.BudgetModel, owner: OwnerReplicas) -> tuple[float, str]:
    """(req/s, what it is): the owner's replicas, each at its variant's full capacity."""
    idx = model.index(owner.variant) if owner.variant is not None else None
    v = model.variants[idx if idx is not None else 0]
    rps = owner.replicas * v.capacity_rps
    return rps, f"{owner.replicas} × {v.name} at full capacity, {rps:g} req/s, from {owner.source}"


# ---------------------------------------------------------------- what to apply to the target

def deployment_apply_body(namespace: str, name: str, spec: InferenceBudgetSpec, variant: str,
                          replicas: int | None) -> dict[str, Any]:
    """Server-side-apply body: only the fields the variant patch names (+ replicas when
    the operator owns them, i.e. no HPA targets the Deployment)."""
    chosen = next(v for v in spec.variants if v.name == variant)
    patch = chosen.patch
    if chosen.power_cap_watts is not None:
        # the node agent caps the GPUs of the pods that carry it (docs/power-caps.md); a
        # variant without a cap leaves it out, and server-side apply then removes ours
        patch = _with_pod_annotation(patch, POWER_CAP_ANNOTATION, f"{chosen.power_cap_watts:g}")
    body: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": name, "namespace": namespace,
                                         "annotations": {"greenml.io/variant": variant}}}
    for key, value in patch.items():
        if key == "metadata":
            meta = dict(value or {})
            body["metadata"]["labels"] = meta.get("labels") or {}
            body["metadata"]["annotations"].update(meta.get("annotations") or {})
        else:
            body[key] = value
    if replicas is not None:
        body.setdefault("spec", {})
        body["spec"] = {**body["spec"], "replicas": int(replicas)}
    return body


def _with_pod_annotation(patch: Mapping[str, Any], key: str, value: str) -> dict[str, Any]:
    """A copy of ``patch`` that also sets one annotation on the pod template (``patch``
    unchanged where its shape has no room for one: the API server rejects such a patch anyway)."""
    out = dict(patch)
    spec = out.get("spec") or {}
    template = spec.get("template") or {} if isinstance(spec, Mapping) else None
    meta = template.get("metadata") or {} if isinstance(template, Mapping) else None
    ann = meta.get("annotations") or {} if isinstance(meta, Mapping) else None
    if not isinstance(ann, Mapping):
        return out
    spec, template, meta = dict(spec), dict(template), dict(meta)
    meta["annotations"] = {**ann, key: value}
    template["metadata"] = meta
    spec["template"] = template
    out["spec"] = spec
    return out


def applied_fields(live: Any, want: Any) -> Any:
    """The live object's values at the paths an apply body names (lists of named items,
    such as containers, matched by name: how server-side apply merges them). Equal to
    ``want`` when the live object carries everything the body sets."""
    if isinstance(want, Mapping):
        live = live if isinstance(live, Mapping) else {}
        return {k: applied_fields(live.get(k), v) for k, v in want.items()}
    if isinstance(want, list) and want and all(isinstance(w, Mapping) and "name" in w for w in want):
        by_name = {x.get("name"): x for x in live if isinstance(x, Mapping)} if isinstance(live, list) else {}
        return [applied_fields(by_name.get(w["name"]), w) for w in want]
    return live


def hpa_apply_body(namespace: str, name: str, max_replicas: int) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"maxReplicas": int(max_replicas)}}
