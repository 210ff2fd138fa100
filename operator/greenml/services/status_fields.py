"""Lenient readers for the operator's own status fields.

Status is the operator's memory (run time, spend), but anyone with status access, an old
backup restore or a schema-less emulator can put junk there. A reconcile must still
decide: a field that does not read as its type is treated as absent (the caller's
default), never raised — raising would turn one bad object into an endless retry loop.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from greenml.timeutil import parse_time


def number(value: Any, default: float | None = None, *, minimum: float | None = None) -> float | None:
    """A finite int/float (not a bool), clamped to ``minimum``; else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    try:
        v = float(value)
    except OverflowError:
        return default
    if not math.isfinite(v):
        return default
    return max(v, minimum) if minimum is not None else v


def integer(value: Any, default: int | None = None, *, minimum: int | None = None) -> int | None:
    v = number(value, None, minimum=minimum)
    return default if v is None or abs(v) > 2**31 else int(v)


def time(value: Any) -> datetime | None:
    """An RFC 3339 time string (or datetime); else None."""
    if isinstance(value, datetime):
        return parse_time(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except (ValueError, TypeError, OverflowError):
        return None


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
