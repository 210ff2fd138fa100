"""Two replicas with kopf peering against kmock: only one acts, and the other takes over.

Both replicas are real `greenml run` subprocesses sharing one ClusterKopfPeering. Which
replica acted is read from each one's own /metrics (the reconcile counter is per
process), not from the shared emulator. kmock applies the JSON merge patches kopf uses
for keep-alives (``status.<identity>``, ``null`` to leave), so the protocol runs as on a
real API server; what kmock cannot show (RBAC on the peering objects, a Deployment's
rolling update) is left to e2e/ and the chart tests.
"""
from __future__ import annotations

import re
import signal
import time
import urllib.request

import pytest

from tests.integration.harness import Operator, operator_env, run_operator, wait_for, write_intensity
from tests.integration.test_trainingjob_operator import JOBS, NS, STEP, TJ, grid_start, status_of, training_job

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

PEERING = "kopf.dev/v1/clusterkopfpeerings"
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


async def peers(api) -> dict:
    return ((await api.get(PEERING, None, NAME)) or {}).get("status") or {}


async def planned(api, name):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("computedAt") else None


async def test_only_the_leader_acts_and_the_standby_takes_over(api, kubeconfig, tmp_path):
    await api.create(PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": NAME}})
    intensity = write_intensity(tmp_path / "ci.csv", grid_start(), STEP, [400.0] * 400)

    def env(priority: int) -> dict[str, str]:
        return operator_env(tmp_path, kubeconfig, intensity, peering=NAME, peering_priority=str(priority),
                            peering_lifetime=str(LIFETIME))

    with run_operator(tmp_path, env(200)) as leader:
        await wait_for("the leader's keep-alive", lambda: _prio_in(api, 200), op=leader)
        with run_operator(tmp_path, env(100)) as standby:
            await wait_for("the standby's keep-alive", lambda: _prio_in(api, 100), op=standby)
            names = [f"ha-{i}" for i in range(4)]
            for n in names:
                await api.create(TJ, training_job(n, duration="1h", max_delay="2h"))
            for n in names:
                await wait_for(f"a plan for {n}", lambda n=n: planned(api, n), op=leader)
            await wait_for("the leader's reconciles in its metrics", lambda: reconciles(leader) >= len(names), op=leader)
            assert reconciles(standby) == 0, "the standby reconciled while the leader was alive"
            posts = [r.data["metadata"]["name"] for r in api.requests_to("post", f"/namespaces/{NS}/jobs")]
            assert sorted(posts) == sorted(f"{n}-run" for n in names), posts

            # the leader dies without leaving the peering: the standby waits out its lifetime
            killed_at = time.monotonic()
            leader.kill(signal.SIGKILL)
            await api.create(TJ, training_job("ha-after", duration="1h", max_delay="2h"))
            st = await wait_for("the standby to plan a new object", lambda: planned(api, "ha-after"),
                                timeout=LIFETIME + 40, op=standby)
            took = time.monotonic() - killed_at
            assert reconciles(standby) >= 1
            assert took >= LIFETIME - 1, f"the standby acted {took:.1f}s after the kill, before the leader's lifetime"
            assert st["jobName"] == "ha-after-run"
            # it also resumed the leader's objects: adopted their Jobs, no duplicates
            await wait_for("the standby to resume the leader's objects",
                           lambda: reconciles(standby) >= len(names) + 1, timeout=30, op=standby)
            jobs = await api.list(JOBS, NS)
            owners = sorted(j["metadata"]["name"] for j in jobs)
            assert owners == sorted([f"{n}-run" for n in names] + ["ha-after-run"]), owners
            assert standby.alive()


async def _prio_in(api, priority: int) -> bool:
    return any((p or {}).get("priority") == priority for p in (await peers(api)).values())
