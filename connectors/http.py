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
keys, oversized, compressed (``Content-Encoding``), malformed HTTP or unreachable ->
``DeliveryFailed``; no answer in time -> ``DeliveryTimeout``. Messages name the cause, never the
response body (it may hold personal data).

Transport: ``connectors/_http11.py``, a lean HTTP/1.1 client on ``asyncio.Protocol`` with a pool
of keep-alive connections (aiohttp's client took about 2.5 times its CPU per request, see
``bench/bench_http_client.py``). Each request carries ``User-Agent: dtc-gateway``,
``Accept: application/json`` and ``Accept-Encoding: identity``; credentials in the url are sent
as Basic auth. A request that may have reached the provider is never re-sent by the transport:
``retries`` apply to connect failures only.

Circuit breaker: after ``failure_threshold`` consecutive failures (4xx answers do not count: the
provider is up and refusing that request) the breaker opens and calls fail at once for
``open_seconds``; then one trial call is let through (half-open): success closes the breaker,
failure opens it again. This keeps a dead provider from holding every request for the full
timeout and from being hammered while it recovers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

from connectors._http11 import (
    ConnectError,
    Http11Pool,
    HttpClientError,
    Response,
    ResponseTooLarge,
    TlsError,
)
from connectors._http11_request import check_header
from gateway.connector import (
    ConnectorContext,
    DeliveryFailed,
    DeliveryResult,
    DeliveryTimeout,
    OutboundMessage,
    SettingsError,
    parse_json,
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
# Sent with every request. Accept-Encoding: identity asks for an uncompressed answer (the body cap
# then bounds what is held, and no decompressor runs on provider input).
_FIXED_HEADERS = (("User-Agent", "dtc-gateway"), ("Accept", "application/json"),
                  ("Accept-Encoding", "identity"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str
    origin: str  # scheme://host[:port]
    target: str  # path?query, percent-encoded
    static_headers: tuple[tuple[bytes, bytes], ...]  # fixed + configured (+ credentials in url)
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
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
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
    static = _static_headers(parts, headers)
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
        origin=f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
        target=_target(parts),
        static_headers=static,
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


def _target(parts: SplitResult) -> str:
    """The request target, percent-encoded where the URL was not (as aiohttp/yarl sends it)."""
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/?%:@!$&'()*+,;=~")
    return target


def _static_headers(
    parts: SplitResult, configured: Mapping[str, str]
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every request carries, encoded and checked once; configured ones win."""
    overridden = {name.lower() for name in configured}
    pairs = [(k, v) for k, v in _FIXED_HEADERS if k.lower() not in overridden]
    pairs += configured.items()
    if parts.username is not None:  # credentials in the url: Basic auth, as aiohttp did
        if any(k.lower() == "authorization" for k in configured):
            raise SettingsError(
                "http connector: 'headers' may not set 'Authorization' when the url has credentials"
            )
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        try:
            token = base64.b64encode(user_pass.encode("latin-1")).decode("ascii")
        except UnicodeEncodeError:
            raise SettingsError("http connector: 'url' credentials must be Latin-1") from None
        pairs.append(("Authorization", f"Basic {token}"))
    try:
        return tuple(check_header(name, value) for name, value in pairs)
    except ValueError:
        raise SettingsError(
            "http connector: 'headers' must map names to single-line strings"
        ) from None


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


def _parse_json(body: bytes) -> Any:
    """Strict RFC 8259 (the gateway's parser): UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        return parse_json(body)
    except ValueError:
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
        self._pool: Http11Pool | None = None

    async def start(self) -> None:
        """Open the connection pool (one per connector: keep-alive connections are reused)."""
        if self._pool is not None:
            return
        s = self._settings
        self._pool = Http11Pool(
            s.origin,
            ssl_context=self._ssl_context(),
            limit=s.max_connections,
            connect_timeout=s.connect_timeout,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self._settings
        if not s.origin.startswith("https:"):
            return None
        try:  # default verification against the system trust store, or ca_file
            context = ssl.create_default_context(cafile=s.ca_file)
            if s.client_cert and s.client_key:
                context.load_cert_chain(s.client_cert, s.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"http connector: TLS files cannot be loaded: {exc}") from None
        return context

    async def ready(self) -> bool:
        """Ready once started; an open breaker is not un-readiness (other services still work)."""
        return self._pool is not None and not self._pool.closed

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        if self._pool is None:
            raise DeliveryFailed("http connector is not started")
        if not self._breaker.admit():
            raise DeliveryFailed("provider circuit breaker is open: recent calls failed")
        try:
            result = await self._deliver(self._pool, message)
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

    async def _deliver(self, pool: Http11Pool, message: OutboundMessage) -> DeliveryResult:
        s = self._settings
        loop = asyncio.get_running_loop()
        budget = min(s.timeout, message.timeout)
        deadline = loop.time() + budget
        body, headers = self._request(message)
        attempts_allowed = 1 + (s.retries if message.idempotency_key else 0)
        for attempt in range(1, attempts_allowed + 1):
            if deadline - loop.time() <= 0:
                break
            try:
                async with asyncio.timeout_at(deadline):
                    response = await pool.request(
                        "POST", s.target, headers, body, max_response_bytes=s.max_response_bytes
                    )
            except TlsError as exc:
                raise DeliveryFailed(f"TLS with the provider failed: {exc}") from None
            except ConnectError as exc:  # nothing was sent: safe to retry
                if attempt == attempts_allowed:
                    raise DeliveryFailed(
                        f"cannot connect to the provider after {attempt} attempt(s): {exc}"
                    ) from None
            except TimeoutError:
                raise DeliveryTimeout(f"provider did not answer within {budget:g} s") from None
            except ResponseTooLarge as exc:
                _check_head(exc.status, exc.headers)
                raise DeliveryFailed(
                    f"provider answer exceeds {s.max_response_bytes} bytes"
                ) from None
            except HttpClientError as exc:
                raise DeliveryFailed(f"provider connection failed: {exc}") from None
            except ValueError as exc:  # a header value the gateway was handed cannot be sent
                raise DeliveryFailed(f"request cannot be sent: {exc}") from None
            else:
                return _result(response, attempt)
            pause = _RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
        raise DeliveryTimeout(f"provider did not answer within {budget:g} s")

    def _request(self, message: OutboundMessage) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        s = self._settings
        if s.send == "envelope":
            body = message.envelope_bytes
        else:
            text = json.dumps(
                message.payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
            body = text.encode("utf-8")
        headers = [
            *s.static_headers,
            (b"Content-Type", _CONTENT_TYPES[s.send].encode("ascii")),
            (b"X-Exchange-Id", message.exchange_id.encode("utf-8")),
        ]
        if message.idempotency_key:
            headers.append((b"Idempotency-Key", message.idempotency_key.encode("utf-8")))
        return body, headers


def _check_head(status: int, headers: Mapping[str, str]) -> None:
    """Status, then media type, then coding: in that order, whatever the size of the body."""
    if not 200 <= status < 300:
        failure = _Refused if 400 <= status < 500 else DeliveryFailed
        raise failure(f"provider answered HTTP {status}")
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise DeliveryFailed("provider answer is not application/json")
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("identity", ""):
        raise DeliveryFailed("provider answer has a content-coding; only identity is accepted")


def _result(response: Response, attempt: int) -> DeliveryResult:
    _check_head(response.status, response.headers)
    return DeliveryResult(
        response=_parse_json(response.body),
        status=response.status,
        attempts=attempt,
        metadata={"http_status": str(response.status), "response_bytes": str(len(response.body))},
    )
