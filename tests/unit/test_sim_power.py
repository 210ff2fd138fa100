"""greenml simulate power-caps / greenml.sim.power: shifting alone, capping alone, both."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.cli import main
from greenml.signals.base import IntensitySeries
from greenml.sim import forecasts
from greenml.sim.jobs import SimJob
from greenml.sim.power import CapSimConfig, simulate_caps

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def series(days=4, seed=0):
    rng = np.random.default_rng(seed)
    h = np.arange(24 * days)
    values = 300 + 150 * np.sin(2 * np.pi * h / 24) + rng.normal(0, 20, h.size)
    return IntensitySeries(T0, timedelta(hours=1), values, "test")


def jobs(n=30, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        submit = T0 + timedelta(hours=int(rng.integers(0, 40)))
        dur = timedelta(minutes=int(rng.integers(1, 12)) * 30)
        out.append(SimJob(f"j{i}", submit, dur, submit + dur + timedelta(hours=int(rng.choice([2, 8, 24]))),
                          gpus=int(rng.integers(1, 5)), watts_per_gpu=250, interruptible=bool(i % 2)))
    return out


@pytest.mark.parametrize("model", ["A40", "V100", "H100"])
def test_both_is_never_worse_than_either_and_deadlines_hold(model):
    actual = series()
    r = simulate_caps(jobs(), actual, forecasts.perfect(actual), CapSimConfig(gpu_model=model)).summary()["strategies"]
    assert all(v["deadlines_met"] == 30 for v in r.values())
    assert r["run-now"]["savings_percent"] == 0
    assert r["shifting"]["energy_change_percent"] == pytest.approx(0, abs=1e-6)   # shifting moves, never saves energy
    assert r["both"]["grams"] <= r["shifting"]["grams"] * (1 + 1e-9)
    assert r["both"]["grams"] < r["run-now"]["grams"] and r["capping"]["grams"] < r["run-now"]["grams"]
    assert r["capping"]["mean_stretch"] >= 1.0


def test_cli_power_caps(tmp_path, capsys):
    actual = series()
    ci = tmp_path / "ci.csv"
    ci.write_text("datetime_utc,ci\n" + "".join(f"{(T0 + timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{v:.2f}\n"
                                                for i, v in enumerate(actual.values)))
    jf = tmp_path / "jobs.csv"
    jf.write_text("name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible\n"
                  "a,2026-12-01T02:00:00Z,120,2026-12-01T20:00:00Z,2,300,true\n"
                  "b,2026-12-01T05:00:00Z,240,2026-12-02T05:00:00Z,4,300,false\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "power-caps", "--intensity", str(ci), "--jobs", str(jf), "--gpu-model", "V100",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "both" in text and "capping" in text and "2/2" in text
    summary = json.loads(out.read_text())["summary"]
    assert set(summary["strategies"]) == {"run-now", "capping", "shifting", "both"}
    assert main(["simulate", "power-caps", "--intensity", str(ci), "--jobs", str(jf), "--gpu-model", "Z9"]) == 2
