"""greenml estimate: hand-checkable energy, grams, embodied carbon, best windows, budgets,
JSON shape and exit codes. Intensity comes from small synthetic CSVs written per test."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from greenml.cli import main
from greenml.estimate import EstimatePolicy, estimate_paths
from greenml.planning.accounting import SECONDS_PER_YEAR, AccountingPolicy
from greenml.signals import EmbeddedSource, FileSource

NOW = datetime(2030, 1, 7, tzinfo=timezone.utc)   # a Monday, 00:00 UTC
NOW_ARG = "2030-01-07T00:00:00Z"


def _csv(tmp_path: Path, values: list[float], name: str = "ci.csv") -> Path:
    """Hourly intensity from NOW, one value per hour."""
    rows = [f"{(NOW + timedelta(hours=h)).strftime('%Y-%m-%dT%H:%M:%SZ')},{v}" for h, v in enumerate(values)]
    p = tmp_path / name
    p.write_text("datetime_utc,intensity\n" + "\n".join(rows) + "\n")
    return p


def _job(name: str = "train", *, gpus: int = 4, power: dict | None = None, **schedule) -> dict:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "schedule": {"estimatedDuration": "2h", "maxDelay": "10h", **schedule},
            "carbon": {"zone": "DE"},
            "power": power if power is not None else {"wattsPerGpu": 250},
            "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}},
        },
    }


def _variant(name: str, quality: float, jpr: float, capacity: float) -> dict:
    return {"name": name, "quality": quality, "capacityRps": capacity,
            "power": {"joulesPerRequest": jpr}, "patch": {"spec": {"replicas": 1}}}


def _budget(grams: float, name: str = "chat") -> dict:
    """Best: 100 J/request at 1 req/s per replica; cheap: 50 J/request at 2 req/s; UTC days."""
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "InferenceBudget",
        "metadata": {"name": name, "namespace": "serve"},
        "spec": {"targetRef": {"name": "chat"}, "zone": "DE",
                 "budget": {"carbonGrams": grams, "period": "day", "timeZone": "UTC"},
                 "policy": {"qualityFloor": 0.5, "minReplicas": 1, "maxReplicas": 8},
                 "variants": [_variant("cheap", 0.6, 50.0, 2.0), _variant("best", 0.9, 100.0, 1.0),
                              _variant("tiny", 0.3, 10.0, 5.0)]},
    }


def _write(tmp_path: Path, *objs: dict, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump_all(list(objs), sort_keys=False))
    return p


def _estimate(tmp_path: Path, objs: list[dict], values: list[float], **policy):
    source = FileSource(_csv(tmp_path, values))
    return estimate_paths([_write(tmp_path, *objs)], source, EstimatePolicy(NOW, **policy))


# ------------------------------------------------------------------ TrainingJob


def test_energy_is_duration_times_watts_and_grams_are_kwh_times_intensity_times_pue(tmp_path):
    report = _estimate(tmp_path, [_job()], [200.0] * 48, accounting=AccountingPolicy(pue=1.5))
    assert report.ok, report.errors
    (e,) = report.estimates
    assert e.watts == 1000.0 and e.power_source == "spec"
    assert e.energy_kwh == pytest.approx(2.0)                          # 2 h × 4 × 250 W
    assert e.savings.counterfactual.operational_g == pytest.approx(2.0 * 200.0 * 1.5)
    assert e.savings.actual.operational_g == pytest.approx(600.0)      # flat: no window is better
    assert e.savings.actual.facility_kwh == pytest.approx(3.0)
    assert e.operational_savings_percent == pytest.approx(0.0)


def test_embodied_is_the_gpu_and_server_share_for_the_run_time(tmp_path):
    (e,) = _estimate(tmp_path, [_job()], [200.0] * 48).estimates
    # 4 GPUs × 150 kg over 4 years + 4/8 of a 2,500 kg server over 4 years, for 7,200 s
    hand = (4 * 150_000 + 0.5 * 2_500_000) * 7200 / (4 * SECONDS_PER_YEAR)
    assert e.savings.actual.embodied_g == pytest.approx(hand)
    assert e.savings.counterfactual.embodied_g == pytest.approx(hand)


def test_best_window_is_the_one_cheap_window_before_the_deadline(tmp_path):
    values = [300.0] * 48
    values[5:7] = [100.0, 100.0]                     # 05:00–07:00 UTC is the only cheap window
    report = _estimate(tmp_path, [_job()], values)
    (e,) = report.estimates
    assert e.windows == ((NOW + timedelta(hours=5), NOW + timedelta(hours=7)),)
    assert e.savings.actual.operational_g == pytest.approx(2.0 * 100.0)
    assert e.savings.counterfactual.operational_g == pytest.approx(2.0 * 300.0)
    assert e.operational_savings_percent == pytest.approx(100.0 * 400.0 / 600.0)
    assert e.reason == "Planned"


def test_cheap_window_after_the_deadline_is_not_used(tmp_path):
    values = [300.0] * 48
    values[20:22] = [100.0, 100.0]                   # after creation + maxDelay 10h + 2h
    (e,) = _estimate(tmp_path, [_job()], values).estimates
    assert e.windows[0][0] == NOW and e.savings.actual.operational_g == pytest.approx(600.0)


def test_interruptible_job_is_split_over_two_cheap_hours(tmp_path):
    values = [300.0] * 48
    values[2] = values[8] = 50.0
    job = _job(interruptible=True, minRunDuration="1h")
    (e,) = _estimate(tmp_path, [job], values).estimates
    assert e.windows == ((NOW + timedelta(hours=2), NOW + timedelta(hours=3)),
                         (NOW + timedelta(hours=8), NOW + timedelta(hours=9)))
    assert e.savings.actual.operational_g == pytest.approx(2.0 * 50.0)


def test_power_from_the_gpu_table(tmp_path):
    from greenml.signals.gpus import lookup

    (e,) = _estimate(tmp_path, [_job(power={"gpuModel": "A100"})], [200.0] * 48).estimates
    assert e.power_source == "gpu-table"
    assert e.energy_kwh == pytest.approx(4 * lookup("A100").typical_w * 2 / 1000)


def test_embedded_profile_is_the_default_and_labelled_an_estimate(tmp_path, capsys):
    path = _write(tmp_path, _job())
    assert main(["estimate", str(path), "--now", NOW_ARG]) == 0
    out = capsys.readouterr().out
    assert "intensity: embedded (average, estimate)" in out and "climatology" in out
    report = estimate_paths([path], EmbeddedSource(), EstimatePolicy(NOW))
    (e,) = report.estimates
    assert e.intensity.source == "embedded" and e.intensity.estimate
    assert e.savings.actual.operational_g <= e.savings.counterfactual.operational_g


# ------------------------------------------------------------------ InferenceBudget


@pytest.mark.parametrize("grams, best_fits, holds", [(500.0, True, True), (300.0, False, True),
                                                     (200.0, False, False)])
def test_budget_per_day_for_best_and_floor_variants(tmp_path, grams, best_fits, holds):
    report = _estimate(tmp_path, [_budget(grams)], [200.0] * 48)
    assert report.ok, report.errors
    (e,) = report.estimates
    assert e.end - e.start == timedelta(days=1)
    assert e.load_rps == pytest.approx(1.0)          # 1 minReplica × best's 1 req/s
    assert (e.best.name, e.best.replicas) == ("best", 1)
    assert e.best.kwh == pytest.approx(100.0 * 86400 / 3.6e6)          # 100 W for 24 h = 2.4 kWh
    assert e.best.grams == pytest.approx(2.4 * 200.0)
    assert (e.floor.name, e.floor.replicas) == ("cheap", 1)           # "tiny" is below the floor
    assert e.floor.grams == pytest.approx(1.2 * 200.0)
    assert (e.best_fits, e.holds_at_floor) == (best_fits, holds)


def test_load_override_sets_replicas(tmp_path):
    (e,) = _estimate(tmp_path, [_budget(500.0)], [200.0] * 48, load_rps=3.0).estimates
    assert e.best.replicas == 3 and e.floor.replicas == 2
    assert e.best.kwh == pytest.approx(300.0 * 24 / 1000)
    assert "--load" in e.load_assumption


def test_energy_budget_on_the_example_holds_for_the_best_variant():
    repo = Path(__file__).resolve().parents[2]
    report = estimate_paths([repo / "examples" / "inferencebudget-eco.yaml"], EmbeddedSource(), EstimatePolicy(NOW))
    (e,) = report.estimates
    # float32 at 6.2 req/s (its full capacity) draws 6 W: 6 W × 168 h (a UTC week from Monday 00:00)
    assert e.best.kwh == pytest.approx(6 * 168 / 1000)
    assert e.best_fits


# ------------------------------------------------------------------ files, JSON, exit codes


def test_json_shape_and_other_kinds_ignored(tmp_path, capsys):
    path = _write(tmp_path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                  _job(), _budget(300.0))
    csv = _csv(tmp_path, [200.0] * 48)
    rc = main(["estimate", str(path), "--now", NOW_ARG, "--intensity-file", str(csv), "--format", "json",
               "--pue", "1.2"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["errors"] == [] and doc["assumptions"]["pue"] == 1.2
    job, budget = doc["estimates"]
    assert job["kind"] == "TrainingJob" and job["object"] == "TrainingJob ml/train"
    assert job["energyKwh"] == 2.0 and job["runNow"]["operationalGrams"] == pytest.approx(480.0)
    assert job["intensity"]["source"] == "file" and job["intensity"]["link"] == "provider"
    assert set(job["savings"]) >= {"counterfactual", "savedGrams", "savedPercent"}
    assert job["bestWindows"][0][0] == NOW_ARG
    assert budget["kind"] == "InferenceBudget" and budget["holdsAtFloor"] and not budget["bestFits"]
    assert budget["floor"]["name"] == "cheap" and budget["budget"] == {"carbonGrams": 300.0, "energyKWh": None}


def test_invalid_manifest_names_file_object_field_and_exits_1(tmp_path, capsys):
    path = _write(tmp_path, _job("bad", power={"gpuModel": "NoSuchGPU"}), _job("good"))
    assert main(["estimate", str(path), "--now", NOW_ARG]) == 1
    out = capsys.readouterr().out
    assert f"{path}:" in out and "TrainingJob ml/bad: spec.power.gpuModel: unknown GPU model" in out
    assert "ml/good" in out and "1 estimate(s), 1 error(s)" in out


def test_unknown_zone_and_missed_deadline_are_errors(tmp_path):
    far = _job("zone")
    far["spec"]["carbon"]["zone"] = "XX-NOWHERE"
    late = _job("late", deadline="2030-01-07T01:00:00Z")
    del late["spec"]["schedule"]["maxDelay"]
    report = estimate_paths([_write(tmp_path, far, late)], EmbeddedSource(), EstimatePolicy(NOW))
    assert [(f.obj, f.field) for f in report.errors] == [("TrainingJob ml/zone", "spec.carbon.zone"),
                                                         ("TrainingJob ml/late", "spec.schedule.deadline")]


def test_budget_below_every_variant_is_an_error(tmp_path):
    bad = _budget(300.0)
    bad["spec"]["policy"]["qualityFloor"] = 0.95
    report = _estimate(tmp_path, [bad], [200.0] * 48)
    (f,) = report.errors
    assert f.obj == "InferenceBudget serve/chat" and "qualityFloor" in f.message


@pytest.mark.parametrize("args, text", [(["--now", "yesterday"], "--now"), (["--pue", "0.5"], "--pue"),
                                        (["--load", "-1"], "--load"),
                                        (["--provider", "electricitymaps"], "provider_token")])
def test_bad_arguments_exit_2(tmp_path, capsys, monkeypatch, args, text):
    monkeypatch.delenv("GREENML_PROVIDER_TOKEN", raising=False)
    assert main(["estimate", str(_write(tmp_path, _job())), *args]) == 2
    assert text in capsys.readouterr().err


def test_missing_path_exits_1(tmp_path, capsys):
    assert main(["estimate", str(tmp_path / "nope.yaml"), "--now", NOW_ARG]) == 1
    assert "no such file or directory" in capsys.readouterr().out


def test_a_series_shorter_than_the_horizon_is_said(tmp_path):
    (e,) = _estimate(tmp_path, [_job()], [200.0] * 4).estimates
    assert e.intensity.covered_until == NOW + timedelta(hours=4)
    assert any("last value is held" in n for n in e.intensity.notes())
    assert e.savings.actual.operational_g == pytest.approx(400.0)
