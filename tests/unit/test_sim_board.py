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


def test_incremental_board_decides_like_full_replanning(monkeypatch):
    actual, jobs = actual_series(), workload(30, seed=5)
    fc = forecasts.noisy(actual, 0.1, 7)
    incremental = simulate(jobs, actual, fc, SimPolicy(name="greenml"))
    # a capacity that cannot bind (more GPUs than all jobs ask together) plans as without one
    roomy = simulate(jobs, actual, fc, SimPolicy(name="greenml", capacity_gpus=10 ** 6))
    monkeypatch.setattr(PlanBoard, "_keepable", lambda *a, **k: False)     # every replan plans every job
    full = simulate(jobs, actual, fc, SimPolicy(name="greenml"))
    assert [r.runs for r in incremental.jobs] == [r.runs for r in full.jobs] == [r.runs for r in roomy.jobs]


def test_a_kept_plan_whose_window_opens_says_run_now_as_a_fresh_plan_does():
    actual = actual_series()
    policy = SimPolicy(name="greenml")
    board = PlanBoard(policy.defaults(), SeriesSource(actual), replan_interval=policy.step)
    now = T0 + timedelta(days=2, hours=6)
    req = to_requirements(SimJob("wait", now, timedelta(hours=2), now + timedelta(hours=26)), policy)
    board.observe(req, Progress(), running=False)
    first, _ = board.plan_for(req.key, now)
    assert first.reason == "Planned"
    start = first.windows[0][0]
    kept, _ = board.plan_for(req.key, start)
    assert board.stats.last_kept == 1 and kept.windows == first.windows
    fresh = PlanBoard(policy.defaults(), SeriesSource(actual), replan_interval=policy.step)
    fresh.observe(req, Progress(), running=False)
    assert kept.reason == fresh.plan_for(req.key, start)[0].reason == "RunNow"


def test_capacity_that_cannot_bind_keeps_plans_and_one_that_binds_replans_everything():
    actual = actual_series()
    policy = SimPolicy(name="greenml")
    cap = [8]
    board = PlanBoard(policy.defaults(), SeriesSource(actual), replan_interval=policy.step,
                      capacity=lambda: cap[0])
    now = T0 + timedelta(days=2, hours=6)
    reqs = [replace(to_requirements(SimJob(f"j{i}", now, timedelta(hours=2), now + timedelta(hours=26)), policy),
                    gpus=4) for i in range(2)]
    for r in reqs:
        board.observe(r, Progress(), running=False)
    assert board.binding_capacity() is None                   # 4 + 4 GPUs fit in 8 at every slot
    a, _ = board.plan_for(reqs[0].key, now)
    board.plan_for(reqs[0].key, now + policy.step)
    assert board.stats.last_kept == 2
    cap[0] = 4                                                # now they cannot both run at once
    assert board.binding_capacity() == 4
    board.plan_for(reqs[0].key, now + 2 * policy.step)
    assert board.stats.last_kept == 0
    p = [board.plan_for(r.key, now + 2 * policy.step)[0] for r in reqs]
    assert p[0].windows != p[1].windows and not any(x.at_risk for x in p)
    cap[0] = 8                                                # roomy again: the capped plans are not
    board.plan_for(reqs[0].key, now + 3 * policy.step)        # each job's own optimum, so none is kept
    assert board.stats.last_kept == 0
    board.forget(reqs[1].key)
    assert board._gpus_asked == 4


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
