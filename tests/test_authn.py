"""Sender authentication rules that need no server (gateway.authn); end to end: test_exchange."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.authn import parse_created


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T09:00:00Z", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("2026-11-28T09:00:00.123Z", datetime(2026, 11, 28, 9, 0, 0, 123000, tzinfo=UTC)),
        ("2026-11-28T09:00:00.123456789Z", datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-28T09:00:00+00:00", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("2026-11-28t09:00:00z", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),  # RFC 3339 5.6 note
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, 0, 0, tzinfo=UTC)),  # a leap second
    ],
)
def test_created_accepts_rfc3339_utc_times(text: str, expected: datetime) -> None:
    assert parse_created(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T09Z",  # no minutes or seconds
        "2026-11-28T09:00Z",  # no seconds
        "20261128T090000Z",  # ISO 8601 basic format
        "2026-W48-6T09:00:00Z",  # ISO week date
        "2026-11-28 09:00:00Z",  # space instead of T
        "2026-11-28T09:00:00,5Z",  # decimal comma
        "2026-11-28T09:00:00.Z",  # empty fraction
        "2026-11-28T09:00:00+07:00",  # not UTC
        "2026-11-28T09:00:00",  # no offset
        "\uff12026-11-28T09:00:00Z",  # a non-ASCII digit
        "2026-02-30T09:00:00Z",  # no such day
        "2026-11-28T09:00:61Z",
        "9999-12-31T23:59:60Z",  # a leap second past the last representable instant
        "0000-01-01T00:00:00Z",
        "",
    ],
)
def test_created_refuses_what_is_not_an_rfc3339_utc_time(text: str) -> None:
    """Python's fromisoformat takes many ISO 8601 forms; the contract allows RFC 3339 only."""
    with pytest.raises(ValueError):
        parse_created(text)
