"""`greenml run` with GREENML_KUEUE_ENABLED where Kueue is not installed (the emulator serves
no kueue.x-k8s.io resources): the operator starts, kopf says once that the Kueue resources
are unresolved, and nothing retries against them — no spin, no log spam."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from tests.integration.harness import operator_env, run_operator, wait_for, write_intensity


async def test_kueue_enabled_without_kueue_neither_spins_nor_spams(api, kubeconfig, tmp_path):
    intensity = write_intensity(tmp_path / "i.csv", datetime.now(timezone.utc) - timedelta(minutes=1),
                                timedelta(seconds=2), [100.0] * 600)
    env = operator_env(tmp_path, kubeconfig, intensity, kueue_enabled="true", kueue_interval="0.5")
    with run_operator(tmp_path, env) as op:
        await wait_for("the operator started", lambda: "greenml operator started" in op.logs(), 30, op=op)
        await wait_for("kopf's word on the unresolved Kueue resources",
                       lambda: "Unresolved resources" in op.logs(), 30, op=op)
        await asyncio.sleep(4)          # 8 slow passes at kueue_interval 0.5 s
        assert op.alive()
        logs = op.logs()
        assert logs.count("Unresolved resources") == 1 and "any_name='workloads'" in logs
        assert api.requests_to("get", "kueue.x-k8s.io") == [], "watched or read a resource that is not there"
        assert "reconcile of" not in logs and "Traceback" not in logs
