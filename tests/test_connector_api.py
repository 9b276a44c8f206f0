"""The public plugin surface is small and stable: pin its exported names."""

from __future__ import annotations

import gateway.connector as api


def test_public_connector_api_names_are_pinned() -> None:
    assert sorted(api.__all__) == [
        "ANSWER_MAX_DEPTH",
        "Connector",
        "ConnectorContext",
        "ConnectorError",
        "ConnectorFactory",
        "DeliveryFailed",
        "DeliveryResult",
        "DeliveryTimeout",
        "OutboundMessage",
        "SettingsError",
        "parse_json",
    ]
    for name in api.__all__:
        assert hasattr(api, name)


def test_builtin_connectors_are_registered_entry_points() -> None:
    from gateway.plugins import available

    found = available()
    assert {"http", "demo"} <= set(found)


def test_public_test_kit_names_are_pinned() -> None:
    import gateway.testing as kit

    assert sorted(kit.__all__) == [
        "Behaviour",
        "ConnectorContract",
        "FakeConnector",
        "MARKER",
        "ManualClock",
        "make_message",
    ]
    for name in kit.__all__:
        assert hasattr(kit, name)


def test_manual_clock_moves_only_when_told() -> None:
    from datetime import UTC, datetime

    import pytest

    from gateway.testing import ManualClock

    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock() == clock() == datetime(2026, 1, 1, tzinfo=UTC)
    clock.advance(90.5)
    assert clock() == datetime(2026, 1, 1, 0, 1, 30, 500000, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))
