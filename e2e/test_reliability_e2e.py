"""Reliability against a real API server: what tests/integration cannot show on kmock.

kmock (tests/integration) stores every write as a merge into one document: it never changes
a resourceVersion nor answers 409 to a stale update, never bumps generation, has no status
subresource (a PATCH to /status edits the whole object), runs no garbage collector, and
its watches replay every object on each connection instead of resuming from a
resourceVersion. Each test below names the behaviour it needs from a real
kube-apiserver / kube-controller-manager.

All of it works on a bare control plane (no kubelet, no scheduler): the TrainingJobs ask
for an nvidia.com/gpu, so their pods stay Pending even on kind, and Jobs are created,
suspended, un-suspended and deleted as API objects only.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

import pytest
import requests

from e2e.test_trainingjob_e2e import TJ, create, tj
from greenml.kube import ApiError, Conflict, Kube
from greenml.kube.client import path_for
from greenml.services.trainingjob import LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY
from greenml.timeutil import parse_time
from tests.integration.harness import Operator, operator_env, run_operator, wait_for, write_intensity

JOBS = ("batch/v1", "jobs")
STEP = timedelta(seconds=2)
FINALIZER = "greenml.io/finalizer"                     # configure_kopf: f"{PREFIX}/finalizer"
DIFFBASE = "greenml.io/last-handled-configuration"     # kopf's AnnotationsDiffBaseStorage(prefix=PREFIX)
TOUCH = "e2e.greenml.io/touch"                         # the label the concurrent writer bumps
GC_TIMEOUT = 150   # the garbage collector learns a new CRD on its 30 s discovery resync, then backs off
pytestmark = pytest.mark.slow   # each test runs the operator for 20 s … a few minutes (pytest's 120 s default is raised per test)


# ------------------------------------------------------------------ helpers
def grid_start() -> datetime:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return now - timedelta(seconds=now.second % 2)


def env_for(tmp_path, namespace: str, values: list[float], **settings: str) -> dict[str, str]:
    """The operator's environment (as in test_trainingjob_e2e) on an intensity file starting now."""
    intensity = write_intensity(tmp_path / f"ci-{uuid.uuid4().hex[:6]}.csv", grid_start(), STEP, values)
    env = operator_env(tmp_path, tmp_path / "unused", intensity, namespace=namespace, **settings)
    env["KUBECONFIG"] = os.environ["KUBECONFIG"]
    return env


# high carbon for 400 s, then a short low window: jobs with maxDelay 9m stay Waiting (suspended)
FAR_WINDOW = [400.0] * 200 + [50.0] * 10 + [400.0] * 190


def status(kube, ns: str, name: str) -> dict[str, Any]:
    return (kube.get(*TJ, ns, name) or {}).get("status") or {}


def planned(kube, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check():
        st = status(kube, ns, name)
        return st if (st.get("plan") or {}).get("plannedStart") and st.get("phase") in ("Waiting", "Running") else None
    return check


def jobs_of(kube, ns: str, name: str) -> list[dict[str, Any]]:
    """Jobs labelled as owned by one TrainingJob (a real label selector: kmock ignores them)."""
    return kube.request("GET", path_for(*JOBS, ns), "list Jobs",
                        params={"labelSelector": f"{LABEL_OWNER}={name}"}).get("items") or []


def delete(kube, api: tuple[str, str], ns: str, name: str, policy: str | None = None) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy} if policy else None
    return kube.request("DELETE", path_for(*api, ns, name), f"delete {api[1]} {name}", body=body)


def merge_patch(kube, api: tuple[str, str], ns: str, name: str, body: dict, subresource: str | None = None) -> dict:
    return kube.request("PATCH", path_for(*api, ns, name, subresource), f"patch {api[1]} {name}", body=body,
                        content_type="application/merge-patch+json")


def put_fresh(kube, api: tuple[str, str], ns: str, name: str, change: Callable[[dict], None],
              attempts: int = 20) -> tuple[dict, dict, int]:
    """What `kubectl edit` does: GET, change, PUT with the resourceVersion read; on 409
    read again. Returns (the object the PUT was based on, the server's answer, conflicts)."""
    conflicts = 0
    for _ in range(attempts):
        before = kube.get(*api, ns, name)
        assert before is not None, f"{api[1]} {ns}/{name} is gone"
        body = json.loads(json.dumps(before))
        body["metadata"].pop("managedFields", None)
        change(body)
        try:
            return before, kube.request("PUT", path_for(*api, ns, name), f"update {api[1]} {name}", body=body), conflicts
        except Conflict:
            conflicts += 1
            time.sleep(0.05)
    raise AssertionError(f"{attempts} conflicts in a row updating {api[1]} {ns}/{name}")


def log_records(op: Operator) -> list[dict[str, Any]]:
    out = []
    for line in op.logs().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def handled(op: Operator, names: set[str] | None = None) -> set[str]:
    """TrainingJobs this replica ran a handler or timer for, from its JSON log: kopf logs
    "Handler 'on_change' succeeded." / "Timer 'on_tick' succeeded." with the object in k8s_ref."""
    out = set()
    for rec in log_records(op):
        ref = rec.get("k8s_ref") if isinstance(rec.get("k8s_ref"), dict) else {}
        if ref.get("kind") == "TrainingJob" and (names is None or ref.get("name") in names):
            if "succeeded" in str(rec.get("event", "")):
                out.add(ref["name"])
    return out


def touched(op: Operator, names: set[str]) -> list[str]:
    """Every log line of this replica about one of these TrainingJobs (handled, failed, retried)."""
    return [str(rec.get("event")) for rec in log_records(op)
            if isinstance(rec.get("k8s_ref"), dict) and rec["k8s_ref"].get("name") in names]


def reconciles(op: Operator) -> float:
    """TrainingJob reconciles this process ran (its own /metrics: the counter is per process)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{op.env['GREENML_METRICS_PORT']}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    m = re.search(r'^greenml_reconcile_duration_seconds_count\{kind="TrainingJob"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def assert_no_handler_crash(op: Operator) -> None:
    logs = op.logs()
    assert op.alive(), f"the operator exited ({op.proc.returncode}):\n{logs[-4000:]}"
    # kopf logs an unexpected handler exception as "... failed with an exception ..."
    assert "failed with an exception" not in logs, logs[-4000:]
    # a 409 that escaped the operator's own handling would surface as a retried error naming it
    bad = [r for r in log_records(op) if r.get("level") in ("error", "critical") and "HTTP 409" in str(r.get("event"))]
    assert not bad, bad


class Watch:
    """Every event of a real watch on a collection, collected by a thread from the list's
    resourceVersion on (so nothing between list and watch is missed). Its own client:
    requests sessions are not shared across threads."""

    def __init__(self, api: tuple[str, str], namespace: str) -> None:
        self.kube = Kube()
        self.path = path_for(*api, namespace)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.gaps = 0          # 410 Gone: events may be missing, counts are not to be trusted
        self._rv = self._list_rv()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-watch", daemon=True)

    def _list_rv(self) -> str:
        return self.kube.request("GET", self.path, "list")["metadata"]["resourceVersion"]

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def _run(self) -> None:
        while not self._stop.is_set():
            params = {"watch": "true", "resourceVersion": self._rv, "timeoutSeconds": "5", "allowWatchBookmarks": "true"}
            try:
                with requests.get(f"{self.kube.host}{self.path}?{urlencode(params)}", headers=self.kube._headers(),
                                  stream=True, timeout=(5, 30), verify=self.kube.verify, cert=self.kube.cert) as resp:
                    if resp.status_code == 410:
                        self.gaps += 1
                        self._rv = self._list_rv()
                        continue
                    if resp.status_code != 200:
                        time.sleep(0.5)
                        continue
                    for line in resp.iter_lines():
                        if not line:
                            continue
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                self.gaps += 1
                                self._rv = self._list_rv()
                            break
                        self._rv = (obj.get("metadata") or {}).get("resourceVersion") or self._rv
                        if ev.get("type") != "BOOKMARK":
                            self.events.append((ev["type"], obj))
            except (requests.RequestException, ApiError, ValueError):
                time.sleep(0.5)

    def of(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, o) for t, o in list(self.events) if (o.get("metadata") or {}).get("name") == name]


class Writer(threading.Thread):
    """A second client that keeps editing a TrainingJob and its Job the way `kubectl edit`
    or a controller does (GET, change, PUT with the resourceVersion read, re-read on 409):
    a label bump each round on both, and once, from round `spec_at` on, a spec change."""

    def __init__(self, namespace: str, name: str, job: str, new_max_delay: str, spec_at: int = 4,
                 interval: float = 0.3) -> None:
        super().__init__(name="e2e-writer", daemon=True)
        self.kube = Kube()
        self.ns, self.tj, self.job = namespace, name, job
        self.new_max_delay, self.spec_at, self.interval = new_max_delay, spec_at, interval
        self.puts = {"tj": 0, "job": 0}
        self.conflicts = {"tj": 0, "job": 0}
        self.last: dict[str, str] = {}
        self.spec_changed = False
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            i += 1
            try:
                def on_tj(o: dict, i: int = i) -> None:
                    o["metadata"].setdefault("labels", {})[TOUCH] = str(i)
                    if i >= self.spec_at:
                        o["spec"]["schedule"]["maxDelay"] = self.new_max_delay
                _, _, c = put_fresh(self.kube, TJ, self.ns, self.tj, on_tj)
                self.puts["tj"] += 1
                self.conflicts["tj"] += c
                self.last["tj"] = str(i)
                self.spec_changed = self.spec_changed or i >= self.spec_at
                if self.kube.get(*JOBS, self.ns, self.job) is not None:
                    def on_job(o: dict, i: int = i) -> None:
                        o["metadata"].setdefault("labels", {})[TOUCH] = str(i)
                    _, _, c = put_fresh(self.kube, JOBS, self.ns, self.job, on_job)
                    self.puts["job"] += 1
                    self.conflicts["job"] += c
                    self.last["job"] = str(i)
            except (ApiError, AssertionError) as exc:
                self.errors.append(f"round {i}: {exc}")
            self.halt.wait(self.interval)


# ------------------------------------------------------------------ 1. optimistic concurrency
@pytest.mark.timeout(240)
def test_concurrent_writer_and_409s_leave_the_operator_correct(kube, namespace, tmp_path):
    """A second client keeps updating the TrainingJob (labels, then its spec) and its Job while
    the operator plans, writes status and un-suspends the Job; a PUT with a stale
    resourceVersion is answered 409. The operator must end with a correct status (plan,
    observedGeneration == generation 2), one Job, its own writes intact (the Job un-suspended,
    kopf's diffbase annotation naming the new spec) next to the writer's labels, and no
    handler crash or escaped 409.

    Not on kmock: kmock never changes an object's resourceVersion and never answers 409 to an
    update based on a stale read (every write is merged in), and never bumps
    metadata.generation, so neither the conflicts a concurrent writer meets nor
    observedGeneration catching up with a spec change can happen there."""
    name, job_name = "cc", "cc-run"
    env = env_for(tmp_path, namespace, [400.0] * 15 + [50.0] * 3 + [400.0] * 300)   # window at +30 s

    async def scenario():
        with Watch(JOBS, namespace) as watch, run_operator(tmp_path, env) as op:
            create(kube, tj(name, namespace, maxDelay="60s"))
            await wait_for("the Job", lambda: kube.get(*JOBS, namespace, job_name), op=op, timeout=60)
            writer = Writer(namespace, name, job_name, new_max_delay="70s")
            writer.start()
            try:
                # the server's optimistic concurrency: a PUT based on an old read is refused
                for api, obj_name in ((TJ, name), (JOBS, job_name)):
                    stale = kube.get(*api, namespace, obj_name)
                    stale["metadata"].pop("managedFields", None)
                    merge_patch(kube, api, namespace, obj_name, {"metadata": {"labels": {"e2e.greenml.io/stale": "x"}}})
                    with pytest.raises(Conflict) as err:
                        kube.request("PUT", path_for(*api, namespace, obj_name), "stale PUT", body=stale)
                    assert err.value.status == 409

                def caught_up():
                    obj = kube.get(*TJ, namespace, name) or {}
                    st = obj.get("status") or {}
                    gen = obj.get("metadata", {}).get("generation")
                    return obj if writer.spec_changed and gen == 2 and st.get("observedGeneration") == gen \
                        and (st.get("plan") or {}).get("plannedStart") else None

                await wait_for("observedGeneration == generation after the writer's spec change", caught_up,
                               op=op, timeout=60)

                def started():
                    j = kube.get(*JOBS, namespace, job_name)
                    return j if j and j["spec"].get("suspend") is False else None

                await wait_for("the Job un-suspended in the window despite the writer", started, op=op, timeout=90)
                await asyncio.sleep(2)           # a few more rounds of both writers on the running Job
            finally:
                writer.halt.set()
                writer.join(timeout=30)
            assert not writer.errors, writer.errors
            assert writer.puts["tj"] >= 5 and writer.puts["job"] >= 3, writer.puts

            obj = kube.get(*TJ, namespace, name)
            st = obj["status"]
            assert obj["metadata"]["generation"] == 2, "only the one spec change bumps generation, not label updates"
            assert st["observedGeneration"] == 2 and st["plan"]["plannedStart"], st
            assert st["phase"] == "Running" and st["jobName"] == job_name, st
            assert obj["metadata"]["labels"][TOUCH] == writer.last["tj"], "the operator reverted the writer's label"

            # kopf only watches: it writes no bookkeeping annotation the writer's PUTs could fight over
            ann = obj["metadata"].get("annotations") or {}
            assert DIFFBASE not in ann and not any(k.startswith("greenml.io/") for k in ann), ann

            jobs = jobs_of(kube, namespace, name)
            assert [j["metadata"]["name"] for j in jobs] == [job_name], jobs
            job = jobs[0]
            assert job["spec"]["suspend"] is False, "the writer's PUTs reverted the operator's un-suspension"
            assert job["metadata"]["labels"][TOUCH] == writer.last["job"], "the operator reverted the writer's Job label"
            assert job["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY
            ref = job["metadata"]["ownerReferences"][0]
            assert ref["uid"] == obj["metadata"]["uid"] and ref["controller"] is True
            assert watch.gaps == 0
            kinds = [t for t, _ in watch.of(job_name)]
            assert kinds.count("ADDED") == 1 and "DELETED" not in kinds, kinds
            assert_no_handler_crash(op)

    asyncio.run(scenario())


# ------------------------------------------------------------------ 2. garbage collection
@pytest.mark.timeout(480)
def test_owned_job_is_garbage_collected_also_with_the_operator_down(kube, namespace, tmp_path):
    """The Job `<name>-run` carries an ownerReference to its TrainingJob (controller,
    blockOwnerDeletion), so kube-controller-manager's garbage collector removes it. With the
    operator stopped: a foreground deletion has the GC delete the Job (nobody else could) while
    the TrainingJob waits for it, then both go; a background deletion removes the TrainingJob at
    once (no finalizer of the operator's holds it) and the GC its Job after it.

    Not on kmock: kmock has no garbage collector, no foreground deletion
    (`foregroundDeletion` finalizer, blockOwnerDeletion) and no controller-manager, so there
    the Job only goes through the operator's own delete handler."""
    env = env_for(tmp_path, namespace, FAR_WINDOW)
    names = ["gc-fg", "gc-bg"]

    async def scenario():
        with run_operator(tmp_path, env) as op:
            for n in names:
                create(kube, tj(n, namespace, maxDelay="9m"))
            for n in names:
                await wait_for(f"a plan for {n}", planned(kube, namespace, n), op=op, timeout=60)
                await wait_for(f"the Job of {n}", lambda n=n: kube.get(*JOBS, namespace, f"{n}-run"), op=op, timeout=30)
            for n in names:
                owner = kube.get(*TJ, namespace, n)
                refs = kube.get(*JOBS, namespace, f"{n}-run")["metadata"]["ownerReferences"]
                assert refs == [{"apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob", "name": n,
                                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}], refs
            # no finalizer of the operator's: deletion never waits for it
            for n in names:
                assert not kube.get(*TJ, namespace, n)["metadata"].get("finalizers"), n
            assert_no_handler_crash(op)
        assert not op.alive()

        # --- operator down. Foreground: the GC deletes the Job first, the owner waits for it
        gone = delete(kube, TJ, namespace, "gc-fg", policy="Foreground")
        assert "foregroundDeletion" in (gone["metadata"].get("finalizers") or []), gone["metadata"]
        await wait_for("the garbage collector to delete gc-fg-run (the operator is down)",
                       lambda: kube.get(*JOBS, namespace, "gc-fg-run") is None, timeout=GC_TIMEOUT, interval=1)
        await wait_for("gc-fg to go", lambda: kube.get(*TJ, namespace, "gc-fg") is None, timeout=60)

        # Background (the default): the owner goes at once, then the GC removes what it owned
        delete(kube, TJ, namespace, "gc-bg")
        await wait_for("gc-bg to go (the operator is down)", lambda: kube.get(*TJ, namespace, "gc-bg") is None,
                       timeout=30)
        await wait_for("the GC to delete gc-bg-run (the operator is down)",
                       lambda: kube.get(*JOBS, namespace, "gc-bg-run") is None, timeout=GC_TIMEOUT, interval=1)

        # --- operator back: nothing of them is left, nothing is recreated
        with run_operator(tmp_path, env) as op:
            await asyncio.sleep(3)
            assert jobs_of(kube, namespace, "gc-fg") == [] and jobs_of(kube, namespace, "gc-bg") == []
            assert_no_handler_crash(op)

    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_job_deleted_by_someone_else_is_recreated_suspended_keeping_progress(kube, namespace, tmp_path):
    """Someone deletes the running Job (as `kubectl delete job` does: background propagation).
    The operator creates it again *suspended* (the ADDED event of a real watch shows the Job
    as created), keeps the run time made so far in status.progress without counting the
    time with no Job, and resumes it in the window.

    Not on kmock: kmock assigns no uid or resourceVersion and its watch replays every stored
    object on each connection, so "a new Job, as first created" cannot be told apart from
    the old one or from a later update there; here the recreated Job has a new uid and the
    watch, resumed from a resourceVersion, shows each event exactly once."""
    name, job_name = "del", "del-run"
    env = env_for(tmp_path, namespace, [400.0] * 6 + [50.0] * 40 + [400.0] * 300)   # window +12 s … +92 s

    async def scenario():
        with Watch(JOBS, namespace) as watch, run_operator(tmp_path, env) as op:
            create(kube, tj(name, namespace, maxDelay="90s", estimatedDuration="30s"))

            def running():
                j = kube.get(*JOBS, namespace, job_name)
                st = status(kube, namespace, name)
                since = (st.get("progress") or {}).get("runningSince")
                return (j, st) if j and j["spec"].get("suspend") is False and since else None

            old, st = await wait_for("the Job running", running, op=op, timeout=90)
            await asyncio.sleep(3)
            since = datetime.fromisoformat(st["progress"]["runningSince"].replace("Z", "+00:00"))
            t_del = datetime.now(timezone.utc)
            delete(kube, JOBS, namespace, job_name, policy="Background")

            def recreated():
                j = kube.get(*JOBS, namespace, job_name)
                return j if j and j["metadata"]["uid"] != old["metadata"]["uid"] else None

            new = await wait_for("the Job recreated", recreated, op=op, timeout=60)
            born = datetime.fromisoformat(new["metadata"]["creationTimestamp"].replace("Z", "+00:00"))

            def resumed():
                j = kube.get(*JOBS, namespace, job_name)
                s = status(kube, namespace, name)
                return s if j and j["spec"].get("suspend") is False and (s.get("progress") or {}).get("runs") == 2 else None

            st2 = await wait_for("the recreated Job resumed in the window", resumed, op=op, timeout=60)
            kept = st2["progress"]["runSeconds"]
            ran = (t_del - since).total_seconds()
            assert kept >= ran - 1.5, f"run time lost: {kept}s kept, {ran:.1f}s ran before the deletion"
            assert kept <= (born - since).total_seconds() + 2.0, \
                f"time without a Job counted as run time: {kept}s kept, Job recreated {(born - since).total_seconds():.0f}s after the start"
            assert st2["jobName"] == job_name and st2["phase"] == "Running", st2

            await asyncio.sleep(1)       # let the watch deliver the events of the recreation
            assert watch.gaps == 0
            events = watch.of(job_name)
            added = [o for t, o in events if t == "ADDED"]
            assert [o["metadata"]["uid"] for o in added] == [old["metadata"]["uid"], new["metadata"]["uid"]], \
                [(t, o["metadata"]["uid"]) for t, o in events]
            assert added[1]["spec"]["suspend"] is True, "the Job was recreated running, not suspended"
            assert [t for t, o in events if t == "DELETED"] == ["DELETED"], [t for t, _ in events]
            assert [j["metadata"]["uid"] for j in jobs_of(kube, namespace, name)] == [new["metadata"]["uid"]]
            assert_no_handler_crash(op)

    asyncio.run(scenario())


# ------------------------------------------------------------------ 3. status subresource
@pytest.mark.timeout(180)
def test_status_subresource_keeps_spec_and_status_apart(kube, namespace, tmp_path):
    """The TrainingJob CRD has a status subresource: the operator's status writes (kopf patches
    /status) do not bump metadata.generation; a user's spec update (a full PUT without any
    status) bumps it and leaves status as it was; a user writing status through the main
    resource, or spec through /status, is ignored by the server; the operator then reports
    observedGeneration == 2 with its own status, not the user's.

    Not on kmock: kmock has no status subresource (a PATCH to /status edits the whole
    object, a PUT replaces status too) and no metadata.generation, so none of this
    separation exists there."""
    name = "st"
    env = env_for(tmp_path, namespace, FAR_WINDOW)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            create(kube, tj(name, namespace, maxDelay="9m"))
            await wait_for("a plan", planned(kube, namespace, name), op=op, timeout=60)
            first = kube.get(*TJ, namespace, name)
            assert first["metadata"]["generation"] == 1 and first["status"]["observedGeneration"] == 1

            # the operator replans every 4 s on an unchanged forecast: the same plan on the grid, so
            # status is not written again (no new resourceVersion). Read after the first full
            # replan: the plan an arrival gets at once (planned alone, between replans) may move once.
            await asyncio.sleep(5)
            first = kube.get(*TJ, namespace, name)
            await asyncio.sleep(9)
            second = kube.get(*TJ, namespace, name)
            changed = {k: (first["status"].get(k), v) for k, v in second["status"].items() if first["status"].get(k) != v}
            assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"], changed

            # a user's spec update: PUT of the whole object, without status
            def new_spec(o: dict) -> None:
                o.pop("status", None)
                o["spec"]["schedule"]["maxDelay"] = "570s"
            before, after, _ = put_fresh(kube, TJ, namespace, name, new_spec)
            assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1 == 2
            assert after["status"] == before["status"], "a spec update changed status"

            # a user writing status through the main resource: ignored
            fake = {"phase": "Succeeded", "observedGeneration": 99, "plan": None}
            resp = merge_patch(kube, TJ, namespace, name, {"status": fake})
            assert resp["status"].get("phase") != "Succeeded" and resp["status"].get("observedGeneration") != 99
            assert resp["status"].get("plan"), resp["status"]
            assert resp["metadata"]["generation"] == 2
            _, resp, _ = put_fresh(kube, TJ, namespace, name, lambda o: o["status"].update(fake))
            assert resp["status"].get("phase") != "Succeeded" and resp["status"].get("plan"), resp["status"]
            # …and spec through /status: ignored too
            resp = merge_patch(kube, TJ, namespace, name, {"spec": {"schedule": {"maxDelay": "1s"}}}, subresource="status")
            assert resp["spec"]["schedule"]["maxDelay"] == "570s" and resp["metadata"]["generation"] == 2, resp["spec"]

            def observed():
                obj = kube.get(*TJ, namespace, name) or {}
                return obj if (obj.get("status") or {}).get("observedGeneration") == 2 else None

            obj = await wait_for("observedGeneration 2", observed, op=op, timeout=60)
            st = obj["status"]
            assert st["phase"] == "Waiting" and st["plan"]["plannedStart"], st
            assert obj["metadata"]["generation"] == 2
            conds = {c["type"]: c for c in st["conditions"]}
            assert conds["Planned"]["status"] == "True" and conds["Ready"]["observedGeneration"] == 2, conds
            assert_no_handler_crash(op)

    asyncio.run(scenario())


# ------------------------------------------------------------------ 4. two replicas, one Lease
LEASES = ("coordination.k8s.io/v1", "leases")
LIFETIME = 12    # GREENML_PEERING_LIFETIME: the Lease's duration


@pytest.mark.timeout(300)
def test_two_replicas_only_the_lease_holder_acts_and_the_standby_takes_over(kube, namespace, tmp_path):
    """Two `greenml run` replicas elect a leader on a coordination.k8s.io Lease (GREENML_PEERING
    names it; POD_NAMESPACE places it, as the chart sets them). Both watch; while both live only
    the holder reconciles (its own reconcile counter; the standby's stays 0) and there is one Job
    per TrainingJob. After a SIGKILL of the holder (the Lease not released) the standby takes
    over once the record has stood unchanged for the Lease's duration — not before — plans a
    new object and adopts the old Jobs (still one each, none deleted or recreated)."""
    lease = f"greenml-ha-{uuid.uuid4().hex[:4]}"

    def env(pod: str) -> dict[str, str]:
        e = env_for(tmp_path, namespace, FAR_WINDOW, peering=lease, peering_lifetime=str(LIFETIME))
        e.update(POD_NAME=pod, POD_NAMESPACE=namespace)
        return e

    def holder() -> str:
        return ((kube.get(*LEASES, namespace, lease) or {}).get("spec") or {}).get("holderIdentity") or ""

    names = {f"ha-{i}" for i in range(3)}

    async def scenario():
        with Watch(JOBS, namespace) as watch, run_operator(tmp_path, env("leader")) as leader:
            await wait_for("the leader holding the Lease", lambda: holder().startswith("leader_"), op=leader, timeout=60)
            with run_operator(tmp_path, env("standby")) as standby:
                for n in sorted(names):
                    create(kube, tj(n, namespace, maxDelay="9m"))
                for n in sorted(names):
                    await wait_for(f"a plan for {n}", planned(kube, namespace, n), op=leader, timeout=60)
                await asyncio.sleep(3)     # time in which a wrongly active standby would act
                assert standby.alive(), standby.logs()[-3000:]
                assert reconciles(standby) == 0, "the standby reconciled while the leader was alive"
                assert reconciles(leader) >= len(names)
                assert holder().startswith("leader_")
                for n in names:
                    assert [j["metadata"]["name"] for j in jobs_of(kube, namespace, n)] == [f"{n}-run"]

                # the leader dies without releasing the Lease: the standby waits out its duration
                last_renew = parse_time((kube.get(*LEASES, namespace, lease) or {})["spec"]["renewTime"])
                killed_at = time.monotonic()
                leader.kill(signal.SIGKILL)
                create(kube, tj("ha-after", namespace, maxDelay="9m"))
                st = await wait_for("the standby to plan a new object", planned(kube, namespace, "ha-after"),
                                    op=standby, timeout=LIFETIME + 45)
                took = time.monotonic() - killed_at
                print(f"the standby planned a new object {took:.1f} s after the leader's SIGKILL (Lease {LIFETIME} s)")
                spec = kube.get(*LEASES, namespace, lease)["spec"]
                assert spec["holderIdentity"].startswith("standby_")
                # not before the leader's last renew + the duration (one clock: the same machine)
                acquired = parse_time(spec["acquireTime"])
                assert acquired >= last_renew + timedelta(seconds=LIFETIME) - timedelta(seconds=0.5), \
                    (str(last_renew), str(acquired))
                assert st["jobName"] == "ha-after-run"
                await wait_for("the standby to resume the leader's objects",
                               lambda: reconciles(standby) >= len(names) + 1, op=standby, timeout=30)
                for n in names | {"ha-after"}:
                    assert [j["metadata"]["name"] for j in jobs_of(kube, namespace, n)] == [f"{n}-run"], n
                await asyncio.sleep(1)
                assert watch.gaps == 0
                for n in names | {"ha-after"}:
                    kinds = [t for t, _ in watch.of(f"{n}-run")]
                    assert kinds.count("ADDED") == 1 and "DELETED" not in kinds, (n, kinds)
                assert_no_handler_crash(standby)

    asyncio.run(scenario())
