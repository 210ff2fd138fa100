"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the one source of truth; `crds/*.yaml` is this module's output
(`greenml crds --output crds/`), and a test fails when the committed files drift.

Pydantic's JSON Schema is turned into a *structural* OpenAPI v3 schema: `$ref`s are
inlined, `Optional[X]` (anyOf X|null) becomes X, titles are dropped, free-form
objects (`dict[str, Any]`) get `x-kubernetes-preserve-unknown-fields`, and CEL rules
declared on the models (`x-kubernetes-validations`) are kept.
"""
from __future__ import annotations

import copy
from typing import Any

from greenml import GROUP, VERSION
from greenml.api.inferencebudget import InferenceBudgetSpec, InferenceBudgetStatus
from greenml.api.trainingjob import TrainingJobSpec, TrainingJobStatus

_KEEP = {
    "type", "format", "description", "enum", "default", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "minProperties", "maxProperties", "items", "properties", "required",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        merged = {**_structural(options[0], defs), **rest}
        if merged.get("default", "missing") is None:
            merged.pop("default")
        return _structural(merged, defs)
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if out.get("type") == "object" and "properties" not in out:
        # dict[str, Any]: a free-form object (Job template, variant patch)
        out["x-kubernetes-preserve-unknown-fields"] = True
    # OpenAPI v3.0 (what Kubernetes speaks) has boolean exclusive bounds.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out[limit] = out.pop(bound)
            out[bound] = True
    if out.get("default") is None:
        out.pop("default", None)
    if out.get("type") == "string" and out.get("format") == "duration":
        out.pop("format")
    if "default" in out and isinstance(out["default"], list) and not out["default"]:
        out.pop("default")
    return out


def schema_for(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _conditions_list_map(status_schema: dict[str, Any]) -> dict[str, Any]:
    conds = status_schema.get("properties", {}).get("conditions")
    if conds:
        conds["x-kubernetes-list-type"] = "map"
        conds["x-kubernetes-list-map-keys"] = ["type"]
    return status_schema


def _crd(kind: str, plural: str, short: list[str], spec_model: type, status_model: type,
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    spec = schema_for(spec_model)
    status = _conditions_list_map(schema_for(status_model))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "greenml-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind, "listKind": f"{kind}List", "plural": plural,
                "singular": kind.lower(), "shortNames": short, "categories": ["greenml"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        # kopf keeps its own bookkeeping in annotations (see settings), so the
                        # status schema can be exact.
                        "status": status,
                    },
                }},
            }],
        },
    }


def training_job_crd() -> dict[str, Any]:
    return _crd(
        "TrainingJob", "trainingjobs", ["tj"], TrainingJobSpec, TrainingJobStatus,
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            # "date" columns print as an age ("<invalid>" for a future time): a plan's start and
            # a deadline are read as timestamps
            {"name": "Start", "type": "string", "jsonPath": ".status.plan.plannedStart"},
            {"name": "Deadline", "type": "string", "jsonPath": ".status.deadline"},
            {"name": "Savings%", "type": "number", "jsonPath": ".status.plan.savingsPercent"},
            {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
            {"name": "Zone", "type": "string", "jsonPath": ".status.zone", "priority": 1},
            {"name": "Reason", "type": "string", "jsonPath": ".status.lastDecision.reason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def inference_budget_crd() -> dict[str, Any]:
    return _crd(
        "InferenceBudget", "inferencebudgets", ["ib"], InferenceBudgetSpec, InferenceBudgetStatus,
        [
            {"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name"},
            {"name": "Variant", "type": "string", "jsonPath": ".status.activeVariant"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "Spent(g)", "type": "number", "jsonPath": ".status.spend.grams"},
            {"name": "Remaining(g)", "type": "number", "jsonPath": ".status.spend.remainingGrams"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object."""
    return {
        "greenml.io_trainingjobs.yaml": training_job_crd(),
        "greenml.io_inferencebudgets.yaml": inference_budget_crd(),
    }


def render(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, width=100)
