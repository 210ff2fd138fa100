"""Publishing GPU power caps on a running TrainingJob's pods (docs/power-caps.md, "controller
steps"): the pure pieces the controller wires — which pods get which annotation, the cap a
run segment ran under, progress counted at the cap's speed, the caps status shows, and the
wake-ups that reach every moment the cap changes."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from greenml.planning import power
from greenml.planning.power import CAP_ANNOTATION, CapPolicy
from greenml.services.trainingjob import (
    Defaults, JobObservation, Progress, capped_view, carried_cap, decide, job_pods, next_wakeup, parse_cap,
    persist_capped, pods_signature, pods_to_cap, resolve,
)

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
D = Defaults(zone="DE", safety_margin=timedelta(0), min_run=timedelta(minutes=10), step=timedelta(minutes=10))


def policy(lo=150.0, hi=250.0) -> CapPolicy:
    return CapPolicy("carbonAware", lo, hi, 300.0, power.curve_for("A40"))


def tj(duration="2h", max_delay="6h", cap=None, interruptible=True) -> dict:
    return {"metadata": {"name": "t", "namespace": "ml", "uid": "u", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"schedule": {"estimatedDuration": duration, "maxDelay": max_delay, "interruptible": interruptible,
                                  "minRunDuration": "10m"},
                     "power": {"gpus": 1, "gpuModel": "A40",
                               "cap": cap or {"carbonAware": {"minWatts": 150, "maxWatts": 250}}},
                     "template": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                                                                   "containers": [{"name": "c", "image": "i"}]}}}}}}


def pod(name, job="t-run", cap=None, phase="Running", label="job-name", deleting=False) -> dict:
    meta = {"name": name, "namespace": "ml", "labels": {label: job}, "annotations": {CAP_ANNOTATION: cap} if cap else {}}
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


# ------------------------------------------------------------------ which pods, which annotation

def test_pods_to_cap_keeps_to_the_jobs_live_pods_that_carry_another_cap():
    pods = [pod("a", cap="250"), pod("b", cap="175"), pod("c"), pod("other", job="x-run", cap="250"),
            pod("done", cap="250", phase="Succeeded"), pod("going", cap="250", deleting=True),
            pod("new-label", cap="250", label="batch.kubernetes.io/job-name")]
    assert [p["metadata"]["name"] for p in job_pods(pods, "t-run")] == ["a", "b", "c", "new-label"]
    assert pods_to_cap(pods, "t-run", 175.0) == ["a", "c", "new-label"]
    assert pods_to_cap(pods, "t-run", None) == ["a", "b", "new-label"]      # None: the annotation goes
    assert pods_to_cap(pods, "t-run", 187.5) == ["a", "b", "c", "new-label"]
    assert pods_to_cap([], "t-run", 175.0) == []


def test_the_cap_a_segment_ran_under_is_read_back_from_the_pods_else_the_template():
    job = {"spec": {"template": {"metadata": {"annotations": {CAP_ANNOTATION: "250"}}}}}
    assert carried_cap([pod("a", cap="175")], "t-run", job) == 175.0
    assert carried_cap([pod("a")], "t-run", job) is None                  # a live pod without one: uncapped
    assert carried_cap([pod("x", job="x-run", cap="150")], "t-run", job) == 250.0
    assert carried_cap([], "t-run", None) is None
    assert [parse_cap(v) for v in ("200", "187.5", "-1", "0", "nan", "inf", "x", None)] == \
        [200.0, 187.5, None, None, None, None, None, None]


def test_pods_signature_changes_when_the_job_may_have_new_pods():
    job = {"metadata": {"uid": "j"}, "status": {"active": 1, "ready": 1}}
    same = pods_signature(job, 1)
    assert pods_signature(job, 1) == same
    assert pods_signature(job, 2) != same                                  # resumed: new pods from the template
    assert pods_signature({**job, "status": {"active": 1, "ready": 0, "failed": 1}}, 1) != same   # a replaced pod
    assert pods_signature({**job, "metadata": {"uid": "k"}}, 1) != same    # recreated


# ------------------------------------------------------------------ what status shows and the agent is asked for

def test_window_caps_and_a_plain_plan_of_a_carbon_aware_job():
    w = ((T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=2), T0 + timedelta(hours=3)))
    assert power.window_caps(policy(), w, (150.0, 175.0)) == (150.0, 175.0)
    # no capped plan emitted less: the plain plan is the job at maxWatts, not uncapped
    assert power.window_caps(policy(), w, ()) == (250.0, 250.0)
    assert power.cap_to_publish(policy(), w, (), T0, forced=False) == 250.0
    assert power.window_caps(policy(150, 300), w, ()) == (None, None)          # maxWatts is the GPU's limit
    assert power.window_caps(CapPolicy("static", 200, 200, 300.0, power.curve_for("A40")), w, ()) == (200, 200)
    assert power.window_caps(None, w, ()) == (None, None)


# ------------------------------------------------------------------ progress at the cap's speed

def test_the_open_segment_counts_at_its_caps_speed_and_stays_in_wall_time_in_status():
    req = resolve(tj(), D)
    speed = req.cap.level(150.0).speed
    assert 0.7 < speed < 0.8
    before = Progress(run_seconds=600.0, running_since=T0, runs=1, seen_running=T0)
    now = T0 + timedelta(minutes=30)
    view = capped_view(before, speed, now)
    assert view.total(now) == pytest.approx(600 + 1800 * speed) and view.running_since == T0
    assert capped_view(before, 1.0, now) is before and capped_view(Progress(5.0), speed, now) == Progress(5.0)
    windows = [(T0, T0 + timedelta(hours=1))]
    job = JobObservation(exists=True, suspended=False, pods_running=True)
    out = decide(req, view, job, windows, now, D)
    assert out.action == "none" and out.phase == "Running"
    kept = persist_capped(req, before, view, out, speed, now)
    assert kept.progress.running_since == T0 and kept.progress.run_seconds == pytest.approx(600.0)
    assert kept.remaining == out.remaining == req.duration - timedelta(seconds=view.total(now))
    # the cap changes: the segment ends at its speed and a new one opens (Progress.rebase)
    assert kept.progress.rebase(now, speed).total(now) == pytest.approx(view.total(now))


@pytest.mark.parametrize("how", ["pause", "finished", "vanished"])
def test_a_segment_decide_closes_counts_at_its_caps_speed(how):
    req = resolve(tj(), D)
    speed = req.cap.level(150.0).speed
    before = Progress(run_seconds=600.0, running_since=T0, runs=1, seen_running=T0 + timedelta(minutes=40))
    now = T0 + timedelta(minutes=50)
    end = {"pause": now, "finished": T0 + timedelta(minutes=45), "vanished": T0 + timedelta(minutes=50)}[how]
    job = {"pause": JobObservation(exists=True, suspended=False, pods_running=True),
           "finished": JobObservation(exists=True, suspended=False, succeeded=True, finished_at=end),
           "vanished": JobObservation(exists=False)}[how]
    windows = [(T0, T0 + timedelta(minutes=40)), (T0 + timedelta(hours=3), T0 + timedelta(hours=5))]
    view = capped_view(before, speed, now)
    out = persist_capped(req, before, view, decide(req, view, job, windows, now, D), speed, now)
    assert out.progress.running_since is None
    assert out.progress == before.rebase(end, speed).closed(end)
    assert out.progress.run_seconds == pytest.approx(600 + (end - T0).total_seconds() * speed)
    assert out.remaining == req.duration - timedelta(seconds=out.progress.run_seconds)


def test_under_a_cap_the_latest_safe_start_comes_sooner():
    """Counting a capped run at full speed would think more work done than was: decide() on
    the view forces the run where the raw progress would still wait."""
    req = resolve(tj(duration="2h", max_delay="10m"), D)
    speed = req.cap.level(150.0).speed
    before = Progress(run_seconds=0.0, running_since=T0, runs=1, seen_running=T0 + timedelta(minutes=50))
    now = T0 + timedelta(minutes=60)
    job = JobObservation(exists=True, suspended=False, pods_running=True)
    windows = [(T0, T0 + timedelta(minutes=60)), (T0 + timedelta(minutes=80), T0 + timedelta(minutes=130))]
    raw = decide(req, before, job, windows, now, D)
    view = capped_view(before, speed, now)
    capped = persist_capped(req, before, view, decide(req, view, job, windows, now, D), speed, now)
    assert raw.action == "pause"
    assert capped.action == "none" and capped.reason == "DeadlineForced" and capped.latest_start < raw.latest_start


def test_persist_capped_without_a_cap_changes_nothing():
    req = resolve(tj(), D)
    p = Progress(run_seconds=1.0, running_since=T0, runs=1)
    out = decide(req, p, JobObservation(exists=True, suspended=False), [(T0, T0 + timedelta(hours=1))],
                 T0 + timedelta(minutes=20), D)
    assert persist_capped(req, p, p, out, 1.0, T0 + timedelta(minutes=20)) is out


# ------------------------------------------------------------------ wake-ups reach every cap change

def test_the_wakeups_reach_every_moment_the_published_cap_changes():
    """Walk a capped plan with decide() and next_wakeup() only: every moment where the cap to
    publish changes (window boundaries, adjacent windows of different caps, the latest safe
    start) is a wake-up."""
    req = resolve(tj(duration="3h", max_delay="5h"), D)
    h = timedelta(hours=1)
    windows = [(T0 + h, T0 + 2 * h), (T0 + 2 * h, T0 + 2.5 * h), (T0 + 4 * h, T0 + 5 * h)]
    caps = (150.0, 200.0, 175.0)
    changes = set()
    t = T0
    while t < req.deadline:
        a = power.cap_to_publish(req.cap, windows, caps, t - timedelta(seconds=1), forced=False)
        b = power.cap_to_publish(req.cap, windows, caps, t, forced=False)
        if a != b:
            changes.add(t)
        t += timedelta(minutes=10)
    assert len(changes) >= 5
    progress, now, seen = Progress(), T0, set()
    while now < req.deadline:
        job = JobObservation(exists=True, suspended=progress.running_since is None, pods_running=True)
        out = decide(req, progress, job, windows, now, D)
        progress = out.progress
        nxt = next_wakeup(req, out, windows, now, D)
        if nxt is None or out.phase in ("Succeeded", "Failed"):
            break
        seen.add(nxt)
        now = nxt
    assert changes <= seen, sorted(changes - seen)


def test_after_a_change_of_cap_min_run_still_counts_from_the_runs_start():
    """A change of cap rebases the segment (status: runningSince moves); minRunDuration and the
    board's pinned slots still count from the run's start, which the view restores."""
    req = resolve(tj(), D)                                    # minRunDuration 10m
    speed = req.cap.level(150.0).speed
    before = Progress(runs=1, running_since=T0, seen_running=T0 + timedelta(minutes=10)).rebase(T0 + timedelta(minutes=5), 1.0)
    assert before.run_seconds == 300 and before.running_since == T0 + timedelta(minutes=5)
    now = T0 + timedelta(minutes=11)
    windows = [(T0, T0 + timedelta(minutes=10)), (T0 + timedelta(hours=3), T0 + timedelta(hours=4))]
    job = JobObservation(exists=True, suspended=False, pods_running=True)
    view = capped_view(before, speed, now, run_start=T0)
    assert view.running_since == T0 and view.total(now) == pytest.approx(300 + 360 * speed)
    assert decide(req, capped_view(before, speed, now), job, windows, now, D).reason == "MinRunDuration"
    out = persist_capped(req, before, view, decide(req, view, job, windows, now, D), speed, now)
    assert out.action == "pause" and out.progress.running_since is None
    assert out.progress.run_seconds == pytest.approx(300 + 360 * speed)
    # still running (inside a window): status keeps the segment's own start
    inside = [(T0, T0 + timedelta(minutes=20))]
    kept = persist_capped(req, before, view, decide(req, view, job, inside, now, D), speed, now)
    assert kept.progress.running_since == before.running_since and kept.progress.run_seconds == 300
    # uncapped after the rebase: only the start moves
    top = capped_view(before, 1.0, now, run_start=T0)
    assert top.running_since == T0 and top.total(now) == pytest.approx(before.total(now))
    assert capped_view(before, 1.0, now, run_start=before.running_since) is before
