"""Kustomize base and example overlay, rendered with `kubectl kustomize` (kubectl v1.34.5
from tests/helmbin.py): hardened, least-privilege, CRDs equal to crds/, RBAC equal to the chart's."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from tests.helmbin import helm, kubectl, run_tool  # noqa: F401  (fixtures)
from tests.unit.test_chart import EXPECTED_RULES, assert_crds_match_canonical, render, rules_of, the

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
TREES = {"base": ("greenml-system", "ghcr.io/greenml/greenml-operator:0.1.0"),
         "overlays/example": ("ml-platform", "registry.example.com/platform/greenml-operator:0.1.0")}


@functools.cache
def _build(kubectl_path: Path, tree: str) -> tuple[dict, ...]:
    out = run_tool(kubectl_path, "kustomize", str(KUSTOMIZE / tree)).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@pytest.mark.parametrize("tree", TREES)
def test_renders_namespaced_objects_into_one_namespace(kubectl, tree):
    namespace, image = TREES[tree]
    docs = _build(kubectl, tree)
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"]["namespace"] == namespace, d["metadata"]
    assert the(list(docs), "Namespace")["metadata"]["name"] == namespace
    dep = the(list(docs), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == image
    for binding in (d for d in docs if d["kind"].endswith("RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "greenml-operator", "namespace": namespace}]


@pytest.mark.parametrize("tree", TREES)
def test_deployment_matches_the_charts_hardening(kubectl, helm, tree):
    """Pod spec security, probes and resources equal the chart's defaults."""
    mine = the(list(_build(kubectl, tree)), "Deployment")["spec"]["template"]["spec"]
    chart = the(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert mine["securityContext"] == chart["securityContext"]
    (c,), (cc,) = mine["containers"], chart["containers"]
    for key in ("securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
                "ports", "volumeMounts", "args"):
        assert c[key] == cc[key], key
    assert mine["volumes"] == chart["volumes"]


def test_base_rbac_equals_the_charts(kubectl):
    docs = list(_build(kubectl, "base"))
    assert rules_of(the(docs, "ClusterRole")) == EXPECTED_RULES
    assert not [d for d in docs if d["kind"] == "Role"]


def test_overlay_reads_exactly_one_secret(kubectl):
    docs = list(_build(kubectl, "overlays/example"))
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert roles["greenml-operator-provider-secret"]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["greenml-provider"], "verbs": ["get"]}]
    # the signal-history record: the same rules as the chart's
    assert roles["greenml-operator-signal-history"]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["greenml-signal-history"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    assert set(roles) == {"greenml-operator-provider-secret", "greenml-operator-signal-history"}
    env = {e["name"]: e for e in the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GREENML_PROVIDER"]["value"] == "electricitymaps"
    assert env["GREENML_PROVIDER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "greenml-provider"
    assert the(docs, "ClusterRoleBinding")["roleRef"]["name"] == the(docs, "ClusterRole")["metadata"]["name"]


@pytest.mark.parametrize("tree", TREES)
def test_crds_equal_canonical(kubectl, tree):
    assert_crds_match_canonical([d for d in _build(kubectl, tree) if d["kind"] == "CustomResourceDefinition"])
