"""Kustomize base and example overlay, rendered with `kubectl kustomize` (kubectl v1.34.5
from tests/helmbin.py): hardened, least-privilege, CRDs equal to crds/, RBAC equal to the chart's."""
from __future__ import annotations

import functools
import os
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


# ------------------------------------------------------------------ the Kueue component

def _with_kueue(tmp_path: Path, tree: str) -> Path:
    """An overlay with ``components: [components/kueue]``, as a user adds it: the base alone
    under it, or the example overlay with the component added (a copy in tmp_path, its
    relative paths rewritten to the repository's)."""
    src = KUSTOMIZE / tree
    out = tmp_path / tree.replace("/", "-")
    out.mkdir()
    if tree == "base":
        kz: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                    "resources": [os.path.relpath(src, out)]}
    else:
        kz = yaml.safe_load((src / "kustomization.yaml").read_text())
        for f in src.iterdir():
            if f.name != "kustomization.yaml" and f.is_file():
                (out / f.name).write_text(f.read_text())
        kz["resources"] = [os.path.relpath(src / r, out) if (src / r).is_dir() else r for r in kz["resources"]]
    kz["components"] = [os.path.relpath(KUSTOMIZE / "components" / "kueue", out)]
    (out / "kustomization.yaml").write_text(yaml.safe_dump(kz))
    return out


@pytest.mark.parametrize("tree", TREES)
def test_kueue_component_rbac_equals_the_charts(kubectl, helm, tmp_path, tree):
    """components/kueue gives a kustomize install what the chart's kueue.enabled=true does:
    the same ClusterRole rules, the defaults Role in the operator's namespace, the setting."""
    namespace, _ = TREES[tree]
    docs = [d for d in yaml.safe_load_all(run_tool(kubectl, "kustomize", str(_with_kueue(tmp_path, tree))).stdout) if d]
    chart = render(helm, "--set", "kueue.enabled=true")
    assert rules_of(the(docs, "ClusterRole")) == rules_of(the(chart, "ClusterRole"))
    mine = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-kueue-defaults")]
    theirs = [d for d in chart if d["kind"] == "Role" and d["metadata"]["name"].endswith("-kueue-defaults")]
    assert len(mine) == len(theirs) == 1 and mine[0]["rules"] == theirs[0]["rules"]
    assert mine[0]["metadata"]["namespace"] == namespace
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == mine[0]["metadata"]["name"])
    assert binding["metadata"]["namespace"] == namespace
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "greenml-operator", "namespace": namespace}]
    env = {e["name"]: e.get("value") for e in the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GREENML_KUEUE_ENABLED"] == "true"
    # and without the component, nothing of it (the chart's default too)
    plain = list(_build(kubectl, tree))
    assert not [r for r in the(plain, "ClusterRole")["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]
