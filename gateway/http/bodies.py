"""Reading a request body within the body limit and the body timeout.

Why a module of its own: every POST route reads a body, and each must hold the same two limits.
The size cap alone is not enough: a client that declares a body and then sends it a byte a
minute (or not at all) would keep a handler and a connection for as long as it likes. So the
whole body must arrive within ``limits.body_timeout_seconds`` of the headers (the headers
themselves are bounded by ``limits.idle_timeout_seconds``, which gateway.http.serving gives
aiohttp as its keep-alive timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import HttpVersion11, web

from gateway.errors import MalformedRequest, PayloadTooLarge, RequestTimeout
from gateway.http.protocol import malformed_body_detail

__all__ = ["Body", "continue_unless", "continue_within", "read_body", "read_whole"]


@dataclass(frozen=True, slots=True)
class Body:
    """What arrived: the bytes (empty when over the limit, late, cut short or undecodable),
    the declared length, whether the body was cut short by the timeout, whether the client
    closed the connection before sending all of it (``client_gone``), and why it could not be
    decoded (``malformed``: chunked coding or Content-Encoding, a fixed text)."""

    data: bytes
    declared: int | None
    timed_out: bool = False
    client_gone: bool = False
    malformed: str | None = None


async def read_body(request: web.Request, *, limit: int, time_limit: float) -> Body:
    """The body, never read whole when over ``limit`` (``declared`` then says more than
    ``limit``), and given up after ``time_limit`` seconds (``timed_out``).

    A client that closes (or resets) its connection mid-body gives ``client_gone``: the
    exchange is still an attempt to audit, and an answer nobody will read costs nothing.

    The caller decides what each means (the exchange pipeline audits all as rejections). A
    body given up on leaves unread bytes on the connection: the answer must close it
    (``web.StreamResponse.force_close``), or they would be read as the next request; so must
    the answer to a body that cannot be decoded.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        return Body(b"", declared)
    try:
        async with asyncio.timeout(time_limit):
            return Body(await request.read(), declared)
    except web.HTTPRequestEntityTooLarge:
        return Body(b"", max(declared or 0, limit + 1))
    except TimeoutError:
        return Body(b"", declared, timed_out=True)
    except web.RequestPayloadError as e:  # the client's bytes, not our fault: never a 500
        return Body(b"", declared, malformed=malformed_body_detail(e.__cause__))
    except ConnectionResetError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise  # not this request's connection: a fault to log as one
        return Body(b"", declared, client_gone=True)


async def read_whole(request: web.Request, *, limit: int, time_limit: float, what: str) -> bytes:
    """The body, or the problem a route that is not an exchange answers: 413 over ``limit``,
    408 after ``time_limit`` (the connection then closes; see :func:`read_body`)."""
    body = await read_body(request, limit=limit, time_limit=time_limit)
    if body.client_gone:  # nobody to answer: gateway.http.middlewares logs the disconnect
        raise ConnectionResetError("the client closed the connection mid-body")
    if body.timed_out:
        raise RequestTimeout.after(what, time_limit)
    if body.malformed is not None:
        raise MalformedRequest(body.malformed)
    if len(body.data) > limit or (body.declared is not None and body.declared > limit):
        raise PayloadTooLarge(f"{what} is larger than the body limit of {limit} bytes")
    return body.data


def continue_unless(
    refused: Callable[[web.Request], bool],
) -> Callable[[web.Request], Awaitable[None]]:
    """A route's ``expect_handler``: ``100 Continue`` only for a body the handler will read.

    Why: aiohttp's default sends 100 Continue to every ``Expect: 100-continue`` before the
    handler runs, so a client declaring a body over the limit is told to send it all, only to
    be refused without it being read. When ``refused(request)`` (e.g. the declared length is
    over the limit), nothing is sent: the handler answers (and closes the connection) before
    the body comes. Any other expectation is ignored, as RFC 9110 10.1.1 allows: aiohttp's
    answer to it was its own text/plain 417, made outside the middlewares (no problem, and an
    exchange not audited). Never answers itself: the handler always runs.
    """

    async def expect(request: web.Request) -> None:
        wanted = request.headers.get("Expect", "").strip().lower() == "100-continue"
        if wanted and request.version == HttpVersion11 and not refused(request):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's: the response proper has not begun

    return expect


def continue_within(limit: int) -> Callable[[web.Request], Awaitable[None]]:
    """:func:`continue_unless` the declared body is over ``limit`` (a route using
    :func:`read_whole`, which refuses such a body unread)."""
    return continue_unless(lambda request: (request.content_length or 0) > limit)
