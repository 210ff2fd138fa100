"""greenml agent: the node agent that applies the operator's GPU power caps (NVML).

Runs as the chart's DaemonSet (``agent.enabled``) on GPU nodes; needs the ``agent`` extra
(nvidia-ml-py, grpcio). See greenml.agent and docs/power-caps.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import datetime, timezone

from greenml.timeutil import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="node agent: apply the operator's GPU power caps through NVML")
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (default: $NODE_NAME)")
    p.add_argument("--interval", default="15s", help="time between passes (default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9402, help="Prometheus metrics port; 0: off (default: %(default)s)")
    p.add_argument("--pod-resources-socket", default=None,
                   help="kubelet PodResources socket (default: /var/lib/kubelet/pod-resources/kubelet.sock)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    p.add_argument("--once", action="store_true", help="one pass, then restore the defaults and exit")
    p.add_argument("--self-check", action="store_true",
                   help="on a GPU machine: read one GPU's constraints, set a cap, read it back, restore the default "
                        "(JSON on stdout; exit 1 unless both read back)")
    p.add_argument("--gpu", type=int, default=0, help="--self-check: GPU index (default: %(default)s)")
    p.add_argument("--watts", type=float, default=None,
                   help="--self-check: the cap to set (default: halfway between the minimum and the default limit)")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"greenml agent: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from greenml.agent import podresources
    from greenml.agent.core import Agent
    from greenml.agent.nvml import DeviceError, Nvml, load_pynvml
    from greenml.agent.runner import AgentMetrics, DeviceSource, Runner

    if args.self_check:
        import json

        from greenml.agent.nvml import self_check

        try:
            report = self_check(Nvml(load_pynvml()), args.gpu, args.watts)
        except DeviceError as exc:
            return _fail(f"NVML: {exc}")
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    if not args.node:
        return _fail("no node name: pass --node or set NODE_NAME (the chart sets it from spec.nodeName)")
    try:
        interval = parse_duration(args.interval).total_seconds()
    except ValueError as exc:
        return _fail(f"--interval: {exc}")
    if interval <= 0:
        return _fail("--interval must be positive")
    from greenml.kube.client import Kube, load_configuration

    agent = Agent(Nvml(load_pynvml()))
    log = lambda m: print(f"greenml agent: {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        for reason in agent.start():
            log(f"restoring a default limit at start failed: {reason}")
    except DeviceError as exc:
        return _fail(f"NVML: {exc}")
    metrics = AgentMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=metrics.registry)
    runner = Runner(agent, Kube(load_configuration(args.kubeconfig)), args.node,
                    DeviceSource(args.pod_resources_socket or podresources.SOCKET), metrics, log)
    log(f"node {args.node}: {len(agent.devices)} GPU(s): "
        + ", ".join(f"{d.index} {d.name} [{d.min_w}-{d.max_w} W, default {d.default_w} W{', MIG' if d.mig else ''}]"
                    for d in agent.devices))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while True:
            runner.step(datetime.now(timezone.utc))
            if args.once or stop.wait(interval):
                break
    finally:
        for reason in agent.stop():
            log(f"restoring a default limit at exit failed: {reason}")
    return 0
