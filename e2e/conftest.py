"""E2E tests against the real cluster named by KUBECONFIG (kind, k3d, a bare control plane).

Opt-in: without KUBECONFIG every test here is skipped. Works with no kubelet and no
scheduler: pods stay Pending, so tests assert on API objects and drive Job status
themselves. The operator runs out of cluster (a subprocess of `greenml run`).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PEERING_CRDS = REPO / "charts" / "greenml-operator" / "templates" / "crds" / "kopf-peering.yaml"


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("KUBECONFIG"):
        skip = pytest.mark.skip(reason="e2e needs a cluster: set KUBECONFIG (see docs/e2e.md)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kube():
    from greenml.kube import Kube

    return Kube()


def install_crds(kube, docs: list[dict], timeout: float = 60.0) -> list[str]:
    """Server-side apply CRD manifests and wait until each is Established; their names."""
    names = []
    for crd in docs:
        kube.apply("apiextensions.k8s.io/v1", "customresourcedefinitions", None, crd["metadata"]["name"], crd)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            obj = kube.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, name) or {}
            conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                break
            assert time.monotonic() < deadline, f"CRD {name} not established"
            time.sleep(0.5)
    return names


@pytest.fixture(scope="session")
def crds(kube):
    """Install (server-side apply) the CRDs from crds/ and wait until they are Established."""
    return install_crds(kube, [yaml.safe_load(f.read_text()) for f in sorted((REPO / "crds").glob("*.yaml"))])


@pytest.fixture(scope="session")
def peering_crds(kube):
    """kopf's peering CRDs (ClusterKopfPeering, KopfPeering) exactly as the chart ships them
    (its Helm template lines dropped), installed and Established."""
    plain = "\n".join(line for line in PEERING_CRDS.read_text().splitlines() if "{{" not in line)
    return install_crds(kube, [d for d in yaml.safe_load_all(plain) if d])


def release_finalizers(kube, namespace: str) -> None:
    """Drop the finalizers greenml objects still carry: the operator that would remove them
    has stopped with its test, and they would hold the namespace in Terminating forever."""
    from greenml.kube.client import path_for

    for plural in ("trainingjobs", "inferencebudgets"):
        try:
            items = kube.request("GET", path_for("greenml.io/v1alpha1", plural, namespace), f"list {plural}").get("items") or []
        except Exception:
            continue
        for obj in items:
            if not obj["metadata"].get("finalizers"):
                continue
            try:
                kube.request("PATCH", path_for("greenml.io/v1alpha1", plural, namespace, obj["metadata"]["name"]),
                             "drop finalizers", body={"metadata": {"finalizers": None}},
                             content_type="application/merge-patch+json")
            except Exception:
                pass


@pytest.fixture
def namespace(kube, crds):
    name = f"greenml-e2e-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", "create namespace", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    try:
        release_finalizers(kube, name)
        kube.request("DELETE", f"/api/v1/namespaces/{name}", "delete namespace")
    except Exception:
        pass
