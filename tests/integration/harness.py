"""Run the real operator (`python -m greenml run`, a subprocess) against the kmock emulator.

The emulator's gaps (STYLE.md) matter here: it sets no uid/creationTimestamp, ignores
label selectors, has no garbage collection and no status subresource. So the tests
create objects the way a real API server would return them (uid and creationTimestamp
set), the operator filters labels itself, and deletion of the owned Job is asserted
through the operator's own delete handler, not GC.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import kmock
import yaml

RESOURCES = {
    "greenml.io/v1alpha1/trainingjobs": ("TrainingJob", True, {"status"}),
    "greenml.io/v1alpha1/inferencebudgets": ("InferenceBudget", True, {"status"}),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "apps/v1/deployments": ("Deployment", True, {"status", "scale"}),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, {"status"}),
    "v1/nodes": ("Node", False, {"status"}),
    "v1/events": ("Event", True, set()),
    "v1/namespaces": ("Namespace", False, set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False, set()),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True, set()),
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


def _fast_membership() -> None:
    """Make kmock's "is this request seen by that reaction" check O(chain) instead of O(history).

    kmock decides which reaction serves a request by ``request in reaction._source``, and a
    view's ``__contains__`` iterates the *whole* recorded request history through the filter
    chain: every request costs O(requests so far), so thousands of objects swamp the
    emulator (measured: ~100 % of the emulator's CPU at 1,000 TrainingJobs). For the plain
    chains it builds (Root → Filter/Priority → ...) membership of the request being served is
    just "every filter's criteria accept it", which is what this checks; any other view
    (slices, groups, exclusions: e.g. ``k['post', '/jobs'][:1] << 500`` in the fault tests)
    keeps kmock's exact, history-walking check.
    """
    from kmock._internal import dsl, rendering

    original = dsl.View.__contains__
    if getattr(original, "_greenml_fast", False):
        return

    def contains(self: Any, item: Any) -> bool:
        if isinstance(item, rendering.Request):
            view = self
            while True:
                if isinstance(view, dsl.Root):
                    return any(r is item for r in reversed(view._requests))
                if type(view) is dsl.Filter:
                    if not view.criteria(item):
                        return False
                elif type(view) is not dsl.Priority:
                    break
                view = view._source
        return original(self, item)

    contains._greenml_fast = True  # type: ignore[attr-defined]
    dsl.View.__contains__ = contains  # type: ignore[method-assign]


def declare_resources(k: Any) -> None:
    _fast_membership()
    for key, (kind, namespaced, subs) in RESOURCES.items():
        k.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server.rstrip("/")}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
    }))
    return path


def write_intensity(path: Path, start: datetime, step: timedelta, values: list[float]) -> Path:
    lines = ["datetime_utc,gco2_per_kwh"]
    lines += [f"{(start + step * i).strftime('%Y-%m-%dT%H:%M:%SZ')},{v}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Api:
    """A tiny HTTP client to the emulator, used by tests (not by the operator)."""

    url: str
    k: Any

    def _path(self, resource: str, ns: str | None, name: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        p = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        return self.url.rstrip("/") + (f"{p}/{name}" if name else p)

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))          # a real API server sets these
        meta.setdefault("creationTimestamp", rfc3339(datetime.now(timezone.utc)))
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        async with aiohttp.ClientSession() as s:
            r = await s.post(self._path(resource, meta.get("namespace")), json=obj)
            assert r.status in (200, 201), await r.text()
            return await r.json()

    async def get(self, resource: str, ns: str | None, name: str) -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as s:
            r = await s.get(self._path(resource, ns, name))
            return None if r.status == 404 else await r.json()

    async def list(self, resource: str, ns: str | None = None) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            r = await s.get(self._path(resource, ns))
            return (await r.json()).get("items", [])

    async def patch(self, resource: str, ns: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            r = await s.patch(self._path(resource, ns, name), json=body,
                              headers={"Content-Type": "application/merge-patch+json"})
            assert r.status == 200, await r.text()
            return await r.json()

    async def delete(self, resource: str, ns: str | None, name: str) -> None:
        async with aiohttp.ClientSession() as s:
            r = await s.delete(self._path(resource, ns, name))
            assert r.status in (200, 202), await r.text()

    def posted_events(self, involved: str) -> list[dict[str, Any]]:
        """Events the operator POSTed about an object. (kmock ignores generateName, so all
        Events share one stored name and later ones get 409: assert on the requests.)"""
        out = []
        for r in self.requests_to("post", "/events"):
            data = r.data if isinstance(r.data, dict) else {}
            if (data.get("involvedObject") or {}).get("name") == involved:
                out.append(data)
        return out

    def requests_to(self, method: str, path_part: str) -> list[Any]:
        return [r for r in list(self.k) if str(r.method).lower().endswith(method) and path_part in str(r.url)]


@dataclass
class Operator:
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.proc, sig)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child process, wait for it, and SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def operator_env(tmp: Path, kubeconfig: Path, intensity: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    env.update({
        "KUBECONFIG": str(kubeconfig),
        "GREENML_PROVIDER": "file",
        "GREENML_INTENSITY_FILE": str(intensity),
        "GREENML_DEFAULT_ZONE": "DE",
        "GREENML_STEP": "2s",
        "GREENML_HORIZON": "10m",
        "GREENML_SAFETY_MARGIN": "0s",
        "GREENML_REPLAN_INTERVAL": "4s",
        "GREENML_TICK_INTERVAL": "0.5",
        "GREENML_DEFAULT_MIN_RUN": "2s",
        "GREENML_HEALTH_PORT": str(free_port()),
        "GREENML_METRICS_PORT": str(free_port()),
        "GREENML_LOG_FORMAT": "json",
        "GREENML_LOG_LEVEL": os.environ.get("GREENML_TEST_LOG_LEVEL", "INFO"),
        "GREENML_GPU_CAPACITY": "64",
    })
    env.update({f"GREENML_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def run_operator(tmp: Path, env: dict[str, str]) -> Iterator[Operator]:
    log_path = tmp / f"operator-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "greenml", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    op = Operator(proc, log_path, env)
    try:
        yield op
    finally:
        op.kill(signal.SIGTERM)


async def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, op: Operator | None = None,
                   interval: float = 0.2) -> Any:
    """Poll an async or sync check until it returns something truthy; fail with the operator's logs."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if op is not None and not op.alive():
            raise AssertionError(f"operator exited ({op.proc.returncode}) while waiting for {what}:\n{op.logs()[-4000:]}")
        await asyncio.sleep(interval)
    tail = op.logs()[-6000:] if op else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{tail}")
