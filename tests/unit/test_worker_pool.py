"""The operator's worker pool exits in bounded time (controllers.loop.WorkerPool): asyncio.run
ends by shutting the default executor down and Python joins its threads at exit, so a call
in flight — a replan of 20,000 jobs, a request to an overloaded API server — held the exit
on SIGTERM for as long as it took."""
from __future__ import annotations

import asyncio
import threading
import time

from greenml.controllers import loop as loop_mod
from greenml.controllers.loop import WorkerPool, busy_workers


def test_shutdown_gives_calls_in_flight_the_grace_and_drops_the_queued(monkeypatch):
    monkeypatch.setattr(loop_mod, "EXIT_GRACE", 0.5)
    release = threading.Event()
    pool = WorkerPool(1)
    try:
        running = pool.submit(release.wait, 30)
        queued = pool.submit(lambda: "ran")
        time.sleep(0.1)
        t0 = time.monotonic()
        pool.shutdown(wait=True)
        took = time.monotonic() - t0
        assert 0.4 <= took < 2.0, took
        assert queued.cancelled()
        assert not running.done()
        assert len(busy_workers()) == 1 and busy_workers()[0].startswith("greenml_")
    finally:
        release.set()
    running.result(timeout=5)
    for t in list(pool._threads):
        t.join(5)
    assert busy_workers() == []


def test_a_pool_with_nothing_in_flight_shuts_down_at_once():
    pool = WorkerPool(2)
    assert pool.submit(lambda: 41 + 1).result(timeout=5) == 42
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 0.5
    assert busy_workers() == []


def test_asyncio_run_returns_within_the_grace_as_the_operator_does(monkeypatch):
    """As `greenml run`: the pool set as the default executor, a to_thread call cancelled
    with its task when the loop ends (kopf's cleanup), asyncio.run's executor shutdown bounded."""
    monkeypatch.setattr(loop_mod, "EXIT_GRACE", 0.5)
    release = threading.Event()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(WorkerPool(2))
        asyncio.get_running_loop().create_task(asyncio.to_thread(release.wait, 30))
        await asyncio.sleep(0.1)

    t0 = time.monotonic()
    try:
        asyncio.run(main())
        assert time.monotonic() - t0 < 2.0
        assert len(busy_workers()) == 1
    finally:
        release.set()


SCRIPT = """
import asyncio, os, signal, sys, time
from types import SimpleNamespace
from greenml.controllers import operator as op

class Elector:
    def release(self):
        print("lease released", flush=True)

async def main():
    ctx = SimpleNamespace(extras={"elector": Elector(), "tasks": []})
    stop = asyncio.Event()
    op.stop_on_signals(ctx, stop, deadline=float(sys.argv[1]))
    os.kill(os.getpid(), signal.SIGTERM)
    await stop.wait()
    print("stop flag raised", flush=True)
    await asyncio.sleep(60)      # a shutdown that does not end (kopf's, with 20,000 workers: 14 s)

asyncio.run(main())
"""


def test_a_signal_hands_over_at_once_raises_the_stop_flag_and_exits_by_the_deadline(tmp_path):
    """`greenml run` (commands/run.py) installs these once kopf is ready: on SIGTERM the lease
    is released and kopf told to stop at once, and the process leaves at the deadline with
    status 0 even when kopf's shutdown is still busy."""
    import subprocess
    import sys

    script = tmp_path / "signalled.py"
    script.write_text(SCRIPT)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(script), "0.5"], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert "stop flag raised" in done.stdout and "lease released" in done.stdout, done.stdout
    assert took < 10, took                     # not the 60 s the "shutdown" would take
    assert "exiting now: kopf's shutdown still running" in done.stderr + done.stdout
