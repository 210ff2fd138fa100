"""Bad TrainingJob input never crashes the operator or blocks other objects.

Two layers:

- hypothesis-generated bodies (wrong types, missing fields, huge values, unicode, past
  deadlines, zero durations) through the pure path the handlers call — ``resolve()``,
  ``check_feasible()``, ``decide()``: the only exception ever raised is ``InvalidSpec``,
  and its field is a dotted path into the object;
- a handful of them through the real operator against kmock: each gets phase Failed, an
  ``InvalidSpec`` condition and a Warning Event naming the field, while a valid object
  created after them is still planned.
"""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenml.services.trainingjob import (
    Defaults, InvalidSpec, JobObservation, Progress, check_feasible, decide, resolve,
)
from tests.integration.harness import operator_env, run_operator, wait_for, write_intensity
from tests.integration.test_trainingjob_operator import STEP, TJ, grid_start, job_of, status_of, training_job

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
DEFAULTS = Defaults(min_run=timedelta(minutes=5))

# paths into a valid body that hypothesis overwrites (or deletes)
PATHS = [
    ("spec",), ("spec", "schedule"), ("spec", "schedule", "estimatedDuration"), ("spec", "schedule", "maxDelay"),
    ("spec", "schedule", "deadline"), ("spec", "schedule", "interruptible"), ("spec", "schedule", "minRunDuration"),
    ("spec", "template"), ("spec", "template", "spec"), ("spec", "template", "spec", "parallelism"),
    ("spec", "template", "spec", "template", "spec", "containers"),
    ("spec", "template", "spec", "template", "spec", "restartPolicy"),
    ("spec", "power"), ("spec", "power", "gpus"), ("spec", "power", "wattsPerGpu"), ("spec", "power", "gpuModel"),
    ("spec", "carbon"), ("spec", "carbon", "zone"), ("spec", "carbon", "maxIntensity"), ("spec", "carbon", "budgetGrams"),
    ("metadata", "creationTimestamp"),   # (metadata.name is always a string: the API server checks it)
]
DELETE = object()

junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["0s", "0h", "-1h", "1h30m", "99999999h", "1e400", "", "🚀", "10", "P1D",
                     "1970-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "not a time"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just([{"name": "c", "image": "", "resources": {"limits": {"nvidia.com/gpu": "lots"}}}]),
    st.just(DELETE),
)


def valid_body() -> dict[str, Any]:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "ml", "uid": "u-1", "creationTimestamp": "2024-06-01T11:00:00Z"},
        "spec": {
            "schedule": {"estimatedDuration": "2h", "maxDelay": "12h", "interruptible": True},
            "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "train", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}}}},
            "power": {"gpuModel": "A100"}, "carbon": {"zone": "DE", "maxIntensity": 300},
        },
    }


def mutate(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    cur = out
    for key in path[:-1]:
        nxt = cur.get(key)
        if not isinstance(nxt, dict):
            nxt = cur[key] = {}
        cur = nxt
    if value is DELETE:
        cur.pop(path[-1], None)
    else:
        cur[path[-1]] = value
    return out


def exercise(body: dict[str, Any], now: datetime) -> str:
    """The handler's path without kopf: resolve → admission → decide. Returns the outcome."""
    try:
        req = resolve(body, DEFAULTS)
        check_feasible(req, now, DEFAULTS)
    except InvalidSpec as err:
        assert err.field.split(".")[0] in ("spec", "metadata"), err.field
        assert err.message and isinstance(err.message, str)
        return "invalid"
    assert req.duration > timedelta(0) and req.deadline > now
    for job in (JobObservation(exists=False), JobObservation(), JobObservation(suspended=False)):
        for windows in (None, [(now, now + req.duration)]):
            out = decide(req, Progress(), job, windows, now, DEFAULTS)
            assert out.phase in ("Pending", "Waiting", "Running", "Paused")
            assert out.latest_start <= req.deadline
    return "valid"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), junk), min_size=1, max_size=3))
def test_mutated_bodies_raise_only_invalid_spec(edits):
    body = valid_body()
    for path, value in edits:
        body = mutate(body, path, value)
    exercise(body, NOW)


@settings(max_examples=150, deadline=None)
@given(spec=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                         lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                         max_leaves=12))
def test_arbitrary_json_specs_raise_only_invalid_spec(spec):
    exercise({"metadata": {"name": "x", "namespace": "ml"}, "spec": spec}, NOW)


@settings(max_examples=200, deadline=None)
@given(duration_s=st.integers(min_value=-10, max_value=10**9), delay_s=st.integers(min_value=-10, max_value=10**9),
       run_s=st.floats(min_value=0, max_value=1e9), offset_s=st.integers(min_value=-10**6, max_value=10**6))
def test_extreme_durations_and_progress(duration_s, delay_s, run_s, offset_s):
    """Huge and zero durations, progress beyond the estimate, running since before creation."""
    body = mutate(mutate(valid_body(), ("spec", "schedule", "estimatedDuration"), f"{duration_s}s"),
                  ("spec", "schedule", "maxDelay"), f"{delay_s}s")
    try:
        req = resolve(body, DEFAULTS)
    except InvalidSpec as err:
        assert err.field.startswith("spec.schedule"), err.field
        return
    progress = Progress(run_seconds=run_s, running_since=NOW + timedelta(seconds=offset_s), runs=1)
    for job in (JobObservation(), JobObservation(suspended=False), JobObservation(succeeded=True)):
        out = decide(req, progress, job, [(NOW, NOW + timedelta(hours=1))], NOW, DEFAULTS)
        assert out.remaining >= timedelta(0)
        assert out.progress.run_seconds >= 0


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from([("progress",), ("progress", "runSeconds"),
                                                 ("progress", "runningSince"), ("progress", "runs")]), junk),
                      min_size=1, max_size=3))
def test_corrupted_progress_in_status_is_survived(edits):
    """status.progress is the operator's memory of run time; junk there (a hand edit, an old
    restore) reads as absent fields — the job is still decided, never an exception."""
    status = {"progress": {"runSeconds": 600.0, "runningSince": "2024-06-01T11:50:00Z", "runs": 1}}
    for path, value in edits:
        status = mutate(status, path, value)
    progress = Progress.from_status(status)
    assert progress.run_seconds >= 0 and progress.runs >= 0
    req = resolve(valid_body(), DEFAULTS)
    out = decide(req, progress, JobObservation(suspended=False), [(NOW, NOW + timedelta(hours=1))], NOW, DEFAULTS)
    assert out.remaining >= timedelta(0)


@pytest.mark.parametrize("path,value,field", [
    (("spec", "schedule", "estimatedDuration"), "0s", "spec.schedule.estimatedDuration"),
    (("spec", "schedule", "estimatedDuration"), 12, "spec.schedule.estimatedDuration"),
    (("spec", "schedule", "deadline"), "2000-01-01T00:00:00Z", "spec.schedule.deadline"),
    (("spec", "power", "gpuModel"), "Z9000 ✨", "spec.power.gpuModel"),
    (("spec", "template", "spec", "template", "spec", "containers"), [], "containers"),
    (("spec", "schedule", "minRunDuration"), "99h", "spec.schedule.minRunDuration"),
])
def test_each_bad_field_is_named(path, value, field):
    body = mutate(valid_body(), path, value)
    if path[-1] == "deadline":
        body = mutate(body, ("spec", "schedule", "maxDelay"), DELETE)
    with pytest.raises(InvalidSpec) as exc:
        req = resolve(body, DEFAULTS)
        check_feasible(req, NOW, DEFAULTS)
    assert field in exc.value.field


# ------------------------------------------------------------------ the real operator
BAD = {
    "bad-duration": (("spec", "schedule", "estimatedDuration"), "0s", "estimatedDuration"),
    "bad-type": (("spec", "schedule", "interruptible"), {"yes": 1}, "interruptible"),
    "bad-unicode": (("spec", "power", "gpuModel"), "Ｈ１００ 🚀", "gpuModel"),
    "bad-huge": (("spec", "schedule", "estimatedDuration"), "99999999999h", "estimatedDuration"),
    "bad-image": (("spec", "template", "spec", "template", "spec", "containers"), [{"name": "c"}], "image"),
}


async def test_bad_objects_fail_with_invalid_spec_and_others_are_served(api, kubeconfig, tmp_path):
    t0 = grid_start()
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, [100.0] * 300)
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity)) as op:
        for name, (path, value, _) in BAD.items():
            await api.create(TJ, mutate(training_job(name), path, value))
        await api.create(TJ, training_job("good"))
        async def no_job(name, _status):
            assert await job_of(api, name) is None

        await expect_rejected(api, op, BAD, status_of, no_job)
        await wait_for("the valid object planned", lambda: _planned(api, "good"), op=op)
        assert op.alive()


async def expect_rejected(api, op, bad: dict, status_of, left_nothing) -> None:
    """Each bad object: phase Failed, an InvalidSpec condition and a Warning Event naming its
    field, ``left_nothing(name, status)`` holds; and no handler exception in the log."""
    async def failed(name):
        s = await status_of(api, name)
        return s if s.get("phase") == "Failed" else None

    for name, (_, _, field) in bad.items():
        st_ = await wait_for(f"{name} → Failed", lambda n=name: failed(n), op=op)
        cond = {c["type"]: c for c in st_["conditions"]}["InvalidSpec"]
        assert cond["status"] == "True" and field in cond["message"], (name, cond)
        await left_nothing(name, st_)
        events = await wait_for(f"{name} event", lambda n=name: api.posted_events(n), op=op)
        assert any(e.get("reason") == "InvalidSpec" and field in e.get("message", "") for e in events), events
    # kopf logs an unexpected handler exception as "failed with an exception"
    assert "failed with an exception" not in op.logs(), op.logs()[-3000:]


async def _planned(api, name):
    s = await status_of(api, name)
    return s if (s.get("plan") or {}).get("plannedStart") else None
