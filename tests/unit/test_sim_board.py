"""The plan board's incremental path (no capacity: unchanged jobs keep their plans) must
decide exactly as planning every job afresh does."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from greenml.services.board import PlanBoard
from greenml.services.trainingjob import Progress
from greenml.signals.series import SeriesSource
from greenml.sim import forecasts
from greenml.sim.jobs import SimJob
from greenml.sim.shifting import SimPolicy, simulate, to_requirements

from tests.unit.test_sim_shifting import T0, actual_series, workload


def test_incremental_board_decides_like_full_replanning():
    actual, jobs = actual_series(), workload(30, seed=5)
    fc = forecasts.noisy(actual, 0.1, 7)
    incremental = simulate(jobs, actual, fc, SimPolicy(name="greenml"))
    full = simulate(jobs, actual, fc, SimPolicy(name="greenml", capacity_gpus=10 ** 6))   # a limit: full replans
    assert [r.runs for r in incremental.jobs] == [r.runs for r in full.jobs]


def test_unchanged_waiting_jobs_keep_their_plans_and_changed_forecasts_replan():
    actual = actual_series()
    policy = SimPolicy(name="greenml")
    board = PlanBoard(policy.defaults(), SeriesSource(actual), replan_interval=policy.step)
    now = T0 + timedelta(days=2, hours=6)                         # the sine's peak: the window is hours away
    req = to_requirements(SimJob("wait", now, timedelta(hours=2), now + timedelta(hours=26)), policy)
    board.observe(req, Progress(), running=False)
    first, _ = board.plan_for(req.key, now)
    assert first.windows[0][0] >= now + timedelta(hours=6)
    again, _ = board.plan_for(req.key, now + policy.step)
    assert board.stats.replans == 2 and board.stats.last_kept == 1 and again == first
    changed = actual.values.copy()
    changed[actual.index_of(now) + 3:] += 50.0
    board.source = SeriesSource(replace(actual, values=changed))
    board.plan_for(req.key, now + 2 * policy.step)
    assert board.stats.replans == 3 and board.stats.last_kept == 0
