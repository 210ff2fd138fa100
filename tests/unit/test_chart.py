"""The Helm chart, rendered and linted with the real helm v3.19.0 (tests/helmbin.py)."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greenml.settings import Settings
from tests.helmbin import helm, run_tool  # noqa: F401  (helm is a fixture)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "greenml-operator"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
SNAPSHOTS = REPO / "tests" / "snapshots"
NAMESPACE = "greenml-system"

# The operator's API use, exactly (apiGroup, resource) → verbs; see docs/install.md.
EXPECTED_RULES = {
    ("greenml.io", "trainingjobs"): {"get", "list", "watch", "patch", "update"},
    ("greenml.io", "inferencebudgets"): {"get", "list", "watch", "patch", "update"},
    # blockOwnerDeletion on the Job's ownerReference needs update on the owner's finalizers
    # where OwnerReferencesPermissionEnforcement is on (e.g. OpenShift)
    ("greenml.io", "trainingjobs/finalizers"): {"update"},
    ("greenml.io", "trainingjobs/status"): {"get", "patch", "update"},
    ("greenml.io", "inferencebudgets/status"): {"get", "patch", "update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "patch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("", "pods"): {"list", "patch"},    # the GPU power cap annotation on a TrainingJob's pods
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
KUEUE_RULES = {   # kueue.enabled: the carbon-window AdmissionCheck
    **{("kueue.x-k8s.io", r): {"get", "list", "watch"}
       for r in ("admissionchecks", "clusterqueues", "localqueues", "resourceflavors", "workloads")},
    ("kueue.x-k8s.io", "admissionchecks/status"): {"get", "patch"},
    ("kueue.x-k8s.io", "workloads/status"): {"get", "patch"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "patch"},   # patch: the check's record annotation
    # the Workloads' owners, for their greenml.io/* annotations (batch/v1 Jobs: EXPECTED_RULES)
    ("jobset.x-k8s.io", "jobsets"): {"get"},
    ("ray.io", "rayjobs"): {"get"},
    ("ray.io", "rayclusters"): {"get"},
    ("kubeflow.org", "pytorchjobs"): {"get"},
}
LEASE_RULES = [   # HA: the leader-election Lease, in the release namespace only
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["greenml"],
     "verbs": ["get", "patch", "update"]},
]


def template(helm_path: Path, *args: str, chart: Path = CHART) -> str:
    return run_tool(helm_path, "template", "greenml", str(chart), "--namespace", NAMESPACE, *args).stdout


@functools.cache
def _render_cached(helm_path: Path, args: tuple[str, ...]) -> tuple[str, list[dict]]:
    text = template(helm_path, *args)
    return text, [d for d in yaml.safe_load_all(text) if d]


def render(helm_path: Path, *args: str) -> list[dict]:
    return _render_cached(helm_path, args)[1]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def the(docs: list[dict], kind: str) -> dict:
    (obj,) = find(docs, kind)
    return obj


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


VARIANTS = {"defaults": (), "all-on": ("-f", str(ALL_ON))}


# ------------------------------------------------------------------ lint & snapshot

@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(helm, variant):
    out = run_tool(helm, "lint", "--strict", str(CHART), *VARIANTS[variant]).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_snapshot(helm, variant):
    text = _render_cached(helm, VARIANTS[variant])[0]
    snap = SNAPSHOTS / f"chart-{variant}.yaml"
    if os.environ.get("GREENML_UPDATE_SNAPSHOTS") == "1":
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_text(text)
    assert snap.is_file(), f"{snap} missing; run with GREENML_UPDATE_SNAPSHOTS=1"
    assert text == snap.read_text(), f"{snap.name} differs from helm template; review, then GREENML_UPDATE_SNAPSHOTS=1"


# ------------------------------------------------------------------ workload hardening

@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_is_hardened(helm, variant):
    dep = the(render(helm, *VARIANTS[variant]), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # writable scratch on a read-only root


def test_env_vars_are_operator_settings(helm):
    """Every GREENML_* variable the chart sets is a field of greenml.settings.Settings."""
    fields = set(Settings.model_fields)
    for variant in VARIANTS.values():
        env = the(render(helm, *variant), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        names = [e["name"] for e in env if e["name"].startswith("GREENML_")]
        assert len(names) == len(set(names)), "duplicate env var"
        unknown = {n for n in names if n.removeprefix("GREENML_").lower() not in fields}
        assert not unknown, f"chart sets env vars the operator does not read: {unknown}"


def test_provider_credentials_come_from_the_existing_secret(helm):
    env = the(render(helm, "-f", str(ALL_ON)), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "GREENML_PROVIDER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "greenml-provider", "key": "token", "optional": True}
    defaults = the(render(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("GREENML_PROVIDER_") for e in defaults)


# ------------------------------------------------------------------ RBAC

def _all_rules(docs: list[dict]) -> list[dict]:
    return [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards_and_no_cluster_wide_secrets(helm, variant):
    docs = render(helm, *VARIANTS[variant])
    for rule in _all_rules(docs):
        for key in ("apiGroups", "resources", "verbs"):
            assert not any("*" in v for v in rule[key]), rule
    cluster = rules_of(the(docs, "ClusterRole"))
    assert not any(res == "secrets" for _, res in cluster)


def test_cluster_role_is_exactly_what_the_operator_uses(helm):
    assert rules_of(the(render(helm), "ClusterRole")) == EXPECTED_RULES
    # the Lease and the Kueue defaults are in Roles (namespaced); Kueue's queues and Workloads here
    assert rules_of(the(render(helm, "-f", str(ALL_ON)), "ClusterRole")) == EXPECTED_RULES | KUEUE_RULES
    scoped = rules_of(the(render(helm, "--set", "operator.watchNamespace=ml"), "ClusterRole"))
    assert ("", "namespaces") not in scoped


def test_secret_access_is_one_named_secret_in_the_release_namespace(helm):
    docs = render(helm, "-f", str(ALL_ON))
    (role,) = [r for r in find(docs, "Role") if any("secrets" in rule["resources"] for rule in r["rules"])]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["greenml-provider"], "verbs": ["get"]}]
    (binding,) = find(docs, "RoleBinding", role["metadata"]["name"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == the(docs, "ServiceAccount")["metadata"]["name"]
    assert not find(render(helm), "Role")  # no Secret, no access


def test_signal_history_configmap_access_in_the_operators_namespace(helm):
    """An HTTP provider's history is recorded in one ConfigMap (greenml.signals.history):
    get/patch that name, create (not limitable by name), in the release namespace only."""
    docs = render(helm, "-f", str(ALL_ON))
    (role,) = [r for r in find(docs, "Role") if r["metadata"]["name"].endswith("-signal-history")]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [Settings().history_configmap],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    (binding,) = find(docs, "RoleBinding", role["metadata"]["name"])
    assert binding["subjects"][0]["name"] == the(docs, "ServiceAccount")["metadata"]["name"]
    assert not any("configmaps" in res for _, res in rules_of(the(docs, "ClusterRole")))
    renamed = render(helm, "-f", str(ALL_ON), "--set", "settings.history_configmap=ci-history")
    (role,) = [r for r in find(renamed, "Role") if r["metadata"]["name"].endswith("-signal-history")]
    assert role["rules"][0]["resourceNames"] == ["ci-history"]
    off = render(helm, "-f", str(ALL_ON), "--set", "settings.history_configmap=")
    assert not [r for r in find(off, "Role") if r["metadata"]["name"].endswith("-signal-history")]


# ------------------------------------------------------------------ CRDs

def _canonical_crds() -> dict[str, dict]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert docs, "no CRDs in crds/"
    return {d["metadata"]["name"]: d for d in docs}


def assert_crds_match_canonical(crds: list[dict]) -> None:
    """The CRDs equal crds/ except for added metadata labels/annotations."""
    canonical = _canonical_crds()
    got = {c["metadata"]["name"]: c for c in crds if c["spec"]["group"] == "greenml.io"}
    assert set(got) == set(canonical)
    for name, want in canonical.items():
        assert got[name]["spec"] == want["spec"], f"{name} drifted from crds/; run sync_crds.py"
        assert want["metadata"]["labels"].items() <= got[name]["metadata"]["labels"].items()
        assert {k: v for k, v in got[name].items() if k not in ("metadata", "spec")} == \
            {k: v for k, v in want.items() if k not in ("metadata", "spec")}


def test_chart_crds_equal_canonical_crds(helm):
    crds = find(render(helm), "CustomResourceDefinition")
    assert_crds_match_canonical(crds)
    assert all(c["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for c in crds)


def test_crds_can_be_left_out_or_deletable(helm):
    assert not find(render(helm, "--set", "crds.enabled=false", "--set", "ha.enabled=true"), "CustomResourceDefinition")
    crds = find(render(helm, "--set", "crds.keep=false"), "CustomResourceDefinition")
    assert crds and all("annotations" not in c["metadata"] for c in crds)


def test_copies_are_in_sync_per_the_sync_script():
    proc = subprocess.run([sys.executable, str(CHART / "sync_crds.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ HA and options

def test_standalone_by_default(helm):
    docs = render(helm)
    dep = the(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev") or
                d["metadata"]["name"].endswith("kopf.dev")]
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding", "Deployment", "Service"}


def test_ha_runs_replicas_that_elect_a_leader_on_a_lease(helm):
    docs = render(helm, "-f", str(ALL_ON))
    dep = the(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GREENML_PEERING"]["value"] == "greenml"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # no kopf peering any more: no CRDs, no peering object, no cluster-wide rule for it
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev") or d["metadata"]["name"].endswith("kopf.dev")]
    role = [r for r in find(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert len(role) == 1 and role[0]["metadata"]["namespace"] == NAMESPACE
    assert role[0]["rules"] == LEASE_RULES
    binding = [b for b in find(docs, "RoleBinding") if b["metadata"]["name"].endswith("-leader-election")]
    assert binding and binding[0]["roleRef"]["name"] == role[0]["metadata"]["name"]
    assert not any(r["metadata"]["name"].endswith("-leader-election") for r in find(render(helm), "Role"))


def test_all_on_renders_every_optional_object(helm):
    docs = render(helm, "-f", str(ALL_ON))
    sm = the(docs, "ServiceMonitor")
    svc = the(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert the(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    np = the(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= \
        the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_grafana_dashboards_from_chart_files(helm, tmp_path):
    chart = tmp_path / "greenml-operator"
    shutil.copytree(CHART, chart)
    (chart / "files" / "dashboards").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "dashboards" / "greenml.json").write_text('{"title": "greenml"}')
    docs = [d for d in yaml.safe_load_all(template(helm, "--set", "grafana.dashboards.enabled=true", chart=chart)) if d]
    cm = the(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"greenml.json": '{"title": "greenml"}'}


@pytest.mark.parametrize("setting, message", [
    ("ha.replicas=1", "/ha/replicas"),
    ("provider.name=nope", "/provider/name"),
    ("provider.url=ftp://x", "/provider/url"),
    ("bogus=1", "bogus"),
    ("settings.provider_token=leak", "settings.provider_token"),
])
def test_bad_values_are_rejected_with_the_field(helm, setting, message):
    with pytest.raises(AssertionError) as err:
        template(helm, "--set", setting)
    assert message in str(err.value)


def test_values_readme_is_up_to_date():
    proc = subprocess.run([sys.executable, str(CHART / "gen_readme.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kueue_turns_on_the_admission_check_controller_with_its_rbac(helm):
    off = render(helm)
    env_off = {e["name"] for e in the(off, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "GREENML_KUEUE_ENABLED" not in env_off
    assert not [r for r in the(off, "ClusterRole")["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]
    docs = render(helm, "--set", "kueue.enabled=true")
    env = {e["name"]: e.get("value") for e in the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GREENML_KUEUE_ENABLED"] == "true"
    rules = [r for r in the(docs, "ClusterRole")["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]
    assert {"get", "list", "watch"} == set(rules[0]["verbs"]) and "workloads" in rules[0]["resources"]
    assert set(rules[1]["resources"]) == {"admissionchecks/status", "workloads/status"} and "patch" in rules[1]["verbs"]
    role = [r for r in find(docs, "Role") if r["metadata"]["name"].endswith("-kueue-defaults")]
    assert role and role[0]["metadata"]["namespace"] == NAMESPACE and role[0]["rules"][0]["verbs"] == ["get"]


def test_kueue_owner_kinds_are_readable_and_configurable(helm):
    """The check reads the annotations of each Workload's owner: get on batch/v1 Jobs always,
    on the owner kinds of kueue.ownerResources (JobSet, RayJob, RayCluster, PyTorchJob by
    default; the operator fails a Workload open, with a Warning, when its owner is unreadable)."""
    rules = rules_of(the(render(helm, "--set", "kueue.enabled=true"), "ClusterRole"))
    assert rules[("batch", "jobs")] >= {"get"}
    for group, res in (("jobset.x-k8s.io", "jobsets"), ("ray.io", "rayjobs"), ("kubeflow.org", "pytorchjobs")):
        assert rules[(group, res)] == {"get"}
    custom = rules_of(the(render(helm, "--set", "kueue.enabled=true", "--set", "kueue.ownerResources[0].apiGroup=kubeflow.org",
                                 "--set", "kueue.ownerResources[0].resources={tfjobs,mpijobs}"), "ClusterRole"))
    assert custom[("kubeflow.org", "tfjobs")] == custom[("kubeflow.org", "mpijobs")] == {"get"}
    assert ("jobset.x-k8s.io", "jobsets") not in custom       # the list replaces the defaults
    off = rules_of(the(render(helm, "--set", "kueue.ownerResources[0].apiGroup=x.io",
                              "--set", "kueue.ownerResources[0].resources={xs}"), "ClusterRole"))
    assert ("x.io", "xs") not in off                            # only with kueue.enabled
    with pytest.raises(AssertionError, match="resources"):
        template(helm, "--set", "kueue.enabled=true", "--set", "kueue.ownerResources[0].apiGroup=x.io")
