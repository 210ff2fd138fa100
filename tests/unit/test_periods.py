"""Budget periods: calendar-aligned in a time zone, DST-correct."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from greenml.planning.periods import period_bounds, periods_between

UTC = timezone.utc


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize("period, now, tz, start, end", [
    ("hour", utc(2024, 5, 1, 10, 42), "UTC", utc(2024, 5, 1, 10), utc(2024, 5, 1, 11)),
    ("hour", utc(2024, 5, 1, 10, 42), "Asia/Kolkata", utc(2024, 5, 1, 10, 30), utc(2024, 5, 1, 11, 30)),
    ("hour", utc(2024, 5, 1, 10, 12), "Asia/Kolkata", utc(2024, 5, 1, 9, 30), utc(2024, 5, 1, 10, 30)),
    ("day", utc(2024, 5, 1, 10), "UTC", utc(2024, 5, 1), utc(2024, 5, 2)),
    # Berlin summer time: the local day starts at 22:00 UTC the day before
    ("day", utc(2024, 5, 1, 23), "Europe/Berlin", utc(2024, 5, 1, 22), utc(2024, 5, 2, 22)),
    ("day", utc(2024, 5, 1, 21, 59), "Europe/Berlin", utc(2024, 4, 30, 22), utc(2024, 5, 1, 22)),
    # spring forward (31 March 2024): a 23-hour day
    ("day", utc(2024, 3, 31, 12), "Europe/Berlin", utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)),
    # fall back (27 October 2024): a 25-hour day
    ("day", utc(2024, 10, 27, 12), "Europe/Berlin", utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
    # New York fall back, 3 November 2024
    ("day", utc(2024, 11, 3, 5, 30), "America/New_York", utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
    # Santiago: clocks jump from 00:00 to 01:00 on 8 September 2024; that day starts at 01:00 local
    ("day", utc(2024, 9, 8, 12), "America/Santiago", utc(2024, 9, 8, 4), utc(2024, 9, 9, 3)),
    # ISO weeks start on Monday (2024-05-01 is a Wednesday)
    ("week", utc(2024, 5, 1, 10), "UTC", utc(2024, 4, 29), utc(2024, 5, 6)),
    ("week", utc(2024, 3, 27, 10), "Europe/Berlin", utc(2024, 3, 24, 23), utc(2024, 3, 31, 22)),
    ("month", utc(2024, 2, 15), "UTC", utc(2024, 2, 1), utc(2024, 3, 1)),
    ("month", utc(2024, 12, 31, 23, 30), "Europe/Berlin", utc(2024, 12, 31, 23), utc(2025, 1, 31, 23)),
    ("month", utc(2024, 3, 10), "Europe/Berlin", utc(2024, 2, 29, 23), utc(2024, 3, 31, 22)),
])
def test_period_bounds(period: str, now: datetime, tz: str, start: datetime, end: datetime) -> None:
    assert period_bounds(period, now, tz) == (start, end)


def test_dst_day_lengths_in_berlin() -> None:
    days = periods_between("day", utc(2024, 3, 29), utc(2024, 4, 1), "Europe/Berlin")
    lengths = [(e - s) / timedelta(hours=1) for s, e in days]
    assert lengths == [24, 24, 23, 24]  # 28th (partly), 29th, 30th, 31st (spring forward)
    assert all(a[1] == b[0] for a, b in zip(days, days[1:]))


def test_periods_between_covers_range_without_gaps() -> None:
    weeks = periods_between("week", utc(2024, 1, 3), utc(2024, 2, 1), "UTC")
    assert weeks[0][0] == utc(2024, 1, 1) and weeks[-1][1] >= utc(2024, 2, 1)
    assert all(a[1] == b[0] for a, b in zip(weeks, weeks[1:]))


@pytest.mark.parametrize("period, tz, field", [
    ("fortnight", "UTC", "budget.period"),
    ("day", "Mars/Olympus_Mons", "budget.timeZone"),
])
def test_bad_period_or_zone_names_the_field(period: str, tz: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        period_bounds(period, utc(2024, 1, 1), tz)
