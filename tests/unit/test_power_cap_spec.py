"""spec.power.cap: the CRD schema, the model and the one validation path (resolve) that
lint, estimate and the operator's admission share."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from greenml.lint import load_schemas, semantic_errors
from greenml.services.trainingjob import Defaults, InvalidSpec, check_feasible, resolve

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def tj(cap=None, gpus=2, model="A40", **schedule) -> dict:
    power = {"gpus": gpus}
    if model:
        power["gpuModel"] = model
    if cap is not None:
        power["cap"] = cap
    return {"apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "t", "namespace": "n", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"schedule": {"estimatedDuration": "2h", **(schedule or {"maxDelay": "6h"})}, "power": power,
                     "template": {"spec": {"template": {"spec": {
                         "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}


@pytest.fixture(scope="module")
def schema():
    return load_schemas(REPO / "crds")["TrainingJob"]


@pytest.mark.parametrize("cap", [{}, {"watts": 200}, {"carbonAware": {"minWatts": 150, "maxWatts": 300}},
                                 {"carbonAware": {"minWatts": 150, "maxWatts": 300},
                                  "curve": [{"watts": 150, "timeFactor": 1.3, "powerFactor": 0.6},
                                            {"watts": 300, "timeFactor": 1, "powerFactor": 1}]}])
def test_valid_caps_pass_schema_and_resolve(schema, cap):
    jsonschema.validate(tj(cap), schema)
    resolve(tj(cap), Defaults())


@pytest.mark.parametrize("cap", [{"watts": 0}, {"watts": 6000}, {"carbonAware": {"minWatts": 150}},
                                 {"curve": [{"watts": 100, "timeFactor": 0.5, "powerFactor": 1}] * 2}])
def test_schema_rejects(schema, cap):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tj(cap), schema)


def test_crd_carries_the_cel_rules():
    text = (REPO / "crds" / "greenml.io_trainingjobs.yaml").read_text()
    assert "!(has(self.watts) && has(self.carbonAware))" in text
    assert "self.minWatts <= self.maxWatts" in text


@pytest.mark.parametrize("cap, model, gpus, field", [
    ({"other": 1}, "A40", 2, "spec.power.cap.other"),             # the API server prunes it; the model names it
    ({"watts": 200, "carbonAware": {"minWatts": 150, "maxWatts": 300}}, "A40", 2, "spec.power.cap"),
    ({"carbonAware": {"minWatts": 300, "maxWatts": 150}}, "A40", 2, "spec.power.cap.carbonAware"),
    ({"watts": 400}, "A40", 2, "spec.power.cap.watts"),            # above the A40's 300 W limit
    ({"watts": 50}, "A40", 2, "spec.power.cap.watts"),             # below what the curve knows
    ({"carbonAware": {"minWatts": 50, "maxWatts": 300}}, "A40", 2, "spec.power.cap.carbonAware"),
    ({"watts": 200}, None, 2, "spec.power.cap"),                   # no model, no curve: no limit known
    ({"watts": 200}, "A40", 0, "spec.power.cap"),                  # a CPU job has no GPU to cap
    ({"watts": 200, "curve": [{"watts": 150, "timeFactor": 1.0, "powerFactor": 0.6},
                              {"watts": 300, "timeFactor": 1.2, "powerFactor": 1}]}, None, 2, "spec.power.cap.curve"),
])
def test_resolve_rejects_with_the_field(cap, model, gpus, field):
    with pytest.raises(InvalidSpec) as e:
        resolve(tj(cap, gpus=gpus, model=model), Defaults())
    assert e.value.field == field


def test_lint_reports_cap_errors_through_resolve():
    assert [f for f, _ in semantic_errors(tj({"watts": 400}), NOW)] == ["spec.power.cap.watts"]
    assert semantic_errors(tj({"watts": 200}), NOW) == []


def test_static_cap_slows_the_job_and_lowers_its_draw():
    plain, capped = resolve(tj(), Defaults()), resolve(tj({"watts": 150}), Defaults())
    assert capped.cap.mode == "static" and capped.cap.max_watts == 150
    assert capped.duration == timedelta(hours=2 * 1.332)          # A40 at 50 % of its limit (Zeus median)
    assert capped.watts == pytest.approx(plain.watts * 0.674, abs=0.2)
    assert capped.deadline == plain.deadline                      # the slowdown counts against the deadline


def test_static_cap_slowdown_counts_at_admission():
    body = tj({"watts": 150}, deadline="2030-01-01T02:30:00Z")   # 2 h fits, 2 h 40 min does not
    check_feasible(resolve(tj(deadline="2030-01-01T02:30:00Z"), Defaults()), NOW, Defaults())
    with pytest.raises(InvalidSpec):
        check_feasible(resolve(body, Defaults()), NOW, Defaults())


def test_carbon_aware_keeps_the_estimate_at_max_watts():
    full = resolve(tj({"carbonAware": {"minWatts": 150, "maxWatts": 300}}), Defaults())
    assert full.duration == timedelta(hours=2) and full.cap.top_watts is None
    lower = resolve(tj({"carbonAware": {"minWatts": 150, "maxWatts": 250}}), Defaults())
    assert lower.duration > timedelta(hours=2) and lower.cap.top_watts == 250


def test_user_curve_is_normalised_to_its_highest_point():
    cap = {"carbonAware": {"minWatts": 100, "maxWatts": 200},
           "curve": [{"watts": 100, "timeFactor": 2.0, "powerFactor": 0.5}, {"watts": 200, "timeFactor": 1.0, "powerFactor": 1.0}]}
    req = resolve(tj(cap, model=None), Defaults())
    assert req.cap.reference_watts == 200
    assert req.cap.level(150.0).speed == pytest.approx(1 / 1.5)


def test_inference_variant_power_cap_watts(schema):
    schemas = load_schemas(REPO / "crds")
    from greenml.api.inferencebudget import Variant

    v = {"name": "capped", "quality": 0.9, "power": {"wattsPerReplica": 200}, "capacityRps": 1, "patch": {"a": 1},
         "powerCapWatts": 200}
    assert Variant.model_validate(v).power_cap_watts == 200
    props = schemas["InferenceBudget"]["properties"]["spec"]["properties"]["variants"]["items"]["properties"]
    assert "powerCapWatts" in props
    bad = copy.deepcopy(v) | {"powerCapWatts": 0}
    with pytest.raises(Exception):
        Variant.model_validate(bad)


def test_capped_variant_publishes_the_cap_on_its_pod_template():
    from greenml.api.inferencebudget import InferenceBudgetSpec
    from greenml.services.inferencebudget import POWER_CAP_ANNOTATION, deployment_apply_body

    patch = {"spec": {"template": {"metadata": {"annotations": {"a": "b"}},
                                   "spec": {"containers": [{"name": "server", "image": "img:13b"}]}}}}
    spec = InferenceBudgetSpec.model_validate({
        "targetRef": {"name": "chat"}, "budget": {"carbonGrams": 100, "period": "day"},
        "variants": [
            {"name": "full", "quality": 1.0, "capacityRps": 1, "power": {"wattsPerReplica": 300}, "patch": patch},
            {"name": "capped", "quality": 1.0, "capacityRps": 0.8, "power": {"wattsPerReplica": 200}, "patch": patch,
             "powerCapWatts": 200}]})
    capped = deployment_apply_body("ns", "chat", spec, "capped", None)
    ann = capped["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"a": "b", POWER_CAP_ANNOTATION: "200"}
    assert capped["spec"]["template"]["spec"]["containers"][0]["image"] == "img:13b"
    full = deployment_apply_body("ns", "chat", spec, "full", None)
    assert POWER_CAP_ANNOTATION not in full["spec"]["template"]["metadata"]["annotations"]   # SSA removes ours
    assert POWER_CAP_ANNOTATION not in patch["spec"]["template"]["metadata"]["annotations"]  # input untouched


def test_job_manifest_carries_the_cap_for_the_agent():
    from greenml.planning.power import CAP_ANNOTATION
    from greenml.services.trainingjob import job_manifest, power_cap_annotation

    body = tj({"watts": 200})
    req = resolve(body, Defaults())
    m = job_manifest(req, body["spec"]["template"], power_cap_watts=200.0)
    assert m["spec"]["template"]["metadata"]["annotations"] == {CAP_ANNOTATION: "200"}
    assert m["spec"]["template"]["spec"]["containers"][0]["image"] == "i"
    assert "metadata" not in body["spec"]["template"]["spec"]["template"]          # input untouched
    assert "metadata" not in job_manifest(req, body["spec"]["template"])["spec"]["template"]
    assert power_cap_annotation(None) == {CAP_ANNOTATION: None} and power_cap_annotation(187.5) == {CAP_ANNOTATION: "187.5"}


def test_progress_rebase_counts_capped_time_at_its_speed():
    from greenml.services.trainingjob import Progress

    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    p = Progress(run_seconds=600.0, running_since=t0, runs=1)
    q = p.rebase(t0 + timedelta(hours=1), 0.75)
    assert q.run_seconds == 600 + 2700 and q.running_since == t0 + timedelta(hours=1) and q.runs == 1
    assert q.total(t0 + timedelta(hours=2)) == 600 + 2700 + 3600          # the new segment at full speed until rebased
    assert Progress(run_seconds=5.0).rebase(t0, 0.5) == Progress(run_seconds=5.0)   # not running: unchanged
