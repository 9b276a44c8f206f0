"""Connector plugins: found through the ``gateway.connectors`` entry-point group.

Fail closed: a service naming a connector nobody installed, or settings the connector refuses,
stops start-up with the file and field named, so a typo never routes an exchange nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from gateway.connector import Connector, ConnectorContext, ConnectorFactory, SettingsError
from gateway.errors import ConfigError

GROUP = "gateway.connectors"


def available() -> dict[str, ConnectorFactory]:
    """Every installed connector factory by name."""
    found: dict[str, ConnectorFactory] = {}
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.load()
    return found


def build(
    kind: str,
    settings: Mapping[str, Any],
    context: ConnectorContext,
    *,
    source: str,
    field: str,
    factories: Mapping[str, ConnectorFactory] | None = None,
) -> Connector:
    """Instantiate one connector or raise ConfigError naming ``source`` and ``field``."""
    table = available() if factories is None else factories
    factory = table.get(kind)
    if factory is None:
        names = ", ".join(sorted(table)) or "none installed"
        raise ConfigError(source, field, f"unknown connector {kind!r} (installed: {names})")
    try:
        connector = factory(settings, context)
    except SettingsError as e:
        raise ConfigError(source, field + "_settings", str(e)) from None
    if not isinstance(connector, Connector):
        raise ConfigError(source, field, f"connector {kind!r} does not implement the API")
    return connector
