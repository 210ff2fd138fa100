"""The plan board: every waiting TrainingJob planned together, against the GPU capacity.

One board per operator (and per simulation). Handlers report what they see
(``observe``/``forget``); ``plan_for`` answers with the job's absolute run windows,
replanning when the plan is older than ``replan_interval``, when the set of jobs
changed, or when the last forecast failed. The board never talks to Kubernetes; the
forecast comes from a ``CarbonSource``. ``now`` is always a parameter.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

import numpy as np

from greenml.planning import power, shifting
from greenml.services.trainingjob import Defaults, JobRequirements, Progress, remaining_work
from greenml.signals.base import CarbonSource, IntensitySeries, SignalError

Key = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    req: JobRequirements
    progress: Progress
    running: bool


@dataclass(frozen=True)
class PlannedJob:
    windows: tuple[tuple[datetime, datetime], ...]
    expected_grams: float
    run_now_grams: float
    reason: str
    source: str
    estimate: bool
    computed_at: datetime
    link: str = "provider"                              # which fallback-chain link served the forecast
    fallback: tuple[tuple[str, str], ...] = ()          # (link, reason) of each link that failed before it
    # capacity verdicts from the planner (shifting.JobPlan): controllers turn them into the
    # DeadlineAtRisk / Unplaceable conditions and Events
    at_risk: bool = False        # no schedule found that meets this deadline within the capacity
    unplaceable: bool = False    # more GPUs than the capacity: never started, no savings
    #: carbon-aware power caps (planning.power): the cap per GPU of each window, aligned with
    #: ``windows`` (None: uncapped); () when the plan sets none
    caps: tuple[float | None, ...] = ()

    @property
    def planned_start(self) -> datetime | None:
        return self.windows[0][0] if self.windows else None

    @property
    def savings_percent(self) -> float:
        if self.run_now_grams <= 0:
            return 0.0
        return round(100.0 * (self.run_now_grams - self.expected_grams) / self.run_now_grams, 2)


@dataclass(frozen=True)
class ZoneSignal:
    """What the last replan saw of a zone's forecast (for metrics and status)."""

    source: str
    kind: str
    link: str
    fallback: tuple[tuple[str, str], ...]
    now: float                # the value of the slot starting now
    min: float
    max: float
    at: datetime
    info: Any = None          # greenml.signals.chain.SignalInfo: kind changed, short forecast, …


def zone_signal(series: IntensitySeries, values: np.ndarray, now: datetime) -> ZoneSignal:
    from greenml.signals.chain import describe

    fallback = tuple((str(f.get("link", "?")), str(f.get("reason", "Unknown"))) for f in series.meta.get("fallback") or ())
    return ZoneSignal(series.source, series.kind, str(series.meta.get("link", "provider")), fallback,
                      float(values[0]), float(values.min()), float(values.max()), now, describe(series))


@dataclass(frozen=True)
class ForecastFailure:
    zone: str
    reason: str
    message: str


@dataclass
class BoardStats:
    replans: int = 0
    last_duration_s: float = 0.0
    last_jobs: int = 0
    last_kept: int = 0        # plans carried over unchanged by the last replan (incremental path)
    fill_ins: int = 0         # arrivals planned alone between full replans (see PlanBoard.within_gap)


@dataclass(frozen=True)
class _Basis:
    """What a plan was made from, to tell whether it still holds (see ``PlanBoard._keepable``)."""

    entry: Entry
    clamped: bool             # the deadline lay beyond the horizon when it was planned
    capped: bool = False      # planned under a binding capacity: not its own optimum


class PlanBoard:
    def __init__(self, defaults: Defaults, source: CarbonSource, *,
                 replan_interval: timedelta = timedelta(minutes=15),
                 horizon: timedelta = timedelta(days=7),
                 capacity: Callable[[], float | None] | float | None = None,
                 min_replan_gap: timedelta = timedelta(seconds=2),
                 clock_cost: Callable[[], float] | None = None) -> None:
        self.defaults = defaults
        self.source = source
        self.replan_interval = replan_interval
        self.horizon = horizon
        self._capacity = capacity
        self._entries: dict[Key, Entry] = {}
        self._gpus_asked = 0                          # Σ GPUs of the entries (capacity_binds)
        self._plans: dict[Key, PlannedJob] = {}
        # entries with no plan yet, in arrival order: what the next fill-in plans
        self._unplanned: dict[Key, None] = {}
        # GPUs the plans in force take per slot of the last replan's grid (fill-ins only;
        # built on the first fill-in after a replan, then kept up to date incrementally)
        self._reserved: np.ndarray | None = None
        self._failures: dict[str, ForecastFailure] = {}
        self._planned_at: datetime | None = None      # when the last full replan ran
        self._origin: datetime | None = None          # its grid origin (slot 0's start)
        self._basis: dict[Key, _Basis] = {}
        self._last_forecast: dict[str, tuple[datetime, np.ndarray]] = {}
        self._estimate: dict[str, bool] = {}
        self.min_replan_gap = min_replan_gap
        self._dirty = True
        self._changed: set[Key] = set()               # keys whose plan changed since take_changed()
        self._lock = threading.RLock()
        self._perf = clock_cost
        self.stats = BoardStats()
        self.signals: dict[str, ZoneSignal] = {}   # by zone, from the last replan

    # ------------------------------------------------------------ membership
    def observe(self, req: JobRequirements, progress: Progress, running: bool) -> None:
        entry = Entry(req, progress, running)
        with self._lock:
            old = self._entries.get(req.key)
            if old is None or old.req != req or old.running != running or old.progress.runs != progress.runs:
                self._dirty = True
                if old is not None and old.req.gpus != req.gpus and req.key in self._plans:
                    self._reserved = None
            self._entries[req.key] = entry
            self._gpus_asked += req.gpus - (old.req.gpus if old is not None else 0)
            if req.key not in self._plans:
                self._unplanned[req.key] = None

    def forget(self, key: Key) -> None:
        with self._lock:
            if (gone := self._entries.pop(key, None)) is not None:
                self._gpus_asked -= gone.req.gpus
                if self._plans.pop(key, None) is not None:
                    self._reserved = None
                self._unplanned.pop(key, None)
                self._basis.pop(key, None)
                self._dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._entries)

    def capacity(self) -> float | None:
        c = self._capacity
        return c() if callable(c) else c

    def binding_capacity(self) -> float | None:
        """The capacity when it can bind, else None: while every job's GPUs together fit
        (shifting.capacity_binds), jobs do not interact and the board plans as without one —
        a replan keeps unchanged plans and a fill-in needs no reservation."""
        c = self.capacity()
        return c if c is not None and self._gpus_asked > c else None

    def _hold(self) -> int:
        """Slots until the next periodic replan: how long a running job's GPUs are kept taken."""
        return max(1, int(math.ceil(self.replan_interval / self.defaults.step - 1e-9)))

    # ------------------------------------------------------------ planning
    def stale(self, now: datetime) -> bool:
        return (self._dirty or self._planned_at is None or bool(self._failures)
                or now - self._planned_at >= self.replan_interval)

    def within_gap(self, now: datetime) -> bool:
        """Too soon after the last full replan for another one (only the job set changed).

        The gap is ``min_replan_gap`` or four times the last replan's duration, whichever is
        longer: an arrival storm of N objects costs a few full replans, not N (O(N²))."""
        if self._planned_at is None or self._failures:
            return False
        gap = max(self.min_replan_gap.total_seconds(), 4.0 * self.stats.last_duration_s)
        since = (now - self._planned_at).total_seconds()
        return 0 <= since < gap and now - self._planned_at < self.replan_interval

    def plan_for(self, key: Key, now: datetime) -> tuple[PlannedJob | None, ForecastFailure | None]:
        """The job's plan (None when its zone has no forecast, with the failure)."""
        with self._lock:
            if self.stale(now) and self.within_gap(now):
                if key not in self._plans and not self._fill_in(now):
                    self.replan(now)
            elif self.stale(now) or key not in self._plans:
                self.replan(now)
            entry = self._entries.get(key)
            failure = self._failures.get(entry.req.zone) if entry else None
            return self._plans.get(key), failure

    def take_changed(self) -> set[Key]:
        """The jobs whose plan changed (windows, figures, source) since the last call: a
        replan asked for by one job can move others, which are then woken."""
        with self._lock:
            out, self._changed = self._changed, set()
            return out

    def invalidate(self) -> None:
        """Replan at the next ask (the capacity changed)."""
        with self._lock:
            self._dirty = True

    def next_replan(self) -> datetime | None:
        """When the periodic replan falls due (None: never planned)."""
        return None if self._planned_at is None else self._planned_at + self.replan_interval

    def cap_for(self, key: Key, now: datetime, *, forced: bool = False) -> float | None:
        """The GPU power cap (W per GPU) to publish on the job's pods now, None for none: the
        plan's cap for the window holding ``now`` (carbon-aware), the static cap, or maxWatts
        when the deadline forces the run (``forced``) or there is no plan. Pure: see
        planning.power.cap_to_publish."""
        with self._lock:
            entry, plan = self._entries.get(key), self._plans.get(key)
            if entry is None:
                return None
            return power.cap_to_publish(entry.req.cap, plan.windows if plan else None,
                                        plan.caps if plan else (), now, forced=forced)

    def failures(self) -> Mapping[str, ForecastFailure]:
        return dict(self._failures)

    def forecast_for(self, zone: str, now: datetime, n: int) -> tuple[np.ndarray, IntensitySeries]:
        step = self.defaults.step
        series = self.source.forecast(zone, now, step * n)
        values = series.resample(now, step, n)
        if not np.all(np.isfinite(values)):
            raise SignalError(f"forecast for {zone} has gaps", reason="Malformed")
        return values, series

    def replan(self, now: datetime) -> None:
        """Plan every job on the forecasts as issued now.

        Incremental path: without a capacity limit jobs do not interact, so a waiting job
        whose entry, deadline horizon and forecast (over its whole feasible range) are
        unchanged keeps its plan — re-planning it would pick the same placement, because
        the old optimum still lies in the (smaller) feasible set that is left. Running
        non-interruptible jobs keep theirs too (decide() never stops them). Everything
        else is planned afresh; with a capacity limit, every job is.
        """
        import time

        t0 = time.perf_counter()
        with self._lock:
            step = self.defaults.step
            step_s = step.total_seconds()
            # the plan lives on the planning grid (slot 0 = the slot holding `now`): a replan
            # that finds the same placement gives byte-identical windows, whenever it runs
            real_now, now = now, grid_origin(now, step)
            max_slots = max(1, int(self.horizon.total_seconds() // step_s))
            capacity = self.binding_capacity()
            hold = self._hold() if capacity is not None else 0
            jobs: list[shifting.JobSpec] = []
            keys: list[Key] = []
            for key, e in self._entries.items():
                spec = to_job_spec(e, now, self.defaults, max_slots, hold)
                if spec is not None:
                    jobs.append(spec)
                    keys.append(key)
            n = max([max(j.latest_end, j.earliest + j.remaining) for j in jobs] + [1])
            zones = sorted({j.zone for j in jobs})
            forecasts: dict[str, np.ndarray] = {}
            series_by_zone: dict[str, IntensitySeries] = {}
            failures: dict[str, ForecastFailure] = {}
            for z in zones:
                try:
                    forecasts[z], series_by_zone[z] = self.forecast_for(z, now, n)
                except SignalError as exc:
                    failures[z] = ForecastFailure(z, exc.reason, str(exc))
            self.signals = {z: zone_signal(series_by_zone[z], f, now) for z, f in forecasts.items()}
            same = {z: self._unchanged_slots(z, now, f) for z, f in forecasts.items()} if capacity is None else {}
            plans: dict[Key, PlannedJob] = {}
            todo: list[tuple[Key, shifting.JobSpec]] = []
            for key, j in zip(keys, jobs):
                if j.zone not in forecasts:
                    continue
                if capacity is None and self._keepable(key, j, now, same[j.zone], max_slots):
                    plans[key] = kept(self._plans[key], now)
                else:
                    todo.append((key, j))
            # the plans in force are the witness the capacity repair keeps first: promises stand
            incumbent = incumbent_slots(self._plans, todo, now, step) if capacity is not None else None
            fresh = shifting.plan([j for _, j in todo], forecasts, step_hours=step_s / 3600.0,
                                  capacity_gpus=capacity, incumbent=incumbent) if todo else []
            # carbon-aware power caps: windows and a cap per window, on the capacity left (planning.power)
            fresh, caps = power.refine([j for _, j in todo], fresh, forecasts, step_hours=step_s / 3600.0,
                                       capacity_gpus=capacity, levels=cap_levels(self._entries, todo))
            caps_of = {key: c for (key, _), c in zip(todo, caps) if c}
            for (key, _), p in zip(todo, fresh):
                entry = self._entries[key]
                s = series_by_zone[entry.req.zone]
                windows = tuple((now + step * a, now + step * b) for a, b in p.runs)
                sig = self.signals[entry.req.zone]
                plans[key] = PlannedJob(windows, p.grams, p.run_now_grams, p.reason, s.source, s.estimate, real_now,
                                        sig.link, sig.fallback, p.at_risk, p.unplaceable)
                if key in caps_of:
                    plans[key] = replace(plans[key], caps=caps_of[key])
                self._basis[key] = _Basis(entry, _deadline_slots(entry.req, now, self.defaults) > max_slots,
                                          capacity is not None)
            for key, p in plans.items():
                if not same_plan(self._plans.get(key), p):
                    self._changed.add(key)
            self._plans = plans
            self._unplanned = {k: None for k in self._entries if k not in plans}
            self._reserved = None
            self._last_forecast = {z: (now, f) for z, f in forecasts.items()}
            self._estimate = {z: series_by_zone[z].estimate for z in forecasts}
            self._failures = failures
            self._planned_at = real_now
            self._origin = now
            self._dirty = False
            self.stats.replans += 1
            self.stats.last_jobs = len(jobs)
            self.stats.last_kept = len(plans) - len(fresh)
            self.stats.last_duration_s = time.perf_counter() - t0

    def _fill_in(self, now: datetime) -> bool:
        """Plan only the jobs that have no plan yet, on the last replan's grid and forecasts and
        on the capacity the existing plans leave; the full replan follows after the gap.
        False when that is not possible (a zone without a cached forecast).

        Its cost follows the arrivals, not the board: the jobs without a plan are kept apart
        and the GPUs the plans take per slot are kept up to date as plans are added (at 5,000
        jobs, rebuilding both from every plan on each arrival cost 15 ms an arrival)."""
        then = self._origin
        step = self.defaults.step
        step_s = step.total_seconds()
        max_slots = max(1, int(self.horizon.total_seconds() // step_s))
        offset = int((now - then).total_seconds() // step_s)   # the slot holding now (it may start now)
        capacity = self.binding_capacity()
        hold = self._hold() if capacity is not None else 0
        new: list[tuple[Key, shifting.JobSpec]] = []
        done: list[Key] = []
        for key in self._unplanned:
            e = self._entries.get(key)
            if e is None or key in self._plans:
                done.append(key)
                continue
            spec = to_job_spec(e, then, self.defaults, max_slots, hold)
            if spec is None:
                continue
            if spec.zone not in self._last_forecast:
                return False
            new.append((key, replace(spec, earliest=max(spec.earliest, offset))))
        for key in done:
            self._unplanned.pop(key, None)
        if not new:
            return True
        forecasts = {z: f for z, (_, f) in self._last_forecast.items()}
        n = max(max(j.latest_end, j.earliest + j.remaining) for _, j in new)
        n = max([n] + [len(f) for f in forecasts.values()])
        reserved = None
        if capacity is not None:
            if self._reserved is None:
                self._reserved = np.zeros(n)
                for key, p in self._plans.items():
                    self._reserve(p, self._entries[key].req.gpus if key in self._entries else 0)
            reserved = _fit(self._reserved, n)
        plans = shifting.plan([j for _, j in new], forecasts, step_hours=step_s / 3600.0,
                              capacity_gpus=capacity, reserved_gpus=reserved)
        for (key, _), p in zip(new, plans):
            entry = self._entries[key]
            sig = self.signals.get(entry.req.zone)
            windows = tuple((then + step * a, then + step * b) for a, b in p.runs)
            plan = PlannedJob(windows, p.grams, p.run_now_grams, p.reason,
                              sig.source if sig else "unknown", self._estimate.get(entry.req.zone, False),
                              now, sig.link if sig else "provider", sig.fallback if sig else (),
                              p.at_risk, p.unplaceable)
            self._plans[key] = plan
            self._unplanned.pop(key, None)
            if self._reserved is not None:
                self._reserve(plan, entry.req.gpus)
            self._changed.add(key)
        self.stats.fill_ins += 1
        return True

    def _reserve(self, plan: PlannedJob, gpus: int) -> None:
        """Add a plan's GPUs to the fill-ins' per-slot reservation (on the last replan's grid)."""
        then, step_s = self._origin, self.defaults.step.total_seconds()
        for ws, we in plan.windows:
            a = max(0, int((ws - then).total_seconds() // step_s))
            b = int(math.ceil((we - then).total_seconds() / step_s))
            if b > len(self._reserved):
                self._reserved = _fit(self._reserved, b)
            self._reserved[a:b] += gpus

    def _unchanged_slots(self, zone: str, now: datetime, values: np.ndarray) -> int:
        """How many slots from now the new forecast equals the previous one (0: none / off grid)."""
        prev = self._last_forecast.get(zone)
        if prev is None:
            return 0
        then, old = prev
        offset_s = (now - then).total_seconds()
        step_s = self.defaults.step.total_seconds()
        if offset_s < 0 or offset_s % step_s:
            return 0
        k = int(offset_s // step_s)
        overlap = min(len(old) - k, len(values))
        if overlap <= 0:
            return 0
        # equal up to resampling round-off (the grid is re-integrated from a new origin each time)
        diff = np.flatnonzero(~np.isclose(old[k:k + overlap], values[:overlap], rtol=1e-9, atol=1e-9))
        return int(diff[0]) if diff.size else overlap

    def _keepable(self, key: Key, spec: shifting.JobSpec, now: datetime, unchanged: int, max_slots: int) -> bool:
        plan, basis = self._plans.get(key), self._basis.get(key)
        entry = self._entries[key]
        if plan is None or basis is None or basis.entry != entry or basis.clamped or basis.capped:
            return False
        if _deadline_slots(entry.req, now, self.defaults) > max_slots:
            return False
        if max(spec.latest_end, spec.remaining) > unchanged:
            return False
        if entry.running:
            return not entry.req.interruptible
        return not plan.windows or plan.windows[0][0] >= now


def kept(plan: PlannedJob, origin: datetime) -> PlannedJob:
    """A plan kept by a replan at ``origin``, as planning it afresh would say it: a single
    window that now starts at the origin is run-now (shifting.place), no longer planned."""
    if plan.reason == shifting.PLANNED and len(plan.windows) == 1 and plan.windows[0][0] == origin:
        return replace(plan, reason=shifting.RUN_NOW)
    return plan


def same_plan(a: PlannedJob | None, b: PlannedJob | None) -> bool:
    """Equal but for the computation time: nothing to tell the job."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    return {**vars(a), "computed_at": None} == {**vars(b), "computed_at": None}


def _fit(values: np.ndarray, n: int) -> np.ndarray:
    """``values`` cut or zero-padded to length ``n``."""
    if len(values) >= n:
        return values[:n]
    return np.concatenate([values, np.zeros(n - len(values))])


def grid_origin(now: datetime, step: timedelta) -> datetime:
    """The start of the planning slot holding ``now`` (slots are aligned to the epoch)."""
    step_s = step.total_seconds()
    ts = now.timestamp()
    return datetime.fromtimestamp(ts - (ts % step_s), now.tzinfo)


def incumbent_slots(plans: Mapping[Key, PlannedJob], todo: list[tuple[Key, shifting.JobSpec]],
                    origin: datetime, step: timedelta) -> dict[str, tuple[tuple[int, int], ...]]:
    """The plans in force as slot runs from ``origin`` (what is past is cut), by JobSpec name;
    plans off the grid are left out (the planner then places those jobs afresh)."""
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    step_s = step.total_seconds()
    for key, spec in todo:
        p = plans.get(key)
        if p is None or not p.windows or p.unplaceable:
            continue
        runs = []
        for ws, we in p.windows:
            a, b = (ws - origin).total_seconds() / step_s, (we - origin).total_seconds() / step_s
            if b <= 0:
                continue
            if abs(a - round(a)) > 1e-6 or abs(b - round(b)) > 1e-6:
                runs = []
                break
            runs.append((max(0, round(a)), round(b)))
        if runs:
            out[spec.name] = tuple(runs)
    return out


def cap_levels(entries: Mapping[Key, Entry], todo: list[tuple[Key, shifting.JobSpec]]) -> dict[str, tuple]:
    """Cap levels of the carbon-aware jobs in ``todo``, by planner job name."""
    out = {}
    for key, j in todo:
        cap = entries[key].req.cap if key in entries else None
        if cap is not None and cap.mode == "carbonAware":
            out[j.name] = cap.levels()
    return out


def _deadline_slots(req: JobRequirements, now: datetime, defaults: Defaults) -> int:
    return int((req.deadline - defaults.safety_margin - now).total_seconds() // defaults.step.total_seconds())


def to_job_spec(e: Entry, now: datetime, defaults: Defaults, max_slots: int, hold: int = 0) -> shifting.JobSpec | None:
    """A board entry on the slot grid starting at ``now`` (slot 0 = [now, now+step)).

    ``hold``: slots a running job keeps at least, run time left or not — its GPUs stay taken
    until the next replan (a job runs past its estimate until its Job finishes; when it does,
    the board replans at once). Without it a job past its estimate held no capacity, and a
    waiting job was started onto GPUs still in use (found on the e2e control plane: its pod
    Pending, unschedulable, behind two overrunning jobs)."""
    step_s = defaults.step.total_seconds()
    req, progress = e.req, e.progress
    remaining_s = remaining_work(req, progress, now).total_seconds()
    work = remaining_s / step_s
    remaining = int(math.ceil(work - 1e-9))
    if e.running and hold > remaining:
        remaining, work = hold, hold      # the GPUs held until the next replan: whole slots
    if remaining <= 0:
        return None
    latest_end = int((req.deadline - defaults.safety_margin - now).total_seconds() // step_s)
    latest_end = min(latest_end, max_slots)
    pinned = 0
    if e.running:
        if not req.interruptible:
            pinned = remaining
        elif progress.running_since is not None:
            left = req.min_run.total_seconds() - (now - progress.running_since).total_seconds()
            pinned = max(0, int(math.ceil(left / step_s - 1e-9)))
        if remaining_s <= 0:
            pinned = remaining          # past its estimate: decide() never pauses it
    return shifting.JobSpec(
        name=f"{req.namespace}/{req.name}",
        remaining=remaining,
        latest_end=latest_end,
        earliest=0,
        gpus=req.gpus,
        power_kw=req.power_kw,
        interruptible=req.interruptible,
        min_run=max(1, int(math.ceil(req.min_run.total_seconds() / step_s - 1e-9))),
        pinned=pinned,
        max_intensity=req.max_intensity,
        zone=req.zone,
        work=work if 0 < work < remaining else None,
    )
