"""Cross-cutting HTTP behaviour: every error becomes an RFC 9457 problem, never a stack trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from gateway.errors import GatewayError, Internal, MethodNotAllowed, NotFound

log = structlog.get_logger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    except GatewayError as e:
        log.info("http.problem", path=request.path, status=e.status, cause=e.slug)
        return problem_response(e, instance=request.path)
    except web.HTTPException as e:
        if e.status == 404:
            return problem_response(NotFound(f"no route {request.method} {request.path[:200]}"))
        if e.status == 405:
            return problem_response(
                MethodNotAllowed(f"{request.method} is not allowed on {request.path[:200]}")
            )
        raise
    except Exception:
        log.exception("http.internal_error", path=request.path)
        return problem_response(Internal("the gateway failed unexpectedly; the error was logged"))
