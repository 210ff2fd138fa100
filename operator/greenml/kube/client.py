"""A thin wrapper of the official kubernetes client that speaks plain dicts.

Every ApiException becomes a domain error here, so callers never import the client:
``NotFound`` (404), ``Conflict`` (409), ``Transient`` (429, 5xx, connection errors:
retry later) and ``ApiError`` (anything else: a real problem, do not hot-loop).
Responses are read raw (``_preload_content=False``) and parsed as JSON: faster than
the generated models, and robust to servers that answer 200 where 201 is usual.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "greenml-operator"
GPU_RESOURCE = "nvidia.com/gpu"


class ApiError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Transient(ApiError):
    pass


def _translate(exc: Exception, what: str) -> ApiError:
    if isinstance(exc, ApiException):
        status = exc.status or 0
        reason = exc.reason or ""
        try:
            reason = json.loads(exc.body or "{}").get("message") or reason
        except (ValueError, AttributeError):
            pass
        msg = f"{what}: HTTP {status} {reason}".strip()
        if status == 404:
            return NotFound(msg, status)
        if status == 409:
            return Conflict(msg, status)
        if status == 429 or status >= 500:
            return Transient(msg, status)
        return ApiError(msg, status)
    return Transient(f"{what}: {type(exc).__name__}: {exc}")


def _json(resp: Any) -> dict[str, Any]:
    data = resp.data if hasattr(resp, "data") else resp
    if not data:
        return {}
    return json.loads(data)


def load_config() -> client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or load_config()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def _call(self, what: str, fn, *args, **kwargs) -> dict[str, Any]:
        try:
            return _json(fn(*args, _preload_content=False, **kwargs))
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, what) from None

    # ---------------------------------------------------------------- Jobs
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(f"get Job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace)
        except NotFound:
            return None

    def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._call(f"create Job {meta['namespace']}/{meta['name']}",
                          self.batch.create_namespaced_job, meta["namespace"], dict(manifest),
                          field_manager=FIELD_MANAGER)

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> dict[str, Any]:
        return self._call(f"patch Job {namespace}/{name}", self.batch.patch_namespaced_job, name, namespace,
                          {"spec": {"suspend": suspended}}, field_manager=FIELD_MANAGER)

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self._call(f"delete Job {namespace}/{name}", self.batch.delete_namespaced_job, name, namespace,
                       propagation_policy="Background")
        except NotFound:
            pass

    # ---------------------------------------------------------------- Nodes
    def gpu_allocatable(self) -> int:
        """Sum of the nodes' allocatable nvidia.com/gpu."""
        nodes = self._call("list Nodes", self.core.list_node).get("items") or []
        return sum(node_gpus(n) for n in nodes)

    # ---------------------------------------------------------------- custom objects
    def patch_status(self, group: str, version: str, plural: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(f"patch {plural} {namespace}/{name} status",
                          self.custom.patch_namespaced_custom_object_status, group, version, namespace,
                          plural, name, {"status": dict(status)})

    def list_objects(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            data = self._call(f"list {plural}", self.custom.list_namespaced_custom_object, group, version, namespace, plural)
        else:
            data = self._call(f"list {plural}", self.custom.list_cluster_custom_object, group, version, plural)
        return data.get("items") or []


def node_gpus(node: Mapping[str, Any]) -> int:
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0
