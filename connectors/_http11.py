"""A small HTTP/1.1 client for one origin: a pool of keep-alive connections on ``asyncio.Protocol``.

Why not aiohttp's client here: it costs 100-160 µs of CPU per request on the gateway's machines,
a quarter of an exchange's budget. This client does only what the ``http`` connector needs, with
no streams, no middlewares and no cookie or redirect machinery: write one request, parse one
response with the framing rules of RFC 9112, hand back ``(status, headers, body)``.

Response parsing and framing (RFC 9112 section 6) live in :mod:`connectors._http11_parse`:
anything ambiguous is refused with :class:`ProtocolError`, a body over ``max_response_bytes``
raises :class:`ResponseTooLarge`, and no error message quotes the response. Request encoding
lives in :mod:`connectors._http11_request`: a bad method, target or header field is a ValueError
before any connection is taken, and the framing fields are the client's alone.

Connections: one slot per connection, at most ``limit``; requests beyond wait for a slot. A
connection goes back to the pool only after a complete response that allows keep-alive (HTTP/1.1
without ``Connection: close``, or HTTP/1.0 with ``keep-alive``) with no stray bytes after it and
the request fully written; otherwise it is aborted, not closed gracefully (that could wait on
the peer: to flush a request it stopped reading, for a TLS close_notify it never sends). Idle
connections are used most recent first, and dropped after ``keepalive_timeout``; one idle for
over a second first gets two loop turns to take in a close that arrived meanwhile. A pooled
connection found closed before the request goes out is skipped; one whose write fails at once
(nothing reached the peer) is replaced by ONE fresh connection. Once a byte may have reached
the provider the error is surfaced, never retried here: a POST must not be sent twice behind the
caller's back.

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

from connectors._http11_parse import HttpClientError, ProtocolError, Response, ResponseTooLarge
from connectors._http11_parse import Parser as _Parser  # private here; tests import it too
from connectors._http11_request import encode_request

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
]

_STALE_CHECK_AFTER: Final = 1.0  # idle seconds after which a connection is re-checked before use


class ConnectError(HttpClientError):
    """No connection could be opened (refused, unreachable, name not resolved): nothing sent."""


class ConnectTimeout(ConnectError):
    """Opening the connection (TCP and TLS handshake) took longer than ``connect_timeout``."""


class TlsError(HttpClientError):
    """The TLS handshake or session failed (certificate not trusted, client certificate refused)."""


class ConnectionLost(HttpClientError):
    """The connection closed or failed before the response was complete."""


class PoolClosed(HttpClientError):
    """The pool was closed."""


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
        data = encode_request(self._host_line, method, path_and_query, headers, body)
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
            # Not reused: drop it now, nothing more is owed to the peer. A graceful close would
            # wait on it (to flush a request it stopped reading, for a TLS close_notify it never
            # sends), holding the socket outside ``limit``.
            conn.abort()
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
            stale.abort()  # idle: nothing is owed; a TLS close would wait for close_notify
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
