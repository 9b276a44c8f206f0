"""The HTTP/1.1 connection: what aiohttp's parser refuses is answered as an RFC 9457 problem.

Why a module of its own: a request aiohttp cannot parse (bytes that are not HTTP, a bad request
line, a control character in a header, a line over 8190 bytes, bad chunked coding, an invalid
or duplicate ``Content-Length``) never reaches a route or a middleware. aiohttp answers it from
``RequestHandler.handle_error`` with its own ``text/plain`` 400 that quotes the offending raw
line back (a whole ``Authorization`` header, a citizen id in a path). There is no public hook
for that answer, so one subclass overrides ``handle_error`` and :class:`GatewayRunner` (the
``AppRunner`` `gateway serve` runs the app with) makes every connection with it. These are
aiohttp internals (``Server.__call__``'s arguments, ``AppRunner._make_server``): if aiohttp
changes them, ``test_a_request_aiohttp_cannot_parse_is_answered_with_a_problem_and_closed``
fails, as it must.

Such a request is not audited: aiohttp hands over neither its method nor its path (for a
header error, the request line it had read is gone), so nothing says it was an exchange, for
which service, or from whom. It gets one ``http.malformed_request`` log line naming the error's
kind (never its text, which quotes the raw bytes).
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from gateway.errors import PROBLEM_BASE, MalformedRequest

__all__ = ["GatewayRunner", "malformed_body_detail", "malformed_detail"]

log = structlog.get_logger("gateway.http")

# Most specific first (BadHttpMethod is a BadStatusLine). Fixed texts: the exception's own
# message quotes the raw bytes.
_DETAILS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (
        BadHttpMethod,
        "the request does not start with an HTTP method; send HTTP/1.1 (over TLS only to a"
        " TLS listener)",
    ),
    (BadStatusLine, "the request line is not 'METHOD /path HTTP/1.1'"),
    (LineTooLong, "the request line or a header line is longer than 8190 bytes"),
    (
        InvalidHeader,
        "a header is invalid: a control character in a name or value, a duplicate"
        " Content-Length, or Content-Length beside Transfer-Encoding",
    ),
    (InvalidURLError, "the request target is not a valid path"),
    (TransferEncodingError, "the body is not valid chunked transfer coding (RFC 9112 7.1)"),
    (ContentLengthError, "the body does not match its Content-Length"),
    (ContentEncodingError, "the body's Content-Encoding cannot be decoded"),
)


def malformed_body_detail(exc: BaseException | None) -> str:
    """:func:`malformed_detail` for a body that failed once its handler read it: aiohttp's
    RequestPayloadError, whose cause (when it names one) is the parser's error."""
    if isinstance(exc, HttpProcessingError):
        return malformed_detail(exc)
    return (
        "the request is not valid HTTP/1.1: its body cannot be decoded (invalid chunked"
        " coding, or not in the Content-Encoding it names)"
    )


def malformed_detail(exc: BaseException | None) -> str:
    """A fixed, actionable cause for what the parser refused (never the raw bytes)."""
    for kind, detail in _DETAILS:
        if isinstance(exc, kind):
            return f"the request is not valid HTTP/1.1: {detail}"
    return (
        "the request is not valid HTTP/1.1 (RFC 9112): check the request line, the headers (no"
        " control characters, one Content-Length and not beside Transfer-Encoding) and the"
        " chunked coding of the body"
    )


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with its error answer an RFC 9457 problem."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers when the parser refuses a request (its status, 400) or,
        should one ever escape the middlewares, when a handler raised (500): a problem, the
        connection closed. Same contract as the method it overrides."""
        if request.writer.output_size > 0:  # as aiohttp: an answer had begun, it cannot change
            raise ConnectionError("the response had begun; the connection is broken")
        if status < 500:
            log.info("http.malformed_request", error=type(exc).__name__, status=status)
            doc = {**MalformedRequest(malformed_detail(exc)).problem(), "status": status}
        else:
            log.error("http.server_error", status=status, exc_info=exc)
            doc = {
                "type": PROBLEM_BASE + "internal",
                "title": HTTPStatus(status).phrase,
                "status": status,
                "detail": "the gateway failed unexpectedly; the error was logged",
            }
        response = web.Response(
            status=status, body=orjson.dumps(doc), content_type="application/problem+json"
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    """aiohttp's server (the protocol factory), making :class:`_ProblemRequestHandler`s."""

    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests with a problem."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer  # the same object, its protocol factory ours
        return server
