"""The agent's loop: list this node's pods, learn their GPUs, reconcile, report, expose metrics.

``Runner.step(now)`` is one pass; the Kubernetes side is anything with ``list_node_pods``
and ``annotate_pod`` (greenml.kube.client.Kube in clusters, a fake in tests). No call
here raises out of a pass: API and device failures are logged, counted and retried on the
next pass, and the pods are never touched beyond their ``greenml.io/power-cap-applied``
annotation.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, Protocol, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from greenml.agent import podresources
from greenml.agent.core import APPLIED_ANNOTATION, Agent, PodView, changed_reports, pod_view


class PodApi(Protocol):
    def list_node_pods(self, node: str) -> list[dict[str, Any]]: ...

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> Any: ...


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.limit = Gauge("greenml_agent_gpu_power_limit_watts", "Power limit in force per GPU (W)", ["gpu"], registry=r)
        self.cap = Gauge("greenml_agent_pod_power_cap_watts", "Power cap applied for a pod per GPU (W)",
                         ["namespace", "pod", "gpu"], registry=r)
        self.failures = Counter("greenml_agent_cap_failures_total", "Failed power-limit calls and reports, by reason",
                                ["reason"], registry=r)
        self.passes = Counter("greenml_agent_passes_total", "Reconcile passes", registry=r)
        self.last = Gauge("greenml_agent_last_pass_timestamp_seconds", "When the last pass ended (Unix time)", registry=r)


@dataclass
class DeviceSource:
    """Where GPU assignments come from: the PodResources socket, else the pod spec's env."""

    socket: str = podresources.SOCKET
    lister: Callable[[str], Mapping[tuple[str, str], Sequence[str]]] = podresources.list_devices
    last_error: str | None = None

    def assignments(self) -> Mapping[tuple[str, str], Sequence[str]] | None:
        try:
            got = self.lister(self.socket)
            self.last_error = None
            return got
        except (OSError, RuntimeError, ValueError) as exc:
            self.last_error = str(exc)
            return None


class Runner:
    def __init__(self, agent: Agent, api: PodApi, node: str, devices: DeviceSource | None = None,
                 metrics: AgentMetrics | None = None, log: Callable[[str], None] = lambda _m: None) -> None:
        self.agent, self.api, self.node = agent, api, node
        self.devices = devices or DeviceSource()
        self.metrics = metrics or AgentMetrics()
        self.log = log
        self._shown: set[tuple[str, str, str]] = set()

    def views(self, pods: Sequence[Mapping[str, Any]]) -> list[PodView]:
        assigned = self.devices.assignments()
        out = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            key = (meta.get("namespace") or "default", meta.get("name") or "")
            ids = assigned.get(key, ()) if assigned is not None else podresources.env_devices(pod)
            out.append(pod_view(pod, ids))
        return out

    def step(self, now: datetime) -> None:
        try:
            pods = self.api.list_node_pods(self.node)
        except Exception as exc:  # noqa: BLE001 - the API being away is not the agent's end
            self.log(f"list pods on {self.node}: {exc}")
            self.metrics.failures.labels("ApiError").inc()
            return
        # the field selector asks for this node's pods; a server that ignores it (or a pod
        # rescheduled meanwhile) must not get another node's GPUs capped
        pods = [p for p in pods if ((p.get("spec") or {}).get("nodeName")) == self.node]
        views = self.views(pods)
        res = self.agent.reconcile(views, now)
        for reason in res.failures:
            self.metrics.failures.labels(reason).inc()
        for (ns, name), value in changed_reports(views, res.reports).items():
            try:
                self.api.annotate_pod(ns, name, {APPLIED_ANNOTATION: value})
            except Exception as exc:  # noqa: BLE001
                self.log(f"report on {ns}/{name}: {exc}")
                self.metrics.failures.labels("ReportFailed").inc()
        for uuid, w in res.limits.items():
            if w is not None:
                self.metrics.limit.labels(uuid).set(w)
        shown = set(res.caps)
        for key in self._shown - shown:
            self.metrics.cap.remove(*key)
        for key, w in res.caps.items():
            self.metrics.cap.labels(*key).set(w)
        self._shown = shown
        self.metrics.passes.inc()
        self.metrics.last.set(now.timestamp())
