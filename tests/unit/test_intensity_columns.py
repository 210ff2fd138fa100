"""One reader for intensity CSVs (issue 15, items 12 and 13): the file provider, `simulate
shifting` and `simulate inference` choose the same column by a documented preference
(actual, then life-cycle, …), take `--column`, and print the column used."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.cli import main
from greenml.signals import FileSource
from greenml.signals.file import parse_intensity_csv
from greenml.sim.inference import add_arguments, read_intensity_csv, run_cli
from greenml.timeutil import format_time
from tests.unit.test_inference_sim import EXAMPLE
from tests.unit.test_sim_cli import JOBS

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)


def neso_like(path, days=4):
    """NESO's file shape: the forecast column first, the actual second (actual = forecast / 2 here)."""
    n = days * 48
    f = 300 + 120 * np.sin(np.arange(n) * 2 * np.pi / 48)
    rows = ["from_utc,to_utc,forecast_gco2_per_kwh,actual_gco2_per_kwh,index"]
    rows += [f"{format_time(T0 + i * H / 2)},{format_time(T0 + (i + 1) * H / 2)},{x:.1f},{x / 2:.1f},moderate"
             for i, x in enumerate(f)]
    path.write_text("\n".join(rows) + "\n")
    return path


# Electricity Maps portal export (portal.electricitymaps.com/datasets): its own header
PORTAL = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
          "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,"
          "Data Estimated,Data Estimation Method\n"
          "2023-01-01 00:00:00,Germany,Germany,DE,150.2,201.5,60.1,55.3,entsoe.eu,false,\n"
          "2023-01-01 01:00:00,Germany,Germany,DE,140.0,190.0,61.0,56.0,entsoe.eu,false,\n")


@pytest.mark.parametrize("header, column, why", [
    ("datetime_utc,ci_lca_gco2eq_per_kwh,ci_direct_gco2eq_per_kwh,low_carbon_pct,renewable_pct,estimated",
     "ci_lca_gco2eq_per_kwh", "life-cycle"),
    ("datetime_utc,ci_direct_gco2eq_per_kwh,ci_lca_gco2eq_per_kwh", "ci_lca_gco2eq_per_kwh", "life-cycle"),
    ("from_utc,to_utc,forecast_gco2_per_kwh,actual_gco2_per_kwh,index", "actual_gco2_per_kwh", "actual"),
    ("datetime_utc,lead_hours,forecast_gco2_per_kwh", "forecast_gco2_per_kwh", "forecast"),
    ("datetime,ci_gco2eq_per_kwh", "ci_gco2eq_per_kwh", "intensity"),
    ("datetime_utc,renewable_pct,moer_gco2_per_kwh", "moer_gco2_per_kwh", "intensity"),
    ("datetime_utc,low_carbon_pct,ci_direct_gco2eq_per_kwh", "ci_direct_gco2eq_per_kwh", "direct"),
])
def test_preference(header, column, why):
    n = len(header.split(",")) - 1
    text = header + "\n" + "\n".join(f"2024-01-01T0{h}:00:00Z" + ",1" * n for h in range(3)) + "\n"
    s = parse_intensity_csv(text, name="x.csv")
    assert s.meta["column"] == column and s.meta["column_why"].startswith(why)
    assert s.kind == ("marginal" if "moer" in column else "average")


def test_portal_export_reads_its_header_and_picks_life_cycle():
    """Item 12: `Datetime (UTC)` was not a time column; renamed, the direct column came first."""
    s = parse_intensity_csv(PORTAL, name="DE_2023_hourly.csv")
    assert s.values.tolist() == [201.5, 190.0] and s.meta["column"] == "Carbon Intensity gCO₂eq/kWh (LCA)"


def test_shares_and_flags_are_never_intensities():
    with pytest.raises(Exception, match="no numeric column"):
        parse_intensity_csv("datetime_utc,renewable_pct,estimated\n2024-01-01T00:00:00Z,50,0\n", name="x.csv")


def test_simulate_shifting_uses_and_prints_the_actual(tmp_path, capsys):
    """Item 13: on NESO's file the first numeric column is the forecast; the actual is used."""
    ci = neso_like(tmp_path / "neso.csv")
    (tmp_path / "jobs.csv").write_text(JOBS)
    grams = {}
    for col in (None, "forecast_gco2_per_kwh"):
        out = tmp_path / f"{col}.json"
        args = ["simulate", "shifting", "--intensity", str(ci), "--jobs", str(tmp_path / "jobs.csv"),
                "--policy", "run-now", "--output", str(out)] + (["--column", col] if col else [])
        assert main(args) == 0
        grams[col] = json.loads(out.read_text())["summary"]["grams"]
        printed = capsys.readouterr().out
        assert f"neso.csv, column '{col or 'actual_gco2_per_kwh'}'" in printed
    assert grams[None] == pytest.approx(grams["forecast_gco2_per_kwh"] / 2, rel=1e-3)


def test_simulate_inference_takes_column_and_prints_it(tmp_path, capsys):
    """Item 13: `simulate inference` had a fixed list and no --column."""
    ci = neso_like(tmp_path / "neso.csv", days=3)
    load = tmp_path / "load.csv"
    load.write_text("datetime_utc,requests_per_second\n" + "\n".join(
        f"{format_time(T0 + i * H)},0.05" for i in range(72)) + "\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    outs = {}
    for col in (None, "forecast_gco2_per_kwh"):
        out = tmp_path / f"{col}.json"
        argv = ["--intensity", str(ci), "--load", str(load), "--budget", str(EXAMPLE), "--output", str(out)]
        assert run_cli(parser.parse_args(argv + (["--column", col] if col else []))) == 0
        outs[col] = json.loads(out.read_text())
        assert f"column '{col or 'actual_gco2_per_kwh'}'" in capsys.readouterr().out
    assert read_intensity_csv(ci).meta["column"] == "actual_gco2_per_kwh"
    assert read_intensity_csv(ci, "forecast_gco2_per_kwh").values[0] == 300.0


def test_real_neso_file_uses_actuals(shared_data):
    s = read_intensity_csv(shared_data("carbon_intensity/neso_gb_national_halfhourly_2023_forecast_actual.csv"))
    assert s.meta["column"] == "actual_gco2_per_kwh" and s.step == timedelta(minutes=30)


def test_file_provider_and_simulators_agree(tmp_path):
    p = tmp_path / "DE.csv"
    p.write_text(PORTAL)
    assert FileSource(p).current("DE", datetime(2023, 1, 1, tzinfo=timezone.utc)).values.tolist() == [201.5]
    assert read_intensity_csv(p).values.tolist() == [201.5, 190.0]
