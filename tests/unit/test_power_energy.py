"""Usage energy of power-capped TrainingJobs (docs/power-caps.md, "Accounting"): a run counts
at the draw of the cap it ran under — a static cap at its own draw, a carbon-aware job each
stretch at the cap published for it — in status.usage, its grams, and the metrics.

The expectations are computed by hand from a job-given curve: 150 W → time × 1.5, draw × 0.6;
300 W (the GPU's limit) → 1, 1; 2 GPUs at 300 W each."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from greenml.controllers.loop import Patch
from greenml.controllers.trainingjob import write_status
from greenml.metrics import Metrics, record_trainingjob
from greenml.planning.accounting import AccountingPolicy
from greenml.services.trainingjob import Defaults, Outcome, Progress, capped_usage, persist_capped, capped_view, resolve

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
D = Defaults(zone="DE", safety_margin=timedelta(0), min_run=timedelta(minutes=10), step=timedelta(minutes=10))
CURVE = [{"watts": 150, "timeFactor": 1.5, "powerFactor": 0.6}, {"watts": 300, "timeFactor": 1.0, "powerFactor": 1.0}]


def tj(cap: dict) -> dict:
    return {"metadata": {"name": "t", "namespace": "ml", "uid": "u", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"schedule": {"estimatedDuration": "2h", "maxDelay": "6h", "interruptible": True},
                     "power": {"gpus": 2, "wattsPerGpu": 300, "cap": {**cap, "curve": CURVE}},
                     "template": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                                                                   "containers": [{"name": "c", "image": "i"}]}}}}}}


AWARE = {"carbonAware": {"minWatts": 150, "maxWatts": 300}}


def outcome(progress: Progress, phase: str = "Running") -> Outcome:
    return Outcome("none", phase, "InWindow", "running", progress, timedelta(hours=1), T0 + timedelta(hours=4))


def status_after(req, status: dict, progress: Progress, now: datetime, cap: float | None, intensity=100.0) -> dict:
    patch = Patch()
    write_status({"metadata": {}}, status, patch, req, outcome(progress), None, None, now, 1,
                 intensity=intensity, cap_watts=cap)
    return patch.status


def test_a_carbon_aware_run_counts_each_stretch_at_its_caps_draw():
    """600 s uncapped (600 W), then 1,800 s at 150 W (2 × 300 W × 0.6 = 360 W): 360,000 J +
    648,000 J = 1,008,000 J = 0.28 kWh — not 0.30 kWh (the 1,800 s of work at full draw)."""
    req = resolve(tj(AWARE), D)
    assert req.watts == 600
    speed = req.cap.level(150.0).speed                     # 2/3
    st: dict = {}
    # 600 s at maxWatts (no cap: 300 W is the GPU's limit): 0.1 kWh at 100 g/kWh
    run = Progress(run_seconds=0.0, running_since=T0, runs=1)
    st = {"usage": status_after(req, st, run, T0 + timedelta(seconds=600), None)["usage"]}
    assert st["usage"] == {"energyKwh": 0.1, "grams": 10.0, "source": "power-model (spec)", "countedRunSeconds": 600.0,
                           "wallSeconds": 600.0}
    # the cap drops to 150 W: the segment is rebased at that moment, nothing more used yet
    run = run.rebase(T0 + timedelta(seconds=600), 1.0)
    st = {"usage": status_after(req, st, run, T0 + timedelta(seconds=600), None)["usage"]}
    assert st["usage"]["energyKwh"] == pytest.approx(0.1)
    # 1,200 s later, at 200 g/kWh: 1,200 s × 360 W = 0.12 kWh more (the work: 800 s)
    st = {"usage": status_after(req, st, run, T0 + timedelta(seconds=1800), 150.0, intensity=200.0)["usage"]}
    assert st["usage"]["energyKwh"] == pytest.approx(0.22)
    assert st["usage"]["grams"] == pytest.approx(10 + 0.12 * 200)
    assert st["usage"]["countedRunSeconds"] == pytest.approx(1400.0)
    assert st["usage"]["wallSeconds"] == pytest.approx(1800.0)             # the 800 s of work took 1,200 s
    # decide() closes the run 600 s later (persist_capped: the segment at the cap's speed)
    end = T0 + timedelta(seconds=2400)
    view = capped_view(run, speed, end)
    closed = persist_capped(req, run, view, outcome(view.closed(end), "Succeeded"), speed, end).progress
    assert closed.running_since is None and closed.run_seconds == pytest.approx(1800.0)
    final = status_after(req, st, closed, end, 150.0)["usage"]
    assert final["energyKwh"] == pytest.approx(0.28)
    assert final["countedRunSeconds"] == pytest.approx(1800.0)
    assert final["wallSeconds"] == pytest.approx(2400.0)
    # and again (a later reconcile of the finished job): nothing more
    assert status_after(req, {"usage": final}, closed, end + timedelta(hours=1), 150.0)["usage"]["energyKwh"] \
        == pytest.approx(0.28)


def test_capped_usage_without_a_counted_figure_takes_all_the_work_at_the_cap_of_now():
    req = resolve(tj(AWARE), D)
    run = Progress(run_seconds=300.0, running_since=T0, runs=1)           # 300 s of work closed, 600 s open at 150 W
    kwh, counted, wall = capped_usage(req, run, T0 + timedelta(seconds=600), {}, 150.0)
    assert counted == pytest.approx(300 + 400) and wall == pytest.approx(700 * 1.5)
    assert kwh == pytest.approx(700 * 540 / 3.6e6)                      # 540 J per second of work at 150 W
    # progress restarted below what was counted: counted again from zero
    kwh, counted, wall = capped_usage(req, Progress(), T0, {"energyKwh": 0.5, "countedRunSeconds": 900.0}, None)
    assert (kwh, counted, wall) == (0.0, 0.0, 0.0)
    # a status from before wallSeconds: the work counted so far is taken as uncapped wall time
    run = Progress(run_seconds=100.0, running_since=T0, runs=1)
    _, counted, wall = capped_usage(req, run, T0 + timedelta(seconds=300), {"energyKwh": 0.01, "countedRunSeconds": 100.0},
                                    150.0)
    assert counted == pytest.approx(300.0) and wall == pytest.approx(100 + 300)


def test_a_run_closed_before_the_last_status_takes_back_the_overshoot_at_its_own_caps_draw():
    """The Job's completionTime (whole seconds) — or a stall counted to its heartbeat — can
    close a run a moment before the ``now`` of the last status, which had counted the open
    segment up to then. That sliver ran at the open segment's cap and is taken back at its
    draw; the stretches before it keep theirs (all the work was once recounted at the cap of
    the moment, i.e. as if the whole run had been uncapped — a flaky e2e found it)."""
    req = resolve(tj(AWARE), D)
    speed = req.cap.level(150.0).speed                             # 2/3
    # 600 s at 150 W (400 s of work at 540 J each), then the cap goes (300 W: 600 J per second)
    run = Progress(run_seconds=0.0, running_since=T0, runs=1)
    st = {"usage": status_after(req, {}, run, T0 + timedelta(seconds=600), 150.0)["usage"]}
    run = run.rebase(T0 + timedelta(seconds=600), speed)
    assert run.run_seconds == pytest.approx(400.0)
    # the last status while the pod still ran: 300.8 s of the uncapped segment counted
    late = T0 + timedelta(seconds=900.8)
    st = {"usage": status_after(req, st, run, late, None, intensity=100.0)["usage"]}
    assert st["usage"]["countedRunSeconds"] == pytest.approx(700.8)
    assert st["usage"]["energyKwh"] == pytest.approx((400 * 540 + 300.8 * 600) / 3.6e6, abs=1e-6)
    # the Job's completionTime says 900 s: the run is closed there, 0.8 s before that status
    closed = run.closed(T0 + timedelta(seconds=900))
    final = status_after(req, st, closed, late + timedelta(seconds=1), None, intensity=100.0)["usage"]
    assert final["countedRunSeconds"] == pytest.approx(700.0)
    assert final["wallSeconds"] == pytest.approx(600 + 300)
    assert final["energyKwh"] == pytest.approx((400 * 540 + 300 * 600) / 3.6e6, abs=1e-6)
    assert final["energyKwh"] < 700 * 600 / 3.6e6 - 0.005          # not all of it at the uncapped draw
    # and its grams: the sliver taken back at the intensity it was counted at
    assert final["grams"] == pytest.approx(st["usage"]["grams"] - 0.8 * 600 / 3.6e6 * 100, abs=1e-3)


def test_a_static_cap_counts_at_its_draw():
    """Static 150 W: the job is planned and counted at the cap — 3,600 s at 360 W = 0.36 kWh
    (uncapped: 0.6 kWh for the same hour)."""
    req = resolve(tj({"watts": 150}), D)
    assert req.watts == pytest.approx(360)
    assert req.duration == timedelta(hours=3)                     # 2 h × 1.5
    usage = status_after(req, {}, Progress(running_since=T0, runs=1), T0 + timedelta(hours=1), None)["usage"]
    assert usage["energyKwh"] == pytest.approx(0.36)
    assert "countedRunSeconds" not in usage


def test_metrics_embodied_time_of_a_capped_run_is_its_wall_time_not_energy_over_watts():
    """Embodied carbon counts the GPUs held for the run's wall time: 1,800 s of work that took
    2,400 s at its caps is 2,400 s of hardware time (as 0.4 kWh uncapped at 600 W would be),
    not 0.28 kWh / 600 W; a status from before wallSeconds counts its work."""
    req = resolve(tj(AWARE), D)
    policy = AccountingPolicy()

    def embodied(usage):
        m = Metrics()
        record_trainingjob(m, req, {"usage": usage}, None, policy)
        return m.registry.get_sample_value("greenml_carbon_embodied_grams",
                                           {"namespace": "ml", "name": "t", "kind": "TrainingJob"}), m

    capped, m = embodied({"energyKwh": 0.28, "grams": 28.0, "countedRunSeconds": 1800.0, "wallSeconds": 2400.0})
    assert capped == pytest.approx(embodied({"energyKwh": 0.4, "grams": 28.0})[0]) and capped > 0   # 2,400 s at 600 W
    assert embodied({"energyKwh": 0.28, "grams": 28.0, "countedRunSeconds": 1800.0})[0] \
        == pytest.approx(embodied({"energyKwh": 0.3, "grams": 28.0})[0])                           # 1,800 s at 600 W
    assert m.registry.get_sample_value("greenml_energy_joules",
                                       {"namespace": "ml", "name": "t", "kind": "TrainingJob"}) == pytest.approx(0.28 * 3.6e6)
