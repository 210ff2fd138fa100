"""The node agent (greenml agent) against a faithful fake of pynvml: caps applied within the
device's constraints, defaults restored, failures reported and never raised, reports and
metrics; the kubelet PodResources API over a real gRPC unix socket."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pynvml
import pytest

from greenml.agent import podresources
from greenml.agent.core import APPLIED_ANNOTATION, CAP_ANNOTATION, Agent, parse_cap, plan_limits, pod_view
from greenml.agent.nvml import Nvml
from greenml.agent.runner import AgentMetrics, DeviceSource, Runner
from greenml.cli import main
from tests.unit.fake_nvml import FakeGpu, FakeNvml

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
NODE = "gpu-node-1"


def pod(name, cap=None, phase="Running", ns="ml", env_devices=None, deleting=False, applied=None):
    ann = {}
    if cap is not None:
        ann[CAP_ANNOTATION] = str(cap)
    if applied is not None:
        ann[APPLIED_ANNOTATION] = applied
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}", "annotations": ann}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": env_devices}] if env_devices else []
    return {"metadata": meta, "spec": {"nodeName": NODE, "containers": [{"name": "c", "env": env}]},
            "status": {"phase": phase}}


class FakeApi:
    def __init__(self, pods):
        self.pods = pods
        self.patches = []
        self.fail_list = False

    def list_node_pods(self, node):
        assert node == NODE
        if self.fail_list:
            raise ConnectionError("API server away")
        return self.pods

    def annotate_pod(self, ns, name, annotations):
        self.patches.append((ns, name, dict(annotations)))
        for p in self.pods:
            if (p["metadata"]["namespace"], p["metadata"]["name"]) == (ns, name):
                p["metadata"]["annotations"].update(annotations)


def setup(gpus, pods, assigned):
    fake = FakeNvml(gpus)
    agent = Agent(Nvml(fake))
    agent.start()
    api = FakeApi(pods)
    runner = Runner(agent, api, NODE, DeviceSource("unused", lambda _s: assigned), AgentMetrics())
    return fake, agent, api, runner


def report(api, name):
    return json.loads([p for p in api.pods if p["metadata"]["name"] == name][0]["metadata"]["annotations"][APPLIED_ANNOTATION])


def test_fake_is_the_pynvml_surface():
    # every function the fake offers exists in the real bindings with the same name
    names = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    assert names and all(hasattr(pynvml, n) for n in names)
    fake = FakeNvml([FakeGpu("GPU-a")])
    with pytest.raises(pynvml.NVMLError) as e:
        fake.nvmlDeviceGetCount()
    assert e.value.value == pynvml.NVML_ERROR_UNINITIALIZED


def test_start_restores_defaults_and_cap_is_applied_and_restored():
    gpus = [FakeGpu("GPU-a", limit_mw=250_000), FakeGpu("GPU-b")]
    pods = [pod("train-0", cap=200)]
    fake, agent, api, runner = setup(gpus, pods, {("ml", "train-0"): ("GPU-a", "GPU-b")})
    assert gpus[0].limit_mw == 400_000                      # a leftover cap is gone at start
    runner.step(NOW)
    assert [g.limit_mw for g in gpus] == [200_000, 200_000]
    r = report(api, "train-0")
    assert r["state"] == "Applied" and r["watts"] == 200 and r["gpus"] == ["GPU-a", "GPU-b"]
    runner.step(NOW)
    assert len(api.patches) == 1                             # unchanged: not rewritten
    assert gpus[0].sets == [400_000, 200_000]                # no redundant NVML calls
    pods[0]["status"]["phase"] = "Succeeded"
    runner.step(NOW)
    assert [g.limit_mw for g in gpus] == [400_000, 400_000]  # the pod ended: default back
    assert report(api, "train-0")["state"] == "Restored"
    runner.step(NOW)
    assert len(api.patches) == 2                             # reported once


def test_cap_is_clamped_to_the_device_constraints():
    gpus = [FakeGpu("GPU-a", min_mw=150_000)]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=90)], {("ml", "p"): ("GPU-a",)})
    runner.step(NOW)
    assert gpus[0].limit_mw == 150_000
    r = report(api, "p")
    assert r["state"] == "Clamped" and r["askedWatts"] == 90 and r["watts"] == 150 and "minimum" in r["message"]
    api.pods[0]["metadata"]["annotations"][CAP_ANNOTATION] = "900"
    runner.step(NOW)
    assert gpus[0].limit_mw == 400_000 and report(api, "p")["watts"] == 400


@pytest.mark.parametrize("code, reason", [(pynvml.NVML_ERROR_NO_PERMISSION, "NoPermission"),
                                          (pynvml.NVML_ERROR_NOT_SUPPORTED, "NotSupported"),
                                          (pynvml.NVML_ERROR_GPU_IS_LOST, "GpuLost")])
def test_failed_cap_is_reported_and_never_raised(code, reason):
    gpus = [FakeGpu("GPU-a", set_error=code)]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200)], {("ml", "p"): ("GPU-a",)})
    runner.step(NOW)                                         # no exception
    r = report(api, "p")
    assert r["state"] == "Failed" and r["reason"] == reason
    assert gpus[0].limit_mw == 400_000
    assert runner.metrics.registry.get_sample_value("greenml_agent_cap_failures_total", {"reason": reason}) == 1


def test_unreadable_power_management_is_a_failed_report():
    gpus = [FakeGpu("GPU-a", read_error=pynvml.NVML_ERROR_NOT_SUPPORTED, set_error=pynvml.NVML_ERROR_NOT_SUPPORTED)]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200)], {("ml", "p"): ("GPU-a",)})
    assert agent.devices[0].min_w is None and agent.devices[0].default_w is None
    runner.step(NOW)
    assert report(api, "p")["reason"] == "NotSupported"


def test_mig_is_never_capped():
    gpus = [FakeGpu("GPU-a", mig=True)]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200), pod("q", cap=200)],
                                     {("ml", "p"): ("GPU-a",), ("ml", "q"): ("MIG-1234",)})
    runner.step(NOW)
    assert gpus[0].sets == []
    assert report(api, "p")["reason"] == "MIG" and report(api, "q")["reason"] == "MIG"


def test_shared_gpu_is_capped_only_when_every_pod_asks():
    gpus = [FakeGpu("GPU-a")]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200), pod("q")], {("ml", "p"): ("GPU-a",), ("ml", "q"): ("GPU-a",)})
    runner.step(NOW)
    assert gpus[0].sets == [] and report(api, "p")["state"] == "Shared"
    api.pods[1]["metadata"]["annotations"][CAP_ANNOTATION] = "250"
    runner.step(NOW)
    assert gpus[0].limit_mw == 250_000                      # the highest ask: nobody below their cap


def test_bad_annotation_and_terminating_pods():
    assert parse_cap("200W") == (200.0, None)
    assert parse_cap("x")[0] is None and parse_cap("-5")[1]
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    fake, agent, api, runner = setup(gpus, [pod("p", cap="lots"), pod("q", cap=200, deleting=True)],
                                     {("ml", "p"): ("GPU-a",), ("ml", "q"): ("GPU-b",)})
    runner.step(NOW)
    assert report(api, "p")["reason"] == "InvalidAnnotation"
    assert gpus[1].sets == [] and [x for x in api.patches if x[1] == "q"] == []


def test_env_fallback_when_the_socket_is_absent():
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    fake = FakeNvml(gpus)
    agent = Agent(Nvml(fake))
    agent.start()
    api = FakeApi([pod("p", cap=200, env_devices="1")])
    runner = Runner(agent, api, NODE, DeviceSource("/nonexistent/kubelet.sock"))
    runner.step(NOW)
    assert runner.devices.last_error and [g.limit_mw for g in gpus] == [400_000, 200_000]


def test_api_failures_do_not_stop_the_agent():
    gpus = [FakeGpu("GPU-a")]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200)], {("ml", "p"): ("GPU-a",)})
    api.fail_list = True
    runner.step(NOW)
    assert runner.metrics.registry.get_sample_value("greenml_agent_cap_failures_total", {"reason": "ApiError"}) == 1
    api.fail_list = False
    runner.step(NOW)
    assert gpus[0].limit_mw == 200_000


def test_metrics_and_stop_restores_defaults():
    gpus = [FakeGpu("GPU-a")]
    fake, agent, api, runner = setup(gpus, [pod("p", cap=200)], {("ml", "p"): ("GPU-a",)})
    runner.step(NOW)
    reg = runner.metrics.registry
    assert reg.get_sample_value("greenml_agent_gpu_power_limit_watts", {"gpu": "GPU-a"}) == 200
    assert reg.get_sample_value("greenml_agent_pod_power_cap_watts", {"namespace": "ml", "pod": "p", "gpu": "GPU-a"}) == 200
    api.pods.clear()
    runner.step(NOW)
    assert reg.get_sample_value("greenml_agent_pod_power_cap_watts", {"namespace": "ml", "pod": "p", "gpu": "GPU-a"}) is None
    api.pods.append(pod("p2", cap=300))
    runner.devices = DeviceSource("unused", lambda _s: {("ml", "p2"): ("GPU-a",)})
    runner.step(NOW)
    assert gpus[0].limit_mw == 300_000
    agent.stop()
    assert gpus[0].limit_mw == 400_000 and fake.initialised == 0


def test_plan_limits_is_pure_and_ignores_unknown_devices():
    from greenml.agent.nvml import Device

    devs = [Device(0, "GPU-a", "A100", 100, 400, 400, 400)]
    views = [pod_view(pod("p", cap=200), ("GPU-zzz",))]
    targets, problems = plan_limits(views, devs)
    assert targets["GPU-a"].watts is None and "not found" in problems[("ml", "p")][0]


# ------------------------------------------------------------------ PodResources

def _field(num, payload: bytes) -> bytes:
    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def list_response(pods) -> bytes:
    out = b""
    for ns, name, containers in pods:
        body = _field(1, name.encode()) + _field(2, ns.encode())
        for cname, resource, ids in containers:
            dev = _field(1, resource.encode()) + b"".join(_field(2, i.encode()) for i in ids)
            body += _field(3, _field(1, cname.encode()) + _field(2, dev))
        out += _field(1, body)
    return out


def test_decode_list_response():
    raw = list_response([("ml", "p", [("c", "nvidia.com/gpu", ["GPU-a", "GPU-b"]), ("d", "example.com/nic", ["n0"])]),
                         ("ml", "cpu-only", [])])
    assert podresources.decode_list_response(raw) == {("ml", "p"): ("GPU-a", "GPU-b")}
    with pytest.raises(ValueError):
        podresources.decode_list_response(b"\x0a\x05ab")


def test_podresources_over_a_real_grpc_unix_socket(tmp_path):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    raw = list_response([("ml", "p", [("c", "nvidia.com/gpu", ["GPU-a"])])])

    def handler(request, context):
        return raw

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    method = grpc.unary_unary_rpc_method_handler(handler, request_deserializer=lambda b: b,
                                                 response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": method}),))
    sock = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        assert podresources.list_devices(str(sock)) == {("ml", "p"): ("GPU-a",)}
    finally:
        server.stop(None)


def test_env_devices():
    assert podresources.env_devices(pod("p", env_devices="0, 2")) == ("0", "2")
    assert podresources.env_devices(pod("p", env_devices="all")) == ()


def test_cli_agent_needs_a_node(capsys, monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["agent", "--once"]) == 2
    assert "no node name" in capsys.readouterr().err


def test_kube_client_pod_methods_request_shapes():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from greenml.kube.client import Kube

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            seen.append(("GET", self.path, None, None))
            self._answer(json.dumps({"items": [pod("p", cap=200)]}).encode())

        def do_PATCH(self):  # noqa: N802
            n = int(self.headers["Content-Length"])
            seen.append(("PATCH", self.path, self.headers["Content-Type"], json.loads(self.rfile.read(n))))
            self._answer(b"{}")

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_port}"
        kube = Kube(cfg)
        assert kube.list_node_pods(NODE)[0]["metadata"]["name"] == "p"
        kube.annotate_pod("ml", "p", {APPLIED_ANNOTATION: "{}"})
    finally:
        server.shutdown()
    assert seen[0][1] == f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"
    method, path, ctype, body = seen[1]
    assert path == "/api/v1/namespaces/ml/pods/p?fieldManager=greenml-agent"
    assert ctype == "application/merge-patch+json" and body == {"metadata": {"annotations": {APPLIED_ANNOTATION: "{}"}}}


@pytest.mark.parametrize("gpu, ok, error", [
    (FakeGpu("GPU-a"), True, None),
    (FakeGpu("GPU-a", set_error=pynvml.NVML_ERROR_NO_PERMISSION), False, "NoPermission"),
])
def test_self_check(gpu, ok, error):
    from greenml.agent.nvml import self_check

    fake = FakeNvml([gpu])
    out = self_check(Nvml(fake), 0)
    assert out["ok"] is ok and out["min_w"] == 100 and out["default_w"] == 400
    assert out["steps"][0]["watts"] == 250
    if error:
        assert out["steps"][0]["error"] == error
    else:
        assert [s["read_back_w"] for s in out["steps"]] == [250, 400]
    assert fake.initialised == 0 and gpu.limit_mw == 400_000
    assert self_check(Nvml(FakeNvml([gpu])), 3)["error"].startswith("no GPU 3")


def test_pods_of_other_nodes_are_ignored_even_if_listed():
    gpus = [FakeGpu("GPU-a")]
    other = pod("elsewhere", cap=150)
    other["spec"]["nodeName"] = "gpu-node-2"
    fake, agent, api, runner = setup(gpus, [other], {("ml", "elsewhere"): ("GPU-a",)})
    runner.step(NOW)
    assert gpus[0].sets == [] and api.patches == []
