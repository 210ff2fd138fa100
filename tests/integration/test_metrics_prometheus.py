"""The real operator's /metrics, scraped by the real Prometheus; PromQL assertions on values.

The operator runs against the kmock emulator (tests/integration/harness.py) with a file
provider; Prometheus (tests/integration/prometheus_harness.py) scrapes it every second.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.harness import free_port, operator_env, run_operator, wait_for, write_intensity
from tests.integration.prometheus_harness import require_prometheus, running_prometheus
from tests.integration.test_trainingjob_operator import NS, STEP, TJ, grid_start, status_of, training_job

pytestmark = [pytest.mark.timeout(120), pytest.mark.prometheus]


def value(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def one(prom, promql: str, ok, what: str) -> float:
    res = prom.wait_for(promql, lambda r: bool(r) and ok(value(r)), timeout=30)
    return value(res)


async def test_operator_metrics_scraped_by_prometheus(api, kubeconfig, tmp_path):
    require_prometheus()
    t0 = grid_start()
    values = [400.0] * 7 + [50.0] * 3 + [400.0] * 200     # expensive now, cheap from +14 s
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, values)
    port = free_port()
    env = operator_env(tmp_path, kubeconfig, intensity, metrics_port=str(port))
    with run_operator(tmp_path, env) as op, running_prometheus([f"127.0.0.1:{port}"]) as prom:
        await api.create(TJ, training_job("llm"))
        st = await wait_for("a plan in status", lambda: _planned(api, "llm"), op=op)

        assert one(prom, 'greenml_build_info', lambda v: v == 1, "build info") == 1
        up = prom.wait_for('up{job="test"}', lambda r: bool(r) and value(r) == 1, timeout=30)
        assert value(up) == 1
        # the planner's view of the grid: the file's range over the horizon
        near = lambda x: (lambda v: v is not None and abs(v - x) < 1e-6)  # noqa: E731 (resampling round-off)
        assert one(prom, 'min_over_time(greenml_grid_intensity_forecast_min_grams_per_kwh'
                         '{zone="DE",kind="average"}[5m])', near(50.0), "min") == pytest.approx(50.0)
        assert one(prom, 'greenml_grid_intensity_forecast_max_grams_per_kwh{zone="DE"}',
                   near(400.0), "max") == pytest.approx(400.0)
        assert one(prom, 'max_over_time(greenml_grid_intensity_grams_per_kwh{zone="DE",source="file"}[5m])',
                   near(400.0), "now") == pytest.approx(400.0)
        assert one(prom, 'greenml_signals_degraded{zone="DE",link="provider"}', lambda v: v == 0, "healthy") == 0
        # per object: the plan's figures equal the status's, and the counterfactual is stated
        expected = one(prom, f'greenml_carbon_expected_grams{{namespace="{NS}",name="llm",kind="TrainingJob"}}',
                       lambda v: v is not None and v > 0, "expected")
        assert expected == pytest.approx(st["plan"]["expectedGrams"], abs=6e-4)  # status rounds to 3 decimals
        saved = one(prom, 'greenml_carbon_counterfactual_grams{counterfactual="run-now",name="llm"} '
                          '- on(namespace, name, kind) greenml_carbon_expected_grams{name="llm"}',
                    lambda v: v is not None and v > 0, "savings")
        assert saved == pytest.approx(st["plan"]["runNowGrams"] - st["plan"]["expectedGrams"], abs=1.2e-3)
        assert one(prom, 'greenml_object_phase{name="llm",phase="Waiting"}', lambda v: v == 1, "phase") == 1
        assert one(prom, 'sum(greenml_decisions_total{kind="TrainingJob"})', lambda v: v >= 1, "decisions") >= 1
        assert one(prom, 'sum(greenml_reconcile_duration_seconds_count{kind="TrainingJob"})',
                   lambda v: v >= 1, "reconciles") >= 1
        assert one(prom, 'greenml_replans_total', lambda v: v >= 1, "replans") >= 1
        # no UID ever appears as a label value
        series = prom.query('{__name__=~"greenml_.*"}')
        uid = (await api.get(TJ, NS, "llm"))["metadata"]["uid"]
        assert series and all(uid not in m["metric"].values() for m in series)

        # once it runs, energy and embodied carbon grow
        await wait_for("running", lambda: _phase(api, "llm", "Running"), timeout=40, op=op)
        assert one(prom, 'greenml_energy_joules{name="llm"}', lambda v: v is not None and v > 0, "energy") > 0
        assert one(prom, 'greenml_carbon_embodied_grams{name="llm"}', lambda v: v is not None and v > 0, "M") > 0


async def test_degraded_signals_are_visible_in_metrics_and_status(api, kubeconfig, tmp_path):
    require_prometheus()
    # a file that ended an hour ago: the provider link is Stale, a fallback link serves
    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    hours = 24 * 16
    values = [300.0 + 100.0 * ((i % 24) >= 12) for i in range(hours)]
    intensity = write_intensity(tmp_path / "old.csv", end - timedelta(hours=hours), timedelta(hours=1), values)
    port = free_port()
    env = operator_env(tmp_path, kubeconfig, intensity, metrics_port=str(port))
    with run_operator(tmp_path, env) as op, running_prometheus([f"127.0.0.1:{port}"]) as prom:
        await api.create(TJ, training_job("late"))
        cond = await wait_for("SignalsDegraded", lambda: _condition(api, "late", "SignalsDegraded"), op=op)
        assert cond["status"] == "True" and "Stale" in cond["message"], cond
        assert cond["observedGeneration"] == 1 and cond["lastTransitionTime"]
        res = prom.wait_for('greenml_signals_degraded{zone="DE"} == 1', bool, timeout=30)
        link = res[0]["metric"]["link"]
        assert link in ("forecaster", "embedded"), res
        assert link in cond["message"]
        assert one(prom, f'greenml_signal_fallbacks_total{{zone="DE",link="{link}"}}', lambda v: v >= 1, "fb") >= 1
        assert one(prom, 'sum(greenml_provider_errors_total{provider="file"})', lambda v: v >= 1, "errors") >= 1


async def _planned(api, name):
    st = await status_of(api, name)
    return st if st.get("plan") and st["plan"].get("plannedStart") else None


async def _phase(api, name, phase):
    return (await status_of(api, name)).get("phase") == phase


async def _condition(api, name, type_):
    st = await status_of(api, name)
    return next((c for c in st.get("conditions") or [] if c.get("type") == type_), None)
