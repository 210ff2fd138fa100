"""E2E tests against the real cluster named by KUBECONFIG (kind, k3d, a bare control plane).

Opt-in: without KUBECONFIG every test here is skipped. Works with no kubelet and no
scheduler: pods stay Pending, so tests assert on API objects and drive Job status
themselves. The operator runs out of cluster (a subprocess of `greenml run`).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("KUBECONFIG"):
        skip = pytest.mark.skip(reason="e2e needs a cluster: set KUBECONFIG (see docs/e2e.md)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kube():
    from greenml.kube import Kube

    return Kube()


@pytest.fixture(scope="session")
def crds(kube):
    """Install (server-side apply) the CRDs from crds/ and wait until they are Established."""
    import time

    import yaml

    names = []
    for f in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        kube.apply("apiextensions.k8s.io/v1", "customresourcedefinitions", None, crd["metadata"]["name"], crd)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            obj = kube.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, name) or {}
            conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                break
            assert time.monotonic() < deadline, f"CRD {name} not established"
            time.sleep(0.5)
    return names


@pytest.fixture
def namespace(kube, crds):
    name = f"greenml-e2e-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", "create namespace", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{name}", "delete namespace")
    except Exception:
        pass
