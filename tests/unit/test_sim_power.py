"""greenml simulate power-caps / greenml.sim.power: shifting alone, capping alone, both."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.cli import main
from greenml.signals.base import IntensitySeries
from greenml.sim import forecasts
from greenml.sim.jobs import SimJob
from greenml.sim.power import CapSimConfig, simulate_caps

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def series(days=4, seed=0):
    rng = np.random.default_rng(seed)
    h = np.arange(24 * days)
    values = 300 + 150 * np.sin(2 * np.pi * h / 24) + rng.normal(0, 20, h.size)
    return IntensitySeries(T0, timedelta(hours=1), values, "test")


def jobs(n=30, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        submit = T0 + timedelta(hours=int(rng.integers(0, 40)))
        dur = timedelta(minutes=int(rng.integers(1, 12)) * 30)
        out.append(SimJob(f"j{i}", submit, dur, submit + dur + timedelta(hours=int(rng.choice([2, 8, 24]))),
                          gpus=int(rng.integers(1, 5)), watts_per_gpu=250, interruptible=bool(i % 2)))
    return out


@pytest.mark.parametrize("model", ["A40", "V100", "H100"])
def test_both_is_never_worse_than_either_and_deadlines_hold(model):
    actual = series()
    r = simulate_caps(jobs(), actual, forecasts.perfect(actual), CapSimConfig(gpu_model=model)).summary()["strategies"]
    assert all(v["deadlines_met"] == 30 for v in r.values())
    assert r["run-now"]["savings_percent"] == 0
    assert r["shifting"]["energy_change_percent"] == pytest.approx(0, abs=1e-6)   # shifting moves, never saves energy
    assert r["both"]["grams"] <= r["shifting"]["grams"] * (1 + 1e-9)
    assert r["both"]["grams"] < r["run-now"]["grams"] and r["capping"]["grams"] < r["run-now"]["grams"]
    assert r["capping"]["mean_stretch"] >= 1.0


def test_cli_power_caps(tmp_path, capsys):
    actual = series()
    ci = tmp_path / "ci.csv"
    ci.write_text("datetime_utc,ci\n" + "".join(f"{(T0 + timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{v:.2f}\n"
                                                for i, v in enumerate(actual.values)))
    jf = tmp_path / "jobs.csv"
    jf.write_text("name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible\n"
                  "a,2026-12-01T02:00:00Z,120,2026-12-01T20:00:00Z,2,300,true\n"
                  "b,2026-12-01T05:00:00Z,240,2026-12-02T05:00:00Z,4,300,false\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "power-caps", "--intensity", str(ci), "--jobs", str(jf), "--gpu-model", "V100",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "both" in text and "capping" in text and "2/2" in text
    summary = json.loads(out.read_text())["summary"]
    assert set(summary["strategies"]) == {"run-now", "capping", "shifting", "both", "shifting-at-submit",
                                          "both-at-submit"}
    assert main(["simulate", "power-caps", "--intensity", str(ci), "--jobs", str(jf), "--gpu-model", "Z9"]) == 2


# ---------------------------------------------------------------- the replay of carbon-aware caps
# (sim.shifting.simulate, policy greenml: the TrainingJob controller's sequence, docs/power-caps.md)

from dataclasses import replace  # noqa: E402

from greenml.planning.power import CapCurve, CapPolicy, CurvePoint  # noqa: E402
from greenml.services.board import PlanBoard  # noqa: E402
from greenml.services.trainingjob import (  # noqa: E402
    Defaults, JobObservation, JobRequirements, Progress, capped_segment, capped_usage, capped_view, decide,
    persist_capped,
)
from greenml.signals.series import SeriesSource  # noqa: E402
from greenml.sim.jobs import Accountant  # noqa: E402
from greenml.sim.power import cap_policy  # noqa: E402
from greenml.sim.shifting import SimPolicy, simulate  # noqa: E402

HALF = timedelta(minutes=30)
# a 300 W GPU whose 150 W cap halves the speed at 0.4 of the draw: levels 150 W (speed 0.5,
# power 0.4) and uncapped (1, 1)
TOY = CapPolicy("carbonAware", 150.0, 300.0, 300.0,
                CapCurve("toy", (CurvePoint(0.5, 2.0, 0.4), CurvePoint(1.0, 1.0, 1.0))))


def half_hourly(values):
    return IntensitySeries(T0, HALF, np.array(values, dtype=float), "test")


def test_toy_levels_are_what_the_hand_cases_assume():
    assert [(lv.watts, lv.speed, lv.power) for lv in TOY.levels()] == [(150.0, 0.5, 0.4), (None, 1.0, 1.0)]


def test_a_capped_job_in_the_replay_finishes_when_its_capped_work_is_done():
    # non-interruptible, 1 h of work at maxWatts, deadline 4 h; 100 g/kWh for 2 h, 110 for 1 h, then
    # dear. One cap for the whole run: 150 W over 4 slots (4 × 0.4 × 100 = 160 per kW·slot) beats
    # uncapped over 2 (200); every replan keeps it (at 1:30 the work left, 900 s, is rounded up to
    # a slot: 0.4 × (100 + 110) = 84 at 150 W against 100 uncapped). 1 h of work at half speed:
    # it ends at 2 h, 0.3 kW × 0.4 × 2 h = 0.24 kWh, at 100 g/kWh: 24 g
    actual = half_hourly([100] * 4 + [110] * 2 + [1000] * 200)
    job = SimJob("a", T0, timedelta(hours=1), T0 + timedelta(hours=4), gpus=1, watts_per_gpu=300, cap=TOY)
    r = simulate([job], actual, forecasts.perfect(actual), SimPolicy("greenml")).jobs[0]
    assert r.runs == ((T0, T0 + timedelta(hours=2)),) and r.caps == (150.0,)
    assert r.completed and r.deadline_met
    assert r.kwh == pytest.approx(0.24) and r.grams == pytest.approx(24.0)
    # the same job uncapped runs 1 h at full draw
    plain = simulate([replace(job, cap=None)], actual, forecasts.perfect(actual), SimPolicy("greenml")).jobs[0]
    assert plain.runs == ((T0, T0 + timedelta(hours=1)),) and plain.kwh == pytest.approx(0.3)


def test_a_change_of_cap_rebases_the_run_in_the_replay():
    # interruptible (one-slot minRunDuration), 1 h of work, deadline 2 h, 100/120/130/160 g/kWh.
    # A cap per slot (greedy over the increments: 0.8·f to 150 W, 1.2·f from 150 W to uncapped):
    # 80, 96, 104, then 120 (slot 0's second) → slot 0 uncapped, slots 1-2 at 150 W. At 0:30
    # 1800 s are done, and at 1:00 the replan (1 slot of work left, rounded up) still caps slots
    # 2-3, so 900 s at half speed end the job at 1:30:
    # 0.3 kW × (0.5 h × 1 + 1 h × 0.4) = 0.27 kWh; 0.3 × (0.5 × 100 + 0.5 × 0.4 × (120 + 130)) = 30 g
    actual = half_hourly([100, 120, 130, 160] + [1000] * 200)
    job = SimJob("b", T0, timedelta(hours=1), T0 + timedelta(hours=2), gpus=1, watts_per_gpu=300,
                 interruptible=True, min_run=HALF, cap=TOY)
    r = simulate([job], actual, forecasts.perfect(actual), SimPolicy("greenml")).jobs[0]
    assert r.runs == ((T0, T0 + HALF), (T0 + HALF, T0 + 3 * HALF)) and r.caps == (None, 150.0)
    assert r.completed and r.deadline_met
    assert r.kwh == pytest.approx(0.27) and r.grams == pytest.approx(30.0)


def operator_sequence(job: SimJob, actual: IntensitySeries, forecaster, step=HALF):
    """One carbon-aware job as the TrainingJob controller runs it, calling the services tick by
    tick (controllers/trainingjob.py: reconcile, publish_cap, write_status's usage), the Job's
    run simulated: it finishes when its work at the published caps is done. Returns the
    segments (start, end, cap), status.usage's energy and the decisions."""
    defaults = Defaults(zone="sim", safety_margin=timedelta(0), min_run=HALF, step=step)
    source = SeriesSource(replace(actual, values=np.full(1, np.nan)), name="sim", forecaster=forecaster)
    board = PlanBoard(defaults, source, replan_interval=step, horizon=timedelta(days=7))
    req = JobRequirements("sim", job.name, job.name, job.submit, job.deadline, job.duration, job.interruptible,
                          job.min_run or HALF, job.gpus, job.watts, "spec", "sim", cap=job.cap)
    progress, ran, run_start, used = Progress(), None, None, {}
    segments, decisions = [], []
    t = job.submit
    while True:
        speed = req.cap.level(ran).speed if progress.running_since else 1.0
        observed = JobObservation(exists=True, suspended=progress.running_since is None)
        if progress.running_since is not None:
            end = progress.running_since + timedelta(seconds=(job.duration.total_seconds() - progress.run_seconds) / speed)
            if end <= t:
                observed = replace(observed, succeeded=True, finished_at=end)
        view = capped_view(progress, speed, t, run_start)
        windows, reason = None, None
        if not observed.succeeded:
            board.observe(req, view, running=progress.running_since is not None)
            plan, _ = board.plan_for(req.key, t)
            windows, reason = (list(plan.windows), plan.reason) if plan else (None, None)
        o = decide(req, view, observed, windows, t, defaults, plan_reason=reason)
        o = persist_capped(req, progress, view, o, speed, t)
        want = None
        if o.progress.running_since is not None and o.phase != "Succeeded":
            want = board.cap_for(req.key, t, forced=o.reason == "DeadlineForced")
            o, run_start = capped_segment(progress, o, ran, run_start, want, speed, t)
        kwh, counted, wall = capped_usage(req, o.progress, t, used, ran)
        used = {"energyKwh": kwh, "countedRunSeconds": counted, "wallSeconds": wall}
        if progress.running_since is not None and o.progress.running_since != progress.running_since:
            close = observed.finished_at or o.progress.running_since or t
            segments.append((progress.running_since, close, ran))
        decisions.append((t, o.phase, o.reason, want))
        if o.phase == "Succeeded":
            return segments, used, decisions, o.progress
        progress, ran = o.progress, want
        t += step


@pytest.mark.parametrize("seed", range(6))
def test_the_replay_decides_as_the_services_called_tick_by_tick(seed):
    """Forecast error (20 % noise, replanned every step), V100 curve: the replay's runs, caps and
    energy are those of the controller's sequence of service calls."""
    rng = np.random.default_rng(100 + seed)
    actual = series(days=5, seed=seed)
    forecaster = forecasts.noisy(actual, 0.2, seed)
    policy = cap_policy("V100")
    for i in range(4):
        submit = T0 + timedelta(hours=int(rng.integers(0, 30)), minutes=30 * int(rng.integers(0, 2)))
        dur = timedelta(minutes=30 * int(rng.integers(2, 12)))
        job = SimJob(f"j{i}", submit, dur, submit + dur + timedelta(hours=int(rng.choice([2, 8, 24]))),
                     gpus=int(rng.integers(1, 5)), watts_per_gpu=250, interruptible=bool(rng.integers(0, 2)),
                     cap=policy)
        segments, used, decisions, final = operator_sequence(job, actual, forecaster)
        kwh = used["energyKwh"]
        # the wall time status accrues is the segments' own (embodied carbon holds the GPUs that long)
        assert used["wallSeconds"] == pytest.approx(sum((e - s).total_seconds() for s, e, _ in segments), abs=1e-3)
        r = simulate([job], actual, forecaster, SimPolicy("greenml")).jobs[0]
        assert r.completed and final.run_seconds == pytest.approx(dur.total_seconds())
        assert len(r.runs) == len(segments) and r.caps == tuple(c for _, _, c in segments), (decisions, r)
        for (s, e), (s2, e2, _) in zip(r.runs, segments):
            assert s == s2 and abs((e - e2).total_seconds()) < 1e-3
        assert r.kwh == pytest.approx(kwh, rel=1e-9)


def test_the_replays_accounting_of_a_capped_run_is_capped_usages():
    """Energy: status.usage as capped_usage accrues it = each segment's wall time at its cap's
    draw; grams: those segments on the actual series. 30 jobs, A40 and V100 curves."""
    actual = series()
    for model in ("A40", "V100"):
        policy = cap_policy(model)
        res = simulate([replace(j, cap=policy) for j in jobs()], actual, forecasts.noisy(actual, 0.1, 3),
                       SimPolicy("greenml"))
        acc = Accountant(actual)
        capped_runs = 0
        for r, j in zip(res.jobs, jobs()):
            assert r.completed and r.deadline_met
            levels = [policy.level(c) for c in r.caps]
            capped_runs += sum(lv.speed < 1 for lv in levels)
            work = sum((e - s).total_seconds() * lv.speed for (s, e), lv in zip(r.runs, levels))
            assert work == pytest.approx(j.duration.total_seconds())      # done when its capped work is
            kwh = sum(j.power_kw * lv.power * (e - s).total_seconds() / 3600 for (s, e), lv in zip(r.runs, levels))
            assert r.kwh == pytest.approx(kwh, rel=1e-9)
            assert r.grams == pytest.approx(sum(j.power_kw * lv.power * acc.kwh_intensity(s, e)
                                                for (s, e), lv in zip(r.runs, levels)), rel=1e-9)
        assert capped_runs > 5


def test_power_caps_both_is_the_replay():
    actual = series()
    r = simulate_caps(jobs(), actual, forecasts.perfect(actual), CapSimConfig(gpu_model="V100"))
    replay = simulate([replace(j, cap=cap_policy("V100")) for j in jobs()], actual, forecasts.perfect(actual),
                      SimPolicy("greenml"))
    assert [o.grams for o in r.outcomes["both"]] == [j.grams for j in replay.jobs]
    assert [o.kwh for o in r.outcomes["both"]] == [j.kwh for j in replay.jobs]
    # the at-submit plans are there beside it
    assert set(r.summary()["strategies"]) == {"run-now", "capping", "shifting", "both",
                                              "shifting-at-submit", "both-at-submit"}
