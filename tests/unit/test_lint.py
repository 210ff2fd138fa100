"""greenml lint: schema, model and semantic layers; file/object/field/line in messages; formats."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from greenml.cli import main
from greenml.lint import Finding, _openapi_to_jsonschema, lint_paths, load_schemas, semantic_errors

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lint"
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def schemas():
    return load_schemas(REPO / "crds")


def _training_job(**schedule) -> dict:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
        "spec": {
            "schedule": {"estimatedDuration": "2h", **schedule},
            "template": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}},
        },
    }


def _budget(floor: float, qualities: list[float], **budget) -> dict:
    return {
        "kind": "InferenceBudget",
        "spec": {
            "budget": budget or {"carbonGrams": 10},
            "policy": {"qualityFloor": floor},
            "variants": [{"name": f"v{i}", "quality": q, "patch": {}} for i, q in enumerate(qualities)],
        },
    }


def test_valid_fixtures_and_examples_pass(schemas):
    report = lint_paths([FIXTURES / "valid.yaml", REPO / "examples"], NOW, schemas)
    assert report.findings == ()
    assert report.objects >= 2 + 3  # the ConfigMap is not counted


def test_invalid_fixture_names_file_object_field_and_line(schemas):
    report = lint_paths([FIXTURES / "invalid.yaml"], NOW, schemas)
    got = {(f.obj, f.field, f.line) for f in report.findings}
    assert got == {
        ("TrainingJob ml/too-late", "spec.schedule.deadline", 9),
        ("TrainingJob ml/no-containers", "spec.template.spec.template.spec.containers", 34),
        ("TrainingJob ml/bad-duration", "spec.schedule.estimatedDuration", 44),
        ("InferenceBudget ml/unreachable-floor", "spec.policy.qualityFloor", 65),
        ("InferenceBudget ml/zero-budget", "spec.budget.energyKWh", 85),
    }
    assert all(f.file.endswith("invalid.yaml") for f in report.findings)


def test_one_message_per_field_even_when_layers_agree(schemas, tmp_path):
    # carbonGrams: 0 fails the schema, the model and the semantic rule: reported once
    doc = (FIXTURES / "invalid.yaml").read_text().split("---\n")[-1].replace("energyKWh: 0", "carbonGrams: 0")
    (tmp_path / "b.yaml").write_text(doc)
    fields = [f.field for f in lint_paths([tmp_path], NOW, schemas).findings]
    assert fields == ["spec.budget.carbonGrams"]


def test_unknown_fields_and_cross_field_rules_come_from_the_models(schemas, tmp_path):
    typo = _training_job(maxDelay="1h")
    typo["spec"]["schedule"]["typo"] = 1
    both = _training_job(maxDelay="1h", deadline="2030-02-01T00:00:00Z")
    (tmp_path / "t.yaml").write_text(json.dumps(typo) + "\n---\n" + json.dumps(both))
    msgs = {(f.field, f.message) for f in lint_paths([tmp_path], NOW, schemas).findings}
    assert msgs == {("spec.schedule.typo", "Extra inputs are not permitted"),
                    ("spec.schedule", "exactly one of schedule.deadline or schedule.maxDelay must be set")}


@pytest.mark.parametrize("schedule, field", [
    ({"deadline": "2029-12-31T00:00:00Z"}, "spec.schedule.deadline"),            # past
    ({"deadline": "2030-01-01T01:59:00Z"}, "spec.schedule.deadline"),            # 2h does not fit
    ({"maxDelay": "1h", "minRunDuration": "3h"}, "spec.schedule.minRunDuration"),
])
def test_training_job_semantic_rules(schedule, field):
    assert [f for f, _ in semantic_errors(_training_job(**schedule), NOW)] == [field]


def test_deadline_exactly_feasible_and_relative_deadlines_pass():
    assert semantic_errors(_training_job(deadline="2030-01-01T02:00:00Z"), NOW) == []
    assert semantic_errors(_training_job(maxDelay="0s"), NOW) == []


def test_restart_policy_always_is_rejected_for_jobs():
    tj = _training_job(maxDelay="1h")
    tj["spec"]["template"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert [f for f, _ in semantic_errors(tj, NOW)] == ["spec.template.spec.template.spec.restartPolicy"]


def test_inference_budget_semantic_rules():
    assert semantic_errors(_budget(0.8, [0.5, 0.8]), NOW) == []
    assert [f for f, _ in semantic_errors(_budget(0.9, [0.5, 0.8]), NOW)] == ["spec.policy.qualityFloor"]
    assert [f for f, _ in semantic_errors(_budget(0.0, [1.0], energyKWh=-1), NOW)] == ["spec.budget.energyKWh"]
    selector = _budget(0.0, [1.0])
    selector["spec"]["variants"][0]["patch"] = {"spec": {"selector": {"matchLabels": {"a": "b"}}}}
    assert [f for f, _ in semantic_errors(selector, NOW)] == ["spec.variants[0].patch.spec.selector"]


def test_semantic_rules_tolerate_malformed_input():
    # the schema layer reports these; the rules must not crash on them
    for spec in (None, {"schedule": "x"}, {"variants": "x"}, {"variants": [None, 3]}):
        for kind in ("TrainingJob", "InferenceBudget"):
            assert isinstance(semantic_errors({"kind": kind, "spec": spec}, NOW), list)


def test_openapi_boolean_exclusive_bounds_become_numeric():
    got = _openapi_to_jsonschema({"properties": {"x": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                                                 "y": {"maximum": 5, "exclusiveMaximum": False}}})
    assert got == {"properties": {"x": {"type": "number", "exclusiveMinimum": 0}, "y": {"maximum": 5}}}


def test_schemas_from_crds_dir_equal_the_generated_ones():
    assert load_schemas(REPO / "crds") == load_schemas()


def test_other_groups_and_wrong_versions(schemas, tmp_path):
    (tmp_path / "x.yaml").write_text(
        "apiVersion: other.io/v1\nkind: TrainingJob\nmetadata: {name: a}\nspec: {}\n---\n"
        "apiVersion: greenml.io/v1beta9\nkind: TrainingJob\nmetadata: {name: b}\nspec: {}\n")
    findings = lint_paths([tmp_path], NOW, schemas).findings
    assert [(f.obj, f.field, f.line) for f in findings] == [("TrainingJob b", "apiVersion", 6)]


def test_bad_yaml_and_missing_paths_are_errors(schemas, tmp_path):
    (tmp_path / "broken.yml").write_text("kind: TrainingJob\nspec: [unclosed\n")
    report = lint_paths([tmp_path, tmp_path / "nope.yaml"], NOW, schemas)
    msgs = sorted(f.message.split(":")[0] for f in report.findings)
    assert msgs == ["invalid YAML", "no such file or directory"]


def test_github_annotation_escapes_properties_and_newlines():
    f = Finding("a,b:c.yaml", 7, "TrainingJob ns/x", "spec.a", "50% bad\nline")
    assert f.github() == "::error file=a%2Cb%3Ac.yaml,line=7,title=greenml lint::TrainingJob ns/x: spec.a: 50%25 bad%0Aline"


def test_cli_exit_codes_and_formats(capsys):
    assert main(["lint", "--now", "2030-01-01T00:00:00Z", str(FIXTURES / "valid.yaml")]) == 0
    assert "0 error(s)" in capsys.readouterr().out

    assert main(["lint", "--now", "2030-01-01T00:00:00Z", "--format", "json", str(FIXTURES)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["errors"]) == 5
    assert {"file", "line", "obj", "field", "message"} <= set(out["errors"][0])

    assert main(["lint", "--now", "2030-01-01T00:00:00Z", "-f", "github", str(FIXTURES / "invalid.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("::error file=") for ln in lines) == 5


def test_cli_bad_arguments_exit_2(capsys, tmp_path):
    assert main(["lint", "--now", "yesterday", str(FIXTURES)]) == 2
    assert "--now" in capsys.readouterr().err
    assert main(["lint", "--crds", str(tmp_path), str(FIXTURES)]) == 2
    assert "no CRD YAML files" in capsys.readouterr().err
