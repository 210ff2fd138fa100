"""`python -m greenml run` under tracemalloc, for bench/bench_operator.py --real --tracemalloc.

BENCH_TRACEMALLOC_FRAMES: frames per trace (default 1). Each SIGUSR1 dumps a snapshot to
BENCH_TRACEMALLOC_DIR/snapshot-<n>.pickle (n = 1, 2, …), which the benchmark compares.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path

OUT = Path(os.environ["BENCH_TRACEMALLOC_DIR"])
tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1")))
_count = 0


def _dump(signum, frame) -> None:   # noqa: ARG001 — a signal handler's signature
    global _count
    _count += 1
    snap = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<unknown>")))
    tmp = OUT / f".snapshot-{_count}.tmp"
    snap.dump(str(tmp))
    tmp.rename(OUT / f"snapshot-{_count}.pickle")


signal.signal(signal.SIGUSR1, _dump)
sys.argv = ["greenml", "run"]
runpy.run_module("greenml", run_name="__main__", alter_sys=True)
