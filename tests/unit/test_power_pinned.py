"""A running job's minRunDuration remainder (``JobSpec.pinned``) in the capped planner
(``planning.power.place_capped``): it runs whatever the cap, at the cap chosen jointly with
the rest — a slower remainder leaves more work for after it, and the deadline still holds.
Checked against brute force on small instances (the levels and brute force of
test_power_planning)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenml.planning import power
from tests.unit.test_power_planning import LEVELS, job

TOP = LEVELS[-1]


def runs_of(choice):
    """Maximal on-runs of a per-slot choice (0: off)."""
    out, start = [], None
    for t, c in enumerate(list(choice) + [0]):
        if c and start is None:
            start = t
        elif not c and start is not None:
            out.append((start, t))
            start = None
    return out


def brute(f, work, pinned, min_run, levels=LEVELS):
    """Every per-slot choice (off, or a level) over [0, len(f)) with the first ``pinned`` slots
    on; every run but the one going on from slot 0 at least ``min_run`` long (a single one may
    be shorter: the shifting planner's shape for less than two runs' work); work reached."""
    best = math.inf
    n = len(f)
    for choice in itertools.product(range(len(levels) + 1), repeat=n):
        if any(c == 0 for c in choice[:pinned]):
            continue
        later = [(s, e) for s, e in runs_of(choice) if s != 0]
        if len(later) > 1 and any(e - s < min_run for s, e in later):
            continue
        if sum(levels[c - 1].speed for c in choice if c) >= work - 1e-9:
            best = min(best, sum(f[t] * levels[c - 1].power for t, c in enumerate(choice) if c))
    return best


def brute_two_levels(f, work, pinned, min_run, levels=LEVELS):
    """The planner's class for min_run > 1: the remainder at one level, the rest at one level in
    runs of at least ``min_run`` (one starting right after the remainder counts on its own)."""
    best = math.inf
    n = len(f)
    for lp, lr in itertools.product(levels, repeat=2):
        pre = sum(f[:pinned]) * lp.power
        for mask in itertools.product((0, 1), repeat=n - pinned):
            rest = runs_of(mask)
            if len(rest) > 1 and any(e - s < min_run for s, e in rest):
                continue
            if pinned * lp.speed + sum(mask) * lr.speed >= work - 1e-9:
                best = min(best, pre + sum(f[pinned + t] for t, m in enumerate(mask) if m) * lr.power)
    return best


def check_valid(got, f, work, pinned):
    assert got is not None
    assert got.work >= work - 1e-9
    assert all(0 <= s < e <= len(f) for s, e in got.runs)                    # the deadline (the slowdown counts)
    on = {t for s, e in got.runs for t in range(s, e)}
    assert set(range(pinned)) <= on                                           # the remainder runs
    cost = sum(f[t] * lv.power for (s, e), lv in zip(got.runs, got.levels) for t in range(s, e))
    assert got.cost == pytest.approx(cost)


def test_the_remainder_runs_at_the_cap_the_plan_chooses_not_at_max_watts():
    """A clean, flat forecast with slack: the whole job, remainder included, at the slowest
    cap — 2 slots of work = 3 slots at 150 W (3 × 100 × 0.6 = 180), less than the remainder at
    full power and the rest capped (2 × 100 = 200)."""
    f = np.array([100.0] * 6)
    got = power.place_capped(f, job(2, 6, interruptible=True, pinned=2, min_run=2), LEVELS)
    check_valid(got, f, 2, 2)
    assert got.runs == ((0, 3),) and got.levels == (LEVELS[0],)
    assert got.cost == pytest.approx(180.0)


def test_a_tight_deadline_keeps_the_remainder_fast():
    """4 slots of work, 4 slots to the deadline: any cap below the top would miss it."""
    f = np.array([100.0] * 4 + [1.0] * 4)
    got = power.place_capped(f, job(4, 4, interruptible=True, pinned=2), LEVELS)
    check_valid(got, f, 4, 2)
    assert set(got.levels) == {TOP} and got.runs == ((0, 4),)


def test_a_dirty_remainder_is_capped_harder_when_the_rest_is_clean():
    f = np.array([400.0, 400.0, 50.0, 50.0, 50.0, 50.0])
    got = power.place_capped(f, job(3, 6, interruptible=True, pinned=2), LEVELS)
    check_valid(got, f, 3, 2)
    assert got.cost == pytest.approx(brute(f, 3, 2, 1))
    assert got.levels[0] == LEVELS[0]                                          # the dirty remainder at 150 W


@settings(max_examples=120, deadline=None)
@given(st.lists(st.integers(50, 500), min_size=2, max_size=7), st.integers(1, 5), st.integers(1, 3))
def test_min_run_one_is_within_the_mixed_bound_of_brute_force(f, work, pinned):
    f = np.array(f, dtype=float)
    work = min(work, len(f))
    pinned = min(pinned, work)
    got = power.place_capped(f, job(work, len(f), interruptible=True, pinned=pinned), LEVELS)
    check_valid(got, f, work, pinned)
    opt = brute(f, work, pinned, 1)
    assert opt - 1e-9 <= got.cost <= opt + power.mixed_bound(f, LEVELS) + 1e-9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(50, 500), min_size=3, max_size=7), st.integers(2, 5), st.integers(1, 3))
def test_min_run_two_is_exact_in_its_class_and_never_below_brute_force(f, work, pinned):
    f = np.array(f, dtype=float)
    work = min(work, len(f))
    pinned = min(pinned, work)
    got = power.place_capped(f, job(work, len(f), interruptible=True, pinned=pinned, min_run=2), LEVELS)
    opt_class = brute_two_levels(f, work, pinned, 2)
    if math.isinf(opt_class):
        assert got is None
        return
    check_valid(got, f, work, pinned)
    later = [(s, e) for s, e in got.runs if s != 0]
    assert len(later) <= 1 or all(e - s >= 2 for s, e in later)
    assert got.cost == pytest.approx(opt_class)
    assert got.cost >= brute(f, work, pinned, 2) - 1e-9


def test_joint_choice_with_a_remainder_is_usually_exact():
    rng = np.random.default_rng(11)
    exact = total = 0
    for _ in range(100):
        f = rng.integers(50, 500, size=6).astype(float)
        work = int(rng.integers(1, 6))
        pinned = int(rng.integers(1, work + 1))
        got = power.place_capped(f, job(work, 6, interruptible=True, pinned=pinned), LEVELS)
        check_valid(got, f, work, pinned)
        total += 1
        exact += math.isclose(got.cost, brute(f, work, pinned, 1), rel_tol=1e-9)
    print(f"exact on {exact} of {total}")
    assert exact >= 95


def test_mixed_never_gives_back_a_forced_slot():
    f = np.array([500.0, 500.0, 10.0, 10.0, 10.0])
    forced = np.array([True, True, False, False, False])
    got = power.mixed(f, None, 0, 1.0, LEVELS, forced)
    on = {t for s, e in got.runs for t in range(s, e)}
    assert {0, 1} <= on and got.work >= 1.0
    assert got.levels[0] == LEVELS[0]          # the forced slots alone do the work at the slowest level
    assert power.mixed(f, None, 0, 0.0, LEVELS, forced).work >= 2 * LEVELS[0].speed - 1e-9
