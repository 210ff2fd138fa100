"""A year of simulated replay with random provider outages and operator restarts.

The simulator drives the operator's own decision path (``PlanBoard`` + ``decide``). Here
that path is put under faults:

- **outages**: the forecast source raises ``SignalError`` inside random outage spans
  (a few hours to two days, ~10 % of the year). The sim zone is unknown to the embedded
  profile, so there is no fallback at all — the harshest case: jobs must fail open and
  start by their latest safe start;
- **restarts**: at random ticks the controller is replaced by a fresh one (a new board,
  no cached plans) — as after a SIGKILL; progress survives as it does in status.

What must hold: every job completes, zero missed deadlines, savings over run-now still
positive. Data: Electricity Maps DE hourly 2023 (``/work/shared/data``, skipped when absent).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

import pytest

from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.file import load_intensity_csv
from greenml.sim import forecasts
from greenml.sim import shifting as simshift
from greenml.sim.jobs import SimJob
from tests.conftest import shared_data_file

YEAR = datetime(2023, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(hours=1)


@dataclass
class FaultPlan:
    """Seeded outage spans and restart ticks over [start, end)."""

    outages: list[tuple[datetime, datetime]]
    restarts: set[datetime]
    served: int = 0
    refused: int = 0
    restarted: int = 0

    @classmethod
    def random(cls, start: datetime, end: datetime, seed: int, *, outage_fraction: float = 0.10,
               restarts_per_week: float = 2.0) -> "FaultPlan":
        rng = random.Random(seed)
        hours = int((end - start) / STEP)
        outages, down = [], 0
        while down < outage_fraction * hours:
            length = rng.randint(3, 48)
            at = start + STEP * rng.randrange(hours - length)
            outages.append((at, at + STEP * length))
            down += length
        n_restarts = int(restarts_per_week * hours / (24 * 7))
        restarts = {start + STEP * rng.randrange(hours) for _ in range(n_restarts)}
        return cls(sorted(outages), restarts)

    def down(self, now: datetime) -> bool:
        return any(a <= now < b for a, b in self.outages)


def faulty_forecaster(inner: forecasts.Forecaster, faults: FaultPlan) -> forecasts.Forecaster:
    def forecast(zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        if faults.down(now):
            faults.refused += 1
            raise SignalError("injected provider outage", reason="ServerError")
        faults.served += 1
        return inner(zone, now, horizon)
    return forecast


class RestartingController(simshift.GreenmlController):
    """The greenml controller, replaced by a fresh one (empty board) at each restart tick.
    (A subclass only so the simulator's isinstance check calls ``forget`` on it.)"""

    def __init__(self, policy: simshift.SimPolicy, forecaster: forecasts.Forecaster, actual: IntensitySeries,
                 faults: FaultPlan) -> None:
        self.args = (policy, forecaster, actual)
        self.faults = faults
        self.inner = simshift.GreenmlController(*self.args)

    def forget(self, st: simshift.JobState) -> None:
        self.inner.forget(st)

    def wants(self, active: Sequence[simshift.JobState], now: datetime) -> dict[int, tuple[bool, str]]:
        if now in self.faults.restarts:
            self.faults.restarted += 1
            self.inner = simshift.GreenmlController(*self.args)
        return self.inner.wants(active, now)


def year_of_jobs(seed: int, n: int = 365) -> list[SimJob]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        submit = YEAR + timedelta(hours=rng.randrange(0, 364 * 24))
        duration = timedelta(hours=rng.choice([1, 2, 3, 4, 6, 8, 12]))
        slack = timedelta(hours=rng.choice([2, 6, 12, 24, 48]))
        jobs.append(SimJob(f"j{i:03d}", submit, duration, submit + duration + slack, gpus=rng.choice([1, 2, 4, 8]),
                           interruptible=rng.random() < 0.5, min_run=timedelta(hours=1)))
    return jobs


@pytest.fixture(scope="module")
def year() -> IntensitySeries:
    path = shared_data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    series = load_intensity_csv(path, column="ci_lca_gco2eq_per_kwh", source="electricitymaps DE")
    return series.window(YEAR - timedelta(days=1), YEAR + timedelta(days=367))


def replay(jobs: list[SimJob], actual: IntensitySeries, faults: FaultPlan | None, monkeypatch) -> dict:
    policy = simshift.SimPolicy(name="greenml", step=STEP, horizon=timedelta(days=3))
    fc = forecasts.noisy(actual, 0.10, seed=7)
    if faults is not None:
        fc = faulty_forecaster(fc, faults)
        monkeypatch.setattr(simshift, "_controller",
                            lambda pol, states, act, forecaster, t0: RestartingController(pol, forecaster, act, faults))
    result = simshift.simulate(jobs, actual, fc, policy)
    monkeypatch.undo()
    return result.summary()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_year_with_outages_and_restarts_meets_every_deadline(year, seed, monkeypatch):
    jobs = year_of_jobs(seed)
    faults = FaultPlan.random(YEAR, YEAR + timedelta(days=365), seed)
    clean = replay(jobs, year, None, monkeypatch)
    faulty = replay(jobs, year, faults, monkeypatch)

    assert faults.refused > 100 and faults.restarted >= 50, "the faults must actually fire"
    assert faulty["completed"] == faulty["jobs"] == len(jobs)
    assert faulty["deadlines_met"] == len(jobs), f"missed deadlines under faults: {faulty}"
    assert clean["deadlines_met"] == len(jobs)
    assert faulty["savings_percent"] > 0, faulty
    # outages cost savings (jobs wait blind, then run at their latest start), never correctness
    assert faulty["savings_percent"] <= clean["savings_percent"] + 1.0, (clean, faulty)


def test_fault_plan_is_seeded_and_covers_the_asked_fraction():
    a = FaultPlan.random(YEAR, YEAR + timedelta(days=365), 5)
    b = FaultPlan.random(YEAR, YEAR + timedelta(days=365), 5)
    assert a.outages == b.outages and a.restarts == b.restarts
    down_hours = sum((e - s) / STEP for s, e in a.outages)
    assert 0.10 * 8760 <= down_hours <= 0.10 * 8760 + 48
    assert a.down(a.outages[0][0]) and not a.down(a.outages[0][0] - STEP * 1000 * 1000)
