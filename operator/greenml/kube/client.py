"""A thin wrapper of the official kubernetes client that speaks plain dicts.

Every HTTP failure becomes a domain error here, so callers never see the transport:
``NotFound`` (404), ``Conflict`` (409), ``Transient`` (429, 5xx, connection errors:
retry later) and ``ApiError`` (anything else: a real problem, do not hot-loop).
Bodies are plain JSON both ways: faster than the generated models, and robust to
servers that answer 200 where 201 is usual.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlencode

import requests
import urllib3
from kubernetes import client, config

FIELD_MANAGER = "greenml-operator"
AGENT_FIELD_MANAGER = "greenml-agent"
GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_API = "kueue.x-k8s.io/v1beta2"
TIMEOUT = (5.0, 30.0)   # connect, read (seconds)


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


def _error(status: int, body: str, what: str) -> ApiError:
    try:
        reason = json.loads(body or "{}").get("message") or ""
    except ValueError:
        reason = (body or "")[:200]
    msg = f"{what}: HTTP {status} {reason}".strip()
    if status == 404:
        return NotFound(msg, status)
    if status == 409:
        return Conflict(msg, status)
    if status == 429 or status >= 500:
        return Transient(msg, status)
    return ApiError(msg, status)


def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.

    An explicit ``kubeconfig`` path skips the in-cluster attempt. Every kind of user entry
    the client library understands works: client certificate, ``token``, ``tokenFile``,
    ``exec`` plugins, basic auth (the client keeps bearer tokens under
    ``api_key["BearerToken"]``; see :meth:`Kube._headers`)."""
    cfg = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=cfg)
            return cfg
        except config.ConfigException:
            pass
    # read KUBECONFIG now: the client library captures it once, at import time
    config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    return cfg


def bearer_token(cfg: client.Configuration) -> str | None:
    """The Authorization value of a bearer-token configuration ("Bearer …"), or None.

    The client library stores bearer tokens (in-cluster, ``token``, ``tokenFile``, ``exec``)
    under "BearerToken"; older releases used "authorization". Reading it runs the refresh
    hook, so rotating ServiceAccount tokens and exec credentials stay current. Surrounding
    whitespace is dropped, as client-go does: a ``tokenFile`` written by
    ``kubectl create token SA > file`` ends in a newline, which the library would put into
    the header (requests and aiohttp refuse to send it)."""
    token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    return token.strip() if token and token.strip() else None


def connection_info(cfg: client.Configuration) -> dict[str, Any]:
    """The server and credentials of ``cfg`` as plain fields (the keywords of kopf's
    ``ConnectionInfo``), so kopf's watches authenticate exactly as :class:`Kube` does."""
    header = bearer_token(cfg)
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1].strip())
    return {"server": cfg.host, "ca_path": cfg.ssl_ca_cert or None, "insecure": not cfg.verify_ssl,
            "username": cfg.username or None, "password": cfg.password or None, "scheme": scheme, "token": token,
            "certificate_path": cfg.cert_file or None, "private_key_path": cfg.key_file or None}


def path_for(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    p = f"{base}/namespaces/{quote(namespace)}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        p += f"/{quote(name)}"
    if subresource:
        p += f"/{subresource}"
    return p


POOL_TIMEOUT = urllib3.Timeout(connect=TIMEOUT[0], read=TIMEOUT[1])


def _pool_for(host: str, verify: str | bool, cert: tuple[str, str] | None, proxy: str | None) -> urllib3.PoolManager:
    """Keep-alive connections to the API server (as many as the operator's worker threads),
    through the environment's proxy where one applies."""
    kw: dict[str, Any] = {"maxsize": 16, "block": False}
    if host.startswith("https"):
        kw["cert_reqs"] = "CERT_REQUIRED" if verify else "CERT_NONE"
        if isinstance(verify, str):
            kw["ca_certs"] = verify
        if cert:
            kw["cert_file"], kw["key_file"] = cert
    if proxy:
        parsed = urllib3.util.parse_url(proxy)
        headers = urllib3.make_headers(proxy_basic_auth=unquote(parsed.auth)) if parsed.auth else None
        return urllib3.ProxyManager(parsed._replace(auth=None).url, proxy_headers=headers, **kw)
    return urllib3.PoolManager(**kw)


class Kube:
    """Plain JSON over HTTP to the API server; the official client only loads config and auth.

    (The generated client validates bodies with its own models and rejects valid
    manifests such as integer resource quantities; raw JSON keeps us version-proof.)
    """

    def __init__(self, configuration: client.Configuration | None = None) -> None:
        self.cfg = configuration or load_configuration()
        self.host = self.cfg.host.rstrip("/")
        self.cert: tuple[str, str] | None = ((self.cfg.cert_file, self.cfg.key_file)
                                             if self.cfg.cert_file and self.cfg.key_file else None)
        # TLS verification follows the kubeconfig; it is never switched off silently here, and
        # no CA bundle from the environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) replaces the
        # cluster's own CA.
        self.verify: str | bool = (self.cfg.ssl_ca_cert if (self.cfg.verify_ssl and self.cfg.ssl_ca_cert)
                                   else bool(self.cfg.verify_ssl))
        # The proxy environment (HTTPS_PROXY / NO_PROXY) is read once, here, not per request.
        self.proxy: str | None = requests.utils.select_proxy(self.host, requests.utils.get_environ_proxies(self.host))
        self.pool = _pool_for(self.host, self.verify, self.cert, self.proxy)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = bearer_token(self.cfg)
        if token:
            headers["Authorization"] = token
        elif self.cfg.username:
            headers.update(self.cfg.get_basic_auth_token() and {"Authorization": self.cfg.get_basic_auth_token()} or {})
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(self, method: str, path: str, what: str, *, body: Any = None, params: Mapping[str, Any] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        """One call; plain urllib3 (requests' per-call preparation — cookies, hooks, settings
        merged from the environment — was a third of the operator's request cost)."""
        url = self.host + path + (f"?{urlencode(params)}" if params else "")
        try:
            resp = self.pool.request(method, url, headers=self._headers(content_type if body is not None else None),
                                     body=json.dumps(body).encode() if body is not None else None,
                                     timeout=POOL_TIMEOUT, retries=False, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{what}: {type(exc).__name__}") from None
        if resp.status >= 400:
            raise _error(resp.status, resp.data.decode("utf-8", "replace"), what)
        return json.loads(resp.data) if resp.data else {}

    # ---------------------------------------------------------------- Jobs
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path_for("batch/v1", "jobs", namespace, name), f"get Job {namespace}/{name}")
        except NotFound:
            return None

    def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request("POST", path_for("batch/v1", "jobs", meta["namespace"]),
                            f"create Job {meta['namespace']}/{meta['name']}", body=dict(manifest),
                            params={"fieldManager": FIELD_MANAGER})

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> dict[str, Any]:
        return self.request("PATCH", path_for("batch/v1", "jobs", namespace, name), f"patch Job {namespace}/{name}",
                            body={"spec": {"suspend": suspended}}, params={"fieldManager": FIELD_MANAGER},
                            content_type="application/merge-patch+json")

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", path_for("batch/v1", "jobs", namespace, name), f"delete Job {namespace}/{name}",
                         body={"propagationPolicy": "Background"})
        except NotFound:
            pass

    # ---------------------------------------------------------------- Nodes
    def gpu_allocatable(self) -> int:
        """Sum of the nodes' allocatable nvidia.com/gpu."""
        nodes = self.request("GET", path_for("v1", "nodes"), "list Nodes").get("items") or []
        return sum(node_gpus(n) for n in nodes)

    # ---------------------------------------------------------------- Pods (the node agent; the operator's caps)
    def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        """The pods scheduled on one node (field selector spec.nodeName)."""
        return self.request("GET", path_for("v1", "pods"), f"list Pods on node {node}",
                            params={"fieldSelector": f"spec.nodeName={node}"}).get("items") or []

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str | None], *,
                     field_manager: str = AGENT_FIELD_MANAGER) -> dict[str, Any]:
        """Set (or, with None, remove) annotations of one pod by merge patch; nothing else.
        (The agent writes its report; the operator, as ``FIELD_MANAGER``, the cap it publishes.)"""
        return self.request("PATCH", path_for("v1", "pods", namespace, name), f"annotate Pod {namespace}/{name}",
                            body={"metadata": {"annotations": dict(annotations)}},
                            params={"fieldManager": field_manager},
                            content_type="application/merge-patch+json")

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The pods of one namespace matching a label selector (callers filter again: the
        emulator ignores selectors)."""
        return self.request("GET", path_for("v1", "pods", namespace), f"list Pods in {namespace} ({label_selector})",
                            params={"labelSelector": label_selector}).get("items") or []

    # ---------------------------------------------------------------- any object
    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path_for(api_version, plural, namespace, name), f"get {plural} {namespace}/{name}")
        except NotFound:
            return None

    def apply(self, api_version: str, plural: str, namespace: str | None, name: str, body: Mapping[str, Any],
              *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under the operator's field manager: only the fields in ``body`` are ours."""
        return self.request("PATCH", path_for(api_version, plural, namespace, name), f"apply {plural} {namespace}/{name}",
                            body=dict(body), params={"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"},
                            content_type="application/apply-patch+yaml")

    def patch_status(self, api_version: str, plural: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path_for(api_version, plural, namespace, name, "status"),
                            f"patch {plural} {namespace}/{name} status", body={"status": dict(status)},
                            content_type="application/merge-patch+json")

    def list_objects(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in ``namespace``, or cluster-wide / in all namespaces)."""
        return self.request("GET", path_for(api_version, plural, namespace), f"list {plural}").get("items") or []

    def apply_status(self, body: Mapping[str, Any], plural: str) -> dict[str, Any]:
        """Server-side apply of ``body`` (apiVersion, kind, metadata.name/namespace, status) to the
        status subresource under the operator's field manager: only the status fields in ``body``
        become ours (entries of a list keyed by name stay the other managers')."""
        meta = body["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        return self.request("PATCH", path_for(body["apiVersion"], plural, ns, name, "status"),
                            f"apply {plural} {ns}/{name} status", body=dict(body),
                            params={"fieldManager": FIELD_MANAGER, "force": "true"},
                            content_type="application/apply-patch+yaml")

    # ---------------------------------------------------------------- Kueue (check greenml.io/carbon-window)
    def list_workloads(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Kueue Workloads (kueue.x-k8s.io/v1beta2)."""
        return self.list_objects(KUEUE_API, "workloads", namespace)

    def apply_workload_check(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Set one admission check's entry of a Workload's ``status.admissionChecks``
        (``body`` from ``greenml.services.kueue.check_patch``), as Kueue's own check
        controllers do: server-side apply with a field manager of its own, forced."""
        return self.apply_status(body, "workloads")

    def annotate_workload(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> dict[str, Any]:
        """Set (None: remove) annotations of one Workload by merge patch, nothing else (the
        check's record, ``greenml.services.kueue.ANN_RECORD``)."""
        return self.request("PATCH", path_for(KUEUE_API, "workloads", namespace, name),
                            f"annotate Workload {namespace}/{name}", body={"metadata": {"annotations": dict(annotations)}},
                            params={"fieldManager": FIELD_MANAGER}, content_type="application/merge-patch+json")

    def set_admission_check_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """An AdmissionCheck's status (``greenml.services.kueue.admission_check_status``)."""
        return self.apply_status({"apiVersion": KUEUE_API, "kind": "AdmissionCheck", "metadata": {"name": name},
                                  "status": dict(status)}, "admissionchecks")

    def remove_finalizer(self, api_version: str, plural: str, obj: Mapping[str, Any], finalizer: str) -> bool:
        """Drop one finalizer by JSON patch, guarded by a ``test`` of its position (a concurrent
        change answers 422/409 and nothing is lost). True when removed; False when it was not
        there or the object is gone."""
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if finalizer not in finalizers:
            return False
        i = finalizers.index(finalizer)
        ops = [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": finalizer},
               {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
        try:
            self.request("PATCH", path_for(api_version, plural, meta.get("namespace"), meta.get("name")),
                         f"remove finalizer of {plural} {meta.get('namespace')}/{meta.get('name')}", body=ops,
                         content_type="application/json-patch+json")
        except NotFound:
            return False
        return True

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   component: str = FIELD_MANAGER) -> None:
        """A core/v1 Event about ``obj`` (what ``kubectl describe`` shows)."""
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"apiVersion": "v1", "kind": "Event",
                # a name of our own (as kubectl's recorder does): generateName costs a retry on clash
                "metadata": {"name": f"{meta.get('name', 'object')}.{time.time_ns():x}", "namespace": ns},
                "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                                   "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                                   "resourceVersion": meta.get("resourceVersion")},
                "type": type_, "reason": reason, "message": message[:1024],
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                "source": {"component": component}, "reportingComponent": component}
        self.request("POST", path_for("v1", "events", ns), f"post Event {ns}/{meta.get('name')}", body=body)

    # ---------------------------------------------------------------- leases (leader election)
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("coordination.k8s.io/v1", "leases", namespace, name)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path_for("coordination.k8s.io/v1", "leases", namespace), f"create Lease {namespace}/{name}",
                            body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                  "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)})

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch of the spec carrying the resourceVersion read as a precondition: a
        concurrent writer makes it 409 (Conflict), as an update would."""
        meta = lease["metadata"]
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": dict(lease.get("spec") or {})}
        return self.request("PATCH", path_for("coordination.k8s.io/v1", "leases", meta["namespace"], meta["name"]),
                            f"update Lease {meta['namespace']}/{meta['name']}", body=body,
                            content_type="application/merge-patch+json")

    # ---------------------------------------------------------------- ConfigMaps
    def merge_configmap_data(self, namespace: str, name: str, data: Mapping[str, str | None], *,
                             labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Set the given keys of a ConfigMap's ``data`` (None: remove the key) with a JSON merge
        patch, leaving its other keys alone; create the ConfigMap when it does not exist.
        (Read it with ``get("v1", "configmaps", namespace, name)``.)"""
        path = path_for("v1", "configmaps", namespace, name)
        what = f"patch ConfigMap {namespace}/{name}"

        def patch() -> dict[str, Any]:
            return self.request("PATCH", path, what, body={"data": dict(data)}, params={"fieldManager": FIELD_MANAGER},
                                content_type="application/merge-patch+json")

        try:
            return patch()
        except NotFound:
            pass
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                "data": {k: v for k, v in data.items() if v is not None}}
        try:
            return self.request("POST", path_for("v1", "configmaps", namespace), f"create ConfigMap {namespace}/{name}",
                                body=body, params={"fieldManager": FIELD_MANAGER})
        except Conflict:   # created by someone else meanwhile
            return patch()


def node_gpus(node: Mapping[str, Any]) -> int:
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0
