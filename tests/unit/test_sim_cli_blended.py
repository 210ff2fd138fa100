"""`greenml simulate shifting --forecaster blended`: the --forecast file's forecasts corrected
by the latest actual and mixed with the builtin forecaster; a clear error (exit status 2)
without a provider forecast, or with a forecast option it does not go with."""
from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from greenml.cli import main
from greenml.timeutil import format_time
from tests.unit.test_sim_cli import JOBS, T0, write_intensity


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "jobs.csv").write_text(JOBS)
    # a provider issuing every 6 h for 48 h: the actual's shape, 30 g/kWh too high and drifting
    issue, lead = np.meshgrid(np.arange(0, 96, 6), np.arange(48), indexing="ij")
    value = 330 + 120 * np.sin((issue + lead) * 2 * np.pi / 24) + 5 * lead
    hours = lambda h: format_time(T0 + timedelta(hours=int(h)))   # noqa: E731
    (tmp_path / "fc.csv").write_text("issued_utc,target_utc,gco2_per_kwh\n" + "".join(
        f"{hours(i)},{hours(i + k)},{v:.1f}\n" for i, k, v in zip(issue.ravel(), lead.ravel(), value.ravel())))
    return write_intensity(tmp_path / "ci.csv"), tmp_path / "jobs.csv", tmp_path / "fc.csv"


def run(inputs, tmp_path, *extra: str) -> int:
    ci, jobs, _ = inputs
    return main(["simulate", "shifting", "--intensity", str(ci), "--jobs", str(jobs),
                 "--output", str(tmp_path / "r.json"), *extra])


def test_blended_runs_on_the_forecast_file(inputs, tmp_path, capsys):
    assert run(inputs, tmp_path, "--forecast", str(inputs[2]), "--forecaster", "blended") == 0
    s = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert s["forecast"] == "blended fc.csv" and s["deadlines_met"] == 3
    assert "forecast blended fc.csv" in capsys.readouterr().out


def test_blended_without_a_provider_forecast_is_a_clear_error(inputs, tmp_path, capsys):
    assert run(inputs, tmp_path, "--forecaster", "blended") == 2
    err = capsys.readouterr().err
    assert "--forecaster blended needs --forecast FORECASTS.csv" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--forecaster", "blended", "--forecast", "FC", "--forecast-error", "0.1"], "--forecaster blended and --forecast-error exclude"),
    (["--forecaster", "builtin", "--forecast", "FC"], "--forecast and --forecaster exclude each other"),
    (["--forecast-error", "0.1", "--forecast", "FC"], "--forecast-error and --forecast exclude each other"),
])
def test_forecast_options_that_do_not_go_together(inputs, tmp_path, capsys, extra, needle):
    extra = [str(inputs[2]) if x == "FC" else x for x in extra]
    assert run(inputs, tmp_path, *extra) == 2
    assert needle in capsys.readouterr().err
