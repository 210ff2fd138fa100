"""Budget periods: calendar-aligned hours, days, ISO weeks and months in an IANA time zone.

A period is a half-open UTC interval ``[start, end)``. Days, weeks and months start at
local midnight of the zone, so their length follows daylight-saving time: the day the
clocks spring forward is 23 h long, the day they fall back 25 h. Weeks start on Monday
(ISO 8601). Hours are aligned to the local hour (which differs from the UTC hour in
zones with a half-hour offset, e.g. Asia/Kolkata).

Pure: ``now`` is always a parameter.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from greenml.timeutil import ensure_utc

PeriodKind = Literal["hour", "day", "week", "month"]
PERIODS: tuple[str, ...] = ("hour", "day", "week", "month")


def zone_info(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError naming ``budget.timeZone`` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"budget.timeZone: unknown IANA time zone {name!r}") from exc


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """UTC instant of the first local moment of ``day``.

    When local midnight does not exist (a DST jump at 00:00, e.g. America/Santiago),
    zoneinfo's fold=0 reading maps it to the first instant after the gap, which is when
    that local day really begins.
    """
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(timezone.utc)


def _first_day(kind: str, d: date) -> date:
    if kind == "day":
        return d
    if kind == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)


def _next_first_day(kind: str, first: date) -> date:
    if kind == "day":
        return first + timedelta(days=1)
    if kind == "week":
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def period_bounds(period: str, now: datetime, time_zone: str = "UTC") -> tuple[datetime, datetime]:
    """The period of kind ``period`` that contains ``now``, as aware UTC ``(start, end)``."""
    if period not in PERIODS:
        raise ValueError(f"budget.period: {period!r} is not one of {', '.join(PERIODS)}")
    tz = zone_info(time_zone)
    now = ensure_utc(now)
    local = now.astimezone(tz)
    if period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
        if start > now:  # cannot happen for real zones; guards odd sub-hour offsets
            start -= timedelta(hours=1)
        return start, start + timedelta(hours=1)
    first = _first_day(period, local.date())
    start = _local_midnight(first, tz)
    if start > now:  # local day begins after a skipped midnight and now is inside the gap
        first = _first_day(period, local.date() - timedelta(days=1))
        start = _local_midnight(first, tz)
    end = _local_midnight(_next_first_day(period, first), tz)
    return start, end


def periods_between(period: str, start: datetime, end: datetime,
                    time_zone: str = "UTC") -> list[tuple[datetime, datetime]]:
    """All periods overlapping ``[start, end)``, in order (the first may begin before ``start``)."""
    start, end = ensure_utc(start), ensure_utc(end)
    out: list[tuple[datetime, datetime]] = []
    t = start
    while t < end:
        bounds = period_bounds(period, t, time_zone)
        out.append(bounds)
        t = bounds[1]
    return out
