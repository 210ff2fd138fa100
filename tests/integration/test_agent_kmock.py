"""The operator → agent hand-off over HTTP: the node agent's loop (greenml.agent.runner) with
the real Kube client against the kmock emulator, NVML faked (tests/unit/fake_nvml.py).

The emulator ignores field selectors (STYLE.md): the agent is served every pod and must keep
to its own node's itself — a pod of another node is in the list on purpose."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import kmock

from greenml.agent.core import Agent
from greenml.agent.nvml import Nvml
from greenml.agent.runner import DeviceSource, Runner
from greenml.kube.client import Kube, load_configuration
from greenml.planning.power import APPLIED_ANNOTATION, CAP_ANNOTATION
from tests.integration.harness import VERBS
from tests.unit.fake_nvml import FakeGpu, FakeNvml

NODE = "gpu-node-1"
NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def pod(name: str, node: str, cap: str | None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "annotations": {CAP_ANNOTATION: cap} if cap else {}},
            "spec": {"nodeName": node, "containers": [{"name": "train", "image": "x"}]},
            "status": {"phase": "Running"}}


async def test_agent_applies_what_the_pod_asks_and_reports_on_it(api, kubeconfig):
    api.k.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=VERBS, subresources={"status"})
    await api.create("v1/pods", pod("train-0", NODE, "200"))
    await api.create("v1/pods", pod("other-0", "gpu-node-2", "150"))
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    agent = Agent(Nvml(FakeNvml(gpus)))
    agent.start()
    assigned = {("ml", "train-0"): ("GPU-a",), ("ml", "other-0"): ("GPU-b",)}   # as a kubelet would not: b is elsewhere
    runner = Runner(agent, Kube(load_configuration(str(kubeconfig))), NODE, DeviceSource("unused", lambda _s: assigned))

    await asyncio.to_thread(runner.step, NOW)
    assert [g.limit_mw for g in gpus] == [200_000, 400_000]
    live = await api.get("v1/pods", "ml", "train-0")
    report = json.loads(live["metadata"]["annotations"][APPLIED_ANNOTATION])
    assert report["state"] == "Applied" and report["watts"] == 200 and report["gpus"] == ["GPU-a"]
    assert APPLIED_ANNOTATION not in (await api.get("v1/pods", "ml", "other-0"))["metadata"]["annotations"]
    assert live["metadata"]["annotations"][CAP_ANNOTATION] == "200"          # the operator's field untouched

    # the operator publishes the next window's cap; then the pod ends
    await api.patch("v1/pods", "ml", "train-0", {"metadata": {"annotations": {CAP_ANNOTATION: "250"}}})
    await asyncio.to_thread(runner.step, NOW)
    assert gpus[0].limit_mw == 250_000
    await api.patch("v1/pods", "ml", "train-0", {"status": {"phase": "Succeeded"}})
    await asyncio.to_thread(runner.step, NOW)
    assert gpus[0].limit_mw == 400_000
    agent_patches = [r for r in api.requests_to("patch", "/pods/") if "fieldManager=greenml-agent" in str(r.url)]
    assert len(agent_patches) == 3            # first report, the changed one, Restored; none when nothing changed
    live = await api.get("v1/pods", "ml", "train-0")
    assert json.loads(live["metadata"]["annotations"][APPLIED_ANNOTATION])["state"] == "Restored"
