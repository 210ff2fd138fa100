"""The real operator (`greenml run`, kmock) with provider=ukcarbon served from 127.0.0.1: a
provider forecast with two weeks of actuals behind it is served blended
(forecast_blend, on by default) and the TrainingJob's status says so; the provider's
history is asked once per zone, not once per reconcile; with forecast_blend=false the
forecast is served as issued."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest

from tests.integration.harness import operator_env, run_operator, wait_for
from tests.integration.test_trainingjob_operator import TJ, status_of, training_job

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
HALF = timedelta(minutes=30)


def _t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)


class Neso:
    """NESO's national endpoints: ``/intensity/{from}/{to}`` (actuals up to the current half
    hour, 20 days back) and ``/intensity/{from}/fw48h`` (the actuals + 40, 48 h)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        neso = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                neso.requests.append(self.path)
                body = json.dumps({"data": neso.rows(self.path)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def value(t: datetime) -> float:
        h = t.timestamp() / 3600.0
        return 250 + 80 * np.sin(2 * np.pi * h / 24)

    def rows(self, path: str) -> list[dict]:
        parts = path.split("/")            # /intensity/{from}/{to} or /intensity/{from}/fw48h
        now = datetime.now(timezone.utc)
        slot = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 30)
        start = _t(parts[2]).replace(minute=_t(parts[2]).minute // 30 * 30)
        if parts[3] == "fw48h":
            times, forecast = [start + HALF * i for i in range(96)], True
        else:
            a = max(start, slot - timedelta(days=20))
            times, forecast = [a + HALF * i for i in range(int((min(_t(parts[3]), slot) - a) / HALF))], False
        fmt = lambda t: t.strftime("%Y-%m-%dT%H:%MZ")   # noqa: E731
        return [{"from": fmt(t), "to": fmt(t + HALF),
                 "intensity": {"forecast": round(self.value(t) + 40), "actual": None if forecast else round(self.value(t)),
                               "index": "moderate"}} for t in times]

    def history_requests(self) -> list[str]:
        return [p for p in self.requests if not p.endswith("/fw48h")]


@pytest.fixture
def neso() -> Iterator[Neso]:
    n = Neso()
    yield n
    n.server.shutdown()
    n.server.server_close()


def env(tmp_path, kubeconfig, neso: Neso, **extra: str) -> dict:
    e = operator_env(tmp_path, kubeconfig, tmp_path / "unused.csv", provider="ukcarbon", provider_url=neso.url,
                     default_zone="GB", replan_interval="2s", **extra)
    e.pop("GREENML_INTENSITY_FILE", None)
    return e


async def _source(api, name: str, prefix: str):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("forecastSource", "").startswith(prefix) else None


async def test_provider_forecast_is_served_blended_and_status_says_so(api, kubeconfig, tmp_path, neso):
    with run_operator(tmp_path, env(tmp_path, kubeconfig, neso)) as op:
        await api.create(TJ, training_job("blend", duration="10m", max_delay="1h"))
        st = await wait_for("a plan on the blended forecast", lambda: _source(api, "blend", "ukcarbon+blend"),
                            timeout=40, op=op)
        assert st["plan"]["forecastSource"] == "ukcarbon+blend (estimate)", st["plan"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert "ukcarbon+blend" in conds["Planned"]["message"]
        assert conds.get("SignalsDegraded", {}).get("status") != "True", conds
        n = len(neso.requests)
        await wait_for("more reconciles", lambda: _later(api, "blend", st["plan"]["computedAt"]), timeout=20, op=op)
        assert len(neso.history_requests()) == 1, neso.history_requests()     # once per zone, not per reconcile
        assert len(neso.requests) - n <= 3                                       # forecasts: one per forecast_ttl
        assert op.alive()


async def test_forecast_blend_false_serves_the_provider_as_issued(api, kubeconfig, tmp_path, neso):
    with run_operator(tmp_path, env(tmp_path, kubeconfig, neso, forecast_blend="false")) as op:
        await api.create(TJ, training_job("issued", duration="10m", max_delay="1h"))
        st = await wait_for("a plan on the provider's forecast", lambda: _source(api, "issued", "ukcarbon"),
                            timeout=40, op=op)
        assert st["plan"]["forecastSource"] == "ukcarbon", st["plan"]
        assert neso.history_requests() == []


async def _later(api, name: str, computed_at: str):
    st = await status_of(api, name)
    return st if (st.get("plan") or {}).get("computedAt", "") > computed_at else None
