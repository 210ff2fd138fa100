"""structlog configuration: JSON lines (or console) for our logs and kopf's stdlib logs alike."""
from __future__ import annotations

import logging
import re
import sys

import structlog

# Credentials that must never reach a log line, whatever a library prints.
_SECRET = re.compile(r"(?i)(auth-token|authorization|bearer|password|token|api[_-]?key)([\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)")


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def _redact_processor(_logger, _name, event_dict):
    for k, v in list(event_dict.items()):
        if isinstance(v, str):
            event_dict[k] = redact(v)
    return event_dict


# kopf passes its whole OperatorSettings (~2 KB repr) and a skip flag as log "extra" on every
# per-object line; ExtraAdder would render them into each line. k8s_ref (the object) stays.
_DROP = ("settings", "k8s_skip")


def _drop_processor(_logger, _name, event_dict):
    for key in _DROP:
        event_dict.pop(key, None)
    return event_dict


def configure(level: str = "INFO", fmt: str = "json") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_processor,
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), _drop_processor, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "kubernetes", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
