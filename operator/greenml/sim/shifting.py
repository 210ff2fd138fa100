"""Replaying TrainingJobs through time.

One engine, several controllers. The engine owns the clock (ticks every ``policy.step``),
admits jobs at their submit time, ends runs exactly when the work is done, applies the
GPU capacity the way a cluster does (a start that does not fit stays queued, so GPUs in
use never exceed the capacity) and keeps the record. Controllers only answer "should
this job run now?":

- ``greenml``: the operator's own path — ``services.board.PlanBoard`` plans all waiting
  jobs together on the forecast *as issued at now* and ``services.trainingjob.decide``
  acts on the plan, tick by tick. It never sees an actual value: its only input is the
  forecaster (online by construction; tested). A carbon-aware capped job (``SimJob.cap``)
  goes through the TrainingJob controller's sequence: ``capped_view`` for the board and
  ``decide``, ``persist_capped``, the cap of now (``PlanBoard.cap_for``) and
  ``capped_segment`` (a change of cap rebases the run segment); it runs at that cap's speed
  and draw until the next tick, and its energy accrues through ``capped_usage`` as status's
  does (docs/power-caps.md).
- ``run-now``: start at submit.
- ``threshold``: run while the current intensity is below a percentile of the past
  week's actuals, else start at the latest feasible time (today's open-source schedulers).
- ``best-window``: the lowest-mean window on the forecast issued at submit, committed
  (Carbon Aware SDK semantics).
- ``lwa``: Let's Wait Awhile (Wiesner et al., Middleware '21): at submit, the best window
  (non-interruptible) or the cheapest slots (interruptible) on the forecast; with
  ``lwa_quirks`` its two quirks (baseline may start one slot late; end one slot late).
- ``oracle``: perfect foresight — the planner on the actual series, all jobs at once; under
  a capacity the exact capacity-constrained optimum (a MILP, HiGHS via scipy), or a stated
  bound (see ``oracle_controller``).

Jobs needing more GPUs than the capacity are ``unplaceable``: reported, never run, never
counted as savings (savings are over the jobs that completed). ``SimResult.feasibility``
says whether every placeable deadline could have been met (the exact check, run when a
deadline was missed); ``avoidable_misses`` lists the misses that could have been avoided;
``fewest_misses`` how many deadlines no schedule can keep (0 when feasible). The oracle's
``oracle_basis`` says whether its schedule is an optimum (``exact``, ``milp-optimal``), the
MILP's best within a stated gap (``milp-time-limit``) or the planner's greedy + repair
(``greedy-fallback``, with ``oracle_fallback_reason``): only the first two are a reference
that no policy can beat.

Emissions are always accounted on the actual series (``jobs.Accountant``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Callable, Protocol, Sequence

import numpy as np

from greenml.planning import shifting as planner
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import (
    Defaults, JobObservation, JobRequirements, Progress, capped_segment, capped_usage, capped_view, carbon_aware,
    decide, persist_capped,
)
from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.series import SeriesSource
from greenml.sim.forecasts import Forecaster
from greenml.sim.jobs import EPS, Accountant, JobResult, SimInputError, SimJob
from greenml.timeutil import format_time

POLICIES = ("greenml", "run-now", "threshold", "best-window", "lwa", "oracle")
ZONE = "sim"


@dataclass(frozen=True)
class SimPolicy:
    """Everything that shapes one simulated run (one typed object instead of many flags)."""

    name: str = "greenml"
    step: timedelta = timedelta(minutes=30)
    capacity_gpus: int | None = None
    safety_margin: timedelta = timedelta(0)     # the sim has no pod start-up latency
    min_run: timedelta = timedelta(minutes=30)  # default minRunDuration of interruptible jobs
    horizon: timedelta = timedelta(days=7)      # the operator's planning horizon
    replan_interval: timedelta | None = None    # None: every step
    threshold_percentile: float = 30.0
    threshold_lookback: timedelta = timedelta(days=7)
    lwa_quirks: bool = False
    forecast_label: str = "perfect"

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        if self.step <= timedelta(0):
            raise ValueError("step must be positive")
        if self.capacity_gpus is not None and self.capacity_gpus <= 0:
            raise ValueError(f"capacity must be a positive number of GPUs, got {self.capacity_gpus}")

    def defaults(self) -> Defaults:
        return Defaults(zone=ZONE, safety_margin=self.safety_margin, min_run=self.min_run, step=self.step)


@dataclass
class JobState:
    job: SimJob
    req: JobRequirements
    admitted: bool = False
    running: bool = False
    run_start: datetime | None = None
    done_seconds: float = 0.0       # work done by closed run segments (a capped job: at maxWatts)
    runs: list[tuple[datetime, datetime]] = field(default_factory=list)
    n_runs: int = 0
    done: bool = False
    reason: str = ""
    # carbon-aware capped jobs only: the open run segment (status's runningSince: a change of
    # cap rebases it), the cap it runs under, the closed segments with their caps, and
    # status.usage as the controller writes it (capped_usage)
    seg_start: datetime | None = None
    cap_watts: float | None = None
    segments: list[tuple[datetime, datetime, float | None]] = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.req.key

    @property
    def capped(self) -> bool:
        return carbon_aware(self.req)

    def speed(self) -> float:
        """Work per wall second of the open segment (1 uncapped)."""
        return self.req.cap.level(self.cap_watts).speed if self.capped else 1.0

    def _open(self) -> datetime | None:
        return (self.seg_start if self.capped else self.run_start) if self.running else None

    def remaining_s(self, now: datetime) -> float:
        opened = self._open()
        extra = (now - opened).total_seconds() * self.speed() if opened else 0.0
        return self.job.duration.total_seconds() - self.done_seconds - extra

    def progress(self) -> Progress:
        """In status's terms (a capped job's open segment in wall time from its own start)."""
        return Progress(self.done_seconds, self._open(), self.n_runs)

    def finish_time(self) -> datetime:
        """When the running job's work is done at the open segment's speed."""
        left = self.job.duration.total_seconds() - self.done_seconds
        return self._open() + timedelta(seconds=left / self.speed())

    def start(self, now: datetime, cap: float | None) -> None:
        self.running, self.run_start, self.n_runs = True, now, self.n_runs + 1
        if self.capped:
            self.seg_start, self.cap_watts = now, cap

    def stop(self, now: datetime, progress: Progress | None = None) -> None:
        """The run ends at ``now``: ``progress`` is the services' account of it (a capped job:
        its segment counted at its cap's speed; None: ``now`` as decide() closes it)."""
        self.runs.append((self.run_start, now))
        if self.capped:
            progress = progress or self.progress().rebase(now, self.speed()).closed(now)
            self._segment(now, progress, now)
            self.seg_start = None
        else:
            self.done_seconds += (now - self.run_start).total_seconds()
        self.running, self.run_start = False, None

    def recap(self, now: datetime, progress: Progress, cap: float | None) -> None:
        """A capped job runs on under the cap of now: a rebased segment (its cap changed) is
        closed at its old cap and a new one opens."""
        if progress.running_since != self.seg_start:
            self._segment(progress.running_since, progress, now)
            self.seg_start = progress.running_since
        self.cap_watts = cap

    def _segment(self, end: datetime, progress: Progress, now: datetime) -> None:
        if end > self.seg_start:
            self.segments.append((self.seg_start, end, self.cap_watts))
        self.done_seconds = progress.run_seconds
        # status.usage as write_status keeps it: the work since the last count at the segment's cap
        kwh, counted, wall = capped_usage(self.req, progress, now, self.usage, self.cap_watts)
        self.usage = {"energyKwh": kwh, "countedRunSeconds": counted, "wallSeconds": wall}

    def latest_start(self, now: datetime, margin: timedelta) -> datetime:
        return self.job.deadline - margin - timedelta(seconds=self.remaining_s(now))


@dataclass
class SimResult:
    policy: SimPolicy
    jobs: list[JobResult]
    peak_gpus: int
    wall_seconds: float
    start: datetime
    end: datetime
    intensity: IntensitySeries
    notes: list[str] = field(default_factory=list)
    feasibility: str = "feasible"   # could every placeable job meet its deadline? feasible | infeasible | unknown
    fewest_misses: int | None = 0   # at best, placeable deadlines missed under the capacity (None: undecided)
    oracle_basis: str | None = None           # the oracle only: ORACLE_BASES
    oracle_fallback_reason: str | None = None  # greedy-fallback only: why the MILP gave no schedule

    @property
    def avoidable_misses(self) -> list[str]:
        """Placeable jobs that missed their deadline although every deadline could have been
        met (``feasibility`` not "infeasible": unknown counts as could-have-been-met)."""
        if self.feasibility == "infeasible":
            return []
        return [j.name for j in self.jobs if not j.deadline_met and not j.unplaceable]

    def summary(self) -> dict:
        # savings over the jobs that completed: work never done is no saving (issue 14)
        done = [j for j in self.jobs if j.completed]
        g = sum(j.grams for j in done)
        rn = sum(j.run_now_grams for j in done)
        return {
            "policy": self.policy.name, "forecast": self.policy.forecast_label,
            "step_minutes": self.policy.step.total_seconds() / 60, "capacity_gpus": self.policy.capacity_gpus,
            "jobs": len(self.jobs), "completed": len(done),
            "deadlines_met": sum(j.deadline_met for j in self.jobs),
            "grams": round(g, 3), "run_now_grams": round(rn, 3),
            "savings_percent": round(100.0 * (rn - g) / rn, 3) if rn > 0 else 0.0,
            "peak_gpus": self.peak_gpus, "wall_seconds": round(self.wall_seconds, 3),
            "start": format_time(self.start), "end": format_time(self.end), "notes": self.notes,
            "unplaceable": sum(j.unplaceable for j in self.jobs),
            "grams_incomplete": round(sum(j.grams for j in self.jobs if not j.completed), 3),
            "feasibility": self.feasibility,
            "avoidable_misses": self.avoidable_misses,
            "fewest_misses": self.fewest_misses,
            "oracle_basis": self.oracle_basis,
            "oracle_fallback_reason": self.oracle_fallback_reason,
        }

    def to_json(self) -> dict:
        return {"jobs": [j.to_json() for j in self.jobs], "summary": self.summary()}


# ---------------------------------------------------------------- controllers

class Controller(Protocol):
    def wants(self, active: Sequence[JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        """For each active job (by id(state)): run now?, and why."""
        ...


def to_requirements(job: SimJob, policy: SimPolicy) -> JobRequirements:
    return JobRequirements(
        namespace="sim", name=job.name, uid=job.name, created=job.submit, deadline=job.deadline,
        duration=job.duration, interruptible=job.interruptible, min_run=job.min_run or policy.min_run,
        gpus=job.gpus, watts=job.watts, power_source="spec", zone=ZONE, max_intensity=job.max_intensity,
        cap=job.cap)


class GreenmlController:
    """The operator's decision path: PlanBoard (all jobs together) + decide(), per tick."""

    def __init__(self, policy: SimPolicy, forecaster: Forecaster, reference: IntensitySeries) -> None:
        self.defaults = policy.defaults()
        source = SeriesSource(replace(reference, values=np.full(1, np.nan)), name="sim", forecaster=forecaster)
        self.board = PlanBoard(self.defaults, source, replan_interval=policy.replan_interval or policy.step,
                               horizon=policy.horizon, capacity=policy.capacity_gpus)
        self._known: set[tuple[str, str]] = set()
        #: carbon-aware capped jobs, from the last wants(): (progress, cap of now) by id(state)
        self.capped: dict[int, tuple[Progress, float | None]] = {}

    def forget(self, st: JobState) -> None:
        self.board.forget(st.key)
        self._known.discard(st.key)

    def wants(self, active: Sequence[JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        # a capped job's open segment counts at the speed of its cap (controllers.trainingjob.reconcile)
        befores, views = {}, {}
        for st in active:
            before = befores[id(st)] = st.progress()
            views[id(st)] = capped_view(before, st.speed(), now, st.run_start) if st.capped else before
            self.board.observe(st.req, views[id(st)], st.running)
        out = {}
        self.capped = {}
        for st in active:
            planned, _failure = self.board.plan_for(st.key, now)
            windows = planned.windows if planned is not None else None
            obs = JobObservation(exists=True, suspended=not st.running)
            o = decide(st.req, views[id(st)], obs, windows, now, self.defaults,
                       plan_reason=planned.reason if planned else None)
            if st.capped:
                before, speed = befores[id(st)], st.speed()
                o = persist_capped(st.req, before, views[id(st)], o, speed, now)
                want = (self.board.cap_for(st.key, now, forced=o.reason == "DeadlineForced")
                        if o.progress.running_since is not None else None)
                o, _run_start = capped_segment(before, o, st.cap_watts, st.run_start, want, speed, now)
                self.capped[id(st)] = (o.progress, want)
            out[id(st)] = (o.phase == "Running", o.reason)
        return out


class PlannedController:
    """Baselines that fix a plan (absolute windows) per job and follow it."""

    def __init__(self, planner_fn: Callable[[JobState, datetime], tuple[tuple[datetime, datetime], ...]], why: str) -> None:
        self.plan_fn = planner_fn
        self.why = why
        self.notes: list[str] = []
        self.basis: str | None = None            # the oracle's: ORACLE_BASES
        self.fallback_reason: str | None = None
        self.plans: dict[int, tuple[tuple[datetime, datetime], ...]] = {}

    def wants(self, active: Sequence[JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        out = {}
        for st in active:
            windows = self.plans.get(id(st))
            if windows is None:
                windows = self.plans[id(st)] = self.plan_fn(st, now)
            run = any(s <= now < e for s, e in windows) or (not st.running and now >= st.latest_start(now, timedelta(0)))
            out[id(st)] = (run, self.why)
        return out


class ThresholdController:
    def __init__(self, policy: SimPolicy, actual: IntensitySeries) -> None:
        self.p = policy
        self.actual = actual

    def wants(self, active: Sequence[JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        i = self.actual.index_of(now)
        look = max(1, int(self.p.threshold_lookback / self.actual.step))
        past = self.actual.values[max(0, i - look):i]
        current = float(self.actual.values[i])   # the current slot: what a live API reports now
        limit = float(np.percentile(past, self.p.threshold_percentile)) if past.size else math.inf
        out = {}
        for st in active:
            forced = now + self.p.step > st.latest_start(now, self.p.safety_margin)
            out[id(st)] = (current <= limit or forced, "LatestStart" if forced else "BelowThreshold")
        return out


def _slot_plan(spec: planner.JobSpec, forecast: np.ndarray, step: timedelta,
               capacity: int | None = None) -> tuple[tuple[int, int], ...]:
    return planner.plan([spec], forecast, step_hours=step.total_seconds() / 3600.0, capacity_gpus=capacity)[0].runs


def _spec_from(st: JobState, now: datetime, step: timedelta, *, extra_end: int = 0,
               interruptible: bool | None = None) -> planner.JobSpec:
    k = int(math.ceil(st.remaining_s(now) / step.total_seconds() - 1e-9))
    end = int((st.job.deadline - now) // step) + extra_end
    return planner.JobSpec(st.job.name, remaining=k, latest_end=end, gpus=st.job.gpus, power_kw=st.job.power_kw,
                           interruptible=st.job.interruptible if interruptible is None else interruptible)


def _forecast_on_grid(forecaster: Forecaster, now: datetime, n: int, step: timedelta) -> np.ndarray | None:
    try:
        s = forecaster(ZONE, now, step * n)
    except SignalError:
        return None
    v = s.resample(now, step, n)
    return v if np.all(np.isfinite(v)) else None


def forecast_window_controller(policy: SimPolicy, forecaster: Forecaster, *, lwa: bool) -> PlannedController:
    """best-window (one committed window) or lwa (window / cheapest slots) from the forecast at submit."""
    step = policy.step
    extra = 1 if (lwa and policy.lwa_quirks) else 0

    def plan_fn(st: JobState, now: datetime) -> tuple[tuple[datetime, datetime], ...]:
        spec = _spec_from(st, now, step, extra_end=extra, interruptible=st.job.interruptible if lwa else False)
        f = _forecast_on_grid(forecaster, now, max(1, spec.latest_end, spec.remaining), step)
        if f is None:   # no forecast: run now
            return ((now, now + st.job.duration),)
        return tuple((now + step * a, now + step * b) for a, b in _slot_plan(spec, f, step))
    return PlannedController(plan_fn, "LWA" if lwa else "BestWindow")


def _offline_specs(policy: SimPolicy, jobs: Sequence[JobState], t0: datetime) -> list[planner.JobSpec]:
    """All jobs on the slot grid from t0 (interruptible: no min run), as an offline planner sees them."""
    step = policy.step
    specs = []
    for st in jobs:
        e = int(math.ceil((st.job.submit - t0) / step - 1e-9))
        k = int(math.ceil(st.job.duration / step - 1e-9))
        specs.append(planner.JobSpec(st.job.name, remaining=k, earliest=e,
                                     latest_end=int((st.job.deadline - t0) // step), gpus=st.job.gpus,
                                     power_kw=st.job.power_kw, interruptible=st.job.interruptible))
    return specs


# the oracle's MILP under a capacity: at most this long, and this many variables
ORACLE_TIME_LIMIT_S = 60.0
ORACLE_MAX_VARIABLES = 200_000
# what the oracle's schedule is: an optimum (no capacity: the planner per job, exact as jobs do
# not interact; under one: the MILP's), the MILP's best within its gap, or the greedy + repair
ORACLE_BASES = ("exact", "milp-optimal", "milp-time-limit", "greedy-fallback")
ORACLE_OPTIMAL = ("exact", "milp-optimal")


def oracle_controller(policy: SimPolicy, jobs: Sequence[JobState], actual: IntensitySeries,
                      t0: datetime) -> PlannedController:
    """Perfect foresight, all jobs planned at once on the actual series (interruptible: no min run).

    Without a capacity jobs do not interact and the planner's per-job placement is exact.
    Under a capacity the oracle is the exact capacity-constrained optimum: a MILP
    (``planning.capacity.optimum``, HiGHS) when scipy is installed and the instance is small
    enough; past the time limit, the best schedule found with the solver's lower bound; else
    (or when no schedule keeps every deadline) the planner's greedy + repair, said in notes."""
    step = policy.step
    specs = _offline_specs(policy, jobs, t0)
    horizon = max(max(s.latest_end, s.earliest + s.remaining) for s in specs)
    f = actual.resample(t0, step, horizon)
    step_h = step.total_seconds() / 3600.0
    notes: list[str] = []
    runs: dict[str, tuple[tuple[int, int], ...]] | None = None
    basis, reason = "exact", None
    if policy.capacity_gpus is not None:
        from greenml.planning import capacity

        placeable = [s for s in specs if s.gpus <= policy.capacity_gpus]
        opt = capacity.optimum(placeable, f, step_hours=step_h, capacity_gpus=policy.capacity_gpus,
                               time_limit_s=ORACLE_TIME_LIMIT_S, max_variables=ORACLE_MAX_VARIABLES)
        if opt.status == "optimal":
            runs = dict(opt.runs)
            notes.append(f"oracle under capacity: the exact MILP optimum (HiGHS, {opt.variables} variables, "
                         f"{opt.seconds:.1f} s)")
        elif opt.status == "time_limit" and opt.runs:
            runs = dict(opt.runs)
            notes.append(f"oracle under capacity: the MILP's best schedule after {opt.seconds:.0f} s, within "
                         f"{100 * opt.gap:.2f} % of the optimum (lower bound {opt.bound:.1f} g on the slot grid)")
        elif opt.status == "infeasible":
            notes.append("oracle under capacity: no schedule meets every deadline (exact MILP); "
                         "the planner's greedy + repair instead")
        else:
            notes.append(f"oracle under capacity: greedy + repair, not the exact optimum ({opt.status}: {opt.message})")
        if runs is None:
            basis, reason = "greedy-fallback", opt.status
        else:
            basis = "milp-optimal" if opt.status == "optimal" else "milp-time-limit"
    if runs is None:
        plans = planner.plan(specs, f, step_hours=step_h, capacity_gpus=policy.capacity_gpus)
        runs = {p.name: p.runs for p in plans}
    by_name = {s.name: tuple((t0 + step * a, t0 + step * b) for a, b in runs.get(s.name, ())) for s in specs}
    ctl = PlannedController(lambda st, now: by_name[st.job.name], "Oracle")
    ctl.notes.extend(notes)
    ctl.basis, ctl.fallback_reason = basis, reason
    return ctl


def offline_feasibility(policy: SimPolicy, jobs: Sequence[JobState], t0: datetime) -> tuple[str, int | None]:
    """Could every placeable job have met its deadline, and if not, how many deadlines must
    be missed at best? Without a capacity every one (inputs are checked: each job fits its
    own window): ("feasible", 0). Under one, on the slot grid: the demand bound's proof or
    the exact MILP (feasible | infeasible, else unknown); when infeasible the fewest misses
    (``planning.capacity.fewest_misses``; None when the MILP does not decide it)."""
    if policy.capacity_gpus is None:
        return "feasible", 0
    from greenml.planning import capacity

    specs = [s for s in _offline_specs(policy, jobs, t0) if s.gpus <= policy.capacity_gpus]
    if not specs:
        return "feasible", 0
    if capacity.demand_bound(specs, policy.capacity_gpus) is None:
        # feasibility only: every cost 0, so the solver stops at the first schedule it finds
        horizon = max(max(s.latest_end, s.earliest + s.remaining) for s in specs)
        opt = capacity.optimum(specs, np.zeros(horizon), step_hours=1.0, capacity_gpus=policy.capacity_gpus,
                               time_limit_s=ORACLE_TIME_LIMIT_S, max_variables=ORACLE_MAX_VARIABLES)
        if opt.status == "optimal" or opt.runs:
            return "feasible", 0
        if opt.status != "infeasible":
            return "unknown", None
    fewest = capacity.fewest_misses(specs, capacity_gpus=policy.capacity_gpus, time_limit_s=ORACLE_TIME_LIMIT_S,
                                    max_variables=ORACLE_MAX_VARIABLES)
    return "infeasible", fewest.fewest


class RunNowController:
    def wants(self, active: Sequence[JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        return {id(st): (True, "RunNow") for st in active}


# ---------------------------------------------------------------- the engine

def _check_inputs(jobs: Sequence[SimJob], actual: IntensitySeries) -> None:
    if not jobs:
        raise SimInputError("no jobs to simulate")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise SimInputError("job names must be unique")
    for j in jobs:
        if j.submit < actual.start or j.deadline > actual.end:
            raise SimInputError(f"job {j.name!r}: [{format_time(j.submit)}, {format_time(j.deadline)}] is not inside "
                                f"the intensity series [{format_time(actual.start)}, {format_time(actual.end)})")
        if j.submit + j.duration > j.deadline:
            raise SimInputError(f"job {j.name!r}: deadline is before submit + duration")


def _controller(policy: SimPolicy, states: Sequence[JobState], actual: IntensitySeries,
                forecaster: Forecaster, t0: datetime) -> Controller:
    if policy.name == "greenml":
        return GreenmlController(policy, forecaster, actual)
    if policy.name == "run-now":
        return RunNowController()
    if policy.name == "threshold":
        return ThresholdController(policy, actual)
    if policy.name == "oracle":
        return oracle_controller(policy, states, actual, t0)
    return forecast_window_controller(policy, forecaster, lwa=policy.name == "lwa")


def _tick_at_or_after(t: datetime, origin: datetime, step: timedelta) -> datetime:
    k = math.ceil((t - origin) / step - 1e-9)
    return origin + step * k


def simulate(jobs: Sequence[SimJob], actual: IntensitySeries, forecaster: Forecaster, policy: SimPolicy, *,
             on_progress: Callable[[float], None] | None = None) -> SimResult:
    """Run ``jobs`` under ``policy``; decisions at every ``policy.step`` on the actual series' grid."""
    _check_inputs(jobs, actual)
    wall0 = time.perf_counter()
    step = policy.step
    states = [JobState(j, to_requirements(j, policy)) for j in jobs]
    t0 = _tick_at_or_after(min(j.submit for j in jobs), actual.start, step)
    ctl = _controller(policy, states, actual, forecaster, t0)
    horizon_end = max(j.deadline for j in jobs) + max(j.duration for j in jobs) + step
    order = sorted(states, key=lambda s: s.job.submit)
    nxt = 0
    live: list[JobState] = []
    used = peak = 0
    t = t0
    span = (horizon_end - t0).total_seconds()
    last_report = wall0
    while (nxt < len(order) or live) and t <= horizon_end:
        # 1. runs that finished since the last tick end exactly when the work is done
        for st in [s for s in live if s.running]:
            finish = st.finish_time()
            if finish <= t + EPS:
                st.stop(finish)
                st.done_seconds, st.done = st.job.duration.total_seconds(), True
                used -= st.job.gpus
                if isinstance(ctl, GreenmlController):
                    ctl.forget(st)
        live = [s for s in live if not s.done]
        # 2. admissions
        while nxt < len(order) and order[nxt].job.submit <= t + EPS:
            order[nxt].admitted = True
            live.append(order[nxt])
            nxt += 1
        if not live:
            if nxt < len(order):
                t = _tick_at_or_after(order[nxt].job.submit, actual.start, step)
            continue
        # 3. decisions, then the cluster applies them (stops first, then starts by urgency)
        wants = ctl.wants(live, t)
        capped = getattr(ctl, "capped", {})
        for st in live:
            run, why = wants[id(st)]
            st.reason = why
            if st.running and not run and st.job.interruptible:
                st.stop(t, capped[id(st)][0] if id(st) in capped else None)
                used -= st.job.gpus
            elif st.running and id(st) in capped:
                st.recap(t, *capped[id(st)])
        starters = sorted((s for s in live if not s.running and wants[id(s)][0]),
                          key=lambda s: (s.latest_start(t, timedelta(0)), s.job.name))
        for st in starters:
            if policy.capacity_gpus is not None and used + st.job.gpus > policy.capacity_gpus:
                st.reason = "CapacityQueued"
                continue
            st.start(t, capped[id(st)][1] if id(st) in capped else None)
            used += st.job.gpus
        peak = max(peak, used)
        t += step
        if on_progress is not None and time.perf_counter() - last_report > 1.0:
            last_report = time.perf_counter()
            on_progress(min(1.0, (t - t0).total_seconds() / span))
    for st in live:    # ran out of time (only when capacity starves a job): close what is open
        if st.running:
            st.stop(t)
    results = _results(states, actual, policy)
    missed = any(not r.deadline_met and not r.unplaceable for r in results)
    feasibility, fewest = offline_feasibility(policy, states, t0) if missed else ("feasible", 0)
    notes = list(getattr(ctl, "notes", ()))
    unplaceable = [r.name for r in results if r.unplaceable]
    if unplaceable:
        notes.append(f"unplaceable (more GPUs than the capacity of {policy.capacity_gpus}; never run, "
                     f"not counted as savings): {', '.join(unplaceable)}")
    if feasibility == "infeasible":
        notes.append("no schedule meets every deadline under the capacity (exact, slot grid); at best "
                     + (f"{fewest} deadline(s) missed" if fewest is not None else "an undecided number missed"))
    return SimResult(policy, results, peak, time.perf_counter() - wall0, t0, t, actual, notes, feasibility, fewest,
                     getattr(ctl, "basis", None), getattr(ctl, "fallback_reason", None))


def _results(states: Sequence[JobState], actual: IntensitySeries, policy: SimPolicy) -> list[JobResult]:
    acc = Accountant(actual)
    out = []
    for st in states:
        j = st.job
        run_now = acc.grams(j.power_kw, [(j.submit, j.submit + j.duration)])
        if policy.lwa_quirks and j.submit + policy.step + j.duration <= actual.end:
            run_now = min(run_now, acc.grams(j.power_kw, [(j.submit + policy.step, j.submit + policy.step + j.duration)]))
        unplaceable = policy.capacity_gpus is not None and j.gpus > policy.capacity_gpus
        if st.capped:
            # each segment at its cap's draw; complete when its work (at maxWatts) is done
            runs = tuple((s, e) for s, e, _ in st.segments)
            caps = tuple(c for _, _, c in st.segments)
            grams = sum(acc.grams(j.power_kw * st.req.cap.level(c).power, [(s, e)]) for s, e, c in st.segments)
            completed = st.done_seconds >= j.duration.total_seconds() - 1e-6
            energy = float(st.usage.get("energyKwh", 0.0))
        else:
            runs, caps, energy = tuple(_merge_runs(st.runs)), None, None
            grams = acc.grams(j.power_kw, runs)
            completed = sum((e - s).total_seconds() for s, e in runs) >= j.duration.total_seconds() - 1e-6
        met = completed and all(s >= j.submit - EPS and e <= j.deadline + EPS for s, e in runs)
        out.append(JobResult(j.name, runs, grams, run_now, met, completed,
                             "Unplaceable" if unplaceable else st.reason, j.gpus, j.watts, unplaceable, caps, energy))
    return out


def _merge_runs(runs: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for s, e in sorted(runs):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def usage_profile(result: SimResult, jobs: Sequence[SimJob]) -> list[tuple[datetime, int]]:
    """GPUs in use at every run boundary (for the capacity invariant and the picture)."""
    gpus = {j.name: j.gpus for j in jobs}
    events = sorted([(s, gpus[r.name]) for r in result.jobs for s, _ in r.runs]
                    + [(e, -gpus[r.name]) for r in result.jobs for _, e in r.runs], key=lambda x: (x[0], x[1]))
    level, out = 0, []
    for t, d in events:
        level += d
        out.append((t, level))
    return out
