"""Thin handlers: turn an aiohttp request into a RawRequest, and a result into a response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.audit.log import AuditUnavailable
from gateway.errors import NotReady, StoreUnavailable
from gateway.http import app as keys
from gateway.http.bodies import Body, continue_unless, read_body
from gateway.http.middlewares import peer_certificate, problem_response
from gateway.http.openapi import openapi_document
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import ExchangeMetrics
from gateway.models import ExchangeResult, RawRequest, Timings, rfc3339
from gateway.state import StateUnavailable

log = structlog.get_logger("gateway.exchange")

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class _ExchangeSettings:
    """What the exchange handler needs besides the pipeline, fixed when the routes are added."""

    clock: Callable[[], datetime]
    max_body_bytes: int
    body_timeout: float
    metrics: ExchangeMetrics
    in_flight: InFlight


class InFlight:
    """How many exchanges this worker is reading or processing, against its limit.

    Why: nothing else bounds them. Each holds its body (up to ``max_body_bytes``) for as long
    as the client takes to send it (``body_timeout_seconds``) and the provider to answer; a
    flood of slow requests would grow a worker's memory without end. One event loop per worker,
    so a plain counter is exact.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        """Take a place, if one is free."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


_EXCHANGE = web.AppKey("exchange_settings", _ExchangeSettings)
# Headers that name one value (RFC 9110 11.6.2; an Idempotency-Key is a structured Item):
# given twice, which one the sender meant is unknowable (aiohttp already refuses a repeated
# Content-Type or Content-Length).
_ONE_VALUE = ("Authorization", "Idempotency-Key")

READY_AFTER_FAILURE_SECONDS = 5.0


class RecentOutage:
    """Whether an exchange failed for want of the audit or state store in the last
    ``READY_AFTER_FAILURE_SECONDS``, with none succeeding since.

    Why: readiness reads (the tree head, a state table), and reads go on while writes fail (a
    write lock held past the busy timeout, an appender that cannot commit): /readyz said ok
    while every exchange got 503. A window, not a latch: a load balancer that stops sending
    traffic must see the gateway ready again after a while, or it would never try it again.
    """

    def __init__(self) -> None:
        self._failed_at: float | None = None

    def failed(self, now: float) -> None:
        self._failed_at = now

    def succeeded(self) -> None:
        self._failed_at = None

    def seconds_ago(self, now: float) -> float | None:
        """Seconds since the last such failure, if it is recent and unanswered by a success."""
        at = self._failed_at
        if at is None or now - at >= READY_AFTER_FAILURE_SECONDS:
            return None
        return now - at


_OUTAGE = web.AppKey("store_outage", RecentOutage)


def add_routes(app: web.Application, *, clock: Callable[[], datetime]) -> None:
    limits = app[keys.DEPLOYMENT].config.limits
    app[_OUTAGE] = RecentOutage()
    app[_EXCHANGE] = _ExchangeSettings(
        clock,
        limits.max_body_bytes,
        limits.body_timeout_seconds,
        app[keys.METRICS],
        InFlight(limits.max_concurrent_exchanges),
    )
    # Any POST under the prefix is an exchange attempt (audited; a name that is no service is
    # a 404 problem from the pipeline), whatever follows it: braces (left out of aiohttp's
    # default segment pattern), a trailing slash, no name, a "/" in it. The router's own 404
    # for those would not be audited.
    limit, in_flight = limits.max_body_bytes, app[_EXCHANGE].in_flight
    app.router.add_post(
        r"/v1/exchange/{service:[\s\S]*}",  # "." would leave out a newline
        exchange,
        # Neither a body over the limit nor one a full worker will not take is asked for.
        expect_handler=continue_unless(
            lambda r: (r.content_length or 0) > limit or in_flight.count >= in_flight.limit
        ),
    )
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)


async def exchange(request: web.Request) -> web.StreamResponse:
    settings = request.app[_EXCHANGE]
    admitted = settings.in_flight.enter()
    try:
        return await _exchange(request, settings, admitted)
    finally:
        if admitted:
            settings.in_flight.leave()


async def _exchange(
    request: web.Request, settings: _ExchangeSettings, admitted: bool
) -> web.StreamResponse:
    """One exchange; not ``admitted`` (the worker at its limit), a 503 without reading the
    body, audited like every refusal."""
    started = time.perf_counter()
    received_at = settings.clock()
    if admitted:
        limit, time_limit = settings.max_body_bytes, settings.body_timeout
        body = await read_body(request, limit=limit, time_limit=time_limit)
    else:
        body = Body(b"", request.content_length)
    fields = request.headers
    raw = RawRequest(
        service=request.match_info["service"],
        body=body.data,
        content_type=request.content_type,
        charset=request.charset,
        content_encoding=fields.get("Content-Encoding"),
        received_at=received_at,
        received_text=rfc3339(received_at),
        peer_cert_der=peer_certificate(request),
        authorization=fields.get("Authorization"),
        idempotency_key=fields.get("Idempotency-Key"),
        remote=request.remote,
        declared_length=body.declared,
        body_timed_out=body.timed_out,
        over_capacity=not admitted,
        client_gone=body.client_gone,
        body_malformed=body.malformed,
        repeated_header=next((h for h in _ONE_VALUE if len(fields.getall(h, ())) > 1), None),
    )
    response: web.Response
    try:
        result = await request.app[keys.PIPELINE].process(raw)
    except (AuditUnavailable, StateUnavailable) as e:
        request.app[_OUTAGE].failed(time.monotonic())
        log.error("exchange.unavailable", error=str(e))
        err = StoreUnavailable("the audit or state store is unavailable; retry")
        elapsed = time.perf_counter() - started
        _count(settings.metrics, raw.service, "exchange.unavailable", err.status, elapsed)
        response = problem_response(err)
    else:
        request.app[_OUTAGE].succeeded()
        headers = dict(result.headers)
        if result.exchange_id:
            headers["X-Exchange-Id"] = result.exchange_id
        _log_and_count(settings.metrics, raw.service, result, started)
        response = web.Response(
            status=result.status,
            body=result.body,
            content_type=result.content_type,
            headers=headers,
        )
    unread = body.declared is not None and body.declared > settings.max_body_bytes
    cut = body.timed_out or body.client_gone or body.malformed is not None
    if cut or unread or not admitted:
        # The rest of that body may be on its way, unread: close the connection rather than
        # read it as the next request, or make aiohttp read and discard it.
        response.force_close()
    return response


def _log_and_count(
    metrics: ExchangeMetrics, service: str, result: ExchangeResult, started: float
) -> None:
    """The exchange's one log line and its metrics, from the same outcome and times."""
    elapsed = time.perf_counter() - started
    event = result.log.get("event", "exchange")
    fields: dict[str, Any] = {k: v for k, v in result.log.items() if k != "event"}
    fields.update(exchange_id=result.exchange_id, status=result.status, ms=round(elapsed * 1000, 2))
    if result.timings is not None:  # accepted: where its time went (audit_ms, upstream_ms)
        fields.update(result.timings.fields())
    log.info(event, **fields)
    _count(metrics, service, event, result.status, elapsed, result.timings)


def _count(
    metrics: ExchangeMetrics,
    service: str,
    event: str,
    status: int,
    seconds: float,
    timings: Timings | None = None,
) -> None:
    """Record an answered exchange; a failure to (e.g. a full disk under the workers' metrics
    files) is logged and never costs the sender an answer that is already audited."""
    try:
        metrics.observe(service, event, status, seconds, timings)
    except Exception:
        log.exception("metrics.record_failed")


async def jwks(request: web.Request) -> web.Response:
    """The signing keys (current first, then retired, with ``x5c``), then the checkpoint key."""
    doc = request.app[keys.KEYRING].jwks()
    doc["keys"] += [dict(k) for k in request.app[keys.NOTE_KEYS]]
    return _json_response(doc)


async def healthz(request: web.Request) -> web.Response:
    return _json_response({"status": "ok"})


READY_CHECK_SECONDS = 2.0
"""How long /readyz waits for any one check. A stalled store or a connector plugin whose
readiness check hangs made the probe itself hang (one more handler per probe period) and
named nothing; such a check is now reported failed, by name."""


async def _check(checks: dict[str, str], name: str, probe: Awaitable[bool]) -> None:
    """Record ``name``'s outcome: ok, not ready (``probe`` gave False), or failed and why.

    The public answer names only the kind of failure: an error's text can hold a file path or
    a database's host and user. The whole text goes to the log.
    """
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            answer = await probe
    except TimeoutError:
        log.warning("readyz.check_timed_out", check=name, seconds=READY_CHECK_SECONDS)
        checks[name] = f"failed: no answer within {READY_CHECK_SECONDS:g} s"
    except Exception as e:
        log.warning("readyz.check_failed", check=name, error=f"{type(e).__name__}: {e}")
        checks[name] = f"failed: {type(e).__name__}"
    else:
        checks[name] = "ok" if answer else "not ready"


async def _raises_or_true(probe: Awaitable[object]) -> bool:
    """A store check that fails by raising: True once it returns."""
    await probe
    return True


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    # Taken first: the store checks below may wait on a store that is failing.
    ago = app[_OUTAGE].seconds_ago(time.monotonic())
    checks: dict[str, str] = {}
    await _check(checks, "state", _raises_or_true(app[keys.STATE].check()))  # off the loop
    await _check(checks, "audit", _raises_or_true(app[keys.AUDIT].tree_head()))
    if ago is not None:  # reads work, writes did not (see RecentOutage)
        checks["writes"] = f"failing: an exchange could not be audited {ago:.1f} s ago"
    remote = app.get(keys.APPENDER)
    if remote is not None:  # under `gateway serve`: records go to the appender process
        trouble = remote.trouble(time.monotonic(), READY_CHECK_SECONDS)
        checks["appender"] = "ok" if trouble is None else f"failed: {trouble}"
    checks["keys"] = "ok"
    # Together: each may take READY_CHECK_SECONDS, and a probe must not take that per service.
    names = {sid: f"connector:{sid}" for sid in app[keys.CONNECTORS]}
    found: dict[str, str] = {}
    await asyncio.gather(
        *(_check(found, names[sid], c.ready()) for sid, c in app[keys.CONNECTORS].items())
    )
    checks.update((name, found[name]) for name in names.values())  # in the config's order
    ok = all(v == "ok" for v in checks.values())
    return _json_response(
        {"status": "ok" if ok else "not ready", "checks": checks}, 200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Collecting reads /proc or the workers' files: off the loop. A
    failure is logged and answered 503 (Prometheus marks the target down), never a 500."""
    try:
        body = await asyncio.to_thread(request.app[keys.METRICS].exposition)
    except Exception:
        log.exception("metrics.collection_failed")
        err = NotReady("the metrics could not be collected; the error was logged")
        return problem_response(err, instance=request.path)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return _json_response(openapi_document(request.app[keys.DEPLOYMENT]))


def _json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=_JSON)
