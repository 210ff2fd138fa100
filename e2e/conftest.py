"""E2E tests against a real Kubernetes control plane.

By default the suite starts its own (``e2e/cluster``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok fake GPU nodes, built from pinned Go
modules into ~/.cache/greenml/e2e and started on 127.0.0.1). ``GREENML_E2E_KUBECONFIG=path``
points it at any other cluster instead (kind, k3d, a real one); the tests that need the
local plane's own parts (its CA and keys, kwok's fake nodes) then skip.

In CI (``CI=true``) a control plane that cannot be built or started fails the session;
elsewhere it skips the e2e tests with the reason (no Go, say). The operator runs out of
cluster (a subprocess of `greenml run`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e.kueue_fixture import kueue, kueue_namespace  # noqa: F401  (fixtures: Kueue, started only on request)

REPO = Path(__file__).resolve().parents[1]
E2E_DIR = Path(__file__).resolve().parent
_CONTROL_PLANE = None        # the local plane, when this session started one


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def control_plane(request):
    """The cluster the e2e tests use: KUBECONFIG is set to it for the whole session.
    Yields the local ControlPlane, or None for an external cluster."""
    global _CONTROL_PLANE
    external = os.environ.get("GREENML_E2E_KUBECONFIG")
    if external:
        os.environ["KUBECONFIG"] = external
        yield None
        return
    from e2e.cluster.controlplane import ControlPlaneError, start

    workdir = Path(tempfile.mkdtemp(prefix="greenml-e2e-cluster-"))
    try:
        t0 = time.monotonic()
        cp = start(workdir)
    except (ControlPlaneError, OSError) as exc:
        if _in_ci():
            pytest.fail(f"e2e control plane could not be built or started: {exc}", pytrace=False)
        pytest.skip(f"e2e control plane could not be built or started: {exc}")
    print(f"\ne2e control plane: built+started in {time.monotonic() - t0:.1f} s "
          f"(start {cp.started_s:.1f} s), KUBECONFIG={cp.kubeconfig}")
    _CONTROL_PLANE = cp
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cp.kubeconfig)
    try:
        yield cp
    finally:
        cp.stop()
        _CONTROL_PLANE = None
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def local_plane(control_plane):
    """For tests that need the local plane's own parts (its CA, static token, kwok nodes)."""
    if control_plane is None:
        pytest.skip("needs the suite's own control plane (GREENML_E2E_KUBECONFIG names another cluster)")
    return control_plane


@pytest.fixture(scope="session")
def kube(control_plane):
    from greenml.kube import Kube
    from greenml.kube.client import load_configuration

    return Kube(load_configuration(os.environ["KUBECONFIG"]))


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


@pytest.fixture
def namespace(kube, crds):
    name = f"greenml-e2e-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", "create namespace", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{name}", "delete namespace")
    except Exception:
        pass
