"""greenml.metrics: naming conventions, values, bounded labels, cleanup, generated docs."""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenml.metrics import SPECS, Metrics, markdown_table, record_board, record_decision, record_trainingjob, \
    record_workload, start_metrics_server
from greenml.planning.accounting import AccountingPolicy, embodied_grams

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_LABELS = {"uid", "pod", "pod_uid", "job_uid", "id"}


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(m: Metrics, metric: str, **labels: str) -> float | None:
    return samples(m).get((metric, tuple(sorted(labels.items()))))


def test_names_follow_the_conventions():
    for s in SPECS:
        assert s.full_name.startswith("greenml_"), s.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", s.name), s.name
        assert (s.type == "counter") == s.name.endswith("_total"), s.name
        if s.type == "histogram":
            assert s.name.endswith("_seconds"), s.name
        assert not FORBIDDEN_LABELS & set(s.labels), s.name
        # base units: joules, seconds, grams; intensity keeps its domain unit g/kWh (grams *per* kWh)
        assert not re.search(r"(?<!_per)_(kwh|kilojoules|milliseconds|kg)$", s.name), f"{s.name}: use base units"


def test_registry_exposes_exactly_the_declared_metrics():
    m = Metrics(version="t")
    declared = {s.full_name.removesuffix("_total") for s in SPECS}
    exposed = {fam.name for fam in text_string_to_metric_families(m.render().decode())}
    assert exposed == declared


def test_docs_metrics_md_is_current():
    path = REPO / "docs" / "metrics.md"
    assert path.read_text() == markdown_table(), "regenerate: python -m greenml.metrics > docs/metrics.md"
    for s in SPECS:
        assert f"`{s.full_name}`" in path.read_text()


def test_decisions_phase_and_cleanup():
    m = Metrics(version="t")
    record_decision(m, "TrainingJob", "ml", "a", {"phase": "Waiting", "lastDecision": {"reason": "Planned"}})
    record_decision(m, "TrainingJob", "ml", "a", {"phase": "Running", "lastDecision": {"reason": "WindowOpen"}})
    record_decision(m, "TrainingJob", "ml", "a", {"phase": "Running"})   # no new decision: not counted
    assert get(m, "greenml_decisions_total", kind="TrainingJob", reason="Planned") == 1
    assert get(m, "greenml_decisions_total", kind="TrainingJob", reason="WindowOpen") == 1
    assert get(m, "greenml_object_phase", namespace="ml", name="a", kind="TrainingJob", phase="Running") == 1
    assert get(m, "greenml_object_phase", namespace="ml", name="a", kind="TrainingJob", phase="Waiting") == 0
    m.usage("ml", "a", "TrainingJob", energy_j=10.0, operational_g=1.0, embodied_g=0.5)
    m.plan("ml", "a", "TrainingJob", expected_g=2.0, counterfactual_g=3.0)
    m.forget("ml", "a", "TrainingJob")
    left = [k for k in samples(m) if ("name", "a") in k[1]]
    assert left == []
    assert get(m, "greenml_decisions_total", kind="TrainingJob", reason="Planned") == 1   # counters stay


def test_zone_source_change_replaces_series_and_fallbacks_count():
    m = Metrics(version="t")
    m.zone_intensity("DE", "electricitymaps", "average", 300, 100, 500)
    m.zone_link("DE", "provider", [])
    m.zone_intensity("DE", "embedded", "average", 310, 120, 480)
    m.zone_link("DE", "embedded", [{"link": "electricitymaps", "reason": "Timeout"},
                                   {"link": "forecaster(electricitymaps)", "reason": "InsufficientHistory"}])
    assert get(m, "greenml_grid_intensity_grams_per_kwh", zone="DE", source="electricitymaps", kind="average") is None
    assert get(m, "greenml_grid_intensity_grams_per_kwh", zone="DE", source="embedded", kind="average") == 310
    assert get(m, "greenml_grid_intensity_forecast_min_grams_per_kwh", zone="DE", source="embedded",
               kind="average") == 120
    assert get(m, "greenml_signals_degraded", zone="DE", link="embedded") == 1
    assert get(m, "greenml_signals_degraded", zone="DE", link="provider") is None
    assert get(m, "greenml_provider_errors_total", provider="electricitymaps", reason="Timeout") == 1
    assert get(m, "greenml_signal_fallbacks_total", zone="DE", link="embedded") == 1


def test_budget_and_active_variant():
    m = Metrics(version="t")
    m.budget("web", "llm", grams={"spent": 40.0, "remaining": 60.0, "projected": 95.0, "limit": 100.0})
    m.active_variant("web", "llm", "full")
    m.active_variant("web", "llm", "int8")
    assert get(m, "greenml_budget_remaining_grams", namespace="web", name="llm") == 60.0
    assert get(m, "greenml_budget_limit_joules", namespace="web", name="llm") is None     # carbon-only budget
    assert get(m, "greenml_active_variant_info", namespace="web", name="llm", variant="int8") == 1
    assert get(m, "greenml_active_variant_info", namespace="web", name="llm", variant="full") is None
    m.forget("web", "llm", "InferenceBudget")
    assert get(m, "greenml_budget_spent_grams", namespace="web", name="llm") is None
    assert get(m, "greenml_active_variant_info", namespace="web", name="llm", variant="int8") is None


@dataclass
class _Stats:
    replans: int = 0
    last_duration_s: float = 0.0
    last_jobs: int = 0


@dataclass
class _Board:
    stats: _Stats = field(default_factory=_Stats)
    signals: dict = field(default_factory=dict)

    def failures(self):
        return {}


def test_board_replans_recorded_once():
    from greenml.services.board import ZoneSignal

    m = Metrics(version="t")
    b = _Board(_Stats(1, 0.02, 3), {"GB": ZoneSignal("ukcarbon", "average", "provider", (), 150, 90, 210,
                                                      datetime(2024, 1, 1, tzinfo=timezone.utc))})
    record_board(m, b)
    record_board(m, b)                       # same replan: not observed twice
    tj = {"board": "trainingjobs"}
    assert get(m, "greenml_planning_duration_seconds_count", **tj) == 1
    assert get(m, "greenml_replans_total", **tj) == 1
    assert get(m, "greenml_planned_jobs", **tj) == 3
    assert get(m, "greenml_grid_intensity_forecast_max_grams_per_kwh", zone="GB", source="ukcarbon",
               kind="average") == 210


def test_each_board_counts_its_own_replans():
    """A Kueue ClusterQueue's board counts apart from the TrainingJob board (and from another
    queue's): a board's running count is its own, not one shared high-water mark."""
    from greenml.metrics import kueue_board

    m = Metrics(version="t")
    tj, gpu, cpu = _Board(_Stats(5, 0.02, 3)), _Board(_Stats(2, 0.5, 7)), _Board(_Stats(1, 0.1, 1))
    record_board(m, tj)
    record_board(m, gpu, kueue_board("gpu"))
    record_board(m, cpu, kueue_board("cpu"))
    assert get(m, "greenml_replans_total", board="trainingjobs") == tj.stats.replans
    assert get(m, "greenml_replans_total", board="kueue/gpu") == gpu.stats.replans
    assert get(m, "greenml_planned_jobs", board="kueue/gpu") == gpu.stats.last_jobs
    assert get(m, "greenml_planning_duration_seconds_sum", board="kueue/cpu") == cpu.stats.last_duration_s
    gpu.stats.replans += 1
    record_board(m, gpu, kueue_board("gpu"))
    assert get(m, "greenml_replans_total", board="kueue/gpu") == gpu.stats.replans
    assert get(m, "greenml_replans_total", board="trainingjobs") == tj.stats.replans


@dataclass
class _Req:
    namespace: str = "ml"
    name: str = "t"
    gpus: int = 2
    watts: float = 600.0


@dataclass
class _Plan:
    expected_grams: float = 100.0
    run_now_grams: float = 160.0


def test_trainingjob_usage_with_pue_and_embodied():
    m = Metrics(version="t")
    policy = AccountingPolicy(pue=1.5)
    record_trainingjob(m, _Req(), {"usage": {"energyKwh": 0.6, "grams": 240.0}}, _Plan(), policy)
    assert get(m, "greenml_energy_joules", namespace="ml", name="t", kind="TrainingJob") == pytest.approx(2.16e6)
    assert get(m, "greenml_carbon_operational_grams", namespace="ml", name="t", kind="TrainingJob") == 360.0
    # 0.6 kWh at 600 W = 3600 s on 2 GPUs
    assert get(m, "greenml_carbon_embodied_grams", namespace="ml", name="t", kind="TrainingJob") == \
        pytest.approx(embodied_grams(2, 3600))
    assert get(m, "greenml_carbon_counterfactual_grams", namespace="ml", name="t", kind="TrainingJob",
               counterfactual="run-now") == 240.0


def test_kueue_workload_usage_and_plan_from_its_record():
    """A Kueue Workload's series, kind Workload, from the check's record: the same figures
    as a TrainingJob's; the last plan stays after it finished; forget drops them."""
    m = Metrics(version="t")
    policy = AccountingPolicy(pue=1.5)
    rec = {"gpus": 2, "watts": 600.0, "usage": {"energyKwh": 0.6, "grams": 240.0},
           "plan": {"expectedGrams": 100.0, "runNowGrams": 160.0}}
    record_workload(m, "ml", "job-train", rec, policy)
    lab = {"namespace": "ml", "name": "job-train", "kind": "Workload"}
    assert get(m, "greenml_carbon_operational_grams", **lab) == 360.0
    assert get(m, "greenml_carbon_embodied_grams", **lab) == pytest.approx(embodied_grams(2, 3600))
    assert get(m, "greenml_carbon_expected_grams", **lab) == 150.0
    assert get(m, "greenml_carbon_counterfactual_grams", **lab, counterfactual="run-now") == 240.0
    record_workload(m, "ml", "bad-annotations", {"state": "Ready", "reason": "InvalidAnnotations"}, policy)
    assert get(m, "greenml_energy_joules", namespace="ml", name="bad-annotations", kind="Workload") is None
    m.forget("ml", "job-train", "Workload")
    assert get(m, "greenml_carbon_expected_grams", **lab) is None


def test_metrics_server_serves_the_registry():
    from tests.integration.harness import free_port

    m = Metrics(version="t")
    m.decision("TrainingJob", "Planned")
    port = free_port()
    server = start_metrics_server(m, port, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert 'greenml_decisions_total{kind="TrainingJob",reason="Planned"} 1.0' in body
    finally:
        server.shutdown()
    assert start_metrics_server(m, 0) is None


def test_dashboard_queries_only_declared_metrics():
    import json

    dash = json.loads((REPO / "charts" / "greenml-operator" / "files" / "dashboards" / "greenml.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"\bgreenml_[a-z0-9_]+", e)}
    known = {s.full_name for s in SPECS} | {s.full_name + "_bucket" for s in SPECS if s.type == "histogram"}
    assert used and used <= known, used - known
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("intensity", "job windows", "burn-down", "savings", "variant mix", "signal health"):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_metrics_of_builds_one_registry_per_context(monkeypatch):
    """metrics_of runs on every reconcile: it must not build a new registry each time
    (it did, through dict.setdefault's eagerly evaluated default — ~6 % of the operator's CPU)."""
    from types import SimpleNamespace

    from greenml.controllers import operator as op

    built = []
    real = op.Metrics
    monkeypatch.setattr(op, "Metrics", lambda: built.append(1) or real())
    ctx = SimpleNamespace(extras={})
    first = op.metrics_of(ctx)
    assert all(op.metrics_of(ctx) is first for _ in range(50))
    assert len(built) == 1
