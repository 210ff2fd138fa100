"""The real operator (`greenml run`) against the kmock API emulator: the TrainingJob lifecycle.

Time is real but short: the planning step is 2 s and the intensity file's cheap
window sits ~14 s after the test starts, so "waits for the window" is a real,
checkable behaviour (running immediately would un-suspend within a second or two).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.harness import operator_env, run_operator, wait_for, write_intensity

pytestmark = [pytest.mark.timeout(120)]

TJ = "greenml.io/v1alpha1/trainingjobs"
JOBS = "batch/v1/jobs"
NS = "ml"
STEP = timedelta(seconds=2)


def training_job(name: str, *, duration: str = "4s", max_delay: str = "40s", interruptible: bool = False,
                 containers: list | None = None, **schedule) -> dict:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "schedule": {"maxDelay": max_delay, "estimatedDuration": duration, "interruptible": interruptible, **schedule},
            "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": containers if containers is not None else [
                {"name": "train", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}},
        },
    }


def grid_start() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=0) - timedelta(seconds=now.second % 2)


async def job_of(api, name):
    return await api.get(JOBS, NS, f"{name}-run")


async def status_of(api, name):
    obj = await api.get(TJ, NS, name)
    return (obj or {}).get("status") or {}


async def complete(api, name):
    await api.patch(JOBS, NS, f"{name}-run", {"status": {"conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}})


async def test_lifecycle_waits_for_the_window_then_succeeds(api, kubeconfig, tmp_path):
    t0 = grid_start()
    # expensive now, cheap from +14 s to +20 s, expensive again
    values = [400.0] * 7 + [50.0] * 3 + [400.0] * 200
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, values)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity)) as op:
        await api.create(TJ, training_job("llm"))
        job = await wait_for("the Job to be created", lambda: job_of(api, "llm"), op=op)
        assert job["spec"]["suspend"] is True, "the Job must be created suspended"
        ref = job["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"]) == ("TrainingJob", "llm", True)
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:1"

        st = await wait_for("a plan in status", lambda: _planned(api, "llm"), op=op)
        assert st["phase"] == "Waiting"
        assert st["jobName"] == "llm-run"
        planned = datetime.fromisoformat(st["plan"]["plannedStart"].replace("Z", "+00:00"))
        assert t0 + timedelta(seconds=13) <= planned <= t0 + timedelta(seconds=16), st["plan"]
        assert st["plan"]["savingsPercent"] > 50
        assert st["plan"]["expectedGrams"] < st["plan"]["runNowGrams"]

        # still suspended before the window
        if datetime.now(timezone.utc) < t0 + timedelta(seconds=12):
            assert (await job_of(api, "llm"))["spec"]["suspend"] is True

        await wait_for("un-suspension in the window", lambda: _running(api, "llm"), timeout=40, op=op)
        assert datetime.now(timezone.utc) >= t0 + timedelta(seconds=13), "un-suspended before the planned window"
        st = await wait_for("phase Running", lambda: _phase(api, "llm", "Running"), op=op)
        assert st["progress"]["runs"] == 1 and st["progress"]["runningSince"]

        await complete(api, "llm")
        st = await wait_for("phase Succeeded", lambda: _phase(api, "llm", "Succeeded"), op=op)
        assert st["lastDecision"]["reason"] == "JobSucceeded"
        events = await wait_for("events", lambda: len(api.posted_events("llm")) >= 3 and api.posted_events("llm"), op=op)
        reasons = {e.get("reason") for e in events}
        assert {"Create", "Start"} <= reasons, events
        assert op.alive()


async def test_interruptible_job_pauses_and_resumes(api, kubeconfig, tmp_path):
    t0 = grid_start()
    # two cheap 4-second windows (+12..+16 s and +22..+26 s) with a dirty gap between them
    values = [400.0] * 6 + [50.0] * 2 + [600.0] * 3 + [60.0] * 2 + [500.0] * 200
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, values)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity)) as op:
        await api.create(TJ, training_job("pre", duration="8s", max_delay="60s", interruptible=True, minRunDuration="2s"))
        st = await wait_for("a plan", lambda: _planned(api, "pre"), op=op)
        assert len(st["plan"]["windows"]) == 2, st["plan"]
        await wait_for("first run", lambda: _running(api, "pre"), timeout=40, op=op)
        st = await wait_for("paused", lambda: _phase(api, "pre", "Paused"), timeout=40, op=op)
        assert (await job_of(api, "pre"))["spec"]["suspend"] is True
        assert 3.0 <= st["progress"]["runSeconds"] <= 7.0, st["progress"]
        await wait_for("resumed", lambda: _running(api, "pre"), timeout=40, op=op)
        st = await wait_for("phase Running again", lambda: _phase(api, "pre", "Running"), op=op)
        assert st["progress"]["runs"] == 2
        patches = [r for r in api.requests_to("patch", "/jobs/pre-run")]
        assert len(patches) >= 3  # resume, pause, resume


async def test_invalid_spec_is_reported_and_others_still_served(api, kubeconfig, tmp_path):
    t0 = grid_start()
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [100.0] * 300)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity)) as op:
        await api.create(TJ, training_job("broken", containers=[]))
        late = training_job("late", duration="1h")
        late["spec"]["schedule"].pop("maxDelay")
        late["spec"]["schedule"]["deadline"] = "2020-01-01T00:00:00Z"   # already impossible
        await api.create(TJ, late)
        await api.create(TJ, training_job("fine"))
        st = await wait_for("broken → Failed", lambda: _phase(api, "broken", "Failed"), op=op)
        cond = {c["type"]: c for c in st["conditions"]}["InvalidSpec"]
        assert cond["status"] == "True" and "containers" in cond["message"]
        assert await job_of(api, "broken") is None, "no Job for an invalid spec"
        st = await wait_for("late → Failed", lambda: _phase(api, "late", "Failed"), op=op)
        assert "in the past" in {c["type"]: c for c in st["conditions"]}["InvalidSpec"]["message"]
        await wait_for("fine gets its Job", lambda: job_of(api, "fine"), op=op)
        events = await wait_for("an event", lambda: api.posted_events("broken"), op=op)
        assert any(e.get("type") == "Warning" and e.get("reason") == "InvalidSpec" for e in events)
        assert op.alive()


async def test_deleting_the_trainingjob_removes_the_job(api, kubeconfig, tmp_path):
    t0 = grid_start()
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [400.0] * 20 + [10.0] * 200)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity)) as op:
        await api.create(TJ, training_job("gone", max_delay="5m"))
        await wait_for("the Job", lambda: job_of(api, "gone"), op=op)
        await api.delete(TJ, NS, "gone")
        # the emulator has no garbage collector: this is the operator's own clean-up
        await wait_for("the Job to be deleted", lambda: _absent(api, "gone"), op=op)


async def _planned(api, name):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("plannedStart") else None


async def _phase(api, name, phase):
    st = await status_of(api, name)
    return st if st.get("phase") == phase else None


async def _running(api, name):
    job = await job_of(api, name)
    return job if job and job["spec"].get("suspend") is False else None


async def _absent(api, name):
    return await job_of(api, name) is None


async def test_default_zone_comes_from_node_regions(api, kubeconfig, tmp_path):
    """A job naming no zone takes the zone of the nodes holding most GPUs (zone_map)."""
    t0 = grid_start()
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [100.0] * 300)
    env = operator_env(tmp_path, kubeconfig, intensity, zone_map='{"eu-central-1": "DE-LU"}', default_zone="GB")
    await api.create("v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "gpu-1", "labels": {"topology.kubernetes.io/region": "eu-central-1"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("zoned"))
        async def zoned():
            st = await _planned(api, "zoned")
            return st if st and st.get("zone") == "DE-LU" else None

        # node events and the first reconcile race; the zone is re-resolved on every tick
        await wait_for("the node region's zone in status", zoned, op=op)



def _reconciles(op) -> float:
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{op.env['GREENML_METRICS_PORT']}/metrics", timeout=5).read().decode()
    m = re.search(r'^greenml_reconcile_duration_seconds_count\{kind="TrainingJob"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_quiet_window_costs_no_reconcile_and_no_write(api, kubeconfig, tmp_path):
    """20 TrainingJobs planned into a window a minute away; then, with nothing due, the
    board replanned every 4 s (same forecast: the same plans on the grid) and the safety net
    at 600 s: no reconcile of any TrainingJob and no status write for 10 s. Then the Job
    controller's status update of each suspended Job (its `Suspended` condition) changes
    nothing a decision reads: no reconcile, no write. A pod count that changes does wake it."""
    t0 = grid_start()
    values = [400.0] * 40 + [50.0] * 10 + [400.0] * 200       # the window opens 80 s from now
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, values)
    names = [f"quiet-{i}" for i in range(20)]
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity, tick_interval="600")) as op:
        for n in names:
            await api.create(TJ, training_job(n, max_delay="3m"))
        for n in names:
            await wait_for(f"a plan for {n}", lambda n=n: _planned(api, n), timeout=30, op=op)
        await asyncio.sleep(2)                  # the Jobs' ADDED events and the first replan settle
        before_writes = len([r for r in api.requests_to("patch", "/trainingjobs/") if "/status" in str(r.url)])
        before = _reconciles(op)
        await asyncio.sleep(10)
        writes = len([r for r in api.requests_to("patch", "/trainingjobs/") if "/status" in str(r.url)]) - before_writes
        assert writes == 0, f"{writes} status writes in a quiet window"
        assert _reconciles(op) == before, f"{_reconciles(op) - before} reconciles in a quiet window"
        for n in names:          # what kube-controller-manager writes on a suspended Job
            await api.patch(JOBS, NS, f"{n}-run", {"status": {"conditions": [
                {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}],
                "ready": 0, "terminating": 0}})
        await asyncio.sleep(3)
        writes = len([r for r in api.requests_to("patch", "/trainingjobs/") if "/status" in str(r.url)]) - before_writes
        assert writes == 0, f"{writes} status writes after the Jobs' Suspended condition"
        assert _reconciles(op) == before, f"{_reconciles(op) - before} reconciles for the Jobs' Suspended condition"
        await api.patch(JOBS, NS, f"{names[0]}-run", {"status": {"failed": 1}})     # a pod failed: looked at
        await wait_for("the TrainingJob woken by its Job's pod count",
                       lambda: _reconciles(op) >= before + 1, timeout=15, op=op)
        for n in names:
            st = await status_of(api, n)
            assert st["phase"] == "Waiting" and st["plan"]["plannedStart"], st
        assert op.alive()


async def _planned(api, name):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("plannedStart") else None


def _gpus(n: int) -> list:
    return [{"name": "train", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": n}}}]


async def _condition(api, name, type_):
    st = await status_of(api, name)
    c = {c["type"]: c for c in st.get("conditions") or []}.get(type_)
    return st if c and c["status"] == "True" else None


async def test_capacity_verdicts_are_said_at_once(api, kubeconfig, tmp_path):
    """GPU capacity 2: a 4-GPU job can never fit (Unplaceable); two 2-GPU non-interruptible
    jobs of 20 s that must both finish within 24 s cannot both keep their deadline
    (DeadlineAtRisk on one) — each a condition and one Warning Event, not a silent miss."""
    t0 = grid_start()
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [400.0] * 300)
    env = operator_env(tmp_path, kubeconfig, intensity, gpu_capacity="2", tick_interval="600")
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("huge", max_delay="2m", containers=_gpus(4)))
        st = await wait_for("Unplaceable", lambda: _condition(api, "huge", "Unplaceable"), timeout=30, op=op)
        assert "4 GPUs" in {c["type"]: c for c in st["conditions"]}["Unplaceable"]["message"]
        for n in ("pair-a", "pair-b"):
            await api.create(TJ, training_job(n, duration="20s", max_delay="4s", containers=_gpus(2)))

        async def one_at_risk():
            flagged = [n for n in ("pair-a", "pair-b") if await _condition(api, n, "DeadlineAtRisk")]
            return flagged or None

        flagged = await wait_for("DeadlineAtRisk on one of the pair", one_at_risk, timeout=30, op=op)
        assert len(flagged) == 1, flagged

        def warned():
            return {e["reason"] for n in ("huge", *flagged) for e in api.posted_events(n) if e.get("type") == "Warning"}

        # the Events are posted right after the status write that carries the condition: wait for them
        await wait_for("both Warning Events", lambda: {"Unplaceable", "DeadlineAtRisk"} <= warned(), timeout=10, op=op)
        assert {"Unplaceable", "DeadlineAtRisk"} <= warned(), warned()
        assert op.alive()
