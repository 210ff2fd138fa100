"""Log lines: JSON, redacted, and without kopf's per-line settings dump."""
from __future__ import annotations

import io
import json
import logging

import kopf
import pytest

from greenml import logs


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(fmt: str = "json") -> io.StringIO:
    logs.configure("INFO", fmt)
    buf = io.StringIO()
    logging.getLogger().handlers[0].setStream(buf)
    return buf


def test_kopf_object_lines_keep_the_object_and_drop_the_settings_dump():
    buf = _capture()
    ref = {"kind": "TrainingJob", "name": "llm", "namespace": "ml"}
    logging.getLogger("kopf.objects").info("Handler 'on_change' succeeded.",
                                           extra={"settings": kopf.OperatorSettings(),
                                                  "k8s_skip": False, "k8s_ref": ref})
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert line["event"] == "Handler 'on_change' succeeded." and line["k8s_ref"] == ref
    assert "settings" not in line and "k8s_skip" not in line
    assert len(buf.getvalue()) < 500


def test_secrets_are_redacted_in_messages_and_extras():
    buf = _capture()
    logging.getLogger("greenml.test").warning("calling provider with auth-token: abc123secret",
                                              extra={"detail": "password=hunter2"})
    text = buf.getvalue()
    assert "abc123secret" not in text and "hunter2" not in text and "***" in text
