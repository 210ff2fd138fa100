"""A real headless Chromium for the page tests, driven over the DevTools protocol.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it, as it does prometheus),
or the binary named by ``$GREENML_TEST_CHROMIUM``. Without it the ``chromium`` fixture
skips the test — except in CI (``CI=true``), where a missing browser fails it.

The browser is started on 127.0.0.1 with its DevTools port chosen by itself (read back
from ``DevToolsActivePort``), its background networking off, and pages loaded from
``file://``; the protocol client is aiohttp's websocket (already a test dependency).
Screenshots go to ``$GREENML_TEST_ARTIFACTS/browser/`` (default ``test-artifacts/`` at the
repository root, git-ignored) so a CI run can keep them.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-default-apps", "--metrics-recording-only",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--remote-allow-origins=*")


def artifacts_dir() -> Path:
    d = Path(os.environ.get("GREENML_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
    d.mkdir(parents=True, exist_ok=True)
    return d


def find_chromium() -> str | None:
    named = os.environ.get("GREENML_TEST_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@dataclass
class Browser:
    process: subprocess.Popen
    port: int
    profile: tempfile.TemporaryDirectory

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.profile.cleanup()


def start(binary: str, timeout: float = 30.0) -> Browser:
    profile = tempfile.TemporaryDirectory(prefix="greenml-chromium-")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile.name}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port_file = Path(profile.name) / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            profile.cleanup()
            raise RuntimeError(f"{binary} exited {proc.returncode}: {err}")
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text().split()[0])
            return Browser(proc, port, profile)
        time.sleep(0.05)
    proc.kill()
    profile.cleanup()
    raise RuntimeError(f"{binary} wrote no DevToolsActivePort within {timeout:.0f} s")


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        message = ("headless Chromium not found (apt-get install chromium, or set GREENML_TEST_CHROMIUM); "
                   "the page tests need it")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " — in CI it must be installed (.ci/run does)")
        pytest.skip(message)
    browser = start(binary)
    yield browser
    browser.close()


@dataclass
class Page:
    """One tab: send(method, **params) → result; ``events`` holds what the page reported."""
    ws: Any
    events: list[dict] = field(default_factory=list)
    _next: int = 0
    _waiting: dict[int, asyncio.Future] = field(default_factory=dict)
    _reader: asyncio.Task | None = None

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev["method"] == method:
                    return ev
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {method} within {timeout:.0f} s")

    async def evaluate(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads …)."""
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif ev["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    async def screenshot(self, path: Path, width: int) -> Path:
        """The whole page at ``width`` CSS px."""
        height = int(await self.evaluate("document.documentElement.scrollHeight"))
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def open_page(browser: Browser, url: str, session, *, width: int = 1280, height: int = 900) -> Page:
    """A new tab on ``url``, loaded, with console/log events recorded from before the load."""
    base = f"http://127.0.0.1:{browser.port}"
    async with session.put(f"{base}/json/new?about:blank") as resp:
        target = await resp.json(content_type=None)
    ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
    page = Page(ws)
    page._reader = asyncio.create_task(page._read())
    for domain in ("Runtime", "Log", "Page"):
        await page.send(f"{domain}.enable")
    await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                    mobile=False)
    await page.send("Page.navigate", url=url)
    await page.wait_for("Page.loadEventFired")
    return page


async def close_page(page: Page) -> None:
    await page.ws.close()
    if page._reader is not None:
        page._reader.cancel()
