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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Mapping

import numpy as np

from greenml.planning import shifting
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

    @property
    def planned_start(self) -> datetime | None:
        return self.windows[0][0] if self.windows else None

    @property
    def savings_percent(self) -> float:
        if self.run_now_grams <= 0:
            return 0.0
        return round(100.0 * (self.run_now_grams - self.expected_grams) / self.run_now_grams, 2)


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


class PlanBoard:
    def __init__(self, defaults: Defaults, source: CarbonSource, *,
                 replan_interval: timedelta = timedelta(minutes=15),
                 horizon: timedelta = timedelta(days=7),
                 capacity: Callable[[], float | None] | float | None = None,
                 clock_cost: Callable[[], float] | None = None) -> None:
        self.defaults = defaults
        self.source = source
        self.replan_interval = replan_interval
        self.horizon = horizon
        self._capacity = capacity
        self._entries: dict[Key, Entry] = {}
        self._plans: dict[Key, PlannedJob] = {}
        self._failures: dict[str, ForecastFailure] = {}
        self._planned_at: datetime | None = None
        self._dirty = True
        self._lock = threading.RLock()
        self._perf = clock_cost
        self.stats = BoardStats()

    # ------------------------------------------------------------ membership
    def observe(self, req: JobRequirements, progress: Progress, running: bool) -> None:
        entry = Entry(req, progress, running)
        with self._lock:
            old = self._entries.get(req.key)
            if old is None or old.req != req or old.running != running or old.progress.runs != progress.runs:
                self._dirty = True
            self._entries[req.key] = entry

    def forget(self, key: Key) -> None:
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._plans.pop(key, None)
                self._dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def capacity(self) -> float | None:
        c = self._capacity
        return c() if callable(c) else c

    # ------------------------------------------------------------ planning
    def stale(self, now: datetime) -> bool:
        return (self._dirty or self._planned_at is None or bool(self._failures)
                or now - self._planned_at >= self.replan_interval)

    def plan_for(self, key: Key, now: datetime) -> tuple[PlannedJob | None, ForecastFailure | None]:
        """The job's plan (None when its zone has no forecast, with the failure)."""
        with self._lock:
            if self.stale(now) or key not in self._plans:
                self.replan(now)
            entry = self._entries.get(key)
            failure = self._failures.get(entry.req.zone) if entry else None
            return self._plans.get(key), failure

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
        import time

        t0 = time.perf_counter()
        with self._lock:
            step = self.defaults.step
            step_s = step.total_seconds()
            max_slots = max(1, int(self.horizon.total_seconds() // step_s))
            jobs: list[shifting.JobSpec] = []
            keys: list[Key] = []
            for key, e in self._entries.items():
                spec = to_job_spec(e, now, self.defaults, max_slots)
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
            plannable = [(k, j) for k, j in zip(keys, jobs) if j.zone in forecasts]
            plans = shifting.plan([j for _, j in plannable], forecasts,
                                  step_hours=step_s / 3600.0, capacity_gpus=self.capacity()) if plannable else []
            self._plans = {}
            for (key, _), p in zip(plannable, plans):
                zone = self._entries[key].req.zone
                s = series_by_zone[zone]
                windows = tuple((now + step * a, now + step * b) for a, b in p.runs)
                self._plans[key] = PlannedJob(windows, p.grams, p.run_now_grams, p.reason,
                                              s.source, s.estimate, now)
            self._failures = failures
            self._planned_at = now
            self._dirty = False
            self.stats.replans += 1
            self.stats.last_jobs = len(jobs)
            self.stats.last_duration_s = time.perf_counter() - t0


def to_job_spec(e: Entry, now: datetime, defaults: Defaults, max_slots: int) -> shifting.JobSpec | None:
    """A board entry on the slot grid starting at ``now`` (slot 0 = [now, now+step))."""
    step_s = defaults.step.total_seconds()
    req, progress = e.req, e.progress
    remaining_s = remaining_work(req, progress, now).total_seconds()
    remaining = int(math.ceil(remaining_s / step_s - 1e-9))
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
    )
