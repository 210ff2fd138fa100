"""The pydantic models are the source of truth; crds/ must agree with them exactly."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import Field, create_model

from greenml.api import InferenceBudget, TrainingJob
from greenml.api.crdgen import all_crds, render, schema_for
from greenml.api.trainingjob import Carbon
from greenml.cli import main
from greenml.lint import load_schemas

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
MODELS = {"TrainingJob": TrainingJob, "InferenceBudget": InferenceBudget}


def test_committed_crds_equal_the_generated_ones():
    for name, obj in all_crds().items():
        assert (REPO / "crds" / name).read_text() == render(obj), f"crds/{name} is stale: run `greenml crds -o crds`"
    assert main(["crds", "--check", str(REPO / "crds")]) == 0


def test_a_field_added_to_the_model_changes_the_crd(tmp_path):
    # drift detection is real: a model with one more field renders a different schema
    extended = create_model("CarbonPlus", __base__=Carbon, region_hint=(str | None, Field(default=None)))
    assert "regionHint" in schema_for(extended)["properties"]
    assert "regionHint" not in schema_for(Carbon)["properties"]
    (tmp_path / "greenml.io_trainingjobs.yaml").write_text("stale")
    assert main(["crds", "--check", str(tmp_path)]) == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_against_crd_and_model(path):
    schemas = load_schemas(REPO / "crds")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        if doc.get("kind") not in MODELS:
            continue
        jsonschema.validate(doc, schemas[doc["kind"]])
        MODELS[doc["kind"]].model_validate(doc)


def test_crd_schemas_are_structural():
    """Rules a real API server enforces on CRD schemas (apiextensions structural schema)."""
    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "additionalProperties" not in node, path
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" in node, f"{path}: no type"
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        for k in node.get("x-kubernetes-list-map-keys") or []:
            assert k in node["items"].get("required", []), f"{path}: list-map key {k} must be required"
        if "default" in node:
            jsonschema.validate(node["default"], {k: v for k, v in node.items() if k not in ("default",)
                                                  and not k.startswith("x-kubernetes")
                                                  and k not in ("exclusiveMinimum", "exclusiveMaximum")})
    for name, crd in all_crds().items():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        walk(version["schema"]["openAPIV3Schema"], name)
