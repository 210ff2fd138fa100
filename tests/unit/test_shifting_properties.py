"""Hypothesis properties of the time-shifting planner (the guarantees in its docstring)."""
from __future__ import annotations

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenml.planning import shifting as sh
from greenml.planning.shifting import JobSpec, plan, usage

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORCED = {sh.CAPACITY_FORCED, sh.DEADLINE_FORCED, sh.DEADLINE_AT_RISK}


@st.composite
def job_specs(draw, i: int, *, running: bool = True, max_intensity: bool = True) -> JobSpec:
    k = draw(st.integers(0, 14))
    pinned = draw(st.integers(0, k)) if running and draw(st.booleans()) else 0
    return JobSpec(
        name=f"j{i}", remaining=k, latest_end=draw(st.integers(0, 30)),
        earliest=0 if pinned else draw(st.integers(0, 5)),
        gpus=draw(st.integers(0, 4)), power_kw=draw(st.floats(0.1, 5)),
        interruptible=draw(st.booleans()), min_run=draw(st.sampled_from([1, 1, 2, 3, 4])),
        pinned=pinned,
        max_intensity=draw(st.one_of(st.none(), st.floats(0, 100))) if max_intensity else None)


@st.composite
def scenarios(draw, *, running: bool = True, max_intensity: bool = True, capacity: bool = True):
    n = draw(st.integers(1, 5))
    jobs = [draw(job_specs(i, running=running, max_intensity=max_intensity)) for i in range(n)]
    values = st.integers(0, 100).map(float) if draw(st.booleans()) else st.floats(0, 1000)
    f = np.array(draw(st.lists(values, min_size=1, max_size=36)))
    cap = draw(st.one_of(st.none(), st.integers(1, 8).map(float))) if capacity else None
    return jobs, f, cap


def horizon(jobs: list[JobSpec]) -> int:
    return max(1, max(max(j.latest_end, j.earliest + j.remaining) for j in jobs))


@SETTINGS
@given(scenarios())
def test_shape_invariants(sc):
    jobs, f, cap = sc
    plans = plan(jobs, f, step_hours=0.25, capacity_gpus=cap)
    assert [p.name for p in plans] == [j.name for j in jobs]
    for j, p in zip(jobs, plans):
        if p.unplaceable:                                               # more GPUs than the capacity
            assert cap is not None and j.gpus > cap and p.runs == () and p.savings_fraction == 0.0
            continue
        if p.at_risk and not p.runs:                                    # no room within the horizon yet
            assert p.savings_fraction == 0.0
            continue
        assert p.slots == j.remaining                                   # all work planned
        flat = [x for r in p.runs for x in r]
        assert flat == sorted(flat) and all(s < e for s, e in p.runs)   # sorted, merged, disjoint
        assert all(p.runs[i][1] < p.runs[i + 1][0] for i in range(len(p.runs) - 1))
        if j.remaining and not j.interruptible:
            assert len(p.runs) == 1                                      # never split
        if p.runs and j.earliest + j.remaining <= j.latest_end:              # feasible at all
            assert p.runs[0][0] >= j.earliest
            assert p.runs[-1][1] <= j.latest_end or p.at_risk              # at risk: its room is later
        if j.interruptible and p.reason not in (sh.DEADLINE_FORCED, sh.PINNED) and j.remaining - j.pinned >= 2 * j.min_run:
            # every run after the running prefix is at least min_run long
            tail = [(max(s, j.earliest + j.pinned), e) for s, e in p.runs if e > j.earliest + j.pinned]
            assert all(e - s >= j.min_run for s, e in tail[1 if j.pinned else 0:]), p.runs
        if p.reason == sh.DEADLINE_FORCED:
            assert j.earliest + j.remaining > j.latest_end and p.at_risk
            if cap is None:                                             # with one: its earliest room
                assert p.runs == ((j.earliest, j.earliest + j.remaining),)


@SETTINGS
@given(scenarios(running=False))
def test_capacity_never_exceeded_unless_forced(sc):
    jobs, f, cap = sc
    plans = plan(jobs, f, step_hours=0.25, capacity_gpus=cap if cap is not None else 4.0)
    cap = cap if cap is not None else 4.0
    if not any(p.reason in FORCED for p in plans):
        assert usage(plans, jobs, horizon(jobs)).max() <= cap


@SETTINGS
@given(scenarios(max_intensity=False, capacity=False))
def test_never_worse_than_running_now_on_a_perfect_forecast(sc):
    jobs, f, _ = sc
    for p in plan(jobs, f, step_hours=0.25):
        assert p.grams <= p.run_now_grams * (1 + 1e-12) + 1e-9


@SETTINGS
@given(scenarios())
def test_max_intensity_honoured_unless_relaxed(sc):
    jobs, f, cap = sc
    fx = sh._extend(f, horizon(jobs))
    for j, p in zip(jobs, plan(jobs, f, step_hours=0.25, capacity_gpus=cap)):
        if j.max_intensity is not None and p.reason in (sh.PLANNED, sh.RUN_NOW) and not j.pinned:
            assert all(fx[s:e].max() <= j.max_intensity for s, e in p.runs)


@SETTINGS
@given(scenarios())
def test_inputs_not_mutated_and_plan_is_deterministic(sc):
    jobs, f, cap = sc
    jobs_before, f_before = copy.deepcopy(jobs), f.copy()
    reserved = np.ones(3)
    first = plan(jobs, f, step_hours=0.25, capacity_gpus=cap, reserved_gpus=reserved)
    assert jobs == jobs_before and np.array_equal(f, f_before) and np.array_equal(reserved, np.ones(3))
    assert plan(list(jobs), f, step_hours=0.25, capacity_gpus=cap, reserved_gpus=reserved) == first
