"""The node agent's DaemonSet in the chart, rendered with the real helm (tests/helmbin.py)."""
from __future__ import annotations

import pytest
import yaml

from tests.helmbin import helm, run_tool  # noqa: F401  (helm is a fixture)
from tests.unit.test_chart import CHART, NAMESPACE, find, rules_of, the


def render(helm_path, *args):
    text = run_tool(helm_path, "template", "greenml", str(CHART), "--namespace", NAMESPACE, *args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def agent_docs(docs):
    return [d for d in docs if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "agent"]


def test_off_by_default(helm):
    docs = render(helm)
    assert not find(docs, "DaemonSet") and not agent_docs(docs)


def test_daemonset_on_gpu_nodes_with_its_own_least_privilege_account(helm):
    docs = render(helm, "--set", "agent.enabled=true")
    ds = the(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (c,) = pod["containers"]
    assert c["args"][:1] == ["agent"] and "--pod-resources-socket" in c["args"]
    assert c["image"].endswith("-agent")
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert c["volumeMounts"][0]["readOnly"] is True
    assert pod["volumes"][0]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    # its own ServiceAccount and ClusterRole: pods only, patch for its report annotation
    sa = pod["serviceAccountName"]
    assert sa.endswith("-agent") and find(docs, "ServiceAccount", sa)
    roles = [d for d in find(docs, "ClusterRole") if d["metadata"]["name"].endswith("-agent")]
    assert len(roles) == 1 and rules_of(roles[0]) == {("", "pods"): {"get", "list", "watch", "patch"}}
    binding = [d for d in find(docs, "ClusterRoleBinding") if d["metadata"]["name"].endswith("-agent")][0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # the operator's Service / Deployment selectors never pick the agent's pods
    svc_sel = the(docs, "Service")["spec"]["selector"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert not svc_sel.items() <= labels.items()
    assert not the(docs, "Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_values_are_validated(helm):
    with pytest.raises(AssertionError, match="interval"):
        run_tool(helm, "template", "greenml", str(CHART), "--set", "agent.enabled=true", "--set", "agent.interval=soon")


def test_privileged_and_digest(helm):
    docs = render(helm, "--set", "agent.enabled=true", "--set", "agent.privileged=true", "--set",
                  "agent.image.digest=sha256:" + "a" * 64, "--set", "agent.serviceAccount.create=false",
                  "--set", "agent.serviceAccount.name=gpu-agent")
    c = the(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["privileged"] is True and "capabilities" not in c["securityContext"]
    assert c["image"].endswith("@sha256:" + "a" * 64)
    assert not find(docs, "ServiceAccount", "gpu-agent")
