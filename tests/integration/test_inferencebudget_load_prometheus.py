"""The real operator reads an InferenceBudget's ``spec.loadQuery`` from a real Prometheus
(Debian's binary, tests/integration/prometheus_harness.py) holding a week of load history
(backfilled with promtool), forecasts it, and says so in status; a query with an hour of
history falls back to its current value held flat, a bad query to the assumed load — each
with the reason in the SignalsDegraded condition."""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.integration.harness import operator_env, run_operator, wait_for
from tests.integration.prometheus_harness import running_prometheus
from tests.integration.test_inferencebudget_operator import DEPLOY, IB, budget, deployment, intensity_file, status_of

pytestmark = [pytest.mark.timeout(180)]


def openmetrics(now: float) -> str:
    """A week of a daily load cycle split over two pods (``week_rps``) and one hour of
    another series (``new_rps``), every 2 minutes up to ``now``."""
    lines = ["# TYPE week_rps gauge", "# TYPE new_rps gauge"]
    ts = now - np.arange(7 * 24 * 30, -1, -1) * 120.0
    ts = ts[ts <= now - 30]
    rps = 20 + 15 * np.cos(2 * np.pi * ((ts % 86400) / 3600 - 15) / 24)
    week = [f'week_rps{{pod="{p}"}} {v / 2:.4f} {t:.0f}' for t, v in zip(ts, rps) for p in ("a", "b")]
    new = [f"new_rps 5 {t:.0f}" for t in ts[-30:]]
    return "\n".join(lines[:1] + week + lines[1:] + new + ["# EOF", ""])


def condition(st: dict, kind: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


async def test_load_query_history_is_forecast_and_short_or_failing_ones_fall_back(api, kubeconfig, tmp_path):
    with running_prometheus([], backfill=openmetrics(time.time())) as prom:
        prom.wait_for("count(week_rps)", lambda r: bool(r) and float(r[0]["value"][1]) == 2)
        env = operator_env(tmp_path, kubeconfig, intensity_file(tmp_path), prometheus_url=prom.url)
        with run_operator(tmp_path, env) as op:
            cases = {"weekly": "sum(week_rps)", "young": "sum(new_rps)", "broken": "sum(week_rps"}
            for name, query in cases.items():
                await api.create(DEPLOY, deployment(f"srv-{name}"))
                body = budget(f"b-{name}", f"srv-{name}", grams=1e6)
                body["spec"]["loadQuery"] = query
                await api.create(IB, body)

            async def said(name: str, text: str):
                st = await status_of(api, f"b-{name}")
                return st if text in condition(st, "SignalsDegraded").get("message", "") else None

            st = await wait_for("a forecast from a week of history", lambda: said("weekly", "forecast (daily)"),
                                op=op, timeout=60)
            msg = condition(st, "SignalsDegraded")["message"]
            assert "from 7d" in msg or "from 6d" in msg, msg
            assert condition(st, "SignalsDegraded")["status"] == "False"
            # capacityRps 10 per replica: the load (5–35 req/s) decides the replicas
            assert 1 <= st["replicas"] <= 4

            st = await wait_for("the young series held flat", lambda: said("young", "current value held flat"),
                                op=op, timeout=60)
            msg = condition(st, "SignalsDegraded")["message"]
            assert "InsufficientHistory" in msg and condition(st, "SignalsDegraded")["status"] == "False", msg
            assert st["replicas"] == 1                                     # 5 req/s: one replica

            st = await wait_for("the broken query reported", lambda: said("broken", "spec.loadQuery failed"),
                                op=op, timeout=60)
            cond = condition(st, "SignalsDegraded")
            assert cond["status"] == "True" and cond["reason"] == "BadQuery", cond
            assert op.alive()
