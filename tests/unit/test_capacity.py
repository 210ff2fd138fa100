"""Deadlines under a GPU capacity (issue 14): the repair, the verdicts, the exact MILP.

- a deterministic reproduction: the urgency greedy alone breaks a deadline that a schedule
  keeps; the planner keeps it;
- promises stand: with the plan in force as incumbent, a newcomer that does not fit is the
  one at risk, and an at-risk job's plan never takes GPUs from another;
- properties (hypothesis) against the exact MILP: a job is flagged only when no schedule
  exists, a flagged-free plan set is a verified witness, and online (random arrivals,
  one slot executed per replan) no job that was never flagged misses its deadline.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenml.planning import capacity as cp
from greenml.planning import shifting as sh
from greenml.planning.shifting import JobSpec, plan

scipy = pytest.importorskip("scipy", reason="the exact MILP needs the 'exact' extra (scipy)")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def job(name: str, k: int, end: int, gpus: int, *, interruptible: bool = False, earliest: int = 0,
        pinned: int = 0) -> JobSpec:
    return JobSpec(name, remaining=k, latest_end=end, earliest=earliest, gpus=gpus, power_kw=float(gpus),
                   interruptible=interruptible, pinned=pinned)


# ------------------------------------------------------------------ the reproduction

TWO_ON_TWO = ([job("wide", 2, 4, 2), job("urgent", 2, 3, 2)], np.array([8.0, 6, 5, 1, 1, 3]))


def test_the_greedy_alone_breaks_a_deadline_that_a_schedule_keeps():
    """Two 2-GPU jobs on a 2-GPU cluster: `urgent` (least slack) goes first and takes the
    cheapest window (1, 3); `wide` then has no 2-slot window left before slot 4. Before the
    repair the planner answered CapacityForced for `wide` (planned over the capacity: the
    cluster queues it and it ends late); a schedule meeting both deadlines exists."""
    jobs, f = TWO_ON_TWO
    zones = sh._zones(f, 8)
    greedy = sh._Planner(zones, 1.0, np.full(8, 2.0))
    placed, failed = sh._greedy_pass(greedy, jobs, sh.urgency_order(jobs))
    assert [jobs[i].name for i in failed] == ["wide"] and placed[1][0] == ((1, 3),)
    assert cp.optimum(jobs, f, step_hours=1.0, capacity_gpus=2).status == "optimal"

    wide, urgent = plan(jobs, f, step_hours=1.0, capacity_gpus=2)
    assert (urgent.runs, wide.runs) == (((0, 2),), ((2, 4),))
    assert not wide.at_risk and not urgent.at_risk
    assert cp.verify(jobs, [wide, urgent], 2).ok


def test_the_repaired_plan_equals_the_exact_optimum_here():
    jobs, f = TWO_ON_TWO
    opt = cp.optimum(jobs, f, step_hours=1.0, capacity_gpus=2)
    plans = plan(jobs, f, step_hours=1.0, capacity_gpus=2)
    assert sum(p.grams for p in plans) == pytest.approx(opt.grams)
    assert {p.name: p.runs for p in plans} == dict(opt.runs)


# ------------------------------------------------------------------ promises and verdicts

def test_the_incumbent_decides_who_is_at_risk_the_newcomer():
    a, b = job("a", 2, 2, 2), job("b", 2, 2, 2)            # room for one of them only
    f = np.array([1.0, 1, 1, 1])
    for promised, newcomer in (("a", "b"), ("b", "a")):
        plans = {p.name: p for p in plan([a, b], f, step_hours=1.0, capacity_gpus=2,
                                           incumbent={promised: ((0, 2),)})}
        assert plans[promised].runs == ((0, 2),) and not plans[promised].at_risk
        assert plans[newcomer].at_risk and plans[newcomer].reason == sh.DEADLINE_AT_RISK
        assert plans[newcomer].runs == ((2, 4),)            # its earliest room: late, on no one's GPUs
    assert cp.demand_bound([a, b], 2) == cp.DemandViolation(0, 2, 8.0, 4.0)


def test_an_invalid_incumbent_is_ignored():
    a = job("a", 2, 4, 1)
    p, = plan([a], np.array([5.0, 1, 1, 5]), step_hours=1.0, capacity_gpus=1, incumbent={"a": ((3, 6),)})
    assert p.runs == ((1, 3),) and not p.at_risk


def test_running_work_keeps_its_gpus_and_the_newcomer_waits():
    running = job("running", 3, 3, 2, pinned=3)
    new = job("new", 1, 2, 1)
    pr, pn = plan([running, new], np.array([1.0, 1, 1, 1]), step_hours=1.0, capacity_gpus=2)
    assert pr.runs == ((0, 3),) and pr.reason == sh.PINNED
    assert pn.at_risk and pn.runs == ((3, 4),)


def test_verify_and_demand_bound():
    jobs = [job("a", 2, 3, 1), job("b", 1, 3, 1)]
    ok = [sh.JobPlan("a", ((0, 2),), 0, 0), sh.JobPlan("b", ((2, 3),), 0, 0)]
    assert cp.verify(jobs, ok, 1).ok and cp.demand_bound(jobs, 1) is None
    bad = [sh.JobPlan("a", ((0, 2),), 0, 0), sh.JobPlan("b", ((1, 2),), 0, 0)]
    assert cp.verify(jobs, bad, 1).over == (1,)
    late = [sh.JobPlan("a", ((0, 2),), 0, 0), sh.JobPlan("b", ((3, 4),), 0, 0)]
    assert cp.verify(jobs, late, 1).late == ("b",)
    assert cp.verify([job("x", 1, 2, 3)], [sh.JobPlan("x", (), 0, 0)], 2).unplaceable == ("x",)
    assert cp.demand_bound(jobs, 1, reserved_gpus=np.array([1.0])) == cp.DemandViolation(0, 3, 3.0, 2.0)


def test_the_milp_honours_min_run_and_pinned_prefixes():
    f = np.array([1.0, 9, 1, 9, 1, 1, 9, 9])
    j = JobSpec("m", remaining=4, latest_end=8, gpus=1, power_kw=1.0, interruptible=True, min_run=2)
    opt = cp.optimum([j], f, step_hours=1.0, capacity_gpus=1)
    assert opt.status == "optimal"
    assert all(e - s >= 2 for s, e in opt.runs["m"])
    assert opt.grams == pytest.approx(sh.plan([j], f, step_hours=1.0)[0].grams)
    pinned = replace(j, pinned=1, remaining=3)
    runs = cp.optimum([pinned], f, step_hours=1.0, capacity_gpus=1).runs["m"]
    assert runs[0][0] == 0 and sum(e - s for s, e in runs) == 3


def test_the_milp_says_infeasible_and_too_large():
    a, b = job("a", 2, 2, 2), job("b", 2, 2, 2)
    assert cp.optimum([a, b], np.ones(4), step_hours=1.0, capacity_gpus=2).status == "infeasible"
    big = [job(f"j{i}", 1, 50, 1, interruptible=True) for i in range(10)]
    assert cp.optimum(big, np.ones(50), step_hours=1.0, capacity_gpus=2, max_variables=100).status == "too_large"


# ------------------------------------------------------------------ properties

@st.composite
def instances(draw, *, arrivals: bool = False):
    n = draw(st.integers(1, 6))
    cap = draw(st.integers(1, 4))
    jobs = []
    for i in range(n):
        k = draw(st.integers(1, 4))
        e = draw(st.integers(0, 6)) if arrivals else 0
        jobs.append(JobSpec(f"j{i}", remaining=k, earliest=e, latest_end=e + k + draw(st.integers(0, 5)),
                            gpus=draw(st.integers(1, cap + 1)), power_kw=draw(st.floats(0.1, 3)),
                            interruptible=draw(st.booleans()), min_run=draw(st.sampled_from([1, 1, 2]))))
    f = np.array(draw(st.lists(st.integers(1, 50).map(float), min_size=4, max_size=18)))
    return jobs, f, cap


@SETTINGS
@given(instances(arrivals=True))
def test_at_risk_only_when_no_schedule_exists_and_otherwise_a_verified_witness(inst):
    jobs, f, cap = inst
    plans = plan(jobs, f, step_hours=1.0, capacity_gpus=cap)
    placeable = [j for j in jobs if j.gpus <= cap]
    opt = cp.optimum(placeable, f, step_hours=1.0, capacity_gpus=cap)
    for j, p in zip(jobs, plans):
        assert p.unplaceable == (j.gpus > cap)
    flagged = any(p.at_risk for p in plans)
    if opt.status == "optimal":
        assert not flagged
        v = cp.verify(jobs, plans, cap)
        assert v.ok, v
        # the repair keeps quality: never more grams than the optimum + the greedy's own gap
        assert sum(p.grams for p in plans) >= opt.grams - 1e-6
    else:
        assert opt.status == "infeasible"
        assert flagged
    if cp.demand_bound(placeable, cap) is not None:       # a proof of infeasibility
        assert opt.status == "infeasible"
    # at-risk plans run late but never on GPUs promised to others
    assert not cp.verify(jobs, plans, cap).over


def _online(jobs: list[JobSpec], f: np.ndarray, cap: int, horizon: int):
    """Arrivals over time; each slot the admitted jobs are replanned (the plan in force as
    incumbent) and slot 0 of the plan is executed. Returns per job: (done by deadline,
    ever flagged at risk)."""
    left = {j.name: j.remaining for j in jobs}
    started: set[str] = set()
    flagged: set[str] = set()
    finish: dict[str, int] = {}
    incumbent: dict[str, tuple] = {}
    for t in range(horizon):
        specs = []
        for j in jobs:
            if j.earliest <= t and left[j.name] > 0:
                running = j.name in started and not j.interruptible
                specs.append(replace(j, earliest=0, latest_end=j.latest_end - t, remaining=left[j.name],
                                     pinned=left[j.name] if running else 0))
        if not specs:
            continue
        plans = plan(specs, f[t:] if t < f.size else f[-1:], step_hours=1.0, capacity_gpus=cap, incumbent=incumbent)
        assert not cp.verify(specs, plans, cap).over            # never more GPUs than the cluster has
        flagged |= {p.name for p in plans if p.at_risk or p.unplaceable}
        incumbent = {}
        for s, p in zip(specs, plans):
            if p.runs and p.runs[0][0] == 0:
                left[s.name] -= 1
                started.add(s.name)
                if left[s.name] == 0:
                    finish[s.name] = t + 1
            shifted = tuple((max(0, a - 1), b - 1) for a, b in p.runs if b > 1)
            if shifted and not p.at_risk:
                incumbent[s.name] = shifted
    return {j.name: (j.name in finish and finish[j.name] <= j.latest_end, j.name in flagged) for j in jobs}


@SETTINGS
@given(instances(arrivals=True))
def test_online_arrivals_a_job_never_flagged_is_never_late(inst):
    jobs, f, cap = inst
    horizon = max(j.latest_end for j in jobs) + max(j.remaining for j in jobs) + 2
    out = _online(jobs, f, cap, horizon)
    for name, (met, flagged) in out.items():
        assert met or flagged, (name, out)


@SETTINGS
@given(instances())
def test_online_all_known_at_once_never_late_when_the_exact_check_says_feasible(inst):
    jobs, f, cap = inst
    placeable = [j for j in jobs if j.gpus <= cap]
    if not placeable or cp.optimum(placeable, f, step_hours=1.0, capacity_gpus=cap).status != "optimal":
        return
    horizon = max(j.latest_end for j in jobs) + 2
    out = _online(placeable, f, cap, horizon)
    assert all(met and not flagged for met, flagged in out.values()), out


def test_a_running_job_the_capacity_shrank_under_keeps_its_running_prefix():
    """Found by the shape property: a running interruptible job asking for more GPUs than the
    capacity now has dropped out of the plans altogether (its failure was overwritten)."""
    j = JobSpec("j0", remaining=2, latest_end=4, gpus=2, power_kw=1.0, interruptible=True, pinned=1)
    p, = plan([j], np.array([0.0]), step_hours=1.0, capacity_gpus=1.0)
    assert p.runs and p.runs[0][0] == 0 and p.at_risk and not p.unplaceable      # it keeps running


@SETTINGS
@given(instances(arrivals=True), st.integers(0, 3))
def test_a_capacity_that_cannot_bind_plans_as_none_and_meets_the_exact_optimum(inst, spare):
    jobs, f, _ = inst
    roomy = sum(j.gpus for j in jobs) + spare              # every job at once fits
    assert not sh.capacity_binds(jobs, roomy) and sh.capacity_binds(jobs, roomy - spare - 1)
    assert sh.capacity_binds(jobs, roomy, reserved_gpus=np.array([0.0, spare + 1.0]))
    plans = plan(jobs, f, step_hours=1.0, capacity_gpus=roomy)
    assert plans == plan(jobs, f, step_hours=1.0)
    opt = cp.optimum(jobs, f, step_hours=1.0, capacity_gpus=roomy)
    if opt.status == "optimal":                            # each job's own optimum is the joint one
        assert cp.verify(jobs, plans, roomy).ok
        assert sum(p.grams for p in plans) == pytest.approx(opt.grams, rel=1e-9, abs=1e-6)
