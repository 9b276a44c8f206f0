"""The public plugin surface is small and stable: pin its exported names."""

from __future__ import annotations

import gateway.connector as api


def test_public_connector_api_names_are_pinned() -> None:
    assert sorted(api.__all__) == [
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
