"""Cross-cutting HTTP behaviour: every error becomes an RFC 9457 problem, never a stack trace,
and every log line of a request carries its request id."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from gateway.audit.outcomes import AuditUnavailable
from gateway.errors import (
    BadRequest,
    GatewayError,
    Internal,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    StoreUnavailable,
)
from gateway.models import uuid7

log = structlog.get_logger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = "X-Request-Id"
_RID = web.RequestKey("request_id", str)
# A caller's id is kept only when it is short and plain: it goes into every log line.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request, and return it as ``X-Request-Id``.

    The caller's ``X-Request-Id`` is reused when it is plain (so a unit system can follow its
    call through our logs), otherwise a new UUIDv7 is made. Outermost middleware: the problem
    and authorization log lines carry it too.
    """
    given = request.headers.get(REQUEST_ID, "")
    rid = given if _REQUEST_ID_RE.fullmatch(given) else uuid7()
    request[_RID] = rid
    # bind + reset by token: what bound_contextvars does, without its generator (a third of
    # the cost, and this runs for every request).
    tokens = structlog.contextvars.bind_contextvars(request_id=rid)
    try:
        return await handler(request)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed ones included, names its request id."""
    rid = request.get(_RID)
    if rid is not None:
        response.headers[REQUEST_ID] = rid


def peer_certificate(request: web.Request) -> bytes | None:
    """The TLS client certificate (DER) of the connection, when it presented one."""
    transport = request.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    return der or None


def problem_response(err: GatewayError, *, instance: str | None = None) -> web.Response:
    return web.Response(
        status=err.status,
        body=orjson.dumps(err.problem(instance=instance)),
        content_type="application/problem+json",
        headers=dict(err.extra_headers()),
    )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AuditUnavailable as e:  # A read (or checkpoint) of the log: exchanges answer their own.
        err = StoreUnavailable(
            "the audit log is unavailable right now; retry in a moment", log_detail=e.log_detail
        )
        log.warning(
            "http.problem",
            path=request.path,
            status=err.status,
            cause=err.slug,
            reason=e.log_detail,
        )
        return problem_response(err, instance=request.path)
    except GatewayError as e:
        fields = {"reason": e.log_detail} if e.log_detail != e.detail else {}
        log.info("http.problem", path=request.path, status=e.status, cause=e.slug, **fields)
        response = problem_response(e, instance=request.path)
        # The body's rest may still come, or its framing is broken: never parse what follows.
        if isinstance(e, RequestTimeout | MalformedRequest):
            response.force_close()
        return response
    except web.HTTPException as e:
        if e.status == 404:
            return problem_response(NotFound(f"no route {request.method} {request.path[:200]}"))
        if isinstance(e, web.HTTPMethodNotAllowed):
            allowed = e.allowed_methods
            return problem_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed on {request.path[:200]};"
                    f" use {', '.join(sorted(allowed))}",
                    allowed=allowed,
                ),
                instance=request.path,
            )
        raise
    except Exception as e:
        if isinstance(e, ConnectionResetError) and _client_gone(request):
            # The client left mid-request (e.g. while sending its body): nothing failed here,
            # and the answer below reaches nobody (aiohttp drops it quietly).
            log.info("http.client_disconnected", path=request.path)
            return problem_response(BadRequest("the client closed the connection mid-request"))
        log.exception("http.internal_error", path=request.path)
        return problem_response(Internal("the gateway failed unexpectedly; the error was logged"))


def _client_gone(request: web.Request) -> bool:
    """Whether this request's own connection is closed (a reset from elsewhere, such as a
    provider's or the appender's connection, is still an internal error)."""
    transport = request.transport
    return transport is None or transport.is_closing()
