"""`greenml simulate` as a platform engineer meets it: per-zone series in the default
scenario, the documented step default, and --jobs files that do not fit the scenario."""
from __future__ import annotations

from pathlib import Path

import pytest

from greenml.cli import build_parser, main
from greenml.sim import scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _job_dir(tmp_path: Path, zone: str) -> Path:
    d = tmp_path / f"jobs-{zone}"
    d.mkdir()
    text = (EXAMPLES / "trainingjob-basic.yaml").read_text().replace("zone: DE", f"zone: {zone}")
    assert f"zone: {zone}" in text
    (d / "job.yaml").write_text(text)
    return d


def test_each_job_runs_on_its_own_zone(tmp_path):
    """A GB job gives the same plan and grams whatever the default --zone is."""
    gb = _job_dir(tmp_path, "GB")
    on_de = scenario.run_default(scenario.ScenarioConfig(zone="DE", examples=gb, copies=1))
    on_gb = scenario.run_default(scenario.ScenarioConfig(zone="GB", examples=gb, copies=1))
    assert [j.zone for j in on_de.jobs] == ["GB"]
    assert on_de.result.jobs == on_gb.result.jobs
    de = scenario.run_default(scenario.ScenarioConfig(zone="DE", examples=_job_dir(tmp_path, "DE"), copies=1))
    assert de.result.jobs[0].grams != on_de.result.jobs[0].grams   # the zone matters


def test_mixed_zones_keep_job_order_and_notes(tmp_path):
    d = _job_dir(tmp_path, "GB")
    (d / "de.yaml").write_text((EXAMPLES / "trainingjob-threshold.yaml").read_text())
    run = scenario.run_default(scenario.ScenarioConfig(zone="DE", examples=d, copies=1))
    assert [r.name for r in run.result.jobs] == [j.name for j in run.jobs]
    assert {j.zone for j in run.jobs} == {"DE", "GB"}
    assert any("GB: 1 jobs" in n for n in run.notes)


def _help(argv: list[str]) -> str:
    parser = build_parser()
    for name in argv:   # walk down to the subcommand's parser
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return " ".join(parser.format_help().split())


def test_shifting_help_states_the_defaults():
    text = _help(["simulate", "shifting"])
    assert "default: 30m" in text                  # --step
    assert "(default: unlimited)" in text and "policy (default: greenml)" in text


def test_default_help_names_the_packaged_scenario_and_zone_meaning():
    text = _help(["simulate"])
    assert "shipped with greenml" in text and "default zone for jobs without spec.carbon.zone" in text


def test_docs_no_longer_say_inference_budgets_are_skipped():
    doc = (EXAMPLES.parent / "docs" / "simulator.md").read_text()
    assert "skipped" not in doc and "spec.carbon.zone" in doc
