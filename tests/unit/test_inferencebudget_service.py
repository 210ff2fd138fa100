"""The InferenceBudget service path: spend accounting across reconciles and signal loss."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.services import inferencebudget as svc

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
STEP = timedelta(minutes=5)


def body(policy: dict | None = None) -> dict:
    def variant(name, quality, watts):
        return {"name": name, "quality": quality, "capacityRps": 10, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "s", "image": name}]}}}}}
    return {"spec": {"targetRef": {"name": "chat"}, "zone": "DE", "budget": {"energyKWh": 1000.0, "period": "day"},
                     "policy": {"minReplicas": 1, "maxReplicas": 4, "minDwell": "1s", **(policy or {})},
                     "variants": [variant("full", 1.0, 400), variant("small", 0.8, 100)]}}


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
