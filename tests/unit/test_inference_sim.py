"""The InferenceBudget simulator, its CLI and a tiny run of the benchmark."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from greenml.planning.inference import compile_spec
from greenml.signals.base import IntensitySeries
from greenml.sim.inference import (OnlineForecasts, add_arguments, always_best, always_cheapest, offline_reference,
                                   read_budget, read_intensity_csv, read_load_csv, run_cli, simulate_inference,
                                   threshold_policy)
from tests.conftest import shared_data_file
from tests.unit.test_inference import make_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inferencebudget-llm.yaml"
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def synthetic(days: int = 3, step_min: int = 60) -> tuple[IntensitySeries, np.ndarray]:
    """A made-up daily sine of intensity and load (not real data)."""
    n = days * 24 * 60 // step_min
    h = np.arange(n) * step_min / 60.0
    ci = 300 + 150 * np.sin(2 * np.pi * h / 24)
    load = 15 + 10 * np.cos(2 * np.pi * h / 24)
    return IntensitySeries(T0, timedelta(minutes=step_min), ci), load


def write_csvs(tmp: Path, series: IntensitySeries, load: np.ndarray) -> tuple[Path, Path]:
    ip, lp = tmp / "ci.csv", tmp / "load.csv"
    times = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in series.times()]
    ip.write_text("datetime_utc,ci_lca_gco2eq_per_kwh\n" + "".join(f"{t},{v:.2f}\n" for t, v in zip(times, series.values)))
    lp.write_text("datetime_utc,requests_per_second\n" + "".join(f"{t},{v:.3f}\n" for t, v in zip(times, load)))
    return ip, lp


def best_daily_grams(spec, series, load) -> float:
    r = simulate_inference(spec, series, load, policy=always_best, steps=False)
    return r["summary"]["grams"] / r["summary"]["periods"]


@pytest.mark.parametrize("error", [0.0, 0.1])
def test_paced_stays_within_budget_and_beats_baselines(error: float) -> None:
    series, load = synthetic()
    probe = make_spec()
    budget = 0.7 * best_daily_grams(probe, series, load)
    model = compile_spec(make_spec(grams=budget, dwell="2h"))
    paced = simulate_inference(model, series, load, forecast_error=error, seed=3)
    s = paced["summary"]
    assert s["budget_adherence"] == 1.0 and s["max_spend_fraction"] <= 1.0
    assert len(paced["steps"]) == len(series) and {"time", "variant", "replicas", "grams"} <= set(paced["steps"][0])
    assert [p["start"] for p in paced["periods"]] == ["2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z",
                                                      "2024-03-03T00:00:00Z"]
    opt = offline_reference(model, series, load)
    assert opt["feasible"] and s["mean_quality"] <= opt["mean_quality_upper_bound"] + 1e-9
    assert s["mean_quality"] >= 0.95 * opt["mean_quality"]
    cheap = simulate_inference(model, series, load, policy=always_cheapest, steps=False)["summary"]
    best = simulate_inference(model, series, load, policy=always_best, steps=False)["summary"]
    thr = simulate_inference(model, series, load, policy=threshold_policy(300.0), steps=False)["summary"]
    assert cheap["mean_quality"] < s["mean_quality"] < best["mean_quality"]
    assert best["budget_adherence"] == 0.0 and thr["mean_quality"] < s["mean_quality"]


def test_dwell_limits_switches() -> None:
    series, load = synthetic(days=2, step_min=15)
    budget = 0.6 * best_daily_grams(make_spec(), series, load)
    free = simulate_inference(make_spec(grams=budget, dwell="0s"), series, load, steps=False)["summary"]
    calm = simulate_inference(make_spec(grams=budget, dwell="3h"), series, load, steps=False)["summary"]
    assert calm["switches"] <= free["switches"]
    assert calm["budget_adherence"] == 1.0


def test_cli_round_trip(tmp_path: Path) -> None:
    series, load = synthetic(days=2)
    ip, lp = write_csvs(tmp_path, series, load)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out" / "result.json"
    args = parser.parse_args(["--intensity", str(ip), "--load", str(lp), "--budget", str(EXAMPLE),
                              "--forecast-error", "0.1", "--output", str(out)])
    assert run_cli(args) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["steps"] == 48
    assert {"steps", "periods", "summary", "offline_optimum"} <= set(result)
    assert all(p["budget_grams"] == 2000 for p in result["periods"])


def test_online_mode_forecasts_from_the_past_and_holds_the_budget() -> None:
    series, load = synthetic(days=10)
    rng = np.random.default_rng(4)
    load = load * (1 + 0.05 * rng.standard_normal(load.size))   # not a perfect copy of yesterday
    probe = best_daily_grams(make_spec(), series, load)
    model = compile_spec(make_spec(grams=0.7 * probe, dwell="1h"))
    warm = timedelta(days=7)
    online = simulate_inference(model, series, load, online=True, warmup=warm)
    perfect = simulate_inference(model, series, load, warmup=warm)
    s = online["summary"]
    assert s["forecasts"] == "online" and perfect["summary"]["forecasts"] == "perfect"
    assert s["steps"] == 3 * 24 and s["warmup_steps"] == 7 * 24 and online["steps"][0]["time"] == "2024-03-08T00:00:00Z"
    assert s["budget_adherence"] == 1.0 and s["periods"] == 3
    assert s["online"]["intensity_fallback_steps"] == 0 and s["online"]["load_fallback_steps"] == 0
    assert s["online"]["load_relative_mae"] < 0.08 and s["online"]["intensity_relative_mae"] < 0.05
    opt = offline_reference(model, series, load, warm)
    assert s["mean_quality"] >= 0.97 * opt["mean_quality_upper_bound"]
    assert s["mean_quality"] <= perfect["summary"]["mean_quality"] + 0.01


def test_online_mode_never_reads_the_future() -> None:
    series, load = synthetic(days=4)
    model = compile_spec(make_spec(grams=0.6 * best_daily_grams(make_spec(), series, load)))
    cut = 2 * 24 + 5
    other_ci = series.values.copy()
    other_ci[cut + 1:] *= 3.0
    other_load = load.copy()
    other_load[cut + 1:] *= 0.2
    a = simulate_inference(model, series, load, online=True)["steps"]
    b = simulate_inference(model, IntensitySeries(series.start, series.step, other_ci), other_load, online=True)["steps"]
    assert a[:cut + 1] == b[:cut + 1]
    assert a != b


def test_online_mode_falls_back_while_history_is_short() -> None:
    series, load = synthetic(days=3)
    model = compile_spec(make_spec(grams=0.7 * best_daily_grams(make_spec(), series, load)))
    r = simulate_inference(model, series, load, online=True, steps=False)["summary"]
    # the first day: no history to forecast from, the current values held flat (as the operator does)
    assert 20 <= r["online"]["intensity_fallback_steps"] <= 24 and 20 <= r["online"]["load_fallback_steps"] <= 24
    assert r["budget_adherence"] == 1.0
    shared = OnlineForecasts(series, load, "UTC")
    again = simulate_inference(model, series, load, online=shared, steps=False)["summary"]
    assert again == r and shared._cache
    with pytest.raises(ValueError, match="exclude"):
        simulate_inference(model, series, load, 0.1, online=True)
    with pytest.raises(ValueError, match="whole trace"):
        simulate_inference(model, series, load, warmup=timedelta(days=3))


def test_cli_online(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series, load = synthetic(days=4)
    ip, lp = write_csvs(tmp_path, series, load)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--intensity", str(ip), "--load", str(lp), "--budget", str(EXAMPLE), "--online",
                              "--warmup", "2d", "--output", str(out)])
    assert run_cli(args) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["steps"] == 48 and result["summary"]["forecasts"] == "online"
    assert {"intensity_relative_mae", "load_relative_mae", "intensity_fallback_steps",
            "load_fallback_steps"} <= set(result["summary"]["online"])
    assert "online forecasts: intensity error" in capsys.readouterr().out
    bad = parser.parse_args(["--intensity", str(ip), "--load", str(lp), "--budget", str(EXAMPLE), "--online",
                             "--forecast-error", "0.1", "--output", str(out)])
    assert run_cli(bad) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--intensity", str(ip), "--load", str(lp), "--budget", str(EXAMPLE),
                           "--warmup", "soon", "--output", str(out)])


def test_cli_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series, load = synthetic(days=1)
    ip, lp = write_csvs(tmp_path, series, load)
    bad = tmp_path / "bad.csv"
    bad.write_text("when,value\n2024-01-01T00:00:00Z,1\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--intensity", str(bad), "--load", str(lp), "--budget", str(EXAMPLE),
                              "--output", str(tmp_path / "o.json")])
    assert run_cli(args) == 2
    assert "bad.csv: no time column" in capsys.readouterr().err
    manifest = tmp_path / "b.yaml"
    manifest.write_text(EXAMPLE.read_text().replace("quality: 0.946", "quality: 1.5"))
    with pytest.raises(ValueError, match="b.yaml: invalid InferenceBudget.*quality"):
        read_budget(manifest)


def test_readers_regularise_gaps(tmp_path: Path) -> None:
    p = tmp_path / "ci.csv"
    p.write_text("datetime_utc,ci_lca_gco2eq_per_kwh\n2024-01-01T00:00:00Z,100\n2024-01-01T01:00:00Z,200\n"
                 "2024-01-01T03:00:00Z,400\n")
    s = read_intensity_csv(p)   # the project's one reader: gaps interpolated, counted
    assert s.step == timedelta(hours=1) and s.values.tolist() == [100, 200, 300, 400] and s.meta["filled"] == 1
    lp = tmp_path / "load.csv"
    lp.write_text("datetime_utc,requests_per_second\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:00Z,2\n")
    with pytest.raises(ValueError, match="duplicate timestamps"):
        read_load_csv(lp)


def test_load_must_cover_the_intensity_grid() -> None:
    series, load = synthetic(days=1)
    with pytest.raises(ValueError, match="share one grid"):
        simulate_inference(make_spec(), series, load[:5])


def test_real_trace_week(shared_data) -> None:
    """One week of real German intensity with the example's LLM variants never breaks a feasible budget."""
    series = read_intensity_csv(shared_data("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv"))
    series = series.window(datetime(2023, 6, 4, 22, tzinfo=timezone.utc), datetime(2023, 6, 11, 22, tzinfo=timezone.utc))
    spec = read_budget(EXAMPLE)
    load = np.full(len(series), 0.05)
    r = simulate_inference(spec, series, load, forecast_error=0.1, steps=False)
    opt = offline_reference(spec, series, load)
    assert r["summary"]["periods"] == 7 and r["summary"]["budget_adherence"] == 1.0
    assert r["summary"]["mean_quality"] >= 0.95 * opt["mean_quality"]


def test_benchmark_quick_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared_data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    shared_data_file("cluster_traces/azure_llm_inference_2023_conv.csv")
    import bench._common
    from bench import bench_inference

    monkeypatch.setattr(bench._common, "RESULTS", tmp_path)
    assert bench_inference.main(["--quick"]) == 0
    payload = json.loads((tmp_path / "inference-quick.json").read_text())
    paced = [r for r in payload["rows"] if r["policy"].startswith("paced") and r["family"] == "llm"]
    assert paced and all(r["adherence_feasible_days"] == 1.0 for r in paced)
    online = [r for r in paced if r["policy"] == "paced (online)"]
    assert len(online) == 3 and all(r["quality_vs_upper_bound"] > 0.9 for r in online)
    varied = [r for r in payload["rows"] if r["family"] == "llm, varied load"]
    assert {r["policy"] for r in varied} == {"offline-optimum", "paced (noise 0%)", "paced (online)"}
    assert all(r["forecast_intensity_fallback_steps"] == 0 for r in online)
    assert {r["policy"] for r in payload["rows"]} >= {"offline-optimum", "always-best", "always-cheapest", "threshold"}


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("inferencebudget-*.yaml")), ids=lambda p: p.name)
def test_examples_parse_and_decide(path: Path) -> None:
    model = compile_spec(read_budget(path))
    series, load = synthetic(days=8)
    r = simulate_inference(model, series, load * 0.01, steps=False)
    assert r["summary"]["steps"] == len(series) and r["summary"]["periods"] >= 1
