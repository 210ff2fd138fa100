"""Fault injection: the real operator (`greenml run`) against kmock, killed and starved.

Faults, and what must hold under each:

- SIGKILL between creating a Job and writing status, mid-run and mid-resume → on
  restart the Job is adopted (one Job, one POST), the plan and the accumulated run
  time are kept, and the job finishes before its deadline.
- A Job deleted by someone else → recreated suspended, progress kept.
- API faults: 5xx on Job creation, 5xx on status patches, 410/500 on watches, stalled
  Event posts → retries with backoff (request counts are bounded), no crash, other
  objects still served.
- Provider outages (a scripted fake Electricity Maps server on 127.0.0.1) → the
  fallback chain serves (status says which source), and a zone no source knows fails
  open: the job starts at its latest safe start.

kmock applies writes (create/patch/delete) to its store *before* a reaction answers,
so an injected 5xx on a write is the "committed, but the reply was lost" fault — the
harder case for idempotency. Reads and watches fail cleanly.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.harness import Operator, operator_env, run_operator, wait_for, write_intensity
from tests.integration.test_trainingjob_operator import (
    JOBS, NS, STEP, TJ, complete, grid_start, job_of, status_of, training_job,
)

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

TJ_PATH = f"/apis/greenml.io/v1alpha1/namespaces/{NS}/trainingjobs"
JOB_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


# ------------------------------------------------------------------ fault tools
@dataclass
class Fault:
    """A kmock filter: matches ``method`` requests whose path starts with ``path`` while
    active, at most ``times`` times (kmock may evaluate a filter more than once per
    request, so hits are counted per request id). ``on_hit`` runs once per hit."""

    method: str
    path: str
    times: int = 10**9
    active: bool = True
    params: Callable[[dict], bool] = lambda p: True
    on_hit: Callable[[Any], None] | None = None
    hits: list[int] = field(default_factory=list)

    def __call__(self, req: Any) -> bool:
        if id(req) in self.hits:
            return True
        if not (self.active and len(self.hits) < self.times and str(req.method).lower().endswith(self.method)
                and req.url.path.startswith(self.path) and self.params(dict(req.params))):
            return False
        self.hits.append(id(req))
        if self.on_hit is not None:
            self.on_hit(req)
        return True


class KillSwitch:
    """SIGKILLs the operator the moment a matching request arrives (after kmock stored
    it, before the operator reads the reply): "died between the write and the next"."""

    def __init__(self) -> None:
        self.op: Operator | None = None
        self.fired = threading.Event()

    def __call__(self, _req: Any) -> None:
        if self.op is not None and not self.fired.is_set():
            self.fired.set()
            self.op.proc.send_signal(signal.SIGKILL)


async def killed(kill: KillSwitch, op: Operator, on: str, timeout: float = 30.0) -> None:
    try:
        await wait_for(f"SIGKILL on {on}", lambda: kill.fired.is_set() and not op.alive(), timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{op.logs()[-5000:]}") from None


def observe_only(kmock: Any, fault: Fault) -> Fault:
    """Register a fault that only watches (and runs ``on_hit``): the emulator still answers."""
    kmock[lambda req: fault(req) and False] << 200
    return fault


def owned_jobs(jobs: list[dict], owner: str) -> list[dict]:
    return [j for j in jobs if (j["metadata"].get("labels") or {}).get("greenml.io/trainingjob") == owner]


def total_run(st: dict, now: datetime) -> float:
    p = st.get("progress") or {}
    since = p.get("runningSince")
    extra = (now - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds() if since else 0.0
    return float(p.get("runSeconds") or 0.0) + extra


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def _phase(api, name, *phases):
    st = await status_of(api, name)
    return st if st.get("phase") in phases else None


async def _running(api, name):
    job = await job_of(api, name)
    return job if job and job["spec"].get("suspend") is False else None


# ------------------------------------------------------------------ restarts
async def test_sigkill_between_job_create_and_status_then_mid_start(api, kubeconfig, tmp_path):
    """Killed right after POSTing the Job (no status yet), then right after PATCHing it
    to run (status not yet Running): each restart adopts the one Job and goes on."""
    t0 = grid_start()
    values = [400.0] * 8 + [50.0] * 4 + [400.0] * 300      # cheap from +16 s to +24 s
    env = operator_env(tmp_path, kubeconfig, write_intensity(tmp_path / "ci.csv", t0, STEP, values))
    kill = KillSwitch()
    create = observe_only(api.k, Fault("post", JOB_PATH, on_hit=kill))
    with run_operator(tmp_path, env) as op:
        kill.op = op
        await api.create(TJ, training_job("k1", duration="4s", max_delay="40s"))
        await killed(kill, op, "the Job POST")
    assert await job_of(api, "k1") is not None, "the Job was stored before the kill"
    assert not (await status_of(api, "k1")).get("jobName"), "status was not written before the kill"

    kill2 = KillSwitch()
    observe_only(api.k, Fault("patch", f"{JOB_PATH}/k1-run", on_hit=kill2))
    with run_operator(tmp_path, env) as op:
        kill2.op = op
        st = await wait_for("a plan after restart", lambda: _planned(api, "k1"), op=op)
        assert st["jobName"] == "k1-run"
        planned = parse(st["plan"]["plannedStart"])
        assert t0 + timedelta(seconds=15) <= planned <= t0 + timedelta(seconds=18), st["plan"]
        await killed(kill2, op, "the un-suspend PATCH", timeout=40)
    assert (await job_of(api, "k1"))["spec"]["suspend"] is False, "the PATCH was stored before the kill"

    with run_operator(tmp_path, env) as op:
        st = await wait_for("Running after the second restart", lambda: _phase(api, "k1", "Running"), op=op)
        assert st["progress"]["runs"] == 1 and st["progress"]["runningSince"], st["progress"]
        assert parse(st["progress"]["runningSince"]) >= planned - timedelta(seconds=1)
        await complete(api, "k1")
        st = await wait_for("Succeeded", lambda: _phase(api, "k1", "Succeeded"), op=op)
        assert datetime.now(timezone.utc) <= parse(st["deadline"])
    assert len(create.hits) == 1, f"exactly one Job POST across three operator lives, got {len(create.hits)}"
    assert len(owned_jobs(await api.list(JOBS, NS), "k1")) == 1


async def test_sigkill_mid_run_keeps_progress_and_plan(api, kubeconfig, tmp_path):
    """Killed while an interruptible job runs in its first window: after the restart the
    run time (including the time the operator was dead) is kept, the later window is
    still planned, and the job reaches its duration before the deadline."""
    t0 = grid_start()
    # cheap +8..+14 s, dirty +14..+20 s, cheap +20..+26 s
    values = [400.0] * 4 + [50.0] * 3 + [600.0] * 3 + [60.0] * 3 + [500.0] * 300
    env = operator_env(tmp_path, kubeconfig, write_intensity(tmp_path / "ci.csv", t0, STEP, values))
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("mid", duration="10s", max_delay="40s", interruptible=True,
                                          minRunDuration="2s"))
        st = await wait_for("Running in the first window", lambda: _phase(api, "mid", "Running"), timeout=40, op=op)
        windows_before = st["plan"]["windows"]
        assert len(windows_before) == 2, st["plan"]
        op.kill(signal.SIGKILL)
        killed_at = datetime.now(timezone.utc)
    time.sleep(2.0)
    with run_operator(tmp_path, env) as op:
        st = await wait_for("Paused in the dirty gap", lambda: _phase(api, "mid", "Paused"), timeout=40, op=op)
        paused_at = parse(st["lastDecision"]["time"])
        started = parse(windows_before[0]["start"])
        # run time counts from the start to the pause, across the dead operator
        assert st["progress"]["runSeconds"] >= (killed_at - started).total_seconds() + 1.5, (st["progress"], killed_at)
        assert st["progress"]["runSeconds"] <= (paused_at - started).total_seconds() + 1.0
        assert st["progress"]["runs"] == 1
        # the later window is still planned (a replan may move it by under a slot)
        drift = abs((parse(st["plan"]["windows"][-1]["start"]) - parse(windows_before[-1]["start"])).total_seconds())
        assert drift <= STEP.total_seconds(), (windows_before, st["plan"])
        deadline = parse(st["deadline"])
        await wait_for("resumed", lambda: _running(api, "mid"), timeout=40, op=op)
        st = await wait_for("the full duration run",
                            lambda: _ran_for(api, "mid", 10.0), timeout=40, op=op)
        assert st["progress"]["runs"] == 2
        await complete(api, "mid")
        await wait_for("Succeeded", lambda: _phase(api, "mid", "Succeeded"), op=op)
        assert datetime.now(timezone.utc) <= deadline
    assert len(api.requests_to("post", f"{JOB_PATH}")) == 1
    assert len(owned_jobs(await api.list(JOBS, NS), "mid")) == 1


async def test_job_deleted_by_someone_else_is_recreated_with_progress(api, kubeconfig, tmp_path):
    """A Job deleted behind the operator's back while the TrainingJob runs: recreated
    (suspended, owned), accumulated run time kept, the job runs on to its duration."""
    t0 = grid_start()
    values = [50.0] * 300          # cheap throughout: the job runs as soon as it can
    env = operator_env(tmp_path, kubeconfig, write_intensity(tmp_path / "ci.csv", t0, STEP, values))
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("del", duration="12s", max_delay="40s", interruptible=True,
                                          minRunDuration="2s"))
        first = await wait_for("the Job running", lambda: _running(api, "del"), timeout=30, op=op)
        await wait_for("some run time", lambda: _ran_for(api, "del", 3.0), timeout=30, op=op)
        await api.delete(JOBS, NS, "del-run")
        deleted_at = datetime.now(timezone.utc)
        again = await wait_for("the Job recreated", lambda: job_of(api, "del"), timeout=30, op=op)
        posts = api.requests_to("post", JOB_PATH)
        assert len(posts) == 2, "recreated by a second POST"
        # what was POSTed (the Job as read may already be resumed: its ADDED event wakes the loop)
        assert first["spec"]["suspend"] is False and posts[1].data["spec"]["suspend"] is True, "recreated suspended"
        assert again["metadata"]["ownerReferences"][0]["name"] == "del"
        st = await wait_for("the recreated Job resumed", lambda: _resumed(api, "del"), timeout=30, op=op)
        await wait_for("the recreated Job un-suspended", lambda: _running(api, "del"), timeout=30, op=op)
        # the run before the deletion is kept (not reset), the time with no Job is not run time
        assert st["progress"]["runSeconds"] >= 3.0, st["progress"]
        assert parse(st["progress"]["runningSince"]) >= deleted_at - timedelta(seconds=0.5), st["progress"]
        await wait_for("the full duration", lambda: _ran_for(api, "del", 12.0), timeout=40, op=op)
        await complete(api, "del")
        st = await wait_for("Succeeded", lambda: _phase(api, "del", "Succeeded"), op=op)
        assert datetime.now(timezone.utc) <= parse(st["deadline"])
        assert op.alive()
    assert len(owned_jobs(await api.list(JOBS, NS), "del")) == 1


async def test_a_foreign_job_with_the_name_blocks_until_it_is_gone(api, kubeconfig, tmp_path):
    """A Job not owned by the TrainingJob holds its Job name (e.g. an old one awaiting garbage
    collection): status says JobNameConflict (not a final Failed), one Warning Event, the
    foreign Job is never touched — and once it is gone, the operator creates its own."""
    t0 = grid_start()
    env = operator_env(tmp_path, kubeconfig, write_intensity(tmp_path / "ci.csv", t0, STEP, [50.0] * 300))
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "clash-run", "namespace": NS},
               "spec": {"suspend": False, "template": {"spec": {"restartPolicy": "Never",
                                                                "containers": [{"name": "x", "image": "other:1"}]}}}}
    await api.create(JOBS, foreign)
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("clash", duration="4s", max_delay="40s"))
        st = await wait_for("JobNameConflict", lambda: _cond_true(api, "clash", "JobNameConflict"), op=op)
        assert st["phase"] == "Pending", st
        await _sleep(1.0)
        first = [e for e in api.posted_events("clash") if e.get("reason") == "JobNameConflict"]
        # the create handler and the first tick may both run before the status lands: ≤ 2
        assert 1 <= len(first) <= 2 and "clash-run" in first[0]["message"], first
        await _sleep(2.0)                                   # several ticks later: no Event per tick
        assert len([e for e in api.posted_events("clash") if e.get("reason") == "JobNameConflict"]) == len(first)
        mine = await job_of(api, "clash")
        assert mine["spec"]["template"]["spec"]["containers"][0]["image"] == "other:1", "the foreign Job was changed"
        assert not api.requests_to("patch", "/jobs/clash-run") and not api.requests_to("delete", "/jobs/clash-run")
        await api.delete(JOBS, NS, "clash-run")
        job = await wait_for("our own Job", lambda: _owned_job(api, "clash"), timeout=30, op=op)
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:1"
        st = await wait_for("the conflict cleared", lambda: _cond_false(api, "clash", "JobNameConflict"), op=op)
        assert st["phase"] in ("Waiting", "Running"), st
        assert op.alive()


async def _cond_true(api, name, ctype):
    st = await status_of(api, name)
    conds = {c["type"]: c for c in st.get("conditions") or []}
    return st if (conds.get(ctype) or {}).get("status") == "True" else None


async def _owned_job(api, name):
    job = await job_of(api, name)
    return job if job and (job["metadata"].get("ownerReferences") or [{}])[0].get("name") == name else None


# ------------------------------------------------------------------ API faults
async def test_api_faults_retry_with_backoff_and_other_objects_served(api, kubeconfig, tmp_path):
    """5xx on Job POSTs (committed, reply lost), 500 on status patches, 410/500 on the
    TrainingJob watch, stalled Event posts: the operator retries with backoff (bounded
    request counts), never crashes, creates no duplicate, and serves a later object."""
    t0 = grid_start()
    env = operator_env(tmp_path, kubeconfig, write_intensity(tmp_path / "ci.csv", t0, STEP, [400.0] * 400))
    k = api.k
    post_fault = Fault("post", JOB_PATH, times=2)
    k[post_fault] << 503 << {"kind": "Status", "code": 503, "message": "injected"}
    status_fault = Fault("patch", TJ_PATH)
    k[status_fault] << 500 << {"kind": "Status", "code": 500, "message": "injected"}
    # an expired resourceVersion arrives in the watch stream (as a real API server sends it),
    # then plain disconnects (an empty stream), then 500s on the watch request itself
    is_watch = lambda p: p.get("watch") == "true"  # noqa: E731
    tj_all = "/apis/greenml.io/v1alpha1/trainingjobs"
    expired = Fault("get", tj_all, params=is_watch, times=2)
    k[expired] << 200 << (json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
        "message": "too old resource version"}}).encode() + b"\n",)
    dropped = Fault("get", tj_all, params=is_watch, times=3)
    k[dropped] << 200 << b""
    watch_500 = Fault("get", tj_all, params=is_watch, times=2)
    k[watch_500] << 500 << {"kind": "Status", "code": 500, "message": "injected"}

    async def slow_event() -> None:
        import asyncio
        await asyncio.sleep(3)
    event_fault = Fault("post", f"/api/v1/namespaces/{NS}/events", times=3)
    k[event_fault] << 201 << slow_event

    with run_operator(tmp_path, env) as op:
        await api.create(TJ, training_job("f1", max_delay="5m"))
        await wait_for("the Job (after injected 503s)", lambda: job_of(api, "f1"), timeout=30, op=op)
        window = 6.0
        await wait_for("status patches failing", lambda: len(status_fault.hits) >= 1, timeout=30, op=op)
        t_start = time.monotonic()
        n0 = len(status_fault.hits)
        while time.monotonic() - t_start < window:
            assert op.alive(), op.logs()[-3000:]
            await _sleep(0.5)
        failed_patches = len(status_fault.hits) - n0
        # kopf's error backoff (1, 2, 5 … s) and the 0.5 s tick: a hot loop would be hundreds
        assert failed_patches <= 3 * window, f"{failed_patches} status patches in {window}s: hot retry loop"
        status_fault.active = False
        st = await wait_for("status written once the API recovers", lambda: _planned(api, "f1"), timeout=40, op=op)
        assert st["jobName"] == "f1-run"
        await api.create(TJ, training_job("f2", max_delay="5m"))
        await wait_for("a later object still served", lambda: _planned(api, "f2"), timeout=40, op=op)
        assert op.alive()
    assert len(post_fault.hits) >= 1
    assert (len(expired.hits), len(dropped.hits), len(watch_500.hits)) == (2, 3, 2), "watch faults not all fired"
    posts = len(api.requests_to("post", f"{JOB_PATH}"))
    assert posts <= 3, f"{posts} Job POSTs: retries must adopt the committed Job, not hammer"
    assert len(owned_jobs(await api.list(JOBS, NS), "f1")) == 1
    watches = [r for r in api.requests_to("get", "/trainingjobs") if r.params.get("watch") == "true"]
    assert len(watches) <= 20, f"{len(watches)} watch requests: reconnects must back off"


async def _resumed(api, name):
    st = await status_of(api, name)
    # (on a flat forecast the plan may pause and resume it again: runs may pass 2 quickly)
    return st if st.get("phase") == "Running" and (st.get("progress") or {}).get("runs", 0) >= 2 else None


async def _sleep(s: float) -> None:
    import asyncio
    await asyncio.sleep(s)


async def _planned(api, name):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("plannedStart") and st.get("jobName") else None


async def _ran_for(api, name, seconds):
    st = await status_of(api, name)
    return st if st and total_run(st, datetime.now(timezone.utc)) >= seconds else None


# ------------------------------------------------------------------ provider outages
class FakeProvider:
    """A scripted Electricity Maps v3 server on 127.0.0.1. ``mode``: "ok" or an outage
    ("500", "401", "429", "timeout", "malformed", "empty"). Records every request's
    path, query and headers (for the security test)."""

    def __init__(self, t0: datetime, values: list[float], step: timedelta = STEP) -> None:
        self.t0, self.values, self.step = t0, values, step
        self.mode = "ok"
        self.seen: list[tuple[str, dict, dict]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                provider.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeProvider":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def rows(self) -> list[dict]:
        return [{"datetime": (self.t0 + self.step * i).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "carbonIntensity": v}
                for i, v in enumerate(self.values)]

    def body(self, path: str) -> dict:
        if path.endswith("/forecast"):
            return {"zone": "DE", "forecast": self.rows(), "updatedAt": self.t0.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
        if path.endswith("/latest"):
            return {"zone": "DE", **self.rows()[0]}
        key = "history" if path.endswith("/history") else "data"
        return {"zone": "DE", key: self.rows()[:5]}

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        self.seen.append((parts.path, parse_qs(parts.query), dict(h.headers)))
        mode = self.mode
        if parse_qs(parts.query).get("zone", ["DE"])[0] != "DE":
            mode = "404"
        if mode == "timeout":
            time.sleep(12)
            return
        status, payload = 200, b""
        if mode in ("500", "401", "404", "429"):
            status, payload = int(mode), b'{"error": "injected"}'
        elif mode == "malformed":
            payload = b"<html>not json"
        elif mode == "empty":
            payload = json.dumps({"zone": "DE", "forecast": [], "history": [], "data": []}).encode()
        else:
            payload = json.dumps(self.body(parts.path)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    t0 = grid_start()
    # the provider's forecast: cheap from +10 s to +16 s
    with FakeProvider(t0, [400.0] * 5 + [40.0] * 3 + [400.0] * 400) as p:
        yield p


def provider_env(tmp_path, kubeconfig, provider: FakeProvider, token: str = "tok-test-0000", **extra: str) -> dict:
    env = operator_env(tmp_path, kubeconfig, tmp_path / "unused.csv", provider="electricitymaps",
                       provider_url=provider.url, provider_token=token, **extra)
    env.pop("GREENML_INTENSITY_FILE", None)
    return env


@pytest.mark.parametrize("outage", ["500", "malformed"])
async def test_provider_outage_falls_back_and_recovers(api, kubeconfig, tmp_path, provider, outage):
    """Provider down → the plan comes from the fallback chain and status names the source;
    the provider back → its forecast is used again. Requests to the provider stay bounded."""
    provider.mode = outage
    with run_operator(tmp_path, provider_env(tmp_path, kubeconfig, provider, replan_interval="2s")) as op:
        # long enough that it is still planned when the provider returns, whatever the fallback chose
        await api.create(TJ, training_job("po", duration="10m", max_delay="1h"))
        st = await wait_for("a plan from the fallback", lambda: _planned(api, "po"), timeout=40, op=op)
        assert "electricitymaps" != st["plan"]["forecastSource"].split(" ")[0], st["plan"]
        assert "(estimate)" in st["plan"]["forecastSource"] or "forecaster" in st["plan"]["forecastSource"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert st["plan"]["forecastSource"] in conds["Planned"]["message"]
        reason = {"500": "ServerError", "malformed": "Malformed"}[outage]
        assert conds["SignalsDegraded"]["status"] == "True" and conds["SignalsDegraded"]["reason"] == reason, conds
        n = len(provider.seen)
        await _sleep(4.0)
        rate = (len(provider.seen) - n) / 4.0
        assert rate <= 6.0, f"{rate:.1f} provider requests/s during the outage: hot retry loop"
        provider.mode = "ok"
        st = await wait_for("the provider's forecast again",
                            lambda: _source(api, "po", "electricitymaps"), timeout=40, op=op)
        st = await wait_for("SignalsDegraded cleared", lambda: _cond_false(api, "po", "SignalsDegraded"), op=op)
        assert op.alive()


async def test_unknown_zone_fails_open_at_latest_safe_start(api, kubeconfig, tmp_path, provider):
    """No source knows the zone (provider 404s, the embedded profile lacks it): status says
    ForecastUnavailable, and the job starts at its latest safe start regardless."""
    provider.mode = "ok"
    with run_operator(tmp_path, provider_env(tmp_path, kubeconfig, provider)) as op:
        body = training_job("nozone", duration="4s", max_delay="8s")
        body["spec"]["carbon"] = {"zone": "ZZ-NOWHERE"}
        created = await api.create(TJ, body)
        created_at = parse(created["metadata"]["creationTimestamp"])
        st = await wait_for("ForecastUnavailable", lambda: _cond(api, "nozone", "ForecastUnavailable"), timeout=30, op=op)
        assert st["phase"] in ("Pending", "Waiting"), st
        await wait_for("started regardless", lambda: _running(api, "nozone"), timeout=30, op=op)
        started = datetime.now(timezone.utc)
        assert started >= created_at + timedelta(seconds=6), "started before the latest safe start with no forecast"
        st = await wait_for("Running", lambda: _phase(api, "nozone", "Running"), op=op)
        # started for its deadline (the decision after it, seen running, says just Running)
        # (the Event is posted right after the status write)
        starts = await wait_for("the Start Event", lambda: [e for e in api.posted_events("nozone")
                                                            if e.get("reason") == "Start"], timeout=10, op=op)
        assert "latest safe start" in starts[0]["message"], starts
        assert started + timedelta(seconds=4) <= parse(st["deadline"]) + timedelta(seconds=1.5)


async def _source(api, name, source):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("forecastSource", "").startswith(source) else None


async def _cond_false(api, name, type_):
    st = await status_of(api, name)
    c = {c["type"]: c for c in st.get("conditions") or []}.get(type_)
    return st if c and c["status"] == "False" else None


async def _cond(api, name, type_):
    st = await status_of(api, name)
    c = {c["type"]: c for c in st.get("conditions") or []}.get(type_)
    return st if c and c["status"] == "True" else None
