"""Kueue on the suite's own control plane, for the tests that need it (``kueue`` fixture).

Started once per test module that asks for ``kueue`` (or ``kueue_namespace``), and stopped
after it, so the rest of the suite does not pay for it. Kueue runs out of
cluster (``ControlPlane.kueue``: its CRDs from the pinned module, its webhooks on 127.0.0.1
with a certificate from the plane's CA, integrations batch/job). Its Job webhooks see only
namespaces labelled ``e2e.greenml.io/kueue=true``: ``kueue_namespace`` is one.
"""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def kueue(control_plane):
    """The ControlPlane, with Kueue running against it (stopped, and its webhook
    configurations removed, after the module: clean up what holds Kueue's finalizers first)."""
    if control_plane is None:
        pytest.skip("Kueue runs against the suite's own control plane (GREENML_E2E_KUBECONFIG names another cluster)")
    from e2e.cluster.controlplane import ControlPlaneError

    try:
        control_plane.kueue()
    except (ControlPlaneError, OSError) as exc:
        control_plane.stop_kueue()
        msg = f"Kueue could not be started: {exc}\n{control_plane.log_tail('kueue')}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    print(f"\nKueue started in {control_plane.kueue_started_s:.1f} s, webhooks at {control_plane.kueue_url}")
    try:
        yield control_plane
    finally:
        control_plane.stop_kueue()


@pytest.fixture
def kueue_namespace(kube, namespace, kueue):
    """A test namespace whose batch/v1 Jobs Kueue manages."""
    from e2e.cluster.controlplane import KUEUE_MANAGED_LABEL

    kube.request("PATCH", f"/api/v1/namespaces/{namespace}", "label namespace",
                 body={"metadata": {"labels": {KUEUE_MANAGED_LABEL: "true"}}},
                 content_type="application/merge-patch+json")
    return namespace
