"""InferenceBudget decisions: pacing, selection, floor, dwell, tiers, throttling, offline optimum."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from greenml.api import InferenceBudgetSpec
from greenml.planning.inference import (BUDGET_EXHAUSTED, DEGRADED, DWELL, FLOOR_BREACH, SIGNALS_DEGRADED,
                                        THROTTLED, WITHIN_BUDGET, BudgetState, InferenceSpecError, PacingConfig,
                                        compile_spec, decide, new_state, offline_optimum, signal_loss_decision,
                                        step_costs)

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)

# name, quality, watts per replica (idle 0), capacity req/s
VARIANTS = [("full", 1.0, 400.0, 10.0), ("int8", 0.9, 200.0, 10.0), ("tiny", 0.6, 100.0, 10.0)]


def make_spec(*, grams: float | None = 1e9, kwh: float | None = None, period: str = "day", floor: float = 0.0,
              tier: str = "premium", dwell: str = "0s", breach: str = "keepFloor", min_replicas: int = 1,
              max_replicas: int = 10, variants: list[tuple[str, float, float, float]] = VARIANTS,
              **extra: Any) -> InferenceBudgetSpec:
    """Builder for specs in tests (idle draw 0, so energy = watts·replicas·utilisation)."""
    budget: dict[str, Any] = {"period": period, "timeZone": "UTC"}
    if grams is not None:
        budget["carbonGrams"] = grams
    if kwh is not None:
        budget["energyKWh"] = kwh
    return InferenceBudgetSpec.model_validate({
        "targetRef": {"name": "server"},
        "budget": budget,
        "variants": [{"name": n, "quality": q, "capacityRps": cap,
                      "power": {"wattsPerReplica": w, "idleWattsPerReplica": 0},
                      "patch": {"spec": {"template": {"metadata": {"labels": {"variant": n}}}}}}
                     for n, q, w, cap in variants],
        "policy": {"qualityFloor": floor, "tier": tier, "minDwell": dwell, "onBudgetBreach": breach,
                   "minReplicas": min_replicas, "maxReplicas": max_replicas},
        **extra,
    })


def state_at(spec: InferenceBudgetSpec, now: datetime = T0, **kw: Any) -> BudgetState:
    return replace(new_state(spec, now), **kw)


def full_load_kwh(watts: float, hours: float = 1.0, replicas: int = 1) -> float:
    return watts * replicas * hours / 1000.0


# The table-driven cases keep the 5 % linear margin and leave out the error reserve, so
# their budgets are easy to compute by hand; the reserve has its own test.
NO_RESERVE = PacingConfig(forecast_margin=0.05, forecast_error=0.0)


def run(spec: InferenceBudgetSpec, intensity: list[float], load: list[float] | float = 10.0,
        now: datetime = T0, config: PacingConfig = NO_RESERVE, **state_kw: Any):
    """Decide at ``now`` (the start of a day period) with a perfect forecast."""
    ci = np.asarray(intensity, dtype=float)
    ld = np.full(ci.size, load) if np.isscalar(load) else np.asarray(load, dtype=float)
    st_ = state_at(spec, now, **state_kw)
    return decide(spec, st_, ci, ld, HOUR, now, float(ci[0]), float(ld[0]), config=config)


# --------------------------------------------------------------------------- selection and pacing


def day(first: float, rest: float) -> list[float]:
    return [first] + [rest] * 23


# One full replica for an hour: full 0.4 kWh, int8 0.2 kWh, tiny 0.1 kWh. Forecast
# (future) steps count with the default 5 % margin, the current step at face value.
M = 1.05


@pytest.mark.parametrize("case, intensity, grams, variant, reason", [
    ("ample budget → best", day(100, 100), 1e6, "full", WITHIN_BUDGET),
    ("the best plan fits with the margin", day(100, 100), 40 + 23 * 40.0 * M, "full", WITHIN_BUDGET),
    ("the best plan fits, the margin does not", day(100, 100), 24 * 40.0, "int8", DEGRADED),
    # room for int8 in the dirty hour now and full later: degrade now
    ("dirty now, clean later → degrade now", day(300, 100), 300 * 0.2 + 23 * 40 * M + 1.0, "int8", DEGRADED),
    # room for full in the clean hour now and int8 later: full now
    ("clean now, dirty later → full now", day(100, 300), 40 + 23 * 300 * 0.2 * M + 1.0, "full", WITHIN_BUDGET),
    ("only tiny fits", day(100, 100), 24 * 10.0 + 0.5, "tiny", DEGRADED),
])
def test_pacing_selects_by_forecast(case: str, intensity: list[float], grams: float, variant: str,
                                    reason: str) -> None:
    spec = make_spec(grams=grams)
    d = run(spec, intensity)
    assert (d.variant, d.reason) == (variant, reason), case
    assert d.projected_grams <= grams + 1e-6, case
    assert d.replicas == 1 and not d.throttled


def test_price_is_zero_without_pressure_and_positive_with_it() -> None:
    assert run(make_spec(grams=1e6), day(100, 100)).carbon_price == 0.0
    tight = run(make_spec(grams=24 * 25.0), day(100, 100))
    assert 0.0 < tight.carbon_price < math.inf
    assert tight.projected_grams <= 24 * 25.0 + 1e-6


def test_error_reserve_matters_most_with_few_steps_left() -> None:
    """The z·σ·sqrt(Σc²) reserve: 2 h left, 85 g left; full + full = 80 g fits a perfect
    forecast, but not with 3·10 % of the forecast hour held back (40 + 40·1.3 = 92 g)."""
    spec = make_spec(grams=1000.0)
    kw = dict(grams_spent=915.0, now=T0 + timedelta(hours=22))
    none = PacingConfig(forecast_margin=0.0, forecast_error=0.0)
    reserve = PacingConfig(forecast_margin=0.0, forecast_error=0.1, confidence=3.0)
    assert run(spec, [100.0, 100.0], config=none, **kw).variant == "full"
    assert run(spec, [100.0, 100.0], config=reserve, **kw).variant == "int8"
    # a whole day ahead: the reserve is 3·10 %·40·sqrt(23) ≈ 58 g, 6 % of the 960 g plan
    assert run(make_spec(grams=960 + 60.0), day(100, 100), config=reserve).variant == "full"
    assert run(make_spec(grams=960 + 50.0), day(100, 100), config=reserve).variant == "int8"


def test_spend_so_far_counts() -> None:
    spec = make_spec(grams=300 + 40 + 23 * 40 * M)
    assert run(spec, day(100, 100)).variant == "full"
    assert run(spec, day(100, 100), grams_spent=300.0).variant == "full"
    assert run(spec, day(100, 100), grams_spent=350.0).variant != "full"


def test_replicas_follow_load_within_bounds() -> None:
    spec = make_spec(max_replicas=4)
    assert run(spec, day(100, 100), load=25.0).replicas == 3
    assert run(spec, day(100, 100), load=100.0).replicas == 4
    assert run(spec, day(100, 100), load=0.0).replicas == 1  # minReplicas


def test_energy_budget_and_both_budgets() -> None:
    # int8 all day at one replica: 4.8 kWh (+ the margin on the forecast hours)
    e = run(make_spec(grams=None, kwh=0.2 + 23 * 0.2 * M + 0.01), day(100, 100))
    assert e.variant == "int8" and e.projected_kwh <= 4.8 + 0.01
    both = run(make_spec(grams=24 * 100 * 0.1 + 1, kwh=100.0), day(100, 100))
    assert both.variant == "tiny" and both.projected_grams <= 24 * 10 + 1


# --------------------------------------------------------------------------- floor, exhaustion, throttling


def test_never_below_floor_even_when_tight() -> None:
    spec = make_spec(grams=24 * 10.0 + 1, floor=0.8)  # only tiny would fit; tiny is below the floor
    d = run(spec, day(100, 100))
    assert d.variant == "int8" and d.reason == FLOOR_BREACH
    assert "floor" in d.message


def test_floor_breach_throttles_when_configured() -> None:
    spec = make_spec(grams=24 * 20 * 1.5, floor=0.8, breach="throttle", min_replicas=0)
    d = run(spec, day(100, 100), load=20.0)  # int8 needs 2 replicas: 24·40 g > budget
    assert d.variant == "int8" and d.reason == THROTTLED
    assert d.replicas == 1 and d.needed_replicas == 2 and d.throttled
    assert d.projected_grams <= 24 * 30 + 1e-6


@pytest.mark.parametrize("breach, replicas", [("keepFloor", 2), ("throttle", 1)])
def test_budget_exhausted(breach: str, replicas: int) -> None:
    spec = make_spec(grams=100.0, floor=0.85, breach=breach)
    d = run(spec, day(100, 100), load=20.0, grams_spent=100.0)
    assert (d.variant, d.reason, d.replicas) == ("int8", BUDGET_EXHAUSTED, replicas)
    assert math.isinf(d.carbon_price)


# --------------------------------------------------------------------------- tiers and dwell


@pytest.mark.parametrize("tier, now_ci, variant, reason", [
    ("premium", 300.0, "full", WITHIN_BUDGET),
    ("eco", 300.0, "tiny", DEGRADED),   # dirty hour: degrade with budget left
    ("eco", 50.0, "full", WITHIN_BUDGET),  # clean hour: best
])
def test_tiers(tier: str, now_ci: float, variant: str, reason: str) -> None:
    intensity = [now_ci] + [100.0, 200.0] * 11 + [150.0]
    d = run(make_spec(tier=tier, floor=0.5), intensity)
    assert (d.variant, d.reason) == (variant, reason)


def test_dwell_holds_then_releases() -> None:
    spec = make_spec(grams=1e6, dwell="2h")
    held = run(spec, day(100, 100), active_variant="int8", switched_at=T0 - timedelta(minutes=30))
    assert (held.variant, held.reason) == ("int8", DWELL)
    assert "minDwell" in held.message
    free = run(spec, day(100, 100), active_variant="int8", switched_at=T0 - timedelta(hours=2))
    assert (free.variant, free.reason) == ("full", WITHIN_BUDGET)


def test_dwell_yields_to_the_budget() -> None:
    # holding "full" for the dwell would blow the budget: switch anyway
    spec = make_spec(grams=24 * 10.0 + 5, dwell="6h")
    d = run(spec, day(100, 100), active_variant="full", switched_at=T0 - timedelta(minutes=5))
    assert d.variant == "tiny" and d.reason != DWELL


def test_dwell_never_holds_a_variant_below_the_floor() -> None:
    spec = make_spec(floor=0.8, dwell="6h")
    d = run(spec, day(100, 100), active_variant="tiny", switched_at=T0 - timedelta(minutes=5))
    assert d.variant == "full"


# --------------------------------------------------------------------------- bad input


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValidationError, match="quality"):
        make_spec(variants=[("full", 1.2, 400.0, 10.0)])
    with pytest.raises(ValidationError, match="carbonGrams|carbon_grams"):
        make_spec(grams=0.0)
    with pytest.raises(InferenceSpecError, match="qualityFloor"):
        compile_spec(make_spec(floor=1.0, variants=[("a", 0.9, 100.0, 1.0)]))
    spec = make_spec()
    bad = spec.model_copy(update={"variants": [spec.variants[0].model_copy(update={"patch": {}})]})
    with pytest.raises(InferenceSpecError, match=r"variants\[0\].*patch"):
        compile_spec(bad)


def test_bad_inputs_give_clear_errors() -> None:
    spec = make_spec()
    with pytest.raises(ValueError, match="does not contain now"):
        decide(spec, new_state(spec, T0), np.ones(24), np.ones(24), HOUR, T0 + timedelta(days=2), 100.0, 1.0)
    with pytest.raises(ValueError, match="current_intensity"):
        decide(spec, new_state(spec, T0), np.ones(24), np.ones(24), HOUR, T0, float("nan"), 1.0)


def test_short_or_gappy_forecasts_are_filled() -> None:
    spec = make_spec(grams=40 + 23 * 40 * M)
    fc = np.array([100.0, np.nan, 100.0])  # 3 of 24 steps, one missing
    d = decide(spec, new_state(spec, T0), fc, np.full(3, 10.0), HOUR, T0, 100.0, 10.0, config=NO_RESERVE)
    assert d.variant == "full" and d.projected_grams == pytest.approx(24 * 40.0)


def test_signal_loss() -> None:
    spec = make_spec(floor=0.8, min_replicas=1)
    st_ = new_state(spec, T0)
    cheap = signal_loss_decision(spec, st_, 30.0, "failCheap")
    closed = signal_loss_decision(spec, st_, 30.0, "failClosed")
    assert (cheap.variant, cheap.replicas, cheap.reason) == ("int8", 3, SIGNALS_DEGRADED)
    assert (closed.variant, closed.replicas) == ("int8", 1)


def test_new_state_resets_spend_at_period_start_and_keeps_variant() -> None:
    spec = make_spec()
    s = replace(new_state(spec, T0), grams_spent=50.0, active_variant="int8", switched_at=T0)
    assert new_state(spec, T0 + timedelta(hours=23), s) is s
    nxt = new_state(spec, T0 + timedelta(days=1), s)
    assert (nxt.grams_spent, nxt.period_start, nxt.active_variant) == (0.0, T0 + timedelta(days=1), "int8")


# --------------------------------------------------------------------------- offline optimum


def test_offline_optimum_brackets_brute_force() -> None:
    spec = make_spec(grams=300.0, period="hour")
    model = compile_spec(spec)
    ci = np.array([100.0, 400.0, 250.0, 50.0, 300.0, 150.0])
    costs = step_costs(model, ci, np.full(6, 10.0), np.full(6, 3600.0))
    best = max((sum(costs.utility[t, c] for t, c in enumerate(ch)) for ch in itertools.product(range(3), repeat=6)
                if sum(costs.grams[t, c] for t, c in enumerate(ch)) <= 300.0))
    plan = offline_optimum(model, costs)
    assert plan.grams <= 300.0 + 1e-9
    assert plan.utility <= best + 1e-6 <= plan.upper_bound + 2e-6
    assert plan.utility >= 0.97 * best


# --------------------------------------------------------------------------- invariant


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ci=st.lists(st.floats(10, 800), min_size=24, max_size=24),
       load=st.lists(st.floats(0, 40), min_size=24, max_size=24),
       slack=st.floats(0.0, 1.5), dwell=st.sampled_from(["0s", "2h"]), tier=st.sampled_from(["premium", "eco"]),
       floor=st.sampled_from([0.0, 0.8]))
def test_never_over_budget_with_perfect_forecast(ci: list[float], load: list[float], slack: float, dwell: str,
                                                 tier: str, floor: float) -> None:
    """Whenever the cheapest floor plan fits, replaying the day through decide() stays within budget."""
    probe = compile_spec(make_spec(floor=floor))
    cia, la = np.array(ci), np.array(load)
    costs = step_costs(probe, cia, la, np.full(24, 3600.0))
    elig = probe.eligible
    floor_g = float(costs.grams[:, elig].min(axis=1).sum())
    best_g = float(costs.grams[:, 0].sum())
    budget = max(floor_g * 1.0001, floor_g + slack * (best_g - floor_g) / 1.5) + 1e-6
    spec = make_spec(grams=budget, floor=floor, dwell=dwell, tier=tier)
    model = compile_spec(spec)
    state = new_state(model, T0)
    for t in range(24):
        now = T0 + HOUR * t
        d = decide(model, state, cia[t:], la[t:], HOUR, now, float(cia[t]), float(la[t]))
        i = model.index(d.variant)
        assert model.variants[i].quality >= floor
        c = step_costs(model, cia[t:t + 1], la[t:t + 1], np.array([3600.0]), replica_cap=d.replicas)
        state = state.account(float(c.grams[0, i]), float(c.kwh[0, i])).applied(d, now)
    assert state.grams_spent <= budget * (1 + 1e-9)
