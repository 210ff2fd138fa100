"""Each simulator benchmark's --quick path runs end to end on the shared data (skips
cleanly without it) and writes its JSON; no timing is asserted."""
from __future__ import annotations

import json

import pytest

from tests.conftest import shared_data_file


@pytest.fixture
def bench_out(tmp_path, monkeypatch):
    import bench._common as common
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_bench_shifting_quick(bench_out):
    shared_data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    shared_data_file("cluster_traces/philly_2017_job_runtimes_via_alibaba_v2020_analysis.csv")
    shared_data_file("cluster_traces/alibaba_gpu_v2023_openb_pods.csv")
    from bench import bench_shifting
    assert bench_shifting.main(["--quick", "--workers", "1"]) == 0
    out = json.loads((bench_out / "shifting_quick.json").read_text())
    rows = {(t["policy"], t["forecast"], t["capacity"]): t for t in out["table"]}
    assert rows[("oracle", "perfect", False)]["fraction_of_oracle"] == 1.0
    assert rows[("greenml", "perfect", False)]["savings_percent"] > 0
    assert all(t["deadlines_met"] == "12/12" for t in out["table"] if t["policy"] in ("greenml", "oracle"))


def test_bench_shifting_forecast_quality_and_held_out(bench_out):
    """The builtin forecaster's savings next to its MAE and rank quality, per zone; the
    held-out series are run where their data is present (each skipped alone otherwise)."""
    shared_data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    shared_data_file("cluster_traces/philly_2017_job_runtimes_via_alibaba_v2020_analysis.csv")
    shared_data_file("cluster_traces/alibaba_gpu_v2023_openb_pods.csv")
    from bench import bench_shifting
    assert bench_shifting.main(["--zones", "DE", "--windows", "1", "--jobs", "8", "--capacity", "false",
                                "--forecasts", "perfect", "builtin", "--policies", "greenml", "--workers", "1"]) == 0
    out = json.loads((bench_out / "shifting.json").read_text())
    q = {(t["zone"], t["forecast"]): t for t in out["forecast_quality"]}
    de = q[("DE", "builtin")]
    assert de["goal"] == 0.8 and de["windows"] == 1 and de["mae_24h"] > 0 and -1 <= de["spearman_24h"] <= 1
    assert de["goal_met"] == (de["fraction_of_oracle"] >= 0.8)
    for zone in bench_shifting.HELD_OUT:
        if bench_shifting.data_file(bench_shifting.HELD_OUT[zone][0]) is not None:
            assert q[(zone, "builtin")]["goal"] == 0.5
    assert "Forecast quality vs savings kept" in (bench_out / "shifting.md").read_text()


def test_bench_lwa_quick(bench_out):
    shared_data_file("carbon_intensity/lets_wait_awhile_GB_2020.csv")
    from bench import bench_lwa
    assert bench_lwa.main(["--quick", "--workers", "1"]) == 0
    out = json.loads((bench_out / "lwa_quick.json").read_text())
    policies = {t["policy"] for t in out["table"]}
    assert {"lwa+quirks", "lwa", "greenml", "oracle"} <= policies
    assert all(t["published_percent"] > 0 for t in out["table"])


def test_lwa_deadline_rule():
    from datetime import datetime, timezone

    from bench.bench_lwa import lwa_deadline
    utc = timezone.utc
    assert lwa_deadline(datetime(2020, 1, 4, 13, 0, tzinfo=utc)) == datetime(2020, 1, 6, 9, 0, tzinfo=utc)   # Sat → Mon
    assert lwa_deadline(datetime(2020, 1, 5, 8, 0, tzinfo=utc)) == datetime(2020, 1, 6, 9, 0, tzinfo=utc)    # Sun → Mon
    assert lwa_deadline(datetime(2020, 1, 3, 18, 0, tzinfo=utc)) == datetime(2020, 1, 4, 9, 0, tzinfo=utc)   # Fri eve → Sat
    assert lwa_deadline(datetime(2020, 1, 7, 7, 0, tzinfo=utc)) == datetime(2020, 1, 7, 9, 0, tzinfo=utc)    # early → 09:00
    assert lwa_deadline(datetime(2020, 1, 7, 12, 0, tzinfo=utc)) == datetime(2020, 1, 7, 12, 0, tzinfo=utc)  # no slack
