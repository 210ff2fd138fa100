"""Power caps in the planner (greenml.planning.power): curves, levels, and the joint
choice of windows and caps checked against brute force on small instances."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenml.planning import power, shifting
from greenml.planning.power import CapLevel, CapPolicy

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
LEVELS = (CapLevel(150.0, 1 / 1.3, 0.6), CapLevel(200.0, 1 / 1.05, 0.8), CapLevel(None, 1.0, 1.0))


def policy(lo=150.0, hi=300.0, mode="carbonAware", model="A40") -> CapPolicy:
    return CapPolicy(mode, lo, hi, 300.0, power.curve_for(model))


# ------------------------------------------------------------------ curves and levels

def test_curves_are_monotone_and_end_at_one():
    for name, c in power.CURVES.items():
        assert c.points[-1].fraction == 1.0 and c.at(1.0) == (1.0, 1.0), name
        tfs = [p.time_factor for p in c.points]
        assert tfs == sorted(tfs, reverse=True), name   # a lower cap is never faster


def test_curve_for_uses_the_gpu_table_names():
    assert power.curve_for("NVIDIA A40").name == "A40"
    assert power.curve_for("Tesla V100-PCIE-16GB").name == "V100"
    assert power.curve_for("H100").name == "generic"
    assert power.curve_for(None).name == "generic"


def test_levels_are_a_convex_hull_within_the_range():
    lv = policy(150, 300).levels()
    assert all(150 <= (x.watts or 300) <= 300 for x in lv)
    assert lv[-1].watts is None and lv[-1].speed == 1.0          # maxWatts = the limit: uncapped
    marg, prev = [], (0.0, 0.0)
    for x in lv:
        marg.append((x.power - prev[1]) / (x.speed - prev[0]))
        prev = (x.speed, x.power)
    assert marg == sorted(marg) and len(set(marg)) == len(marg)


def test_levels_are_relative_to_max_watts():
    p = policy(150, 200)
    tf, pf = p.baseline()
    assert tf == pytest.approx(1.046, rel=1e-3) and pf == pytest.approx(0.847, rel=1e-3)
    top = p.levels()[-1]
    assert top.watts == 200.0 and top.speed == 1.0 and top.power == 1.0
    assert p.top_watts == 200.0 and policy(150, 300).top_watts is None


def test_static_policy_has_one_level():
    p = policy(200, 200, mode="static")
    assert len(p.levels()) == 1


# ------------------------------------------------------------------ brute force

def brute_mixed(f, work, levels):
    best = math.inf
    for choice in itertools.product(range(len(levels) + 1), repeat=len(f)):
        done = sum(levels[c - 1].speed for c in choice if c)
        if done >= work - 1e-9:
            best = min(best, sum(f[t] * levels[c - 1].power for t, c in enumerate(choice) if c))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(50, 500), min_size=1, max_size=6), st.integers(1, 5))
def test_mixed_is_within_its_bound_of_brute_force(f, work):
    f = np.array(f, dtype=float)
    work = min(work, len(f))
    got = power.mixed(f, None, 0, work, LEVELS)
    opt = brute_mixed(f, work, LEVELS)
    assert got is not None and got.work >= work - 1e-9
    assert opt - 1e-9 <= got.cost <= opt + power.mixed_bound(f, LEVELS) + 1e-9


def test_joint_placement_is_usually_exact():
    # the mixed plan alone is only within its bound (exact on 66 of these 100); with the
    # uniform plans next to it (place_capped), the joint choice matched brute force on all
    rng = np.random.default_rng(3)
    exact = 0
    for _ in range(100):
        f = rng.integers(50, 500, size=6).astype(float)
        work = int(rng.integers(1, 6))
        got = power.place_capped(f, job(work, 6, interruptible=True), LEVELS)
        exact += math.isclose(got.cost, brute_mixed(f, work, LEVELS), rel_tol=1e-9)
    assert exact >= 95


def test_mixed_respects_forbidden_slots_and_infeasibility():
    f = np.array([100.0, 10.0, 100.0, 100.0])
    allowed = np.array([True, False, True, True])
    got = power.mixed(f, allowed, 5, 2, LEVELS)
    assert all(s != 6 for s, e in got.runs for _ in range(1)) and all(not (s <= 6 < e) for s, e in got.runs)
    assert power.mixed(f, allowed, 0, 3.5, LEVELS) is None


def job(remaining, latest_end, interruptible=False, pinned=0, earliest=0, min_run=1, gpus=1, max_intensity=None):
    return shifting.JobSpec("j", remaining, latest_end, earliest=earliest, gpus=gpus, power_kw=1.0,
                            interruptible=interruptible, min_run=min_run, pinned=pinned, max_intensity=max_intensity)


def brute_uniform_window(f, work, latest_end, levels):
    best = math.inf
    for lv in levels:
        n = power.slots_for(work, lv)
        for s in range(0, latest_end - n + 1):
            best = min(best, sum(f[s:s + n]) * lv.power)
    return best


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(50, 500), min_size=2, max_size=9), st.integers(1, 5), st.booleans())
def test_place_capped_against_brute_force(f, work, interruptible):
    f = np.array(f, dtype=float)
    work = min(work, len(f))
    got = power.place_capped(f, job(work, len(f), interruptible), LEVELS)
    assert got is not None and got.work >= work - 1e-9
    assert all(0 <= s < e <= len(f) for s, e in got.runs)
    if interruptible:
        opt = brute_mixed(f, work, LEVELS)
        assert opt - 1e-9 <= got.cost <= opt + power.mixed_bound(f, LEVELS) + 1e-9
    else:
        assert len(got.runs) == 1 or len({lv for lv in got.levels}) == 1
        assert got.cost == pytest.approx(brute_uniform_window(f, work, len(f), LEVELS))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(50, 500), min_size=2, max_size=8), st.floats(0.1, 5.0), st.booleans())
def test_place_capped_on_a_part_slot_of_work_against_brute_force(f, work, interruptible):
    """``JobSpec.work``: the work left exactly (the board's last slot is often part of one);
    the capped plan covers it, not its round-up, and is as good as brute force on it."""
    f = np.array(f, dtype=float)
    work = min(work, len(f) - 0.01)
    spec = replace(job(math.ceil(work), len(f), interruptible), work=work)
    got = power.place_capped(f, spec, LEVELS)
    assert got is not None and got.work >= work - 1e-9
    if interruptible:
        opt = brute_mixed(f, work, LEVELS)
        assert opt - 1e-9 <= got.cost <= opt + power.mixed_bound(f, LEVELS) + 1e-9
    else:
        assert got.cost == pytest.approx(brute_uniform_window(f, work, len(f), LEVELS))


def test_the_last_part_slot_of_work_runs_capped_when_a_cap_pays_on_it():
    """3.3 slots of work left (4 rounded up) on a flat forecast, a cap at 200 W (speed 1/1.05,
    draw 0.8): on the round-up it would take 5 slots (cost 4.0, no better than 4 uncapped);
    on the work itself, 4 slots (3.2). Found on the e2e control plane: the tail of a
    carbon-aware run went back to maxWatts (16 s of work, 2 s slots)."""
    levels = (CapLevel(200.0, 1 / 1.05, 0.8), CapLevel(None, 1.0, 1.0))
    f = np.full(8, 1.0)
    rounded = power.place_capped(f, job(4, 8), levels)
    assert rounded.levels == (levels[1],) and rounded.cost == pytest.approx(4.0)
    exact = power.place_capped(f, replace(job(4, 8), work=3.3), levels)
    assert exact.levels == (levels[0],) and exact.runs == ((0, 4),) and exact.cost == pytest.approx(3.2)


def test_pinned_non_interruptible_stays_one_run_from_now():
    f = np.array([500.0] * 10)
    got = power.place_capped(f, job(4, 10, pinned=4), LEVELS)
    assert got.runs[0][0] == 0 and len(got.runs) == 1
    assert got.levels[0].watts == 150.0          # the slowest level fits: 4 / (1/1.3) = 6 slots ≤ 10


def test_capacity_and_max_intensity_are_respected():
    f = np.array([10.0, 10.0, 300.0, 300.0, 300.0, 300.0])
    free = np.array([0.0, 0.0, 4.0, 4.0, 4.0, 4.0])
    got = power.place_capped(f, job(2, 6, interruptible=True), LEVELS, free)
    assert all(s >= 2 for s, _ in got.runs)
    f2 = np.array([100.0, 900.0, 100.0, 100.0, 900.0, 100.0])
    got2 = power.place_capped(f2, job(2, 6, interruptible=True, max_intensity=500), LEVELS)
    assert all(not (s <= 1 < e) and not (s <= 4 < e) for s, e in got2.runs)


def test_plan_with_caps_never_emits_more_than_the_plain_plan():
    rng = np.random.default_rng(0)
    f = rng.uniform(100, 500, size=48)
    jobs = [job(6, 20, interruptible=True), shifting.JobSpec("k", 8, 30, power_kw=2.0, gpus=2),
            shifting.JobSpec("plain", 4, 40, power_kw=1.0, gpus=1)]
    plain = shifting.plan(jobs, f, step_hours=0.5, capacity_gpus=3)
    both = power.plan_with_caps(jobs, f, step_hours=0.5, capacity_gpus=3, levels={"j": LEVELS, "k": LEVELS})
    for p0, (p, caps) in zip(plain, both):
        assert p.grams <= p0.grams + 1e-9
        assert not caps or len(caps) == len(p.runs)
    assert both[2][1] == ()
    use = shifting.usage([p for p, _ in both], jobs, 48)
    assert use.max() <= 3


def test_deadline_is_met_with_the_slowdown():
    # a dirty first half: the planner may slow down in the clean half only as far as the deadline allows
    f = np.array([400.0] * 4 + [100.0] * 4)
    got = power.place_capped(f, job(4, 8, interruptible=True), LEVELS)
    assert max(e for _, e in got.runs) <= 8 and got.work >= 4 - 1e-9


# ------------------------------------------------------------------ what to publish

def test_cap_to_publish():
    p = policy(150, 300)
    w = ((T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=2), T0 + timedelta(hours=3)))
    assert power.cap_to_publish(None, w, (150.0, None), T0, forced=False) is None
    assert power.cap_to_publish(p, w, (150.0, None), T0, forced=False) == 150.0
    assert power.cap_to_publish(p, w, (150.0, None), T0 + timedelta(hours=2), forced=False) is None
    assert power.cap_to_publish(p, w, (150.0, None), T0, forced=True) is None          # forced: full speed
    assert power.cap_to_publish(policy(150, 250), w, (150.0, None), T0, forced=True) == 250.0
    assert power.cap_to_publish(policy(200, 200, "static"), None, (), T0, forced=True) == 200.0


def test_work_seconds_counts_capped_time_at_its_speed():
    p = policy(150, 300)
    assert power.work_seconds(timedelta(hours=1), None, p) == 3600
    assert power.work_seconds(timedelta(hours=1), 150.0, p) == pytest.approx(3600 / 1.332)
    assert power.work_seconds(timedelta(hours=1), 150.0, policy(150, 150, "static")) == 3600


# ------------------------------------------------------------------ the plan board

def _board_req(cap):
    from greenml.services.trainingjob import Defaults, resolve

    body = {"metadata": {"name": "cap", "namespace": "ml", "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"schedule": {"deadline": "2026-12-01T12:00:00Z", "estimatedDuration": "4h", "interruptible": True,
                                  "minRunDuration": "1h"},
                     "power": {"gpus": 4, "gpuModel": "A40", **({"cap": cap} if cap else {})}, "carbon": {"zone": "DE"},
                     "template": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                                                                   "containers": [{"name": "c", "image": "i"}]}}}}}}
    return resolve(body, Defaults(zone="DE", step=timedelta(hours=1), safety_margin=timedelta(0)))


def _board(req, capacity=None):
    from greenml.services.board import PlanBoard
    from greenml.services.trainingjob import Defaults, Progress
    from greenml.signals.base import IntensitySeries
    from greenml.signals.series import SeriesSource

    values = np.array([500.0, 500.0, 100.0, 100.0, 100.0, 100.0, 100.0, 110.0, 500.0, 500.0, 500.0, 500.0] * 4)
    series = IntensitySeries(T0, timedelta(hours=1), values, "test")
    board = PlanBoard(Defaults(zone="DE", step=timedelta(hours=1), safety_margin=timedelta(0)),
                      SeriesSource({"DE": series}), capacity=capacity)
    board.observe(req, Progress(), running=False)
    return board


@pytest.mark.parametrize("capacity", [None, 8])
def test_board_plans_carbon_aware_caps_and_publishes_them(capacity):
    req = _board_req({"carbonAware": {"minWatts": 150, "maxWatts": 300}})
    board = _board(req, capacity)
    plan, failure = board.plan_for(req.key, T0)
    assert failure is None and plan.caps and len(plan.caps) == len(plan.windows)
    plain_plan, _ = _board(_board_req(None), capacity).plan_for(req.key, T0)
    assert plan.expected_grams < plain_plan.expected_grams          # capping in the clean hours pays
    assert plan.windows[-1][1] <= req.deadline
    s, _ = plan.windows[0]
    assert board.cap_for(req.key, s) == plan.caps[0]
    assert board.cap_for(req.key, s, forced=True) is None           # forced: full speed
    assert board.cap_for(("ml", "other"), s) is None


def test_board_static_cap_is_published_always():
    req = _board_req({"watts": 200})
    board = _board(req)
    plan, _ = board.plan_for(req.key, T0)
    assert plan.caps == ()
    assert board.cap_for(req.key, T0) == 200.0 and board.cap_for(req.key, T0, forced=True) == 200.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 10), st.integers(1, 3), st.booleans(), st.booleans()),
                min_size=1, max_size=5),
       st.lists(st.integers(50, 500), min_size=24, max_size=24), st.integers(2, 8))
def test_refine_keeps_deadlines_work_and_capacity(specs, f, capacity):
    f = np.array(f, dtype=float)
    jobs = [shifting.JobSpec(f"j{i}", k, min(24, k + slack), gpus=g, power_kw=float(g), interruptible=intr,
                             min_run=1 if intr else 1, zone=shifting.DEFAULT_ZONE)
            for i, (k, slack, g, intr, _) in enumerate(specs)]
    capped_names = {j.name for j, s in zip(jobs, specs) if s[4]}
    plain = shifting.plan(jobs, f, step_hours=1.0, capacity_gpus=capacity)
    both = power.plan_with_caps(jobs, f, step_hours=1.0, capacity_gpus=capacity,
                                levels={n: LEVELS for n in capped_names})
    before = shifting.usage(plain, jobs, 24)
    after = shifting.usage([p for p, _ in both], jobs, 24)
    assert np.all(after <= np.maximum(before, capacity) + 1e-9)      # capping never overfills a slot
    by_watts = {lv.watts: lv for lv in LEVELS}
    for j, p0, (p, caps) in zip(jobs, plain, both):
        assert p.grams <= p0.grams + 1e-9
        if not caps:
            assert p.runs == p0.runs
            continue
        assert j.name in capped_names and len(caps) == len(p.runs)
        work = sum((e - s) * by_watts[c].speed for (s, e), c in zip(p.runs, caps))
        assert work >= j.remaining - 1e-9
        assert all(0 <= s < e <= j.latest_end for s, e in p.runs)


def test_board_hands_the_planner_the_work_left_exactly():
    """``to_job_spec``: 4 h of work on 1 h slots, 1 h 24 min run: 2.6 slots left (3 rounded
    up) go to the capped planner as ``work``; whole slots (and held GPUs) as they are."""
    from greenml.services.board import Entry, to_job_spec
    from greenml.services.trainingjob import Defaults, Progress

    req = _board_req({"carbonAware": {"minWatts": 150, "maxWatts": 300}})
    d = Defaults(zone="DE", step=timedelta(hours=1), safety_margin=timedelta(0))
    running = Progress(run_seconds=0.0, running_since=T0, runs=1)
    spec = to_job_spec(Entry(req, running, True), T0 + timedelta(minutes=84), d, 48)
    assert spec.remaining == 3 and spec.work == pytest.approx(2.6)
    assert to_job_spec(Entry(req, Progress(), False), T0, d, 48).work is None         # 4 whole slots
    held = to_job_spec(Entry(req, running, True), T0 + timedelta(minutes=84), d, 48, hold=5)
    assert held.remaining == 5 and held.work is None
