"""Helpers for benchmarks: where the shared data is, and how results are written.

Benchmarks print what they measured and write JSON (+ Markdown) under bench/results/.
They never assert a time.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GREENML_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = Path(os.environ.get("GREENML_BENCH_OUT", REPO / "bench" / "results"))


def data_file(relpath: str) -> Path | None:
    p = SHARED_DATA / relpath
    return p if p.is_file() else None


def machine() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, payload: dict, markdown: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if markdown is not None:
        (RESULTS / f"{name}.md").write_text(markdown)
    print(f"wrote {out}")
    return out
