"""Measured energy in a TrainingJob's status: the real operator against kmock, reading a REAL
Prometheus (Debian's binary) that scrapes dcgm-exporter text for the Job's pod."""
from __future__ import annotations

import time

import pytest

from tests.integration.harness import operator_env, run_operator, wait_for, write_intensity
from tests.integration.prometheus_harness import running_prometheus, serve_text
from tests.integration.test_trainingjob_operator import STEP, TJ, grid_start, status_of, training_job

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]
WATTS = 400.0


class DcgmExporter:
    """One A100 in pod meas-run-x7k2p (namespace ml) drawing WATTS; energy counter in mJ."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.server = serve_text(self._scrape)
        self.target = self.server.target

    def _scrape(self) -> str:
        mj = 2.0e9 + (time.time() - self.t0) * WATTS * 1000.0
        labels = 'gpu="0",UUID="GPU-0",modelName="NVIDIA A100-SXM4-80GB",namespace="ml",pod="meas-run-x7k2p"'
        return (f"# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
                f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} {mj:.0f}\n"
                f"# TYPE DCGM_FI_DEV_POWER_USAGE gauge\nDCGM_FI_DEV_POWER_USAGE{{{labels}}} {WATTS}\n")


async def test_status_reports_energy_measured_by_prometheus(api, kubeconfig, tmp_path):
    exporter = DcgmExporter()
    try:
        with running_prometheus([exporter.target]) as prom:
            intensity = write_intensity(tmp_path / "ci.csv", grid_start(), STEP, [200.0] * 300)
            env = operator_env(tmp_path, kubeconfig, intensity, prometheus_url=prom.url, measure_interval="1s")
            with run_operator(tmp_path, env) as op:
                await api.create(TJ, training_job("meas", duration="30s"))
                started = time.time()

                async def measured():
                    st = await status_of(api, "meas")
                    u = st.get("usage") or {}
                    return st if u.get("source") == "prometheus (dcgm)" and u.get("energyKwh", 0) > 0 else None

                st = await wait_for("measured energy in status", measured, op=op, timeout=60)
                await wait_for("a few seconds of counter", lambda: time.time() - started > 6)
                st = await wait_for("measured energy in status", measured, op=op, timeout=30)
                kwh, elapsed = st["usage"]["energyKwh"], time.time() - started
                # at most WATTS × the time since the TrainingJob was created (plus scrape slack)
                assert 0 < kwh <= WATTS * (elapsed + 3) / 3.6e6, (kwh, elapsed)
                assert st["usage"]["grams"] == pytest.approx(kwh * 200.0, rel=0.05, abs=1e-3)
    finally:
        exporter.server.shutdown()
