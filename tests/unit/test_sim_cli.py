"""The `greenml simulate` CLI: the shifting contract (RESULT.json shape, clear CSV errors),
forecast snapshots, and the default scenario with its HTML picture."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.cli import main
from greenml.timeutil import format_time, parse_time

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def write_intensity(path, days=4):
    n = days * 24
    v = 300 + 120 * np.sin(np.arange(n) * 2 * np.pi / 24)
    rows = ["datetime_utc,zone,ci_gco2eq_per_kwh,other"]
    rows += [f"{format_time(T0 + timedelta(hours=i))},X,{x:.2f},{2 * x:.2f}" for i, x in enumerate(v)]
    path.write_text("\n".join(rows) + "\n")
    return path


JOBS = """name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible
a,2024-01-02T00:00:00Z,120,2024-01-03T00:00:00Z,2,400,false
b,2024-01-02T06:00:00Z,300,2024-01-03T12:00:00Z,4,300,true
c,2024-01-02T03:00:00Z,45,2024-01-02T06:00:00Z,1,250,0
"""


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "jobs.csv").write_text(JOBS)
    return write_intensity(tmp_path / "ci.csv"), tmp_path / "jobs.csv"


@pytest.mark.parametrize("extra", [[], ["--policy", "oracle"], ["--forecast-error", "0.1", "--seed", "4"],
                                   ["--forecaster", "builtin", "--capacity-gpus", "4"], ["--policy", "lwa", "--step", "1h"]])
def test_shifting_contract_result_shape(inputs, tmp_path, extra, capsys):
    ci, jobs = inputs
    out = tmp_path / "r.json"
    assert main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs), "--output", str(out), *extra]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"jobs", "summary"}
    assert [j["name"] for j in result["jobs"]] == ["a", "b", "c"]
    for j in result["jobs"]:
        assert {"name", "runs", "grams", "run_now_grams"} <= set(j)
        spans = [(parse_time(s), parse_time(e)) for s, e in j["runs"]]
        assert spans and all(s < e for s, e in spans)
        assert j["grams"] > 0 and j["run_now_grams"] > 0
    assert len(result["jobs"][0]["runs"]) == 1                     # non-interruptible: one run
    assert result["summary"]["jobs"] == 3 and result["summary"]["deadlines_met"] == 3
    assert "below run-now" in capsys.readouterr().out


def test_column_picks_the_series(inputs, tmp_path):
    ci, jobs = inputs
    grams = []
    for col in ("ci_gco2eq_per_kwh", "other"):
        out = tmp_path / f"{col}.json"
        assert main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs), "--column", col,
                     "--policy", "run-now", "--output", str(out)]) == 0
        grams.append(json.loads(out.read_text())["summary"]["grams"])
    assert grams[1] == pytest.approx(2 * grams[0], rel=1e-3)


@pytest.mark.parametrize("bad_jobs, needle", [
    ("name,submit_utc,duration_minutes\nx,2024-01-02T00:00:00Z,60\n", "missing column(s) deadline_utc"),
    (JOBS.replace("2,400,false", "two,400,false"), ":2: column 'gpus'"),
    (JOBS.replace(",45,", ",-5,"), ":4: column 'duration_minutes'"),
    (JOBS.replace("2024-01-03T12:00:00Z", "yesterday"), ":3: column 'deadline_utc'"),
    (JOBS.replace("4,300,true", "4,300,maybe"), ":3: column 'interruptible'"),
    (JOBS.replace("2024-01-03T00:00:00Z", "2024-01-02T01:00:00Z"), "before submit + duration"),
])
def test_bad_jobs_csv_names_file_line_and_column(inputs, tmp_path, bad_jobs, needle, capsys):
    ci, jobs = inputs
    jobs.write_text(bad_jobs)
    rc = main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "jobs.csv" in err and needle in err, err


def test_bad_intensity_csv_is_a_clear_error(inputs, tmp_path, capsys):
    ci, jobs = inputs
    ci.write_text(ci.read_text().replace(",X,", ",X,").replace("T05:00:00Z,X,", "T05:00:00Z,X,abc", 1))
    rc = main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "ci.csv" in err, err


def test_forecast_snapshots_file(inputs, tmp_path):
    ci, jobs = inputs
    rows = ["issued_utc,target_utc,gco2_per_kwh"]
    for issue in range(0, 96, 6):                     # every 6 h, 48 h ahead, biased high at night
        for lead in range(48):
            t = issue + lead
            rows.append(f"{format_time(T0 + timedelta(hours=issue))},{format_time(T0 + timedelta(hours=t))},"
                        f"{300 + 120 * np.sin(t * 2 * np.pi / 24) + 10 * lead:.1f}")
    fc = tmp_path / "fc.csv"
    fc.write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs), "--forecast", str(fc),
                 "--output", str(out)]) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["deadlines_met"] == 3 and s["forecast"].startswith("snapshots")


def test_default_scenario_writes_the_picture(tmp_path, capsys):
    assert main(["simulate", "--output-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    html = (tmp_path / "greenml-simulation.html").read_text()
    assert "<svg" in html and "finetune-llama-1" in html and "</html>" in html
    assert "all TrainingJobs" in out and str(tmp_path / "greenml-simulation.html") in out
    summary = json.loads((tmp_path / "greenml-simulation.json").read_text())["summary"]
    assert summary["jobs"] >= 3 and summary["deadlines_met"] == summary["jobs"]
    assert summary["grams"] < summary["run_now_grams"]


def test_default_scenario_missing_examples_dir(tmp_path, capsys):
    assert main(["simulate", "--examples", str(tmp_path / "nope"), "--output-dir", str(tmp_path)]) == 2
    assert "examples directory not found" in capsys.readouterr().err
