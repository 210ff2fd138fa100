"""EmbeddedSource and FileSource parsing (a CSV, or a directory of them as a mounted ConfigMap)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.signals import EmbeddedSource, FileSource, SignalError
from greenml.signals.base import CarbonSource
from greenml.signals.embedded import PROFILES, known_zones
from greenml.signals.file import IntensityFileError, load_intensity_csv, parse_intensity_csv
from tests.conftest import shared_data_file

NOW = datetime(2024, 7, 1, 12, 30, tzinfo=timezone.utc)


def test_embedded_serves_required_zones_as_estimates():
    src = EmbeddedSource()
    assert isinstance(src, CarbonSource)
    for zone in ("DE", "GB", "US-CAL-CISO", "US-MIDA-PJM", "FR"):
        s = src.forecast(zone, NOW, timedelta(hours=48))
        assert s.source == "embedded" and s.estimate is True
        assert s.start <= NOW and s.end >= NOW + timedelta(hours=48)
        assert np.all(s.values > 0)


def test_embedded_is_deterministic_and_plausible():
    a = EmbeddedSource().forecast("DE", NOW, timedelta(hours=24)).values
    b = EmbeddedSource().forecast("DE", NOW, timedelta(hours=24)).values
    np.testing.assert_array_equal(a, b)
    # the French grid is far cleaner than the German one at every hour
    fr = EmbeddedSource().forecast("FR", NOW, timedelta(hours=24)).values
    assert fr.max() < a.min()
    # California is cleanest around local noon (≈ 20:00 UTC) in summer
    ca = EmbeddedSource().history("US-CAL-CISO", datetime(2024, 7, 1, tzinfo=timezone.utc),
                                  datetime(2024, 7, 2, tzinfo=timezone.utc))
    assert len(ca) == 24 and 17 <= int(np.argmin(ca.values)) <= 22


def test_embedded_unknown_zone_and_alias():
    with pytest.raises(SignalError) as exc:
        EmbeddedSource().current("XX-NOWHERE", NOW)
    assert exc.value.reason == "UnknownZone" and "XX-NOWHERE" in str(exc.value)
    assert EmbeddedSource().current("DE-LU", NOW).values[0] == EmbeddedSource().current("DE", NOW).values[0]
    assert set(known_zones()) == set(PROFILES)


def test_embedded_finer_step_matches_slot():
    s = EmbeddedSource(step=timedelta(minutes=15)).current("GB", NOW)
    assert s.start == datetime(2024, 7, 1, 12, 30, tzinfo=timezone.utc) and len(s) == 1


def test_embedded_profile_close_to_real_means():
    """The profile's mean over 2023 is within 10 % of the real annual mean (Electricity Maps)."""
    path = shared_data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    real = load_intensity_csv(path, column="ci_lca_gco2eq_per_kwh")
    y0, y1 = datetime(2023, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 1, tzinfo=timezone.utc)
    prof = EmbeddedSource().history("DE", y0, y1).values.mean()
    assert abs(prof - real.window(y0, y1).values.mean()) / prof < 0.10


CSV = """datetime_utc,ci_gco2eq_per_kwh,other
2024-01-01T00:00:00Z,100,1
2024-01-01T01:00:00Z,,2
2024-01-01T02:00:00Z,300,3
2024-01-01T04:00:00Z,500,4
"""


def test_parse_csv_fills_gaps_and_picks_first_numeric_column():
    s = parse_intensity_csv(CSV, name="x.csv")
    assert s.step == timedelta(hours=1) and len(s) == 5
    np.testing.assert_allclose(s.values, [100, 200, 300, 400, 500])
    assert s.meta["filled"] == 2 and s.meta["column"] == "ci_gco2eq_per_kwh"
    assert parse_intensity_csv(CSV, column="other").values[0] == 1


@pytest.mark.parametrize("text, needle", [
    ("", "empty file"),
    ("when,value\n2024-01-01,1\n", "no time column"),
    ("datetime,v\n2024-01-01T00:00,1\n2024-01-01T01:00,abc\n", "x.csv:3: column 'v': not a number"),
    ("datetime,v\n2024-01-01T00:00,abc\n", "no numeric column"),
    ("datetime,v\nnot-a-time,1\n", "x.csv:2: bad time"),
    ("datetime,v\n2024-01-01T00:00,1\n2024-01-01T00:00,2\n", "duplicate timestamp"),
    ("datetime,v\n2024-01-01T00:00,-5\n", "must be finite and >= 0"),
    ("datetime,v\n2024-01-01T00:00,1\n2024-01-01T00:10,1\n2024-01-01T05:00,1\n", "too sparse"),
])
def test_parse_csv_errors_name_file_and_field(text, needle):
    with pytest.raises(IntensityFileError) as exc:
        parse_intensity_csv(text, name="x.csv")
    assert needle in str(exc.value) and exc.value.reason == "Malformed"


def test_parse_csv_unknown_column():
    with pytest.raises(IntensityFileError, match="column 'nope' not in header"):
        parse_intensity_csv(CSV, column="nope", name="x.csv")


def test_file_source_perfect_forecast(tmp_path):
    p = tmp_path / "de.csv"
    p.write_text(CSV)
    src = FileSource({"DE": p})
    f = src.forecast("DE", datetime(2024, 1, 1, 1, 30, tzinfo=timezone.utc), timedelta(hours=2))
    assert f.meta["forecast"] == "perfect" and list(f.values) == [200, 300, 400]
    with pytest.raises(SignalError) as exc:
        src.current("GB", datetime(2024, 1, 1, 1, tzinfo=timezone.utc))
    assert exc.value.reason == "UnknownZone"
    with pytest.raises(IntensityFileError, match="cannot read"):
        FileSource(tmp_path / "missing.csv")


def mounted_configmap(root, data: dict[str, str]):
    """A directory laid out as the kubelet mounts a ConfigMap volume: the keys are links
    into ``..data``, itself a link to a timestamped folder holding the files."""
    stamp = root / "..2026_12_03_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for key in data:
        (root / key).symlink_to(f"..data/{key}")
    return root


def test_directory_serves_zone_files_and_default(tmp_path):
    """GREENML_INTENSITY_FILE naming a mounted ConfigMap: <zone>.csv per zone, default.csv for the rest."""
    d = mounted_configmap(tmp_path / "intensity", {"DE.csv": CSV, "FR.csv": CSV.replace("100", "10"),
                                                    "default.csv": CSV.replace("100", "55")})
    src = FileSource(d)
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert src.current("FR", t).values[0] == 10 and src.current("DE", t).values[0] == 100
    assert src.current("US-CAL-CISO", t).values[0] == 55
    assert FileSource(mounted_configmap(tmp_path / "one", {"DE.csv": CSV})).current("DE", t).values[0] == 100
    with pytest.raises(SignalError) as exc:
        FileSource(tmp_path / "one").current("GB", t)
    assert exc.value.reason == "UnknownZone"


@pytest.mark.parametrize("data, needle", [
    ({}, "no intensity files"),
    ({"DE.csv": CSV, "notes.txt": "x"}, "notes.txt: not an intensity file name"),
    ({"DE.csv": "datetime_utc,ci\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,abc\n"}, "intensity/DE.csv:3"),
])
def test_directory_errors_name_the_file(tmp_path, data, needle):
    d = mounted_configmap(tmp_path / "intensity", data)
    with pytest.raises(IntensityFileError, match=needle):
        FileSource(d)


def test_real_files_parse():
    s = load_intensity_csv(shared_data_file("carbon_intensity/lets_wait_awhile_GB_2020.csv"))
    assert s.step == timedelta(minutes=15) and s.meta["filled"] > 0  # 30 min until Nov 2020
    n = load_intensity_csv(shared_data_file("carbon_intensity/neso_gb_national_halfhourly_2023_forecast_actual.csv"),
                           column="actual_gco2_per_kwh")
    assert n.step == timedelta(minutes=30) and n.meta["filled"] >= 90  # the 46 h October gap
