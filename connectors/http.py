"""HTTP connector: POSTs each exchange to a provider's REST endpoint and returns its JSON answer.

Settings (the service's ``[services.connector]`` table), all checked at construction by
:mod:`connectors._http_settings` so a wrong config stops start-up with the key named:

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
timeout and from being hammered while it recovers. A breaker is per service and per worker
process (each builds its own connector): with W workers a provider sees up to W times
``failure_threshold`` failing calls before every breaker is open, and W trial calls after.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from connectors._http11 import (
    ConnectError,
    Http11Pool,
    HttpClientError,
    Response,
    ResponseTooLarge,
    TlsError,
)
from connectors._http_settings import CONTENT_TYPES, parse_settings
from gateway.connector import (
    ANSWER_MAX_DEPTH,
    ConnectorContext,
    DeliveryFailed,
    DeliveryResult,
    DeliveryTimeout,
    OutboundMessage,
    SettingsError,
    parse_json,
)

__all__ = ["HttpConnector"]

_RETRY_BACKOFF_SECONDS = 0.05


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
    except ValueError:  # what is wrong where is the answer's shape: the sender sees the message
        raise DeliveryFailed(
            "provider answer is not valid JSON (strict parse: UTF-8, no duplicate keys, no "
            f"NaN or Infinity, nested at most {ANSWER_MAX_DEPTH} deep)"
        ) from None


class HttpConnector:
    """Connector for REST providers; see the module docstring for the settings."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        context: ConnectorContext,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = parse_settings(settings, context)
        self._context = context
        self._clock = clock
        s = self._settings
        self._breaker = _Breaker(s.failure_threshold, s.open_seconds, clock)
        # Loaded now, not in start(): the gateway builds connectors in its start-up check (the
        # parent of `gateway serve`), so a wrong path is refused there, naming the setting.
        self._tls = self._ssl_context()
        self._pool: Http11Pool | None = None

    async def start(self) -> None:
        """Open the connection pool (one per connector: keep-alive connections are reused)."""
        if self._pool is not None:
            return
        s = self._settings
        self._pool = Http11Pool(
            s.origin,
            ssl_context=self._tls,
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
                pause = _RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)
                if attempt == attempts_allowed or loop.time() + pause >= deadline:
                    # No attempt could follow the back-off: report the cause now (not a timeout).
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
            await asyncio.sleep(pause)
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
            (b"Content-Type", CONTENT_TYPES[s.send].encode("ascii")),
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
