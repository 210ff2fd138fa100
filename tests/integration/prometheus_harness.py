"""Run Debian's real ``prometheus`` binary for tests.

    with running_prometheus(["127.0.0.1:9400"]) as prom:   # skips the test if no binary
        prom.query("up")                                   # → the instant-vector result list
        prom.wait_for("count(up == 1)", lambda r: r and float(r[0]["value"][1]) >= 1)

It listens on 127.0.0.1 (a free port), stores its TSDB in a temp dir, scrapes the
given targets every ``scrape_interval``, and is stopped (and the dir removed) on exit.
`.ci/run` installs the binary (``apt-get install -y prometheus``).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from tests.integration.harness import stop_process

BINARY_ENV_HINT = "install it with: apt-get install -y prometheus"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def require_prometheus() -> str:
    path = prometheus_binary()
    if path is None:
        pytest.skip(f"the prometheus binary is not on PATH ({BINARY_ENV_HINT})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrometheusProcess:
    url: str
    proc: subprocess.Popen
    workdir: Path

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def wait_for(self, promql: str, ok: Callable[[list[dict]], bool], timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if ok(res):
                return res
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: {promql!r} not satisfied after {timeout:g} s (last: {res})")
            time.sleep(0.2)

    def log(self) -> str:
        p = self.workdir / "prometheus.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""


def _config(targets: Sequence[str], scrape_interval: str, metrics_path: str) -> str:
    quoted = ", ".join(json.dumps(t) for t in targets)
    return (f"global:\n  scrape_interval: {scrape_interval}\n  scrape_timeout: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            f"scrape_configs:\n  - job_name: test\n    honor_labels: true\n"
            f"    metrics_path: {metrics_path}\n    static_configs:\n      - targets: [{quoted}]\n")


@contextmanager
def running_prometheus(targets: Sequence[str], *, scrape_interval: str = "1s", metrics_path: str = "/metrics",
                       ready_timeout: float = 20.0, backfill: str | None = None) -> Iterator[PrometheusProcess]:
    """Start prometheus scraping ``targets`` (host:port); wait until /-/ready; stop on exit.

    ``backfill``: OpenMetrics text (samples with timestamps, ending in ``# EOF``) written
    into the TSDB first with ``promtool tsdb create-blocks-from openmetrics`` — history
    from before the test; retention is then long enough to keep it."""
    binary = require_prometheus()
    workdir = Path(tempfile.mkdtemp(prefix="greenml-prom-"))
    (workdir / "prometheus.yml").write_text(_config(targets, scrape_interval, metrics_path))
    retention = "1h"
    if backfill is not None:
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip(f"promtool is not on PATH ({BINARY_ENV_HINT})")
        (workdir / "backfill.om").write_text(backfill)
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(workdir / "backfill.om"),
                        str(workdir / "data")], check=True, capture_output=True, timeout=120)
        retention = "90d"
    port = free_port()
    log = open(workdir / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", f"--storage.tsdb.retention.time={retention}"],
        stdout=log, stderr=subprocess.STDOUT)
    handle = PrometheusProcess(f"http://127.0.0.1:{port}", proc, workdir)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{handle.log()}")
            try:
                with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {ready_timeout:g} s:\n{handle.log()}")
            time.sleep(0.1)
        yield handle
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def serve_text(render, content_type: str = "text/plain; version=0.0.4"):
    """A test exporter on 127.0.0.1: every GET answers ``render()``. Returns the server
    (``server.target`` is host:port for a scrape config; ``server.shutdown()`` stops it)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.target = f"127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server
