"""PUBLIC plugin API for connectors: the only gateway module a connector may import.

A connector carries a signed envelope to a provider and brings back the provider's answer, or a
typed failure. It is found through the ``gateway.connectors`` entry-point group and built once
per service from that service's ``[services.connector]`` settings table. Keep this surface small
and stable: third parties build against it (``tests/test_connector_api.py`` pins ``__all__``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.strictjson import loads as _strict_loads

__all__ = [
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


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What the gateway hands a connector for one exchange.

    ``envelope`` is the gateway-signed JWS (JSON serialization, as a dict) whose payload carries
    the sender's payload, and ``envelope_bytes`` its serialized form, ready to send as-is.
    ``payload`` is the sender's parsed payload, for connectors that speak to a provider which
    does not understand envelopes (the demo provider, a legacy REST system).
    ``idempotency_key``, when the sender gave an ``Idempotency-Key``, is a digest of it scoped
    to the sender and the service (equal for every retry of that request), to pass on to the
    provider: the sender's own key is unique only among that sender's requests.
    """

    exchange_id: str
    service: str
    sender: str
    provider: str
    payload: Any
    envelope: Mapping[str, Any]
    envelope_bytes: bytes
    idempotency_key: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The provider's answer: a JSON value, plus how it was obtained.

    ``attempts`` (an ``int`` from 1 to 2**53 - 1, how many times the provider was called) is
    written to the outcome record; any other value makes the exchange a 502. ``metadata``
    (str to str, transport details such as an HTTP status) is for the plugin's own tests and
    tools: the gateway neither logs nor audits it, so it can never carry data there."""

    response: Any
    status: int = 200
    attempts: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)


class ConnectorError(Exception):
    """Base of connector failures; the message must not contain payload data."""


class DeliveryFailed(ConnectorError):
    """The provider refused, failed, or answered something that is not JSON (-> 502)."""


class DeliveryTimeout(ConnectorError):
    """The provider did not answer in time (-> 504)."""


class SettingsError(ConnectorError):
    """The connector's settings in the config are wrong; raised at start-up (fail closed)."""


@dataclass(frozen=True, slots=True)
class ConnectorContext:
    """What a connector may know of the deployment when it is built."""

    service: str
    provider: str
    config_dir: str


@runtime_checkable
class Connector(Protocol):
    """A built connector. ``start`` opens resources (sessions, pools); ``close`` releases them."""

    async def start(self) -> None: ...

    async def deliver(self, message: OutboundMessage) -> DeliveryResult: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class ConnectorFactory(Protocol):
    """The entry point's target: called with the settings table and the context.

    Called more than once per service: `gateway serve` builds every connector in its start-up
    check, then again in each worker process after the fork (so each worker has its own
    connector, and its own circuit breaker or pool). So a factory checks its settings (raise
    ``SettingsError``) and loads what it needs (files), but opens nothing (no sockets, threads
    or tasks): ``start`` does, in the process that serves. The table is the factory's own copy.
    """

    def __call__(self, settings: Mapping[str, Any], context: ConnectorContext) -> Connector: ...


ANSWER_MAX_DEPTH = 199
"""How deep a provider's answer may nest: as deep as the gateway can sign (RFC 8785
canonicalization stops at 200, ``gateway.crypto.canonical.MAX_DEPTH``, and a stored answer sits
one level down). Not ``limits.max_json_depth``, which bounds what senders send: the answer's
shape is the response schema's to decide, and its size is capped by the connector."""


def parse_json(data: bytes) -> Any:
    """Parse a provider's answer with the gateway's own strict JSON parser; ``ValueError`` if not.

    Why offered to plugins: an answer is validated, hashed and signed into the receipt, so it must
    be read exactly as the gateway reads requests (UTF-8, no duplicate keys, no NaN/Infinity: see
    ``gateway.strictjson``), nested at most :data:`ANSWER_MAX_DEPTH` deep. It is also the fast
    path: orjson with whole-buffer checks, several times cheaper than ``json.loads`` with hooks.
    """
    return _strict_loads(data, max_depth=ANSWER_MAX_DEPTH)
