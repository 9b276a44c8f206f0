"""Small value helpers every record and signature depends on: their text must never drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.models import rfc3339


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=UTC), "2026-11-28T09:00:00.123Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "2026-01-02T03:04:05.999Z"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05.000Z"),
        # another offset is converted, not relabelled
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=7))),
            "2026-01-01T20:04:05.000Z",
        ),
        # a zero offset that is not the UTC singleton
        (
            datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=timezone(timedelta(0))),
            "2026-01-02T03:04:05.001Z",
        ),
        # naive datetimes are taken as UTC (the clock gives aware ones; tools may not)
        (datetime(2026, 1, 2, 3, 4, 5, 1999), "2026-01-02T03:04:05.001Z"),
    ],
)
def test_rfc3339_is_utc_milliseconds_with_z(value: datetime, text: str) -> None:
    assert rfc3339(value) == text


@given(st.datetimes(timezones=st.just(UTC)))
def test_rfc3339_matches_field_by_field_formatting(t: datetime) -> None:
    expected = (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
        f"{t.microsecond // 1000:03d}Z"
    )
    assert rfc3339(t) == expected
