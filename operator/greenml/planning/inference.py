"""InferenceBudget decisions: which model variant (and how many replicas) to serve now.

One pure function, :func:`decide`, serves both the operator controller and
``greenml simulate inference``. It paces the period's budget with a dual price λ
on carbon (or energy): over the rest of the period it picks, per step, the variant
maximising ``quality·requests − λ·grams``, finds the smallest λ whose projected spend
fits the remaining budget (exact: binary search over the per-step breakpoints, vectorised over steps × variants), and applies
only the current step's choice. Re-solving every step is what "adjusts λ as spend
tracks the plan" (Lagrangian relaxation of a multiple-choice knapsack; the same idea
as Clover, SC'23, and Quality Time, e-Energy'25).

Rules on top of the pacing, in order of precedence:
- budget spent → the cheapest variant at/above the quality floor (``BudgetExhausted``),
  throttled to ``policy.minReplicas`` when ``policy.onBudgetBreach == "throttle"``;
- even the floor cannot hold the budget → keep the cheapest floor variant and say so
  (``QualityFloorBreach``) or throttle replicas uniformly to what fits (``Throttled``);
- ``tier: eco`` → the cheapest floor variant whenever the current intensity is above
  the median of the period's forecast, even with budget left (``Degraded``);
- dwell → keep the active variant until ``policy.minDwell`` has passed since the last
  switch, unless holding it would make the budget impossible (``Dwell``).

Power model per variant at load L req/s (``replicas = ceil(L / capacityRps)`` within
the policy bounds, utilisation u = served / (replicas·capacity)):
``watts = replicas·idle + (wattsPerReplica − idle)·replicas·u`` when ``wattsPerReplica``
is given (idle defaults to 30 % of it, the API default), plus ``joulesPerRequest·served``
when that is given (with it alone, idle defaults to 0).

Pure: no kopf/kubernetes/network; ``now`` is a parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

from greenml.api.inferencebudget import InferenceBudgetSpec
from greenml.planning.periods import period_bounds
from greenml.timeutil import ensure_utc, format_duration, format_time, parse_duration

# Reasons (also condition reasons and Event reasons in the operator).
WITHIN_BUDGET = "WithinBudget"
DEGRADED = "Degraded"
THROTTLED = "Throttled"
BUDGET_EXHAUSTED = "BudgetExhausted"
FLOOR_BREACH = "QualityFloorBreach"
DWELL = "Dwell"
SIGNALS_DEGRADED = "SignalsDegraded"

# API default for idle draw when only wattsPerReplica is given (see api PowerModel docs).
DEFAULT_IDLE_FRACTION = 0.3


class InferenceSpecError(ValueError):
    """The spec cannot be planned (maps to the ``InvalidSpec`` condition)."""


@dataclass(frozen=True)
class PacingConfig:
    """Knobs of the pacer that are not part of the user's API.

    Planned future spend must fit the remaining budget with room for forecast error:
    Σ_t (1 + forecast_margin)·c_t + confidence·forecast_error·sqrt(Σ_t c_t²) ≤ remaining,
    over the forecast steps t ≥ 1 (the current step is measured). The linear margin
    covers a bias; the square-root term is a chance constraint for independent
    per-step errors of relative std ``forecast_error`` (z = ``confidence``), which is
    what matters late in a period when only a few steps are left. Both fade out as the
    period ends. Defaults: NESO's day-ahead forecast has MAE 25–35 g/kWh on a ~200 g
    mean with a +2…+9 g bias (shared data README, fw48h snapshots), i.e. a few percent
    of bias and roughly 10–15 % relative error per half-hour; re-planning every step
    absorbs the rest.
    """

    forecast_margin: float = 0.05
    forecast_error: float = 0.1
    confidence: float = 3.0

    def weights(self, n: int) -> np.ndarray:
        """Per-step multiplier of the planned cost: 1 for the measured step, 1 + margin after."""
        w = np.full(n, 1.0 + self.forecast_margin)
        w[0] = 1.0
        return w

    def spread(self, n: int) -> np.ndarray:
        """Per-step z·σ of the planned cost (0 for the measured step)."""
        sd = np.full(n, self.confidence * self.forecast_error)
        sd[0] = 0.0
        return sd


# With the operator's own forecaster instead of a provider's (greenml.signals.forecaster:
# relative MAE 3–16 % over a day on the 2023 traces, errors correlated across the hours of a
# day, which the independent-error term above underrates): a 10 % linear margin. Chosen on
# bench/bench_inference.py's online mode (the smallest margin with no feasible day over
# budget there: 5 % left 1–3 such days a year in DE and GB at the 50 % budget). The load
# forecaster's measured error comes on top (pacing_for).
OWN_FORECAST = PacingConfig(forecast_margin=0.10)
MAX_MARGIN = 0.5


def pacing_for(own_intensity_forecast: bool, load_error: float | None = None) -> PacingConfig:
    """The error reserve for the forecasts at hand: ``OWN_FORECAST``'s margin when the
    intensity forecast is the operator's own (else the default's), plus the load
    forecaster's measured relative error (``LoadForecast.error``: a day's level it could not
    know is a bias over that whole day, which only a linear margin covers)."""
    base = OWN_FORECAST if own_intensity_forecast else PacingConfig()
    if not load_error or not math.isfinite(load_error) or load_error <= 0:
        return base
    return replace(base, forecast_margin=min(MAX_MARGIN, base.forecast_margin + float(load_error)))


@dataclass(frozen=True)
class VariantModel:
    """A variant compiled to numbers."""

    name: str
    quality: float
    capacity_rps: float
    watts: float  # at full load, per replica (0 when only joulesPerRequest is given)
    idle_watts: float
    joules_per_request: float


@dataclass(frozen=True)
class BudgetModel:
    """Everything :func:`decide` needs from a spec, validated and in plain numbers."""

    variants: tuple[VariantModel, ...]  # sorted by quality, descending
    carbon_grams: float | None
    energy_kwh: float | None
    period: str
    time_zone: str
    quality_floor: float
    min_replicas: int
    max_replicas: int
    tier: str
    min_dwell: timedelta
    throttle: bool

    def index(self, name: str | None) -> int | None:
        for i, v in enumerate(self.variants):
            if v.name == name:
                return i
        return None

    @cached_property
    def eligible(self) -> np.ndarray:
        """Indices of variants at or above the quality floor."""
        return np.array([i for i, v in enumerate(self.variants) if v.quality >= self.quality_floor], dtype=np.int64)

    @cached_property
    def columns(self) -> dict[str, np.ndarray]:
        """Per-variant numbers as arrays (quality, capacity, watts, idle, joules per request)."""
        return {f: np.array([getattr(v, f) for v in self.variants], dtype=np.float64)
                for f in ("quality", "capacity_rps", "watts", "idle_watts", "joules_per_request")}


@dataclass(frozen=True)
class BudgetState:
    """What the operator remembers between decisions (lives in the CR status)."""

    period_start: datetime
    period_end: datetime
    grams_spent: float = 0.0
    kwh_spent: float = 0.0
    active_variant: str | None = None
    replicas: int | None = None
    switched_at: datetime | None = None
    carbon_price: float | None = None

    def account(self, grams: float, kwh: float) -> "BudgetState":
        """A new state with this spend added (measured, or the power model's estimate)."""
        return replace(self, grams_spent=self.grams_spent + grams, kwh_spent=self.kwh_spent + kwh)

    def applied(self, decision: "VariantDecision", now: datetime) -> "BudgetState":
        """A new state after ``decision`` has been applied at ``now``."""
        switched = decision.variant != self.active_variant
        return replace(self, active_variant=decision.variant, replicas=decision.replicas,
                       switched_at=ensure_utc(now) if switched else self.switched_at,
                       carbon_price=decision.carbon_price)


@dataclass(frozen=True)
class VariantDecision:
    variant: str
    replicas: int
    needed_replicas: int  # what the load needs within the bounds (replicas < this → throttled)
    carbon_price: float  # λ, quality·requests given up per gram (per kWh for energy-only budgets)
    projected_grams: float  # end-of-period spend if the plan is followed
    projected_kwh: float
    reason: str
    message: str

    @property
    def throttled(self) -> bool:
        return self.replicas < self.needed_replicas


# --------------------------------------------------------------------------- spec → numbers


def compile_spec(spec: InferenceBudgetSpec) -> BudgetModel:
    """Validate what the schema cannot and turn the spec into numbers."""
    variants = []
    for i, v in enumerate(spec.variants):
        p = v.power
        if not v.patch:
            raise InferenceSpecError(f"spec.variants[{i}] ({v.name}): patch must not be empty")
        watts = p.watts_per_replica or 0.0
        idle = p.idle_watts_per_replica
        if idle is None:
            idle = DEFAULT_IDLE_FRACTION * watts
        if p.watts_per_replica is not None and idle > watts:
            raise InferenceSpecError(
                f"spec.variants[{i}] ({v.name}): power.idleWattsPerReplica {idle} exceeds wattsPerReplica {watts}")
        variants.append(VariantModel(v.name, float(v.quality), float(v.capacity_rps), float(watts),
                                     float(idle), float(p.joules_per_request or 0.0)))
    variants.sort(key=lambda m: -m.quality)
    pol = spec.policy
    if not any(v.quality >= pol.quality_floor for v in variants):
        raise InferenceSpecError(
            f"spec.policy.qualityFloor {pol.quality_floor} is above every variant's quality "
            f"(best: {variants[0].quality})")
    period_bounds(spec.budget.period, datetime(2000, 1, 1), spec.budget.time_zone)  # validates the zone
    return BudgetModel(tuple(variants), spec.budget.carbon_grams, spec.budget.energy_kwh,
                       spec.budget.period, spec.budget.time_zone, float(pol.quality_floor),
                       int(pol.min_replicas), int(pol.max_replicas), pol.tier,
                       parse_duration(pol.min_dwell), pol.on_budget_breach == "throttle")


def new_state(spec: InferenceBudgetSpec | BudgetModel, now: datetime,
              previous: BudgetState | None = None) -> BudgetState:
    """The state for the period containing ``now``.

    Keeps ``previous`` when it already covers ``now``; otherwise starts a fresh period
    (spend reset) that carries over the active variant, replicas and switch time.
    """
    model = spec if isinstance(spec, BudgetModel) else compile_spec(spec)
    now = ensure_utc(now)
    if previous is not None and previous.period_start <= now < previous.period_end:
        return previous
    start, end = period_bounds(model.period, now, model.time_zone)
    if previous is None:
        return BudgetState(start, end)
    return BudgetState(start, end, active_variant=previous.active_variant, replicas=previous.replicas,
                       switched_at=previous.switched_at, carbon_price=previous.carbon_price)


# --------------------------------------------------------------------------- the power model


def replicas_needed(model: BudgetModel, load: np.ndarray) -> np.ndarray:
    """Replicas per step × variant for ``load`` (req/s), within the policy bounds."""
    cap = model.columns["capacity_rps"]
    need = np.ceil(np.maximum(np.asarray(load, dtype=np.float64), 0.0)[:, None] / cap[None, :] - 1e-9)
    return np.clip(need, model.min_replicas, model.max_replicas)


def power_watts(model: BudgetModel, load: np.ndarray, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(watts, served req/s) per step × variant for the given replicas."""
    col = model.columns
    cap, watts, idle, jpr = col["capacity_rps"], col["watts"], col["idle_watts"], col["joules_per_request"]
    capacity = replicas * cap[None, :]
    served = np.minimum(np.maximum(np.asarray(load, dtype=np.float64), 0.0)[:, None], capacity)
    with np.errstate(invalid="ignore", divide="ignore"):
        util = np.where(capacity > 0, served / capacity, 0.0)
    w = replicas * (idle[None, :] + (watts - idle)[None, :] * util) + jpr[None, :] * served
    return w, served


@dataclass(frozen=True)
class StepCosts:
    """Per step × variant: utility (quality·requests), grams, kWh, replicas; step lengths in s."""

    utility: np.ndarray
    grams: np.ndarray
    kwh: np.ndarray
    replicas: np.ndarray
    seconds: np.ndarray

    def cost(self, model: BudgetModel) -> np.ndarray:
        """The budgeted quantity: grams, kWh, or both as fractions of their budgets."""
        if model.carbon_grams is not None and model.energy_kwh is not None:
            return self.grams / model.carbon_grams + self.kwh / model.energy_kwh
        return self.grams if model.carbon_grams is not None else self.kwh


def step_costs(model: BudgetModel, intensity: np.ndarray, load: np.ndarray, seconds: np.ndarray,
               replica_cap: int | None = None) -> StepCosts:
    """The cost matrices for steps of ``seconds`` length at the given intensity and load
    (replicas throttled to at most ``replica_cap`` when given)."""
    seconds = np.asarray(seconds, dtype=np.float64)
    replicas = replicas_needed(model, load)
    if replica_cap is not None:
        replicas = np.minimum(replicas, replica_cap)
    watts, served = power_watts(model, load, replicas)
    kwh = watts * seconds[:, None] / 3.6e6
    utility = model.columns["quality"][None, :] * served * seconds[:, None]
    grams = kwh * np.asarray(intensity, dtype=np.float64)[:, None]
    return StepCosts(utility, grams, kwh, replicas, seconds)


# --------------------------------------------------------------------------- pacing


@dataclass(frozen=True)
class PacedPlan:
    choice: np.ndarray  # variant index per step
    price: float  # λ
    cost: float  # Σ cost of the choice (margin not applied)


def _choose(utility: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    # Variants are sorted by quality; among equal scores argmax keeps the first, so
    # ties go to the higher-quality variant at λ=0 and to whichever comes first otherwise.
    return np.argmax(utility - lam * cost, axis=1)


Limits = Sequence[tuple[np.ndarray, float]]


def pace(utility: np.ndarray, cost: np.ndarray, limits: Limits, weights: np.ndarray | None = None,
         spread: np.ndarray | None = None) -> PacedPlan:
    """Smallest λ ≥ 0 whose per-step argmax of ``utility − λ·cost`` keeps every limit.

    ``utility``/``cost`` are steps × options (options already filtered to the eligible
    ones). Each limit is ``(matrix, allowance)``: with x_t = matrix[t, choice_t],
    Σ weights_t·x_t + sqrt(Σ (spread_t·x_t)²) must not exceed allowance (one limit per
    budget: grams and/or kWh; see :class:`PacingConfig` for weights and spread). The
    choice only changes at the breakpoints ΔU/ΔC between two options of a step, so λ is found exactly by binary search over the sorted
    breakpoints (O(T·V²) memory, ~log2(T·V²) evaluations). If even the cheapest option
    per step breaks a limit, returns the cheapest choice with ``price=inf``.
    """
    rows = np.arange(cost.shape[0])

    def ok(ch: np.ndarray) -> bool:
        return all(_risk_spend(m[rows, ch], weights, spread) <= a for m, a in limits)

    def done(ch: np.ndarray, price: float) -> PacedPlan:
        return PacedPlan(ch, price, float(cost[rows, ch].sum()))

    best = _choose(utility, cost, 0.0)
    if ok(best):
        return done(best, 0.0)
    cheapest = _cheapest(utility, cost)
    if not ok(cheapest):
        return done(cheapest, math.inf)
    du = utility[:, :, None] - utility[:, None, :]
    dc = cost[:, :, None] - cost[:, None, :]
    mask = (du > 0) & (dc > 0)
    # just above each breakpoint the cheaper option of the pair wins
    prices = np.unique(du[mask] / dc[mask]) * (1.0 + 1e-9)
    lo, hi = 0, prices.size - 1
    if prices.size == 0 or not ok(_choose(utility, cost, float(prices[-1]))):
        return done(cheapest, float(prices[-1]) * 2.0 if prices.size else math.inf)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(_choose(utility, cost, float(prices[mid]))):
            hi = mid
        else:
            lo = mid + 1
    return done(_choose(utility, cost, float(prices[lo])), float(prices[lo]))


def _risk_spend(x: np.ndarray, weights: np.ndarray | None, spread: np.ndarray | None) -> float:
    """Planned spend with the forecast margin and the error reserve (see PacingConfig)."""
    total = float(np.dot(weights, x)) if weights is not None else float(x.sum())
    if spread is not None:
        total += float(np.sqrt(np.dot(spread * spread, x * x)))
    return total


def _cheapest(utility: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per step the cheapest option; among equally cheap ones the most useful."""
    cmax = float(np.abs(cost).max()) or 1.0
    umax = float(np.abs(utility).max()) or 1.0
    return np.argmin(cost / cmax - 1e-9 * utility / umax, axis=1)


def _step_seconds(now: datetime, end: datetime, step: timedelta) -> np.ndarray:
    """Lengths (s) of the steps from ``now`` to ``end``; the last one may be partial."""
    total = (end - now).total_seconds()
    s = step.total_seconds()
    n = max(1, math.ceil(total / s - 1e-9))
    secs = np.full(n, s)
    secs[-1] = total - s * (n - 1) if total > 0 else s
    return secs


def _fit(values: np.ndarray, n: int, first: float) -> np.ndarray:
    """``values`` cut or edge-extended to n steps; step 0 is the measured value and
    missing (non-finite) values repeat the last known one."""
    v = np.asarray(values, dtype=np.float64).ravel()[:n]
    out = np.concatenate([v, np.full(n - v.size, np.nan)])
    out[0] = first
    bad = ~np.isfinite(out)
    if bad.any():
        idx = np.where(bad, 0, np.arange(n))
        out = out[np.maximum.accumulate(idx)]
    return out


def _limits(model: BudgetModel, state: BudgetState, costs: StepCosts) -> list[tuple[np.ndarray, float]]:
    out = []
    if model.carbon_grams is not None:
        out.append((costs.grams, model.carbon_grams - state.grams_spent))
    if model.energy_kwh is not None:
        out.append((costs.kwh, model.energy_kwh - state.kwh_spent))
    return out


def _budget_words(model: BudgetModel, state: BudgetState) -> str:
    parts = []
    if model.carbon_grams is not None:
        parts.append(f"{_fmt(state.grams_spent)}/{_fmt(model.carbon_grams)} g")
    if model.energy_kwh is not None:
        parts.append(f"{_fmt(state.kwh_spent)}/{_fmt(model.energy_kwh)} kWh")
    return " and ".join(parts) + " spent"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class _Situation:
    """The matrices of one decision, shared by the rule helpers below."""

    model: BudgetModel
    state: BudgetState
    costs: StepCosts
    intensity: np.ndarray
    load: np.ndarray
    weights: np.ndarray  # 1 for the measured step, 1 + margin for forecast steps
    spread: np.ndarray  # z·σ per step (0 for the measured step)
    limits: list[tuple[np.ndarray, float]]
    cheapest: np.ndarray  # per step, cheapest variant at/above the floor (full index)

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.weights.size)

    def fits(self, choice: np.ndarray, costs: StepCosts | None = None, margin: bool = True) -> bool:
        c = costs or self.costs
        w, sd = (self.weights, self.spread) if margin else (None, None)
        return all(_risk_spend(m[self.rows, choice], w, sd) <= a for m, a in _limits(self.model, self.state, c))

    def throttled(self, replicas: int) -> StepCosts:
        """The cost matrices with every step capped at ``replicas``."""
        return step_costs(self.model, self.intensity, self.load, self.costs.seconds, replica_cap=replicas)

    def decision(self, choice: np.ndarray, replicas: int, price: float, reason: str, msg: str,
                 costs: StepCosts | None = None) -> VariantDecision:
        c = costs or self.costs
        idx = int(choice[0])
        grams = float(c.grams[self.rows, choice].sum())
        kwh = float(c.kwh[self.rows, choice].sum())
        return VariantDecision(self.model.variants[idx].name, int(replicas), int(self.costs.replicas[0, idx]),
                               float(price), self.state.grams_spent + grams, self.state.kwh_spent + kwh, reason, msg)


def decide(spec: InferenceBudgetSpec | BudgetModel, state: BudgetState, intensity_forecast: np.ndarray,
           load_forecast: np.ndarray, step: timedelta, now: datetime, current_intensity: float,
           current_load: float, *, config: PacingConfig = PacingConfig()) -> VariantDecision:
    """The variant and replicas to serve from ``now`` until the next decision, and why.

    ``intensity_forecast`` (g/kWh) and ``load_forecast`` (req/s) hold one value per
    ``step`` from ``now`` to the period end (shorter arrays are edge-extended, gaps
    filled with the last known value; step 0 is the measured ``current_*``). ``state``
    must cover ``now`` (see :func:`new_state`). Raises :class:`InferenceSpecError` for
    specs it cannot plan and ValueError for inputs it cannot use.
    """
    model = spec if isinstance(spec, BudgetModel) else compile_spec(spec)
    now = ensure_utc(now)
    if not state.period_start <= now < state.period_end:
        raise ValueError(f"state period [{state.period_start}, {state.period_end}) does not contain now={now}")
    if not (math.isfinite(current_intensity) and current_intensity >= 0):
        raise ValueError(f"current_intensity must be a finite non-negative g/kWh, got {current_intensity!r}")
    if step.total_seconds() <= 0:
        raise ValueError(f"step must be positive, got {step}")
    secs = _step_seconds(now, state.period_end, step)
    n = secs.size
    ci = _fit(intensity_forecast, n, current_intensity)
    load = float(current_load) if math.isfinite(current_load) else 0.0
    loads = _fit(load_forecast, n, max(0.0, load))
    costs = step_costs(model, ci, loads, secs)
    cost = costs.cost(model)
    elig = model.eligible
    util_e, cost_e = costs.utility[:, elig], cost[:, elig]
    weights, spread = config.weights(n), config.spread(n)
    limits = _limits(model, state, costs)
    sit = _Situation(model, state, costs, ci, loads, weights, spread, limits, elig[_cheapest(util_e, cost_e)])
    words = _budget_words(model, state)
    low = int(sit.cheapest[0])

    if any(a <= 0 for _, a in limits):
        reps = model.min_replicas if model.throttle else int(costs.replicas[0, low])
        return sit.decision(sit.cheapest, reps, math.inf, BUDGET_EXHAUSTED,
                            f"budget spent ({words}): serving {model.variants[low].name}, the cheapest variant "
                            f"at/above the quality floor, with {reps} replicas",
                            costs=sit.throttled(reps))

    plan = pace(util_e, cost_e, [(m[:, elig], a) for m, a in limits], weights, spread)
    if not math.isfinite(plan.price):
        if not sit.fits(sit.cheapest, margin=False):
            return _floor_breach(sit, words)
        # the floor plan fits the forecast, only not with the margin: cheapest now, no alarm
        return sit.decision(sit.cheapest, int(costs.replicas[0, low]), math.inf, DEGRADED,
                            f"only the cheapest variant at/above the floor fits the budget ({words})")
    choice = elig[plan.choice]
    idx = int(choice[0])
    best_now = int(elig[int(np.argmax(util_e[0]))])
    if model.variants[idx].quality < model.variants[best_now].quality:
        reason, msg = DEGRADED, f"λ={_fmt(plan.price)}: {model.variants[idx].name} paces the budget ({words})"
    else:
        reason, msg = WITHIN_BUDGET, f"{model.variants[idx].name} fits the budget ({words})"

    if model.tier == "eco":
        median = float(np.median(ci))
        if current_intensity > median and idx != low:
            choice = choice.copy()
            choice[0] = idx = low
            reason = DEGRADED
            msg = (f"eco tier: intensity {_fmt(current_intensity)} g/kWh is above the period's forecast "
                   f"median {_fmt(median)}: serving {model.variants[idx].name} ({words})")

    held = _dwell(sit, choice, now, step, plan.price, msg)
    if held is not None:
        return held
    return sit.decision(choice, int(costs.replicas[0, idx]), plan.price, reason, msg)


def _floor_breach(sit: _Situation, words: str) -> VariantDecision:
    """Even the cheapest variant at/above the floor cannot hold the budget."""
    model, low = sit.model, int(sit.cheapest[0])
    need = int(sit.costs.replicas[0, low])
    what = f"the budget cannot be held at the quality floor {model.quality_floor} ({words})"
    if not model.throttle:
        return sit.decision(sit.cheapest, need, math.inf, FLOOR_BREACH,
                            f"{what}: keeping {model.variants[low].name} at the floor (policy keepFloor)")
    reps = need
    while reps > model.min_replicas and not sit.fits(sit.cheapest, sit.throttled(reps)):
        reps -= 1
    return sit.decision(sit.cheapest, reps, math.inf, THROTTLED,
                        f"{what}: {model.variants[low].name} throttled to {reps}/{need} replicas",
                        costs=sit.throttled(reps))


def _dwell(sit: _Situation, choice: np.ndarray, now: datetime, step: timedelta, price: float,
           why: str) -> VariantDecision | None:
    """Keep the active variant until minDwell has passed, unless that breaks the budget."""
    model, state = sit.model, sit.state
    active = model.index(state.active_variant)
    idx = int(choice[0])
    if active is None or idx == active or state.switched_at is None \
            or model.variants[active].quality < model.quality_floor:
        return None
    until = state.switched_at + model.min_dwell
    if now >= until:
        return None
    n = choice.size
    k = min(n, max(1, math.ceil((until - now).total_seconds() / step.total_seconds() - 1e-9)))
    hold = choice.copy()
    hold[:k] = active
    if not sit.fits(np.concatenate([hold[:k], sit.cheapest[k:]])):
        return None  # switching now is needed to stay within budget
    if not sit.fits(hold):
        hold[k:] = sit.cheapest[k:]
    return sit.decision(hold, int(sit.costs.replicas[0, active]), price, DWELL,
                        f"holding {model.variants[active].name} until {format_time(until)} (minDwell "
                        f"{format_duration(model.min_dwell)}) instead of {model.variants[idx].name}: {why}")


def signal_loss_decision(spec: InferenceBudgetSpec | BudgetModel, state: BudgetState, current_load: float,
                         mode: str) -> VariantDecision:
    """What to serve when the intensity (or energy) signals are unavailable.

    ``failCheap``: the cheapest variant at/above the floor, with the replicas the load
    needs. ``failClosed``: the same variant at ``policy.minReplicas`` at most (spend as
    little as allowed until the signals return).
    """
    model = spec if isinstance(spec, BudgetModel) else compile_spec(spec)
    load = max(0.0, current_load) if math.isfinite(current_load) else 0.0
    costs = step_costs(model, np.array([1.0]), np.array([load]), np.array([1.0]))
    elig = model.eligible
    idx = int(elig[int(_cheapest(costs.utility[:, elig], costs.kwh[:, elig])[0])])
    need = int(costs.replicas[0, idx])
    reps = min(need, model.min_replicas) if mode == "failClosed" else need
    return VariantDecision(model.variants[idx].name, reps, need, math.inf, state.grams_spent, state.kwh_spent,
                           SIGNALS_DEGRADED, f"signals unavailable ({mode}): serving {model.variants[idx].name} "
                           f"with {reps}/{need} replicas")


# --------------------------------------------------------------------------- offline optimum


@dataclass(frozen=True)
class OfflinePlan:
    """Perfect-foresight plan for one period (a multiple-choice knapsack).

    ``choice`` is feasible: the Lagrangian (λ) rounding, then greedy upgrades into the
    slack. ``upper_bound`` is the Lagrangian dual bound max_x Σ(u − λc) + λ·B, which by
    weak duality is ≥ the LP relaxation ≥ the true integer optimum; so the optimum lies
    in ``[utility, upper_bound]`` and quality fractions against ``upper_bound`` are
    conservative (lower bounds).
    """

    choice: np.ndarray
    utility: float
    upper_bound: float
    grams: float
    kwh: float


def offline_optimum(model: BudgetModel, costs: StepCosts) -> OfflinePlan:
    """Best plan for a whole period with the actual intensity and load known in advance."""
    empty = BudgetState(datetime.min, datetime.max)
    elig = model.eligible
    u, c = costs.utility[:, elig], costs.cost(model)[:, elig]
    limits = [(m[:, elig], a) for m, a in _limits(model, empty, costs)]
    plan = pace(u, c, limits)
    rows = np.arange(u.shape[0])
    ch = plan.choice
    if math.isfinite(plan.price):
        # the Lagrangian relaxes Σc ≤ B, where c is the combined cost (one limit: c is it)
        budget = limits[0][1] if len(limits) == 1 else float(len(limits))
        bound = float((u - plan.price * c).max(axis=1).sum() + plan.price * budget)
        ch = _greedy_fill(u, c, limits, ch)
    else:
        bound = float(u[rows, ch].sum())
    full = elig[ch]
    util = float(u[rows, ch].sum())
    return OfflinePlan(full, util, max(bound, util),
                       float(costs.grams[rows, full].sum()), float(costs.kwh[rows, full].sum()))


def _greedy_fill(u: np.ndarray, c: np.ndarray, limits: Limits, choice: np.ndarray) -> np.ndarray:
    """Spend leftover budget on the upgrades with the best utility per unit cost that still fit."""
    ch = choice.copy()
    rows = np.arange(u.shape[0])
    for _ in range(u.shape[1]):
        slack = [a - float(m[rows, ch].sum()) for m, a in limits]
        du = u - u[rows, ch][:, None]
        dc = c - c[rows, ch][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(du > 0, np.where(dc > 0, du / dc, np.inf), -np.inf)
        changed = False
        for t in np.argsort(-ratio.max(axis=1)):
            for o in np.argsort(-ratio[t]):
                if ratio[t, o] == -np.inf:
                    break
                deltas = [float(m[t, o] - m[t, ch[t]]) for m, _ in limits]
                if all(d <= sl for d, sl in zip(deltas, slack)):
                    slack = [sl - d for d, sl in zip(deltas, slack)]
                    ch[t] = o
                    changed = True
                    break
        if not changed:
            break
    return ch
