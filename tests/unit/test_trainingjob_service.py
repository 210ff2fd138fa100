"""The TrainingJob service: resolving specs, the owned Job, and the act-now decision."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.services.board import PlanBoard
from greenml.services.trainingjob import (
    Defaults, InvalidSpec, JobObservation, Progress, check_feasible, decide, in_windows, job_manifest, job_name, resolve,
)
from greenml.signals.base import IntensitySeries
from greenml.signals.series import SeriesSource

T0 = datetime(2024, 3, 4, 0, 0, tzinfo=timezone.utc)
D = Defaults(zone="DE", safety_margin=timedelta(minutes=10), min_run=timedelta(minutes=30),
             step=timedelta(minutes=30))


def body(**schedule):
    sched = {"maxDelay": "8h", "estimatedDuration": "2h", **schedule}
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": "ml", "uid": "u-1", "creationTimestamp": "2024-03-04T00:00:00Z"},
        "spec": {
            "schedule": sched,
            "template": {"spec": {"parallelism": 2, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "t", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": 4}}}]}}}},
        },
    }


def test_resolve_defaults_and_gpus():
    req = resolve(body(), D)
    assert req.deadline == T0 + timedelta(hours=10)          # creation + maxDelay + duration
    assert req.gpus == 8 and req.watts == 8 * D.watts_per_gpu and req.power_source == "default"
    assert req.zone == "DE" and req.min_run == timedelta(minutes=30)


def test_resolve_gpu_table_and_unknown_model():
    b = body(); b["spec"]["power"] = {"gpuModel": "a100"}
    from greenml.signals.gpus import lookup
    assert resolve(b, D).watts == 8 * lookup("A100-SXM").typical_w   # bare family → SXM variant
    assert resolve(b, D).power_source == "gpu-table"
    b["spec"]["power"] = {"gpuModel": "Z9"}
    with pytest.raises(InvalidSpec) as e:
        resolve(b, D)
    assert e.value.field == "spec.power.gpuModel"


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b["spec"]["template"]["spec"]["template"]["spec"].update(containers=[]), "containers"),
    (lambda b: b["spec"]["schedule"].update(deadline="2024-03-05T00:00:00Z"), "spec.schedule"),
    (lambda b: b["spec"]["schedule"].update(estimatedDuration="soon"), "spec.schedule.estimatedDuration"),
    (lambda b: b["spec"].update(surprise=1), "spec.surprise"),
    (lambda b: b["spec"]["template"]["spec"]["template"]["spec"].update(restartPolicy="Always"), "restartPolicy"),
])
def test_resolve_rejects_with_field(mutate, field):
    b = body(); mutate(b)
    with pytest.raises(InvalidSpec) as e:
        resolve(b, D)
    assert field in e.value.field, e.value


def test_infeasible_deadline_at_admission():
    req = resolve(body(), D)
    check_feasible(req, T0, D)
    with pytest.raises(InvalidSpec, match="cannot be met"):
        check_feasible(req, T0 + timedelta(hours=9), D)


def test_job_manifest_is_suspended_owned_and_deterministic():
    req = resolve(body(), D)
    m = job_manifest(req, body()["spec"]["template"])
    assert m["spec"]["suspend"] is True
    assert m["metadata"]["name"] == job_name("train") == "train-run"
    ref = m["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("TrainingJob", "u-1", True)
    long = job_name("x" * 70)
    assert len(long) <= 63 and long == job_name("x" * 70)


def windows(*pairs):
    return [(T0 + timedelta(hours=a), T0 + timedelta(hours=b)) for a, b in pairs]


def test_decide_table():
    req = resolve(body(), D)
    none, idle, run = Progress(), JobObservation(suspended=True), JobObservation(suspended=False)
    # no Job yet → create
    assert decide(req, none, JobObservation(exists=False), windows((3, 5)), T0, D).action == "create"
    # waiting for a window
    o = decide(req, none, idle, windows((3, 5)), T0, D)
    assert (o.action, o.phase) == ("none", "Waiting")
    # window opens → start
    o = decide(req, none, idle, windows((3, 5)), T0 + timedelta(hours=3), D)
    assert (o.action, o.phase, o.progress.runs) == ("start", "Running", 1)
    # non-interruptible running outside any window → never stopped
    started = Progress(running_since=T0 + timedelta(hours=3), runs=1)
    o = decide(req, started, run, windows((6, 8)), T0 + timedelta(hours=4), D)
    assert (o.action, o.phase) == ("none", "Running")
    # no forecast → wait, then start at the latest safe start regardless
    assert decide(req, none, idle, None, T0, D).reason == "ForecastUnavailable"
    latest = req.deadline - D.safety_margin - req.duration
    o = decide(req, none, idle, None, latest, D)
    assert (o.action, o.reason) == ("start", "DeadlineForced")
    # Job finished
    assert decide(req, started, JobObservation(suspended=False, succeeded=True), None, T0 + timedelta(hours=5), D).phase == "Succeeded"


def test_decide_interruptible_pause_resume_accumulates():
    req = resolve(body(interruptible=True, minRunDuration="30m"), D)
    p = Progress(running_since=T0, runs=1)
    # min run not reached → keeps running even outside windows
    o = decide(req, p, JobObservation(suspended=False), windows((2, 3)), T0 + timedelta(minutes=20), D)
    assert o.action == "none" and o.reason == "MinRunDuration"
    # after min run, outside windows → pause, run time accumulated
    o = decide(req, p, JobObservation(suspended=False), windows((2, 3)), T0 + timedelta(hours=1), D)
    assert (o.action, o.phase) == ("pause", "Paused") and o.progress.run_seconds == 3600
    assert o.remaining == timedelta(hours=1)
    # resume in the next window
    o2 = decide(req, o.progress, JobObservation(suspended=True), windows((2, 3)), T0 + timedelta(hours=2), D)
    assert (o2.action, o2.progress.runs) == ("resume", 2)


def series(values, step=timedelta(minutes=30)):
    return IntensitySeries(T0, step, np.asarray(values, dtype=float), source="test")


def test_board_plans_cheapest_window_and_respects_capacity():
    # 20 half-hour slots: cheap at slots 6-9 (3h-5h)
    vals = [300] * 6 + [100] * 4 + [300] * 10
    board = PlanBoard(D, SeriesSource(series(vals)), capacity=8)
    a, b = resolve(body(), D), resolve({**body(), "metadata": {**body()["metadata"], "name": "b", "uid": "u-2"}}, D)
    board.observe(a, Progress(), running=False)
    board.observe(b, Progress(), running=False)
    pa, _ = board.plan_for(a.key, T0)
    pb, _ = board.plan_for(b.key, T0)
    assert pa is not None and pb is not None
    # both need 8 GPUs, capacity 8: they may not overlap, and one gets the cheap window
    (sa, ea), (sb, eb) = pa.windows[0], pb.windows[0]
    assert ea <= sb or eb <= sa
    assert {sa, sb} & {T0 + timedelta(hours=3)}
    assert max(pa.savings_percent, pb.savings_percent) > 0
    assert board.stats.replans == 1
    board.plan_for(a.key, T0 + timedelta(minutes=1))      # fresh: no replan
    assert board.stats.replans == 1
    board.plan_for(a.key, T0 + timedelta(minutes=20))     # past the replan interval
    assert board.stats.replans == 2


def test_board_forecast_failure_is_reported_per_zone():
    board = PlanBoard(D, SeriesSource({"GB": series([100] * 40)}))
    req = resolve(body(), D)   # zone DE: not served
    board.observe(req, Progress(), running=False)
    plan, failure = board.plan_for(req.key, T0)
    assert plan is None and failure is not None and failure.reason == "UnknownZone"


def _job(name: str, gpus: int = 8, max_delay: str = "8h"):
    b = body(maxDelay=max_delay)
    b["metadata"] = {**b["metadata"], "name": name, "uid": f"u-{name}"}
    b["spec"]["power"] = {"gpus": gpus}
    return resolve(b, D)


def test_an_arrival_storm_costs_few_full_replans_and_respects_capacity():
    vals = [300] * 6 + [100] * 4 + [300] * 30
    board = PlanBoard(D, SeriesSource(series(vals)), capacity=16)
    reqs = [_job(f"j{i}") for i in range(5)]     # 5 × 8 GPUs × 2 h fit in 16 GPUs before the deadline
    board.observe(reqs[0], Progress(), running=False)
    board.plan_for(reqs[0].key, T0)
    for r in reqs[1:]:                       # objects arriving one by one, as kopf delivers them
        board.observe(r, Progress(), running=False)
        plan, _ = board.plan_for(r.key, T0 + timedelta(seconds=1))
        assert plan is not None and plan.windows
    assert board.stats.replans == 1 and board.stats.fill_ins == 4
    assert all(board.plan_for(r.key, T0 + timedelta(seconds=1))[0].reason != "CapacityForced" for r in reqs)
    # planned GPU use per slot never exceeds the capacity (16 GPUs = two 8-GPU jobs at a time)
    edges = sorted({t for r in reqs for w in board.plan_for(r.key, T0 + timedelta(seconds=1))[0].windows for t in w})
    for t in edges:
        running = sum(r.gpus for r in reqs for s, e in board.plan_for(r.key, T0 + timedelta(seconds=1))[0].windows
                      if s <= t < e)
        assert running <= 16, (t, running)
    # after the gap the next call re-plans everything together
    board.plan_for(reqs[0].key, T0 + timedelta(seconds=5))
    assert board.stats.replans == 2


def test_fill_in_reservation_stays_exact_through_arrivals_departures_and_resizes():
    """Fill-ins keep the GPUs the plans take per slot up to date as they add plans (their cost
    follows the arrivals, not the board); after any mix of arrivals, deletions and GPU changes
    the reservation equals one rebuilt from the plans in force, and the plans that meet their
    deadline (not DeadlineAtRisk, which fail open) never take a slot over capacity."""
    import random

    rng = random.Random(7)
    vals = [300] * 6 + [100] * 6 + [250] * 12 + [120] * 6 + [300] * 30
    board = PlanBoard(D, SeriesSource(series(vals)), capacity=24)
    now = T0 + timedelta(seconds=1)
    live: dict[str, object] = {}
    planned_gpus: dict[str, int] = {}        # GPUs a job had when it was planned
    for i in range(60):
        op = rng.random()
        if op < 0.7 or not live:
            r = _job(f"a{i}", gpus=rng.choice([1, 2, 4, 8]), max_delay=rng.choice(["6h", "10h", "14h"]))
            live[r.name] = r
            planned_gpus[r.name] = r.gpus
        elif op < 0.85:
            r = live.pop(rng.choice(sorted(live)))
            board.forget(r.key)
            continue
        else:           # the same job asks for other GPUs: its plan stands until the next full replan
            name = rng.choice(sorted(live))
            r = live[name] = _job(name, gpus=rng.choice([1, 2, 4, 8]))
        board.observe(r, Progress(), running=False)
        board.plan_for(r.key, now)
        if board._reserved is not None:
            rebuilt = np.zeros(len(board._reserved))
            step_s = D.step.total_seconds()
            for key, p in board._plans.items():
                for ws, we in p.windows:
                    a = max(0, int((ws - board._origin).total_seconds() // step_s))
                    b = int(np.ceil((we - board._origin).total_seconds() / step_s))
                    rebuilt[a:b] += board._entries[key].req.gpus
            assert np.array_equal(board._reserved, rebuilt), i
    assert board.stats.fill_ins > 30 and board.stats.replans == 1
    plans = {n: board.plan_for(r.key, now)[0] for n, r in live.items()}
    edges = sorted({t for p in plans.values() for w in p.windows for t in w})
    assert sum(not p.at_risk for p in plans.values()) > 30
    for t in edges:
        used = sum(planned_gpus[n] for n, p in plans.items() if not p.at_risk for s, e in p.windows if s <= t < e)
        assert used <= 24, (t, used)


def test_fill_in_equals_a_full_replan_without_capacity():
    vals = [300] * 6 + [100] * 4 + [300] * 30
    reqs = [_job(f"k{i}", max_delay=f"{4 + i}h") for i in range(6)]
    storm = PlanBoard(D, SeriesSource(series(vals)))
    storm.observe(reqs[0], Progress(), running=False)
    storm.plan_for(reqs[0].key, T0)
    for r in reqs[1:]:
        storm.observe(r, Progress(), running=False)
        storm.plan_for(r.key, T0)
    fresh = PlanBoard(D, SeriesSource(series(vals)))
    for r in reqs:
        fresh.observe(r, Progress(), running=False)
    for r in reqs:
        assert storm.plan_for(r.key, T0)[0].windows == fresh.plan_for(r.key, T0)[0].windows
    assert storm.stats.fill_ins == 5 and fresh.stats.replans == 1


def test_a_running_interruptible_job_is_not_paused_for_less_than_a_slot():
    req = resolve(body(interruptible=True, minRunDuration="30m"), D)
    p = Progress(running_since=T0, runs=1)
    now = T0 + timedelta(hours=1)
    # window ended at `now`, the next starts 10 minutes later (< one 30-min slot): keep running
    o = decide(req, p, JobObservation(suspended=False), [(T0, now), (now + timedelta(minutes=10), now + timedelta(hours=1))], now, D)
    assert o.action == "none" and o.phase == "Running"
    # a gap of one whole slot (30 min) or more: pause
    for gap in (timedelta(minutes=30), timedelta(hours=1)):
        o = decide(req, p, JobObservation(suspended=False), [(T0, now), (now + gap, now + gap + timedelta(hours=1))], now, D)
        assert o.action == "pause", gap


def test_absurd_durations_are_invalid_not_crashes():
    from greenml.timeutil import parse_duration
    with pytest.raises(ValueError, match="too large"):
        parse_duration("99999999999999999d")


def test_running_job_heartbeat_and_a_job_vanished_while_the_operator_was_down():
    """The operator refreshes progress.lastSeenRunning at most every step while the Job runs;
    a Job found missing (deleted while the operator was down for hours) is counted as run
    time only until one step after it was last seen — not until now."""
    req = resolve(body(interruptible=True), D)
    start = T0 + timedelta(hours=3)
    o = decide(req, Progress(), JobObservation(suspended=True), windows((3, 9)), start, D)
    assert o.action == "start" and o.progress.seen_running is None    # no pod runs yet
    running = JobObservation(suspended=False)
    # the first reconcile that sees the Job running (here: at once) starts the heartbeat
    o1 = decide(req, o.progress, running, windows((3, 9)), start, D)
    assert o1.progress.seen_running == start and o1.progress.running_since == start
    # within one step: no new heartbeat (no status write per tick)
    o2 = decide(req, o1.progress, running, windows((3, 9)), start + timedelta(minutes=10), D)
    assert o2.progress.seen_running == start
    # a step later: refreshed
    o3 = decide(req, o2.progress, running, windows((3, 9)), start + timedelta(minutes=40), D)
    assert o3.progress.seen_running == start + timedelta(minutes=40)
    # the Job vanished; the operator comes back 3 h later
    back = start + timedelta(minutes=40) + timedelta(hours=3)
    o4 = decide(req, o3.progress, JobObservation(exists=False), windows((3, 9)), back, D)
    assert o4.action == "create" and o4.progress.running_since is None and o4.progress.seen_running is None
    assert o4.progress.run_seconds == pytest.approx((40 + 30) * 60)      # seen + one step, not 3 h 40 min
    assert o4.remaining == timedelta(hours=2) - timedelta(minutes=70)
    # an old status without the heartbeat: counted one step past the run's start (bounded)
    legacy = Progress(run_seconds=600.0, running_since=start, runs=1)
    o5 = decide(req, legacy, JobObservation(exists=False), windows((3, 9)), back, D)
    assert o5.progress.run_seconds == pytest.approx(600.0 + 30 * 60)
    # while the operator is up the deletion is noticed within a tick: counted until then
    o6 = decide(req, o3.progress, JobObservation(exists=False), windows((3, 9)), start + timedelta(minutes=45), D)
    assert o6.progress.run_seconds == pytest.approx(45 * 60)


S = T0 + timedelta(hours=3)          # the run's start in the table below
M = timedelta(minutes=1)


def _progress(running_since=S, seen=None, run_seconds=0.0):
    return Progress(run_seconds=run_seconds, running_since=running_since, runs=1, seen_running=seen)


@pytest.mark.parametrize("case, progress, job, now, phase, run_seconds, running_since, seen, message", [
    # un-suspended, no pod Ready yet (Pending on a full cluster, being scheduled): no run time,
    # the run is counted from now on; no heartbeat
    ("pending", _progress(), JobObservation(suspended=False, pods_running=False), S + 10 * M,
     "Running", 0.0, S + 10 * M, None, "no pod of the Job runs"),
    # a pod runs: the run counts from runningSince and the heartbeat starts
    ("pods run", _progress(), JobObservation(suspended=False, pods_running=True), S + 10 * M,
     "Running", 0.0, S, S + 10 * M, "minRunDuration"),
    # the Job controller wrote no `ready` (yet): an un-suspended Job counts as running
    ("no ready field", _progress(seen=S), JobObservation(suspended=False), S + 10 * M,
     "Running", 0.0, S, S, "minRunDuration"),
    # the last pod stalled (evicted, failed and not yet replaced) after running: what ran is
    # kept, to one step past the heartbeat (here: now), and counted afresh once a pod runs
    ("stall after running", _progress(seen=S + 20 * M), JobObservation(suspended=False, pods_running=False),
     S + 41 * M, "Running", 41 * 60.0, S + 41 * M, None, "no pod of the Job runs"),
    # ... bounded by one step past the heartbeat when the operator was away meanwhile
    ("stall seen late", _progress(seen=S + 20 * M, run_seconds=60.0),
     JobObservation(suspended=False, pods_running=False), S + 3 * 60 * M,
     "Running", 60.0 + 50 * 60.0, S + 3 * 60 * M, None, "no pod of the Job runs"),
    # Complete (ready 0 again): the run is counted to the Job's completionTime, not to now and
    # not dropped as a stall
    ("complete", _progress(seen=S + 30 * M, run_seconds=120.0),
     JobObservation(suspended=False, succeeded=True, pods_running=False, finished_at=S + 45 * M), S + 46 * M,
     "Succeeded", 120.0 + 45 * 60.0, None, None, "completed"),
    ("failed", _progress(seen=S),
     JobObservation(suspended=False, failed=True, failure_message="BackoffLimitExceeded", pods_running=False,
                    finished_at=S + 5 * M), S + 6 * M,
     "Failed", 5 * 60.0, None, None, "BackoffLimitExceeded"),
    # completionTime unknown: counted to now
    ("complete, no time", _progress(seen=S), JobObservation(suspended=False, succeeded=True, pods_running=False),
     S + 7 * M, "Succeeded", 7 * 60.0, None, None, "completed"),
])
def test_run_time_counts_running_pods_to_the_jobs_completion(case, progress, job, now, phase, run_seconds,
                                                             running_since, seen, message):
    req = resolve(body(interruptible=True, minRunDuration="30m"), D)
    o = decide(req, progress, job, windows((3, 9)), now, D)
    assert o.phase == phase, case
    assert o.progress.run_seconds == pytest.approx(run_seconds), case
    assert (o.progress.running_since, o.progress.seen_running) == (running_since, seen), case
    assert o.progress.runs == 1 and message in o.message, (case, o.message)


def test_a_stalled_run_paused_adds_nothing_and_a_resumed_one_counts_from_its_pods():
    req = resolve(body(interruptible=True, minRunDuration="2m"), D)
    # Pending since the start, then the window closes: minRunDuration does not hold a run whose
    # pods never ran (there is nothing to thrash), and the pause adds no run time
    stalled = JobObservation(suspended=False, pods_running=False)
    o = decide(req, _progress(run_seconds=600.0), stalled, windows((3, 4)), S + 70 * M, D)
    assert (o.action, o.progress.run_seconds, o.progress.running_since) == ("pause", 600.0, None)
    # resumed: nothing counted until a pod is Ready, then from the first reconcile that sees it
    r = decide(req, o.progress, JobObservation(suspended=True), windows((5, 6)), T0 + timedelta(hours=5), D)
    assert (r.action, r.progress.runs, r.progress.seen_running) == ("resume", 2, None)
    waiting = decide(req, r.progress, stalled, windows((5, 6)), T0 + timedelta(hours=5) + 3 * M, D)
    assert waiting.progress.total(T0 + timedelta(hours=5) + 3 * M) == 600.0
    up = decide(req, waiting.progress, JobObservation(suspended=False, pods_running=True), windows((5, 6)),
                T0 + timedelta(hours=5) + 4 * M, D)
    assert up.progress.total(T0 + timedelta(hours=5) + 10 * M) == pytest.approx(600.0 + 7 * 60)


@pytest.mark.parametrize("status, pods_running, finished_at", [
    ({}, None, None),
    ({"ready": 0}, False, None),
    ({"ready": 2}, True, None),
    ({"ready": True}, None, None),       # not a count
    ({"ready": 0, "completionTime": "2024-03-04T03:45:00Z", "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]},
     False, S + 45 * M),
    # completionTime without the Complete condition (yet) is not a finish
    ({"ready": 0, "completionTime": "2024-03-04T03:45:00Z"}, False, None),
    ({"ready": 0, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                  "lastTransitionTime": "2024-03-04T03:05:00Z"}]}, False, S + 5 * M),
])
def test_job_observation_reads_ready_pods_and_the_finish_time(status, pods_running, finished_at):
    o = JobObservation.from_job({"spec": {"suspend": False}, "status": status})
    assert (o.pods_running, o.finished_at) == (pods_running, finished_at)


@pytest.mark.parametrize("running_progress, interruptible, held_until", [
    # started 2 h ago with a 2 h estimate: past it, still running (its Job has not finished)
    (Progress(running_since=T0 - timedelta(hours=2), runs=1), False, 2),
    (Progress(running_since=T0 - timedelta(hours=3), runs=1), True, 2),
    # 30 min of work left: at least until the next replan (1 h = 2 slots), not just 1 slot
    (Progress(running_since=T0 - timedelta(minutes=90), runs=1), False, 2),
    # 90 min left: its estimate holds it longer than the replan
    (Progress(running_since=T0 - timedelta(minutes=30), runs=1), False, 3),
])
def test_a_running_job_keeps_its_gpus_until_the_next_replan(running_progress, interruptible, held_until):
    """Capacity 8: an 8-GPU job running (past its estimate or not) keeps its GPUs at least until
    the next replan, so a waiting 8-GPU job is not started onto them; once the running job
    is gone the waiting one is planned at once."""
    board = PlanBoard(D, SeriesSource(series([100] * 40)), capacity=8, replan_interval=timedelta(hours=1))
    b = body(interruptible=interruptible, minRunDuration="30m")
    b["metadata"] = {**b["metadata"], "name": "busy", "uid": "u-busy", "creationTimestamp": "2024-03-03T21:00:00Z"}
    b["spec"]["power"] = {"gpus": 8}
    busy = resolve(b, D)
    waiting = _job("next", gpus=8)
    board.observe(busy, running_progress, running=True)
    board.observe(waiting, Progress(), running=False)
    plan, _ = board.plan_for(waiting.key, T0)
    assert plan.planned_start == T0 + held_until * D.step, plan.windows
    held, _ = board.plan_for(busy.key, T0)
    assert held.windows[0][0] == T0 and held.windows[0][1] >= T0 + held_until * D.step
    board.forget(busy.key)                                 # its Job finished
    plan, _ = board.plan_for(waiting.key, T0 + timedelta(minutes=5))
    # planned on the grid: the slot holding now, which it starts in at once
    assert plan.planned_start == T0 and in_windows(T0 + timedelta(minutes=5), plan.windows), plan.windows


def test_after_create_says_the_wait_at_once_so_the_jobs_watch_event_changes_nothing():
    from greenml.services.trainingjob import after_create

    req = resolve(body(), D)
    none = Progress()
    created = decide(req, none, JobObservation(exists=False), windows((3, 5)), T0, D)
    assert created.action == "create"
    said = after_create(req, none, none, created, windows((3, 5)), "Planned", 1.0, T0, D)
    assert said.action == "create" and said.changes_job
    # what the reconcile woken by the new Job's watch event decides: the same phase and reason
    nxt = decide(req, none, JobObservation(exists=True, suspended=True), windows((3, 5)), T0, D, plan_reason="Planned")
    assert (said.phase, said.reason, said.progress, said.message) == (nxt.phase, nxt.reason, nxt.progress, nxt.message)
    assert said.phase == "Waiting" and said.reason == "Planned"
    # the Event and lastDecision say both what was done and what follows
    assert said.said == f"{created.message}; {nxt.message}" and nxt.said == nxt.message
    # a window open now: the start is the next reconcile's, the create stands as it was
    assert after_create(req, none, none, created, windows((0, 5)), "Planned", 1.0, T0, D) is created
    # no forecast: the ForecastUnavailable Warning is the next reconcile's own Event
    assert after_create(req, none, none, created, None, None, 1.0, T0, D) is created
