"""The InferenceBudget service path: spend accounting across reconciles and signal loss."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.services import inferencebudget as svc

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
STEP = timedelta(minutes=5)


def body(policy: dict | None = None, *, kwh: float = 1000.0, small_rps: float = 10) -> dict:
    def variant(name, quality, watts, rps):
        return {"name": name, "quality": quality, "capacityRps": rps, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "s", "image": name}]}}}}}
    return {"spec": {"targetRef": {"name": "chat"}, "zone": "DE", "budget": {"energyKWh": kwh, "period": "day"},
                     "policy": {"minReplicas": 1, "maxReplicas": 4, "minDwell": "1s", **(policy or {})},
                     "variants": [variant("full", 1.0, 400, 10), variant("small", 0.8, 100, small_rps)]}}


def signals(ok: bool = True, load: float = 20.0, n: int = 200) -> svc.Signals:
    if not ok:
        return svc.Signals(None, None, load, np.full(n, load), "none", "assumed", "ServerError")
    return svc.Signals(300.0, np.full(n, 300.0), load, np.full(n, load), "file", "assumed", None)


def status_of(out: svc.BudgetOutcome, model) -> dict:
    return {"activeVariant": out.decision.variant, "replicas": out.decision.replicas,
            "spend": out.spend_status(model, "power-model")}


def test_spend_over_fractional_second_reconciles_does_not_drift():
    """accountedUntil is stored in whole seconds: 120 reconciles 30.7 s apart charge exactly
    the served time, not an extra truncated fraction each time."""
    spec, model = svc.parse_spec(body())
    status, now = None, T0 + timedelta(microseconds=400_000)
    first = None
    for _ in range(120):
        out = svc.reconcile(spec, model, status, now, signals(), STEP)
        status = status_of(out, model)
        first = first or now
        now += timedelta(seconds=30.7)
    last = now - timedelta(seconds=30.7)
    served_h = (last.replace(microsecond=0) - first.replace(microsecond=0)).total_seconds() / 3600
    watts = 2 * 400.0                                   # 2 replicas of the full model at load 20 rps
    assert out.decision.variant == "full" and out.decision.replicas == 2
    # (truncation re-charged each time would be ~1.6 % over; the model itself is exact to ~3e-5)
    assert out.state.kwh_spent == pytest.approx(watts * served_h / 1000, rel=1e-3)


def test_signal_loss_keeps_the_mark_and_charges_the_time_when_signals_return():
    spec, model = svc.parse_spec(body({"onSignalLoss": "failClosed"}))
    out = svc.reconcile(spec, model, None, T0, signals(), STEP)
    status = status_of(out, model)
    lost = svc.reconcile(spec, model, status, T0 + timedelta(minutes=10), signals(ok=False), STEP)
    assert lost.decision.variant == "full" and lost.accounted_until == T0     # failClosed; nothing charged yet
    status = status_of(lost, model)
    back = svc.reconcile(spec, model, status, T0 + timedelta(minutes=20), signals(), STEP)
    assert back.state.kwh_spent == pytest.approx(2 * 400.0 * (20 / 60) / 1000, rel=1e-6)


def test_state_round_trips_through_status():
    spec, model = svc.parse_spec(body())
    out = svc.reconcile(spec, model, None, T0, signals(), STEP)
    state, until = svc.state_from_status(status_of(out, model))
    assert state is not None and until == T0
    assert (state.active_variant, state.replicas) == (out.decision.variant, out.decision.replicas)
    assert state.period_start <= T0 < state.period_end


# ---------------------------------------------------------------- the load assumed without a loadQuery

def serve(spec, model, status, deployment, now, hpa=None):
    """One reconcile as the controller runs it without a loadQuery: the owner's replicas →
    the assumed load → the decision; the status it writes goes through JSON (what a
    restarted operator reads back); the Deployment gets the decision's replicas (no HPA)."""
    import json

    owner = svc.owner_replicas(model, status, deployment, hpa)
    load, _ = svc.assumed_load(model, owner)
    out = svc.reconcile(spec, model, status, now, signals(load=load), STEP)
    if hpa is None:
        deployment["spec"]["replicas"] = out.decision.replicas
    return out, load, json.loads(json.dumps({**status_of(out, model), **owner.to_status()}))


def test_own_throttle_does_not_lower_the_assumed_load():
    """A budget the floor variant cannot hold, throttled: greenml lowers the Deployment's
    replicas, and every later reconcile (restarts included: status only) still assumes the
    owner's replicas at full capacity."""
    spec, model = svc.parse_spec(body({"onBudgetBreach": "throttle", "maxReplicas": 8}, kwh=0.5))
    owner = 6
    deployment = {"spec": {"replicas": owner}}
    status, loads, throttled = None, [], []
    for i in range(6):
        out, load, status = serve(spec, model, status, deployment, T0 + i * STEP)
        loads.append(load)
        throttled.append(out.decision.throttled)
    assert all(throttled) and deployment["spec"]["replicas"] < owner      # the case at hand
    capacity = model.variants[0].capacity_rps                             # the owner's pods: the first variant
    assert loads == [owner * capacity] * len(loads)
    assert status["ownerReplicas"] == owner


def test_a_switch_to_a_variant_of_other_capacity_keeps_the_owners_load():
    """2 × full (10 req/s each) → small at 5 req/s needs 4 replicas, not throttled: the next
    reconcile still assumes 2 × full's capacity, not 4 × small's or 2 × small's."""
    spec, model = svc.parse_spec(body(kwh=6.0, small_rps=5))
    deployment = {"spec": {"replicas": 2}}
    first, load0, status = serve(spec, model, None, deployment, T0)
    assert first.decision.variant == "small" and not first.decision.throttled
    assert deployment["spec"]["replicas"] != 2
    _, load1, status = serve(spec, model, status, deployment, T0 + STEP)
    assert load1 == load0 == 2 * model.variants[0].capacity_rps
    assert (status["ownerReplicas"], status["ownerVariant"]) == (2, None)


def test_replicas_changed_by_someone_else_become_the_owners():
    spec, model = svc.parse_spec(body({"onBudgetBreach": "throttle", "maxReplicas": 8}, kwh=0.5))
    deployment = {"spec": {"replicas": 6}}
    out, _, status = serve(spec, model, None, deployment, T0)
    changed = out.decision.replicas + 1                 # a user scales by hand
    deployment["spec"]["replicas"] = changed
    _, load, status = serve(spec, model, status, deployment, T0 + STEP)
    active = model.variants[model.index(out.decision.variant)]
    assert load == changed * active.capacity_rps
    assert (status["ownerReplicas"], status["ownerVariant"]) == (changed, active.name)


def hpa(max_replicas: int, desired: int | None) -> dict:
    return {"spec": {"maxReplicas": max_replicas}, "status": {} if desired is None else {"desiredReplicas": desired}}


def test_with_an_hpa_the_owner_is_its_desired_replicas_below_the_cap_else_its_own_max():
    spec, model = svc.parse_spec(body())
    dep = {"spec": {"replicas": 3}}
    # before greenml capped it: the HPA's own figures
    below = svc.owner_replicas(model, {}, dep, hpa(9, 4))
    assert (below.replicas, below.hpa_max_replicas) == (4, 9)
    at_max = svc.owner_replicas(model, {}, dep, hpa(9, 9))
    assert at_max.replicas == 9
    # greenml capped it at 2 (status.appliedMaxReplicas): desired at the cap → the owner's 9 remembered
    capped = {"activeVariant": "small", "replicas": 2, "appliedMaxReplicas": 2, **at_max.to_status()}
    held = svc.owner_replicas(model, capped, dep, hpa(2, 2))
    assert (held.replicas, held.hpa_max_replicas, held.variant) == (9, 9, "small")
    # below the cap the HPA's desire is the owner's
    assert svc.owner_replicas(model, capped, dep, hpa(2, 1)).replicas == 1
    # someone set maxReplicas since greenml's cap: that is the owner's now
    edited = svc.owner_replicas(model, capped, dep, hpa(7, 7))
    assert (edited.replicas, edited.hpa_max_replicas) == (7, 7)
    # no desiredReplicas yet: the owner's max
    assert svc.owner_replicas(model, capped, dep, hpa(2, None)).replicas == 9


def test_owner_fields_that_do_not_read_fall_back_to_the_deployment():
    spec, model = svc.parse_spec(body())
    junk = {"replicas": 2, "ownerReplicas": "many", "ownerVariant": 7}
    o = svc.owner_replicas(model, junk, {"spec": {"replicas": 2}})
    assert (o.replicas, o.variant) == (2, None)
    o = svc.owner_replicas(model, {"replicas": 2, "ownerReplicas": 5, "ownerVariant": "gone"}, {"spec": {"replicas": 2}})
    assert (o.replicas, o.variant) == (5, None)      # a variant no longer in the spec: the first one's capacity


def test_an_hpa_without_a_desire_leaves_the_load_to_the_deployments_replicas_before_the_cap():
    """An HPA that has computed no desired replicas (0 or absent: no metrics yet) is not a load
    of 0 (the e2e HPA had desiredReplicas: 0 and the budget saw no load): the Deployment's
    replicas are the owner's until greenml's cap stands, then the figure remembered."""
    spec, model = svc.parse_spec(body())
    dep = {"spec": {"replicas": 3}}
    for desired in (0, None):
        first = svc.owner_replicas(model, {}, dep, hpa(4, desired))
        assert (first.replicas, first.hpa_max_replicas) == (3, 4)
        assert svc.assumed_load(model, first)[0] > 0
    capped = {"activeVariant": "small", "replicas": 1, "appliedMaxReplicas": 1, **first.to_status()}
    dep_after = {"spec": {"replicas": 1}}                    # the HPA obeyed greenml's cap
    held = svc.owner_replicas(model, capped, dep_after, hpa(1, 0))
    assert (held.replicas, held.hpa_max_replicas) == (3, 4)
    assert svc.assumed_load(model, held) == svc.assumed_load(model, first)
    # never above the HPA's own max
    assert svc.owner_replicas(model, {}, {"spec": {"replicas": 9}}, hpa(4, 0)).replicas == 4
