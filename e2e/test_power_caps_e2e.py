"""GPU power caps on a real control plane: the operator → node agent hand-off (issue 17).

The operator (`greenml run`, out of cluster) plans two TrainingJobs with ``spec.power.cap``
— one static (200 W), one carbon-aware (150–250 W on an A40) — and publishes the cap of now
as ``greenml.io/power-cap-watts`` on the owned Job's pod template and, while the carbon-aware
job runs, on its pods. The real Job controller makes the pods, the real scheduler places
them on kwok's fake GPU node ``gpu-node-a`` (a nodeSelector in the template), kwok runs them
and ends them after ``RUN_FOR``.

The node agent is the real ``greenml agent`` process, out of cluster, pointed at that node:
- its NVML is the faithful fake (tests/unit/fake_nvml.py) with four A40-like GPUs (100–300 W,
  default 300 W), injected by this module's ``__main__`` (the agent's ``load_pynvml``
  replaced; every limit the fake holds is written to a JSON file after each set, for the
  test to read what the "device" has);
- its PodResources source is a fake kubelet: a gRPC server on a unix socket speaking
  ``v1.PodResourcesLister/List`` (the agent's own client and decoder), which hands each
  non-terminal pod of the node its ``nvidia.com/gpu`` count of the node's GPUs, as a device
  plugin would, and releases them when the pod ends;
- it authenticates as a ServiceAccount bound to the chart's own agent ClusterRole (rendered
  by the real helm; the admin kubeconfig when helm is unavailable), so a rule the chart
  lacks fails here with its 403.

Checked: each pod's GPU gets the cap its annotation asks (only that GPU), the report
annotation (Applied, watts, gpus) and the agent's metrics follow the carbon-aware cap as the
operator changes it, the carbon-aware job's usage energy counted at each cap's draw (and its
wall time longer than its work), the
operator's annotation is never written by the agent (field
managers), and when the pods end the GPUs return to their default limit and the reports say
Restored; the TrainingJobs succeed.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.test_trainingjob_e2e import (JOBS, STEP, grid_start, in_phase, job_complete, operator_on, pods_of, status,
                                      tj, create)
from greenml.planning.power import APPLIED_ANNOTATION, CAP_ANNOTATION
from greenml.services.trainingjob import Defaults, resolve
from tests.integration.harness import free_port, run_operator, wait_for

NODE = "gpu-node-a"
GPUS = [f"GPU-e2e-a{i}" for i in range(4)]               # the fake NVML's devices on NODE
DEFAULT_MW, MIN_MW, MAX_MW = 300_000, 100_000, 300_000   # an A40's limits
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the agent process (fake NVML)
def _agent_main(argv: list[str]) -> int:
    """``python -m e2e.test_power_caps_e2e STATE_FILE agent …``: `greenml agent` with the fake
    NVML; the fake's limits (mW per UUID) are written to STATE_FILE after every change."""
    import greenml.agent.nvml as nvml_mod
    from greenml.cli import main
    from tests.unit.fake_nvml import FakeGpu, FakeNvml

    state, rest = Path(argv[0]), argv[1:]
    gpus = [FakeGpu(u, name="NVIDIA A40", min_mw=MIN_MW, max_mw=MAX_MW, default_mw=DEFAULT_MW) for u in GPUS]

    def dump() -> None:
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({g.uuid: {"limit_mw": g.limit_mw, "sets": g.sets} for g in gpus}))
        tmp.replace(state)

    class RecordingNvml(FakeNvml):
        def nvmlDeviceSetPowerManagementLimit(self, h, limit_mw: int) -> None:
            try:
                super().nvmlDeviceSetPowerManagementLimit(h, limit_mw)
            finally:
                dump()

    dump()
    nvml_mod.load_pynvml = lambda: RecordingNvml(gpus)
    return main(rest)


# ------------------------------------------------------------------ a fake kubelet's PodResources API
def _field(num: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def _gpu_count(pod: dict[str, Any]) -> int:
    return sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
               for c in (pod.get("spec") or {}).get("containers") or [])


class FakeKubelet:
    """``v1.PodResourcesLister/List`` on a unix socket for one node: each live pod of the node
    holds ``nvidia.com/gpu`` of its GPUs (allocated on first sight, first free first; released
    when the pod ends or goes), answered as api/pod-resources v1 protobuf."""

    def __init__(self, kube, node: str, gpus: list[str], socket: Path) -> None:
        import grpc

        self.kube, self.node, self.gpus = kube, node, gpus
        self.held: dict[str, tuple[tuple[str, str], list[str]]] = {}     # pod uid → (ns, name), GPUs
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        method = grpc.unary_unary_rpc_method_handler(self._list, request_deserializer=lambda b: b,
                                                     response_serializer=lambda b: b)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": method}),))
        self.server.add_insecure_port(f"unix://{socket}")

    def assignments(self) -> dict[tuple[str, str], list[str]]:
        with self.lock:
            return {key: list(ids) for key, ids in self.held.values()}

    def _list(self, _request, _context) -> bytes:
        pods = self.kube.list_node_pods(self.node)
        with self.lock:
            live = {p["metadata"]["uid"]: p for p in pods
                    if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    and not p["metadata"].get("deletionTimestamp")}
            for uid in list(self.held):
                if uid not in live:
                    del self.held[uid]
            for uid, p in live.items():
                if uid in self.held or not _gpu_count(p):
                    continue
                busy = {g for _, ids in self.held.values() for g in ids}
                free = [g for g in self.gpus if g not in busy]
                self.held[uid] = ((p["metadata"]["namespace"], p["metadata"]["name"]), free[:_gpu_count(p)])
            out = b""
            for (ns, name), ids in self.held.values():
                dev = _field(1, b"nvidia.com/gpu") + b"".join(_field(2, i.encode()) for i in ids)
                out += _field(1, _field(1, name.encode()) + _field(2, ns.encode())
                              + _field(3, _field(1, b"train") + _field(2, dev)))
            return out

    def __enter__(self) -> "FakeKubelet":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


# ------------------------------------------------------------------ the agent's identity
def agent_kubeconfig(kube, namespace: str, tmp: Path) -> tuple[Path, str]:
    """A kubeconfig for the agent: a ServiceAccount bound to the chart's agent ClusterRole
    (helm template, agent.enabled=true); the admin's when helm is unavailable."""
    from tests.helmbin import ToolUnavailable, run_tool, tool

    admin = Path(os.environ["KUBECONFIG"])
    try:
        helm = tool("helm")
    except ToolUnavailable as exc:
        return admin, f"admin (helm unavailable: {exc})"
    text = run_tool(helm, "template", "greenml", str(REPO / "charts" / "greenml-operator"), "--namespace", namespace,
                    "--set", "agent.enabled=true").stdout
    role = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "ClusterRole"
                and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "agent")
    name = f"greenml-e2e-agent-{namespace}"
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", "create SA",
                 body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent"}})
    kube.request("POST", f"{rbac}/clusterroles", "create ClusterRole",
                 body={"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                       "metadata": {"name": name}, "rules": role["rules"]})
    kube.request("POST", f"{rbac}/clusterrolebindings", "create ClusterRoleBinding",
                 body={"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                       "metadata": {"name": name},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                       "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}]})
    token = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/agent/token", "TokenRequest",
                         body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"expirationSeconds": 3600}})["status"]["token"]
    cfg = yaml.safe_load(admin.read_text())
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg.get("current-context"))
    cluster = next(c for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    path = tmp / "agent.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "agent",
        "clusters": [{"name": "e2e", "cluster": cluster["cluster"]}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "e2e", "user": "agent"}}]}))
    path.chmod(0o600)
    return path, f"ServiceAccount with the chart's agent ClusterRole ({role['rules']})"


def _drop_rbac(kube, namespace: str) -> None:
    name = f"greenml-e2e-agent-{namespace}"
    for plural in ("clusterrolebindings", "clusterroles"):
        try:
            kube.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{plural}/{name}", f"delete {plural}")
        except Exception:
            pass


# ------------------------------------------------------------------ the test
def capped_tj(name: str, ns: str, cap: dict[str, Any], **schedule) -> dict[str, Any]:
    body = tj(name, ns, run_for="16s", **schedule)
    body["spec"]["power"] = {"gpuModel": "A40", "cap": cap}
    body["spec"]["template"]["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    return body


def annotations(pod: dict[str, Any]) -> dict[str, str]:
    return pod["metadata"].get("annotations") or {}


def report(pod: dict[str, Any]) -> dict[str, Any]:
    raw = annotations(pod).get(APPLIED_ANNOTATION)
    return json.loads(raw) if raw else {}


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(port: int, name: str) -> float:
    for line in metrics_text(port).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_operator_to_agent_hand_off_on_kwok_gpu_nodes(kube, namespace, tmp_path, local_plane):
    pytest.importorskip("grpc")
    pytest.importorskip("pynvml")
    t0 = grid_start()
    # dirty for 30 s, clean for 32 s, then very dirty: both jobs wait for the clean stretch;
    # the carbon-aware one runs in it under a cap below maxWatts (slowed, it still emits less).
    # (30 s, not 10: on a loaded 2-core machine the operator's start and the Jobs' creation
    # took longer than 10 s once, and the window had opened before the Jobs were read.)
    env = operator_on(tmp_path, namespace, t0, [400.0] * 15 + [100.0] * 16 + [900.0] * 200)
    state_file = tmp_path / "nvml-state.json"
    socket = tmp_path / "kubelet.sock"
    agent_cfg, identity = agent_kubeconfig(kube, namespace, tmp_path)
    print(f"agent identity: {identity}")
    port = free_port()
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    agent_env["KUBECONFIG"] = str(agent_cfg)
    agent_env["PYTHONPATH"] = os.pathsep.join([str(REPO), agent_env.get("PYTHONPATH", "")])
    agent_log = tmp_path / "agent.log"

    def device_limits() -> dict[str, int]:
        try:
            return {u: g["limit_mw"] for u, g in json.loads(state_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    async def scenario(kubelet: FakeKubelet, agent: subprocess.Popen) -> None:
        def agent_logs() -> str:
            return agent_log.read_text()[-4000:]

        async def until(what: str, check, op, timeout: float = 60):
            try:
                return await wait_for(what, check, op=op, timeout=timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- agent log ---\n{agent_logs()}") from None

        with run_operator(tmp_path, env) as op:
            create(kube, capped_tj("static", namespace, {"watts": 200}, estimatedDuration="4s", maxDelay="60s"))
            create(kube, capped_tj("aware", namespace, {"carbonAware": {"minWatts": 150, "maxWatts": 250}},
                                   estimatedDuration="16s", interruptible=True, minRunDuration="2s", maxDelay="60s"))
            for name, cap in (("static", "200"), ("aware", "250")):
                job = await until(f"the Job of {name}", lambda n=name: kube.get(*JOBS, namespace, f"{n}-run"), op)
                assert job["spec"]["suspend"] is True
                assert job["spec"]["template"]["metadata"]["annotations"][CAP_ANNOTATION] == cap, job["spec"]["template"]
            await until("the agent's first pass", lambda: metric(port, "greenml_agent_passes_total") >= 1, op)
            assert set(device_limits().values()) == {DEFAULT_MW}, "no cap while nothing runs"

            def applied(job: str, below: float | None = None):
                """The Job's pod Running on NODE with the agent's Applied report for the cap it carries
                (below ``below`` W when given), and its GPU at that limit: (pod, report)."""
                def check():
                    for p in pods_of(kube, namespace, job):
                        if (p.get("status") or {}).get("phase") != "Running" or p["spec"].get("nodeName") != NODE:
                            continue
                        asked = annotations(p).get(CAP_ANNOTATION)
                        r = report(p)
                        if asked is None or r.get("state") != "Applied" or r.get("askedWatts") != float(asked):
                            continue
                        if below is not None and float(asked) >= below:
                            continue
                        limits = device_limits()
                        if r.get("gpus") and all(limits.get(g) == int(float(asked) * 1000) for g in r["gpus"]):
                            return p, r
                    return None
                return check

            static_pod, static_report = await until("the static cap applied on the static job's GPU",
                                                    applied("static-run"), op, timeout=90)
            assert static_report["watts"] == 200 and len(static_report["gpus"]) == 1
            aware_pod, aware_report = await until("a carbon-aware cap below maxWatts applied on the aware job's GPU",
                                                  applied("aware-run", below=250), op, timeout=60)
            assert 150 <= aware_report["watts"] < 250, aware_report
            assert static_report["gpus"] != aware_report["gpus"]
            # the GPUs' limits: each pod's GPU at its cap (the aware one may have moved on since), the rest untouched
            limits = device_limits()
            held = {g for g in static_report["gpus"] + aware_report["gpus"]}
            assert all(limits[g] == DEFAULT_MW for g in GPUS if g not in held), limits
            text = metrics_text(port)
            assert (f'greenml_agent_pod_power_cap_watts{{gpu="{static_report["gpus"][0]}",namespace="{namespace}",'
                    f'pod="{static_pod["metadata"]["name"]}"}} 200.0') in text, text
            # who wrote what: the cap is the operator's (template, or its pod patch), the report the agent's
            for p in (static_pod, aware_pod):
                fields = {m["manager"]: json.dumps(m.get("fieldsV1")) for m in p["metadata"].get("managedFields") or []}
                assert APPLIED_ANNOTATION in fields.get("greenml-agent", ""), fields
                assert CAP_ANNOTATION not in fields.get("greenml-agent", ""), fields
            static_st = status(kube, namespace, "static")
            assert all(w.get("capWatts") == 200 for w in static_st["plan"]["windows"]), static_st["plan"]

            # the pods end (kwok, RUN_FOR): the Jobs complete, the GPUs go back to the default, reports say Restored
            for name in ("static", "aware"):
                await until(f"the Job of {name} Complete", job_complete(kube, namespace, f"{name}-run"), op, timeout=90)
                await until(f"{name} Succeeded", in_phase(kube, namespace, name, "Succeeded"), op, timeout=30)

            def restored():
                pods = pods_of(kube, namespace, "static-run") + pods_of(kube, namespace, "aware-run")
                done = all(report(p).get("state") == "Restored" for p in pods)
                return pods if done and set(device_limits().values()) == {DEFAULT_MW} else None

            # usage: the carbon-aware run counted at the draw of each cap it ran under, below its
            # run time at the draw of maxWatts (some of it ran at a lower cap)
            aware = status(kube, namespace, "aware")
            req = resolve(kube.get("greenml.io/v1alpha1", "trainingjobs", namespace, "aware"), Defaults(zone="DE"))
            counted = aware["usage"]["countedRunSeconds"]
            assert counted == pytest.approx(aware["progress"]["runSeconds"], abs=0.01), aware
            assert 0 < aware["usage"]["energyKwh"] < counted * req.watts / 3.6e6 - 1e-6, (aware["usage"], req.watts)
            # and its wall time (embodied carbon) is longer than its work: a capped stretch is slower
            assert aware["usage"]["wallSeconds"] > counted + 0.1, aware["usage"]
            pods = await until("every GPU back at its default limit, and Restored reports", restored, op, timeout=30)
            assert all(p["status"]["phase"] == "Succeeded" for p in pods)
            assert "greenml_agent_pod_power_cap_watts{" not in metrics_text(port)
            failures = [ln for ln in metrics_text(port).splitlines()
                        if ln.startswith("greenml_agent_cap_failures_total{")]
            assert all(ln.endswith(" 0.0") for ln in failures), failures
        # every limit the agent set on the fake device was a cap some pod asked for, or the default
        sets = {u: g["sets"] for u, g in json.loads(state_file.read_text()).items()}
        print(f"limits set per GPU (mW): {sets}")
        assert all(150_000 <= mw <= DEFAULT_MW for s in sets.values() for mw in s), sets
        assert sum(len(s) for s in sets.values()) >= 4          # two caps and two restores at least

    with FakeKubelet(kube, NODE, GPUS, socket) as kubelet:
        with open(agent_log, "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "e2e.test_power_caps_e2e", str(state_file), "agent", "--node", NODE,
                 "--interval", "500ms", "--metrics-port", str(port), "--pod-resources-socket", str(socket)],
                env=agent_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            asyncio.run(scenario(kubelet, agent))
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=20) == 0, agent_log.read_text()[-4000:]
            text = agent_log.read_text()
            assert "403" not in text and "forbidden" not in text.lower(), text[-4000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
            _drop_rbac(kube, namespace)


if __name__ == "__main__":
    sys.exit(_agent_main(sys.argv[1:]))
