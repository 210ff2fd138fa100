"""Two replicas with leader election on a Lease against kmock: only one acts, and the other
takes over.

Both replicas are real `greenml run` subprocesses (GREENML_PEERING names the Lease). Both
watch; only the Lease holder's planning loop reconciles. Which replica acted is read from
each one's own /metrics (the reconcile counter is per process), not from the shared
emulator. What kmock cannot show (RBAC on the Lease, a Deployment's rolling update) is left
to e2e/ and the chart tests.
"""
from __future__ import annotations

import re
import signal
import time
import urllib.request
from datetime import timedelta

import pytest

from greenml.timeutil import parse_time
from tests.integration.harness import Operator, operator_env, run_operator, wait_for, write_intensity
from tests.integration.test_trainingjob_operator import JOBS, NS, STEP, TJ, grid_start, status_of, training_job

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

LEASES = "coordination.k8s.io/v1/leases"
NAME = "greenml-ha"
LIFETIME = 6


def reconciles(op: Operator) -> float:
    """TrainingJob reconciles this replica has run (its own metrics endpoint)."""
    url = f"http://127.0.0.1:{op.env['GREENML_METRICS_PORT']}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return 0.0
    m = re.search(r'^greenml_reconcile_duration_seconds_count\{kind="TrainingJob"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def holder(api) -> str:
    return (((await api.get(LEASES, NS, NAME)) or {}).get("spec") or {}).get("holderIdentity") or ""


async def planned(api, name):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("computedAt") else None


async def test_only_the_leader_acts_and_the_standby_takes_over(api, kubeconfig, tmp_path):
    intensity = write_intensity(tmp_path / "ci.csv", grid_start(), STEP, [400.0] * 400)

    def env(pod: str) -> dict[str, str]:
        e = operator_env(tmp_path, kubeconfig, intensity, peering=NAME, peering_lifetime=str(LIFETIME))
        return {**e, "POD_NAME": pod, "POD_NAMESPACE": NS}

    with run_operator(tmp_path, env("replica-a")) as leader:
        await wait_for("the leader holding the Lease", lambda: _held_by(api, "replica-a"), op=leader)
        with run_operator(tmp_path, env("replica-b")) as standby:
            names = [f"ha-{i}" for i in range(4)]
            for n in names:
                await api.create(TJ, training_job(n, duration="1h", max_delay="2h"))
            for n in names:
                await wait_for(f"a plan for {n}", lambda n=n: planned(api, n), op=leader)
            await wait_for("the leader's reconciles in its metrics", lambda: reconciles(leader) >= len(names), op=leader)
            assert reconciles(standby) == 0, "the standby reconciled while the leader was alive"
            assert (await holder(api)).startswith("replica-a_")
            posts = [r.data["metadata"]["name"] for r in api.requests_to("post", f"/namespaces/{NS}/jobs")]
            assert sorted(posts) == sorted(f"{n}-run" for n in names), posts

            # the leader dies without releasing the Lease: the standby waits out its duration
            last_renew = parse_time((await api.get(LEASES, NS, NAME))["spec"]["renewTime"])
            killed_at = time.monotonic()
            leader.kill(signal.SIGKILL)
            await api.create(TJ, training_job("ha-after", duration="1h", max_delay="2h"))
            st = await wait_for("the standby to plan a new object", lambda: planned(api, "ha-after"),
                                timeout=LIFETIME + 40, op=standby)
            took = time.monotonic() - killed_at
            assert reconciles(standby) >= 1
            assert took < LIFETIME + 40
            spec = (await api.get(LEASES, NS, NAME))["spec"]
            assert spec["holderIdentity"].startswith("replica-b_")
            # not before the leader's last renew + the Lease's duration (one clock: this machine)
            assert parse_time(spec["acquireTime"]) >= last_renew + timedelta(seconds=LIFETIME - 0.5), spec
            assert st["jobName"] == "ha-after-run"
            # it also resumed the leader's objects: adopted their Jobs, no duplicates
            await wait_for("the standby to resume the leader's objects",
                           lambda: reconciles(standby) >= len(names) + 1, timeout=30, op=standby)
            jobs = await api.list(JOBS, NS)
            owners = sorted(j["metadata"]["name"] for j in jobs)
            assert owners == sorted([f"{n}-run" for n in names] + ["ha-after-run"]), owners
            assert standby.alive()


async def test_a_graceful_exit_hands_the_lease_over_at_once(api, kubeconfig, tmp_path):
    """SIGTERM: the leader releases the Lease on its way out; the standby need not wait."""
    intensity = write_intensity(tmp_path / "ci.csv", grid_start(), STEP, [400.0] * 400)

    def env(pod: str) -> dict[str, str]:
        e = operator_env(tmp_path, kubeconfig, intensity, peering=NAME, peering_lifetime="30")
        return {**e, "POD_NAME": pod, "POD_NAMESPACE": NS}

    with run_operator(tmp_path, env("replica-a")) as leader:
        await wait_for("the leader holding the Lease", lambda: _held_by(api, "replica-a"), op=leader)
        with run_operator(tmp_path, env("replica-b")) as standby:
            await api.create(TJ, training_job("handover", duration="1h", max_delay="2h"))
            await wait_for("a plan", lambda: planned(api, "handover"), op=leader)
            stopped_at = time.monotonic()
            leader.proc.send_signal(signal.SIGTERM)
            # (polled: kmock answers from this test's event loop, which a blocking wait would stall)
            await wait_for("the leader to exit", lambda: leader.proc.poll() is not None, timeout=20)
            exit_s = time.monotonic() - stopped_at
            await wait_for("the standby holding the Lease", lambda: _held_by(api, "replica-b"), timeout=25, op=standby)
            took = time.monotonic() - stopped_at
            print(f"leader exited in {exit_s:.1f} s; the standby held the Lease {took:.1f} s after SIGTERM")
            assert took < 20, f"the standby waited {took:.1f} s: the lease (30 s) was not released"


async def _held_by(api, pod: str) -> bool:
    return (await holder(api)).startswith(f"{pod}_")
