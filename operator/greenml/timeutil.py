"""Durations and timestamps, parsed the way Kubernetes users write them.

Pure helpers: nothing here reads the clock. Callers pass ``now``.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# Go-style durations as used across Kubernetes ("90m", "1h30m", "2.5h"), plus "d" for days.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FULL = re.compile(DURATION_PATTERN)


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "1h30m" / "90m" / "2d" / seconds into a timedelta; ValueError on anything else."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return timedelta(seconds=float(text))
    if not isinstance(text, str) or not _FULL.match(text.strip()):
        raise ValueError(f"invalid duration {text!r}: use forms like '45m', '2h', '1h30m', '3d'")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text.strip()))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(td: timedelta) -> str:
    """Inverse of parse_duration for whole seconds ("1h30m", "45s", "0s")."""
    total = int(round(td.total_seconds()))
    if total <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def ensure_utc(dt: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def parse_time(text: str | datetime) -> datetime:
    """ISO 8601 (with 'Z' or offset; naive = UTC) → aware UTC datetime."""
    if isinstance(text, datetime):
        return ensure_utc(text)
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    return ensure_utc(datetime.fromisoformat(s))


def format_time(dt: datetime) -> str:
    """RFC 3339 UTC with 'Z', second precision (what Kubernetes prints)."""
    return ensure_utc(dt).replace(microsecond=0).isoformat().replace("+00:00", "Z")
