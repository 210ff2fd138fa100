"""A reader that goes away (`greenml estimate … | head`) ends in one line and exit 2, not a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_broken_pipe_is_one_line_exit_2(tmp_path):
    read, write = os.pipe()
    os.close(read)   # the reader is gone before anything is written: the first flush gets EPIPE
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GREENML_")}
    try:
        proc = subprocess.run([sys.executable, "-m", "greenml", "estimate", "--now", "2026-06-01T00:00:00Z",
                               str(EXAMPLES)], stdout=write, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120, cwd=tmp_path)
    finally:
        os.close(write)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "greenml: output closed before it was all written (broken pipe)"
