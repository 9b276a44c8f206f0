"""A small HTTP/1.1 client for one origin: a pool of keep-alive connections on ``asyncio.Protocol``.

Why not aiohttp's client here: it costs 100-160 µs of CPU per request on the gateway's machines,
a quarter of an exchange's budget. This client does only what the ``http`` connector needs, with
no streams, no middlewares and no cookie or redirect machinery: write one request, parse one
response with the framing rules of RFC 9112, hand back ``(status, headers, body)``.

Framing (RFC 9112 section 6): no body for HEAD, 1xx, 204 and 304; ``Transfer-Encoding: chunked``
(trailers are read, checked and dropped); ``Content-Length``; otherwise the body runs to the end of
the connection. Interim 1xx answers are skipped. Anything ambiguous is refused with
:class:`ProtocolError` rather than guessed at: both ``Content-Length`` and ``Transfer-Encoding``,
differing ``Content-Length`` values, a transfer coding other than ``chunked``, obs-fold, bare CR
or LF, control characters, bad chunk sizes, an oversized head. A body over ``max_response_bytes``
raises :class:`ResponseTooLarge` (which carries the status and headers) as soon as it is known,
read no further. No error message quotes the response: it may hold personal data.

Connections: one slot per connection, at most ``limit``; requests beyond wait for a slot. A
connection goes back to the pool only after a complete response that allows keep-alive (HTTP/1.1
without ``Connection: close``, or HTTP/1.0 with ``keep-alive``) with no stray bytes after it and
the request fully written; on any error or cancellation it is aborted. Idle connections are used
most recent first, and dropped after ``keepalive_timeout``; one idle for over a second first gets
two loop turns to take in a close that arrived meanwhile. A pooled connection found closed
before the request goes out is skipped; one whose write fails at once (nothing reached the peer)
is replaced by ONE fresh connection. Once a byte may have reached the provider the error is
surfaced, never retried here: a POST must not be sent twice behind the caller's back.

Timeouts other than ``connect_timeout`` are the caller's (``asyncio.timeout``): cancellation
aborts the connection in use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "Http11Pool",
    "HttpClientError",
    "PoolClosed",
    "ProtocolError",
    "Response",
    "ResponseTooLarge",
    "TlsError",
    "check_header",
]

MAX_HEAD_BYTES: Final = 64 * 1024  # status line + header section (and, separately, trailers)
MAX_FIELDS: Final = 128
_MAX_CHUNK_LINE: Final = 4096
_MAX_CHUNK_EXT_BYTES: Final = 64 * 1024  # all chunk extensions of one response together
_STALE_CHECK_AFTER: Final = 1.0  # idle seconds after which a connection is re-checked before use

_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_TARGET_CHARS: Final = bytes(range(0x21, 0x7F))
_BLOCK_CHARS: Final = _FIELD_CHARS + b"\r\n"
_HEX: Final = b"0123456789abcdefABCDEF"
_POOL_HEADERS: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})


class HttpClientError(Exception):
    """Base of this client's errors. Messages name the cause, never quote the response."""


class ConnectError(HttpClientError):
    """No connection could be opened (refused, unreachable, name not resolved): nothing sent."""


class ConnectTimeout(ConnectError):
    """Opening the connection (TCP and TLS handshake) took longer than ``connect_timeout``."""


class TlsError(HttpClientError):
    """The TLS handshake or session failed (certificate not trusted, client certificate refused)."""


class ConnectionLost(HttpClientError):
    """The connection closed or failed before the response was complete."""


class ProtocolError(HttpClientError):
    """The response is not well-formed HTTP/1.1, or its framing is ambiguous."""


class ResponseTooLarge(HttpClientError):
    """The body exceeds ``max_response_bytes``; the head is kept for the caller's checks."""

    def __init__(self, limit: int, status: int, headers: dict[str, str]) -> None:
        super().__init__(f"response body exceeds {limit} bytes")
        self.status = status
        self.headers = headers


class PoolClosed(HttpClientError):
    """The pool was closed."""


class Response:
    """A complete response: header names are lowercased, repeated fields joined with ', '."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


def check_header(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    """Encode one request header field (value as UTF-8); ValueError for a bad name or value."""
    raw_name = name if isinstance(name, bytes) else name.encode("ascii", "replace")
    raw_value = value if isinstance(value, bytes) else value.encode("utf-8")
    if not raw_name or raw_name.translate(None, _TCHAR):
        raise ValueError(f"invalid header name {name!r}")
    if raw_value.translate(None, _FIELD_CHARS):
        raise ValueError(f"header {name!r}: value has control characters (CR, LF, NUL...)")
    if raw_name.lower() in _POOL_HEADERS:
        raise ValueError(f"header {name!r} is set by the client")
    return raw_name, raw_value


# --- response parsing ---------------------------------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_EOF, _DONE = range(8)


def _parse_fields(block: bytes, headers: dict[str, str]) -> None:
    """Field lines (``name: value`` joined by CRLF) into ``headers``; ProtocolError if malformed.

    The whole block is checked at once (only field characters, CR and LF only as CRLF pairs),
    then each line only needs a token check of its name: no obs-fold, no space before the colon.
    """
    if block.translate(None, _BLOCK_CHARS):
        raise ProtocolError("control character in the response head")
    lines = block.decode("latin-1").split("\r\n")
    if block.count(b"\r") != len(lines) - 1 or block.count(b"\n") != len(lines) - 1:
        raise ProtocolError("bare CR or LF in the response head")
    if len(lines) > MAX_FIELDS:
        raise ProtocolError("too many header fields")
    names = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name:
            names.append(" ")  # refused below, with the reason
            continue
        names.append(name)
        key = name.lower()
        value = value.strip(" \t")
        seen = headers.get(key)
        headers[key] = value if seen is None else f"{seen}, {value}"
    if "".join(names).encode("latin-1").translate(None, _TCHAR):
        if any(line[:1] in (" ", "\t") for line in lines):
            raise ProtocolError("obsolete line folding in a header field")
        raise ProtocolError("malformed header field")


class _Parser:
    """Incremental parser of one response; ``feed`` returns it once complete."""

    __slots__ = (
        "_body", "_chunk_ext", "_head_bytes", "_head_only", "_max_body", "_pending",
        "_remaining", "_state", "_trailer_lines", "extra", "headers", "keep_alive", "status",
    )  # fmt: skip

    def __init__(self, max_body: int, *, head_only: bool) -> None:
        self._max_body = max_body
        self._head_only = head_only
        self._state = _HEAD
        self._pending = b""
        self._head_bytes = 0
        self._body: bytes | bytearray = b""
        self._remaining = 0
        self._chunk_ext = 0
        self._trailer_lines = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.extra = False  # bytes after the response: the connection is out of step, not reused

    @property
    def started(self) -> bool:
        return self._state != _HEAD or bool(self._pending) or self._head_bytes > 0

    def response(self) -> Response:
        return Response(self.status, self.headers, bytes(self._body))

    def feed(self, data: bytes) -> bool:
        """Consume ``data``; True once the response is complete (then ``response()``)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, size = 0, len(data)
        while True:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                take = min(size - pos, self._remaining)
                if take:
                    if not self._body and take == self._remaining and state == _LENGTH:
                        self._body = data[pos : pos + take]  # the whole body at once: no copy
                    else:
                        if not isinstance(self._body, bytearray):
                            self._body = bytearray(self._body)
                        self._body += data[pos : pos + take]
                    pos += take
                    self._remaining -= take
                if self._remaining:
                    return False
                self._state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    start = data[pos : pos + 7]
                    if start != b"HTTP/1."[: len(start)]:
                        raise ProtocolError("not an HTTP/1.1 response")
                    self._need_more(data, pos, MAX_HEAD_BYTES - self._head_bytes, "head")
                    return False
                self._head_bytes += end + 4 - pos
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                self._on_head(data[pos:end])
                pos = end + 4
            elif state in (_CHUNK_SIZE, _TRAILER):
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._need_more(data, pos, _MAX_CHUNK_LINE, "chunk line")
                    return False
                line = data[pos:end]
                pos = end + 2
                if state == _CHUNK_SIZE:
                    self._on_chunk_size(line)
                elif line:
                    self._on_trailer(line)
                else:
                    self._state = _DONE
            elif state == _CHUNK_END:
                if size - pos < 2:
                    self._pending = data[pos:]
                    return False
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _UNTIL_EOF:
                self._grow(data[pos:])
                return False
            else:  # _DONE
                self.extra = pos < size
                return True

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the response (a body delimited by the close)."""
        if self._state == _UNTIL_EOF:
            self.keep_alive = False
            self._state = _DONE
            return True
        return self._state == _DONE

    def _need_more(self, data: bytes, pos: int, limit: int, what: str) -> None:
        rest = data[pos:]
        if len(rest) > limit:
            raise ProtocolError(f"response {what} too large")
        if rest.count(b"\n") != rest.count(b"\r\n"):
            raise ProtocolError("bare LF line ending in the response")
        self._pending = rest

    def _grow(self, data: bytes) -> None:
        if len(self._body) + len(data) > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        if not isinstance(self._body, bytearray):
            self._body = bytearray(self._body)
        self._body += data

    def _on_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        version = line[:9]
        if version == b"HTTP/1.1 ":
            http10 = False
        elif version == b"HTTP/1.0 ":
            http10 = True
        else:
            raise ProtocolError("not an HTTP/1.1 status line")
        code = line[9:12]
        if (
            len(code) != 3
            or not code.isdigit()
            or line[12:13] not in (b"", b" ")
            or line[13:].translate(None, _FIELD_CHARS)
        ):
            raise ProtocolError("malformed status line")
        status = int(code)
        if not 100 <= status <= 599:
            raise ProtocolError("status code out of range")
        headers: dict[str, str] = {}
        if line_end >= 0:
            _parse_fields(head[line_end + 2 :], headers)
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch (101)")
            return  # interim answer (100, 103): the final one follows; its bytes count too
        self.status, self.headers = status, headers
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = not http10
        else:
            tokens = {t.strip().lower() for t in connection.split(",")}
            self.keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
        if self._head_only or status == 204 or status == 304:
            self._state = _DONE
        elif "transfer-encoding" in headers:
            self._framing_chunked(headers["transfer-encoding"], http10)
        elif "content-length" in headers:
            self._framing_length(headers["content-length"])
        else:
            self.keep_alive = False  # delimited by the close (RFC 9112 6.3 rule 8)
            self._state = _UNTIL_EOF

    def _framing_chunked(self, coding: str, http10: bool) -> None:
        if http10 or "content-length" in self.headers:
            raise ProtocolError("ambiguous framing: Transfer-Encoding with Content-Length")
        if coding != "chunked" and [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
            raise ProtocolError("unsupported Transfer-Encoding")
        self._state = _CHUNK_SIZE

    def _framing_length(self, value: str) -> None:
        if not (value.isdigit() and value.isascii()):
            values = {v.strip() for v in value.split(",")}  # "42, 42" is allowed; "42, 43" not
            value = values.pop()
            if values or not (value.isdigit() and value.isascii()):
                raise ProtocolError("invalid or conflicting Content-Length")
        if len(value) > 18:
            raise ProtocolError("invalid Content-Length")
        self._remaining = int(value)
        if self._remaining > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        self._state = _LENGTH if self._remaining else _DONE

    def _on_chunk_size(self, line: bytes) -> None:
        digits, semicolon, extension = line.partition(b";")
        if semicolon:
            digits = digits.rstrip(b" \t")
            self._chunk_ext += len(extension)
            if extension.translate(None, _FIELD_CHARS) or self._chunk_ext > _MAX_CHUNK_EXT_BYTES:
                raise ProtocolError("invalid chunk extension")
        if not digits or digits.translate(None, _HEX) or len(digits) > 16:
            raise ProtocolError("invalid chunk size")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILER
            return
        if len(self._body) + size > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        self._remaining = size
        self._state = _CHUNK_DATA

    def _on_trailer(self, line: bytes) -> None:
        self._trailer_lines += 1
        self._head_bytes += len(line) + 2
        if self._trailer_lines > MAX_FIELDS or self._head_bytes > 2 * MAX_HEAD_BYTES:
            raise ProtocolError("trailer section too large")
        _parse_fields(line, {})  # checked, then dropped: nothing here reads trailers


# --- connections --------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One connection; at most one request in flight (no pipelining)."""

    def __init__(self, pool: Http11Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[_Parser] | None = None
        self.closed = False  # closed, closing or no longer trustworthy: never reused
        self.in_idle = False
        self.reused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # best effort
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, parser: _Parser) -> asyncio.Future[_Parser]:
        assert self.transport is not None
        self._parser = parser
        self._waiter = waiter = self._pool.loop.create_future()
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection is out of step
            self.abort()
            return
        try:
            done = parser.feed(data)
        except HttpClientError as exc:
            self._finish(None, exc)
            self.abort()
            return
        if done:
            self._finish(parser, None)

    def eof_received(self) -> bool:
        self.closed = True
        self._on_end(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_end(exc)
        self._pool._lost(self)

    def _on_end(self, exc: Exception | None) -> None:
        parser = self._parser
        if parser is None:
            return
        if exc is None and parser.feed_eof():
            self._finish(parser, None)
        elif isinstance(exc, ssl.SSLError):
            self._finish(None, TlsError(f"TLS session failed ({type(exc).__name__})"))
        else:
            where = "mid-response" if parser.started else "before answering"
            cause = f" ({type(exc).__name__})" if exc is not None else ""
            self._finish(None, ConnectionLost(f"the peer closed the connection {where}{cause}"))

    def _finish(self, parser: _Parser | None, exc: HttpClientError | None) -> None:
        """Hand the waiting request its parsed response (``parser``) or its error (``exc``)."""
        self._parser = None
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if parser is not None:
            waiter.set_result(parser)
        elif exc is not None:
            waiter.set_exception(exc)

    def abort(self) -> None:
        """Drop the connection now; a request still waiting on it is cancelled."""
        self.closed = True
        self._parser = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http11Pool:
    """Keep-alive HTTP/1.1 connections to one origin (``scheme://host[:port]``)."""

    def __init__(
        self,
        url_origin: str,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        keepalive_timeout: float = 15.0,
    ) -> None:
        parts = urlsplit(url_origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url_origin must be an http:// or https:// origin")
        if parts.scheme == "http" and ssl_context is not None:
            raise ValueError("an ssl_context needs an https:// origin")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        default_port = 443 if parts.scheme == "https" else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        self._ssl = ssl_context
        if parts.scheme == "https" and ssl_context is None:
            self._ssl = ssl.create_default_context()
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != default_port:
            authority += f":{self._port}"
        self._host_line = b"Host: " + authority.encode("idna") + b"\r\n"
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_timeout
        self._open = 0  # slots taken: connections in use, idle or being opened
        self._idle: collections.deque[_Connection] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._connections: set[_Connection] = set()
        self._closed = False
        self.loop = asyncio.get_running_loop()

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        max_response_bytes: int,
    ) -> Response:
        """Send one request and read the whole response (cancel to give up: see the module)."""
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        data = self._encode(method, path_and_query, headers, body)
        parser = _Parser(max_response_bytes, head_only=method == "HEAD")
        conn = await self._acquire()
        try:
            waiter = conn.send(data, parser)
            if conn.reused and not conn.usable:
                # The write failed at once (peer reset while idle): nothing reached the peer.
                conn.abort()
                conn = await self._connect()
                waiter = conn.send(data, parser)
            await waiter
        except BaseException:
            conn.abort()
            self._free_slot()
            raise
        transport = conn.transport
        if (
            parser.keep_alive
            and not parser.extra
            and not conn.closed
            and transport is not None
            and not transport.get_write_buffer_size()
        ):
            self._release(conn)
        else:
            conn.close()
            self._free_slot()
        return parser.response()

    async def close(self) -> None:
        """Close every connection; requests in flight fail with ConnectionLost."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the connection pool is closed"))
        for conn in self._idle:
            conn.in_idle = False  # the slots are the pool's no longer
        self._idle.clear()
        for conn in list(self._connections):
            conn.close()
        for _ in range(20):  # let connection_lost run (TLS: close_notify), briefly
            if not self._connections:
                break
            await asyncio.sleep(0.005)
        for conn in list(self._connections):
            conn.abort()

    def _encode(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        body: bytes,
    ) -> bytes:
        raw_method = method.encode("ascii")
        raw_target = target.encode("ascii")
        if not raw_method or raw_method.translate(None, _TCHAR):
            raise ValueError("invalid method")
        if not raw_target or raw_target.translate(None, _TARGET_CHARS):
            raise ValueError("invalid request target")
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        names: list[bytes] = []
        fields: list[bytes] = []
        for name, value in pairs:  # encode; checked below, all at once
            raw_name = name if isinstance(name, bytes) else name.encode("ascii", "replace")
            raw_value = value if isinstance(value, bytes) else value.encode("utf-8")
            names.append(raw_name)
            fields += (raw_name, b": ", raw_value, b"\r\n")
        block = b"".join(fields)
        lowered = b" " + b" ".join(names).lower() + b" "
        if (
            not all(names)
            or b"".join(names).translate(None, _TCHAR)
            or block.translate(None, _BLOCK_CHARS)
            or block.count(b"\r") != len(names)
            or block.count(b"\n") != len(names)
            or b" host " in lowered
            or b" content-length " in lowered
            or b" transfer-encoding " in lowered
            or b" connection " in lowered
        ):
            for name, value in pairs:
                check_header(name, value)  # raises, naming the field
        length = b""
        if body or raw_method not in _NO_BODY_METHODS:
            length = b"Content-Length: %d\r\n" % len(body)
        return b"".join(
            (
                raw_method,
                b" ",
                raw_target,
                b" HTTP/1.1\r\n",
                self._host_line,
                block,
                length,
                b"\r\n",
                body,
            )
        )

    async def _acquire(self) -> _Connection:
        """A connection with its slot: an idle one (most recent first) or a new one."""
        while True:
            while self._idle:
                conn = self._idle.pop()
                conn.in_idle = False
                idle = self.loop.time() - conn.idle_since
                if conn.usable and idle > _STALE_CHECK_AFTER:
                    # Let the loop deliver a FIN or RST that came in while it sat idle.
                    try:
                        await asyncio.sleep(0)
                        await asyncio.sleep(0)
                    except BaseException:
                        conn.abort()
                        self._free_slot()
                        raise
                if not conn.usable or idle > self._keepalive:
                    conn.abort()
                    self._free_slot()
                    continue
                return conn
            if self._closed:
                raise PoolClosed("the connection pool is closed")
            if self._open < self._limit:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._free_slot()
                    raise
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                raise

    async def _connect(self) -> _Connection:
        """Open a connection (the caller holds its slot)."""
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self._connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed ({type(exc).__name__})") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect ({type(exc).__name__})") from None
        if self._closed:
            conn.abort()
            raise PoolClosed("the connection pool is closed")
        if conn.closed:  # pragma: no cover - closed between the handshake and here
            raise ConnectionLost("the peer closed the connection before answering")
        self._connections.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        """Back to the idle pool with its slot; stale idle connections are dropped first."""
        if self._closed:
            conn.close()
            self._free_slot()
            return
        now = self.loop.time()
        conn.idle_since, conn.reused, conn.in_idle = now, True, True
        idle = self._idle
        while idle and now - idle[0].idle_since > self._keepalive:
            stale = idle.popleft()
            stale.in_idle = False
            stale.close()
            self._free_slot()
        idle.append(conn)
        self._wake_one()

    def _free_slot(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _lost(self, conn: _Connection) -> None:
        """connection_lost: an idle connection gives its slot back; one in use is the caller's."""
        self._connections.discard(conn)
        if conn.in_idle:
            conn.in_idle = False
            self._idle.remove(conn)
            self._free_slot()
