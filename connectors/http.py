"""HTTP connector: POSTs each exchange to a provider's REST endpoint and returns its JSON answer.

Settings (the service's ``[services.connector]`` table), all checked at construction so a wrong
config stops start-up with the key named:

=========================== ======== ===========================================================
``url``                     required ``http://`` or ``https://`` endpoint; redirects are refused
``send``                    envelope ``"envelope"``: the gateway-signed JWS JSON
                                     (``application/jose+json``); ``"payload"``: the sender's
                                     payload only (``application/json``), for legacy systems
``timeout_seconds``         10       total per exchange, retries included (capped by the
                                     exchange's own ``timeout``)
``connect_timeout_seconds`` 3        per TCP/TLS connect
``headers``                 {}       static extra headers (cannot override the managed ones)
``max_response_bytes``      1 MiB    larger answers are refused, read no further
``max_connections``         100      pool size (keep-alive connections are reused)
``retries``                 0        extra attempts, only after a connect failure and only when
                                     the exchange has an ``Idempotency-Key``
``ca_file``                 -        trust anchors for the provider (https only)
``client_cert``/``client_key`` -     client certificate for mutual TLS (https only, both or none)
``circuit_breaker``         -        ``{failure_threshold = 5, open_seconds = 30}``
=========================== ======== ===========================================================

Paths are resolved against ``context.config_dir``. Failure mapping: non-2xx, non-JSON, duplicate
keys, oversized or unreachable -> ``DeliveryFailed``; no answer in time -> ``DeliveryTimeout``.
Messages name the cause, never the response body (it may hold personal data).

Circuit breaker: after ``failure_threshold`` consecutive failures (4xx answers do not count: the
provider is up and refusing that request) the breaker opens and calls fail at once for
``open_seconds``; then one trial call is let through (half-open): success closes the breaker,
failure opens it again. This keeps a dead provider from holding every request for the full
timeout and from being hammered while it recovers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.connector import (
    ConnectorContext,
    DeliveryFailed,
    DeliveryResult,
    DeliveryTimeout,
    OutboundMessage,
    SettingsError,
)

__all__ = ["HttpConnector"]

_KNOWN = frozenset(
    {
        "url", "send", "timeout_seconds", "connect_timeout_seconds", "headers",
        "max_response_bytes", "max_connections", "retries", "ca_file", "client_cert",
        "client_key", "circuit_breaker",
    }
)  # fmt: skip
_MANAGED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-exchange-id",
     "transfer-encoding", "connection"}
)  # fmt: skip
_CONTENT_TYPES = {"envelope": "application/jose+json", "payload": "application/json"}
_RETRY_BACKOFF_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str
    send: str
    timeout: float
    connect_timeout: float
    headers: Mapping[str, str]
    max_response_bytes: int
    max_connections: int
    retries: int
    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    failure_threshold: int
    open_seconds: float


def _number(settings: Mapping[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = settings.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise SettingsError(f"http connector: {key!r} must be {kind}")
    return value


def _path(settings: Mapping[str, Any], key: str, config_dir: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(f"http connector: {key!r} must be a file path")
    return os.path.join(config_dir, value)


def _parse_settings(settings: Mapping[str, Any], context: ConnectorContext) -> _Settings:
    """Validate the settings table; every refusal names the key."""
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise SettingsError(f"http connector: unknown setting {unknown[0]!r}")
    url = settings.get("url")
    if not isinstance(url, str):
        raise SettingsError("http connector: 'url' is required (an http:// or https:// URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("http connector: 'url' must be an absolute http:// or https:// URL")
    send = settings.get("send", "envelope")
    if send not in _CONTENT_TYPES:
        raise SettingsError("http connector: 'send' must be 'envelope' or 'payload'")
    headers = settings.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and "\r" not in k + v and "\n" not in k + v
        for k, v in headers.items()
    ):
        raise SettingsError("http connector: 'headers' must map names to single-line strings")
    clash = sorted(k for k in headers if k.lower() in _MANAGED_HEADERS)
    if clash:
        raise SettingsError(f"http connector: 'headers' may not set {clash[0]!r}")
    retries = settings.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise SettingsError("http connector: 'retries' must be an integer from 0 to 10")
    breaker = settings.get("circuit_breaker", {})
    if not isinstance(breaker, Mapping) or set(breaker) - {"failure_threshold", "open_seconds"}:
        raise SettingsError(
            "http connector: 'circuit_breaker' takes only 'failure_threshold' and 'open_seconds'"
        )
    tls = {
        k: _path(settings, k, context.config_dir) for k in ("ca_file", "client_cert", "client_key")
    }
    if any(tls.values()) and parts.scheme != "https":
        raise SettingsError(
            "http connector: 'ca_file'/'client_cert'/'client_key' need an https url"
        )
    if (tls["client_cert"] is None) != (tls["client_key"] is None):
        raise SettingsError("http connector: 'client_cert' and 'client_key' go together")
    return _Settings(
        url=url,
        send=send,
        timeout=float(_number(settings, "timeout_seconds", 10, integer=False)),
        connect_timeout=float(_number(settings, "connect_timeout_seconds", 3, integer=False)),
        headers=dict(headers),
        max_response_bytes=_number(settings, "max_response_bytes", 1 << 20, integer=True),
        max_connections=_number(settings, "max_connections", 100, integer=True),
        retries=retries,
        ca_file=tls["ca_file"],
        client_cert=tls["client_cert"],
        client_key=tls["client_key"],
        failure_threshold=_number(breaker, "failure_threshold", 5, integer=True),
        open_seconds=float(_number(breaker, "open_seconds", 30, integer=False)),
    )


class _Breaker:
    """Consecutive-failure circuit breaker with a single half-open trial; time is injected."""

    def __init__(self, threshold: int, open_seconds: float, clock: Callable[[], float]) -> None:
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._trial_running = False

    def admit(self) -> bool:
        """Whether a call may go out now; in half-open state only one trial at a time."""
        if self._open_until is None:
            return True
        if self._clock() < self._open_until or self._trial_running:
            return False
        self._trial_running = True
        return True

    def success(self) -> None:
        self._failures, self._open_until, self._trial_running = 0, None, False

    def failure(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self._threshold:
            self._open_until = self._clock() + self._open_seconds
        self._trial_running = False

    def neutral(self) -> None:
        """The provider answered (a 4xx): it is up, so a half-open trial closes the breaker."""
        self.success()


class _Refused(DeliveryFailed):
    """The provider answered 4xx: a failure of this exchange, not of the provider."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(body: bytes) -> Any:
    """Strict RFC 8259: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        return json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError):
        raise DeliveryFailed("provider answer is not valid JSON (strict parse)") from None


class HttpConnector:
    """Connector for REST providers; see the module docstring for the settings."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        context: ConnectorContext,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = _parse_settings(settings, context)
        self._context = context
        self._clock = clock
        s = self._settings
        self._breaker = _Breaker(s.failure_threshold, s.open_seconds, clock)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pooled session (one per connector: keep-alive connections are reused)."""
        if self._session is not None:
            return
        s = self._settings
        connector = aiohttp.TCPConnector(limit=s.max_connections, ssl=self._ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # no state may leak from one exchange to another
            headers={"User-Agent": "dtc-gateway", "Accept": "application/json"},
        )

    def _ssl_context(self) -> ssl.SSLContext | bool:
        s = self._settings
        if not (s.ca_file or s.client_cert):
            return True  # default verification against the system trust store
        try:
            context = ssl.create_default_context(cafile=s.ca_file)
            if s.client_cert and s.client_key:
                context.load_cert_chain(s.client_cert, s.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"http connector: TLS files cannot be loaded: {exc}") from None
        return context

    async def ready(self) -> bool:
        """Ready once started; an open breaker is not un-readiness (other services still work)."""
        return self._session is not None and not self._session.closed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        if self._session is None:
            raise DeliveryFailed("http connector is not started")
        if not self._breaker.admit():
            raise DeliveryFailed("provider circuit breaker is open: recent calls failed")
        try:
            result = await self._deliver(self._session, message)
        except _Refused:
            self._breaker.neutral()
            raise
        except (DeliveryFailed, DeliveryTimeout):
            self._breaker.failure()
            raise
        except BaseException:
            self._breaker.failure()  # cancelled mid-call: count it, free the half-open slot
            raise
        self._breaker.success()
        return result

    async def _deliver(
        self, session: aiohttp.ClientSession, message: OutboundMessage
    ) -> DeliveryResult:
        s = self._settings
        loop = asyncio.get_running_loop()  # aiohttp's own clock: the deadline and its timers agree
        budget = min(s.timeout, message.timeout)
        deadline = loop.time() + budget
        body, headers = self._request(message)
        attempts_allowed = 1 + (s.retries if message.idempotency_key else 0)
        for attempt in range(1, attempts_allowed + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            limits = aiohttp.ClientTimeout(total=remaining, sock_connect=s.connect_timeout)
            try:
                return await self._attempt(session, body, headers, limits, attempt)
            except aiohttp.ClientSSLError as exc:
                raise DeliveryFailed(
                    f"TLS with the provider failed: {type(exc).__name__}"
                ) from None
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                if attempt == attempts_allowed:
                    raise DeliveryFailed(
                        f"cannot connect to the provider after {attempt} attempt(s): "
                        f"{type(exc).__name__}"
                    ) from None
            except TimeoutError:
                raise DeliveryTimeout(f"provider did not answer within {budget:g} s") from None
            except aiohttp.ClientError as exc:
                raise DeliveryFailed(f"provider connection failed: {type(exc).__name__}") from None
            pause = _RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
        raise DeliveryTimeout(f"provider did not answer within {budget:g} s")

    def _request(self, message: OutboundMessage) -> tuple[bytes, dict[str, str]]:
        s = self._settings
        if s.send == "envelope":
            body = message.envelope_bytes
        else:
            text = json.dumps(
                message.payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
            body = text.encode("utf-8")
        headers = {**s.headers, "Content-Type": _CONTENT_TYPES[s.send]}
        headers["X-Exchange-Id"] = message.exchange_id
        if message.idempotency_key:
            headers["Idempotency-Key"] = message.idempotency_key
        return body, headers

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        body: bytes,
        headers: Mapping[str, str],
        limits: aiohttp.ClientTimeout,
        attempt: int,
    ) -> DeliveryResult:
        s = self._settings
        async with session.post(
            s.url, data=body, headers=headers, timeout=limits, allow_redirects=False
        ) as response:
            if not 200 <= response.status < 300:
                failure = _Refused if 400 <= response.status < 500 else DeliveryFailed
                raise failure(f"provider answered HTTP {response.status}")
            if response.content_type != "application/json":
                raise DeliveryFailed("provider answer is not application/json")
            declared = response.content_length
            if declared is not None and declared > s.max_response_bytes:
                raise DeliveryFailed(f"provider answer exceeds {s.max_response_bytes} bytes")
            raw = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > s.max_response_bytes:
                    raise DeliveryFailed(f"provider answer exceeds {s.max_response_bytes} bytes")
            return DeliveryResult(
                response=_parse_json(bytes(raw)),
                status=response.status,
                attempts=attempt,
                metadata={"http_status": str(response.status), "response_bytes": str(len(raw))},
            )
