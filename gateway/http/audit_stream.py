"""``GET /v1/audit/stream``: the live tail of the audit log, as Server-Sent Events.

It exists because the stream is the one part of the audit API with state that outlives a
request: a poller task shared by every open stream, a cap on how many are open, and a shutdown
that ends them all. Keeping that lifecycle here leaves the other handlers stateless.

Why this shape:

* One task per process polls the tree size (every ``POLL_SECONDS``, since other processes and
  instances append too) and wakes the streams, so a hundred open streams cost one store read
  per poll, not a hundred. It runs only while at least one stream is open.
* Each connection reads at most ``STREAM_BATCH`` records at a time and each write waits for the
  socket to drain; at most ``MAX_STREAMS`` are open per process (more get 429 with Retry-After).
* A stream resumes after ``Last-Event-ID`` (each event's ``id`` is its record's index), else
  starts at ``?from=``, else at the current end of the log. A comment line is sent after
  ``HEARTBEAT_SECONDS`` of quiet so proxies keep the connection open.
* A client that takes none of a write for ``limits.idle_timeout_seconds`` is dropped: without
  that, one that stops reading would keep its stream slot (and its buffers) until shutdown, and
  ``MAX_STREAMS`` such clients would shut operators out of the live tail.
* On shutdown every stream finishes its response; one stuck writing to a client that does not
  read is cancelled after two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.audit.log import AuditLog
from gateway.audit.store import StoredRecord
from gateway.errors import RateLimited
from gateway.http import app as keys
from gateway.http.audit_query import audit_of, check_params, int_param, record_item, req_int

log = structlog.get_logger("gateway.audit_api")  # One logger for the whole audit API.

POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 15.0
STREAM_BATCH = 256
MAX_STREAMS = 64  # Per process; more get 429 with Retry-After.


class ClientStalled(Exception):
    """The client took none of a write for the idle timeout: it is dropped."""


def abort(request: web.Request, event: str, error: Exception, **fields: Any) -> None:
    """A streamed answer failed after its status was sent: cut the connection, log why.

    No problem document can follow a 200 that is already on the wire; an unterminated
    chunked body is how HTTP tells the client the transfer failed. A stalled client's
    connection is aborted (reset), not closed: a close would wait, with the socket and its
    buffers, for the client to read what is queued.
    """
    if isinstance(error, ConnectionResetError):  # The client left: nothing went wrong here.
        log.info(event, reason="client disconnected", **fields)
    elif isinstance(error, ClientStalled):  # Nor here: the client stopped reading.
        log.info(event, reason=str(error), **fields)
    else:
        log.error(event, error=f"{type(error).__name__}: {error}", **fields)
    transport = request.transport
    if transport is None:
        return
    if isinstance(error, ClientStalled):
        _reset(transport)
    else:
        transport.close()


def _reset(transport: asyncio.Transport) -> None:
    """Drop the connection with a reset: SO_LINGER 0, so the kernel discards what the client
    never took (a plain close would leave it trying to deliver that for minutes)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Tail:
    """The log size, polled by one task per process while streams are open; wakes them."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.size = 0
        self.changed = asyncio.Event()
        self.stopping = False
        self.streams: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None

    def join(self, task: asyncio.Task[Any]) -> None:
        if len(self.streams) >= MAX_STREAMS:
            raise RateLimited(f"{MAX_STREAMS} audit streams are open already; retry later", 5)
        self.streams.add(task)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="audit-tail-poller")

    def leave(self, task: asyncio.Task[Any]) -> None:
        self.streams.discard(task)
        if not self.streams and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _poll(self) -> None:
        while True:
            try:
                size, _ = await self._app[keys.AUDIT].tree_head()
            except Exception as e:  # Store briefly unavailable: streams wait, polling goes on.
                log.warning("audit.tail_poll_failed", error=f"{type(e).__name__}: {e}")
            else:
                if size != self.size:
                    self.size = size
                    self._wake()
            await asyncio.sleep(POLL_SECONDS)

    async def shutdown(self, _app: web.Application) -> None:
        """on_shutdown: end every stream (they finish their response), then stop polling."""
        self.stopping = True
        self._wake()
        if self.streams:
            _, pending = await asyncio.wait(set(self.streams), timeout=2)
            for task in pending:  # Blocked writing to a client that does not read.
                task.cancel()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None


TAIL = web.AppKey("audit_tail", Tail)


def _stream_start(request: web.Request, size: int) -> int:
    """Last-Event-ID (resume after it), else ``?from=``, else the current end of the log."""
    last = request.headers.get("Last-Event-ID")
    if last is not None and last.strip():
        return req_int(last.strip(), "Last-Event-ID") + 1
    start = int_param(request.query.get("from"), "from", default=size)
    assert start is not None
    return start


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audit/stream``: ``id: <index>``, ``event: record``, ``data: <item JSON>``."""
    check_params(request, frozenset({"from"}))
    audit, tail = audit_of(request), request.app[TAIL]
    start = _stream_start(request, (await audit.tree_head())[0])
    task = asyncio.current_task()
    assert task is not None
    tail.join(task)
    try:
        resp = web.StreamResponse(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        resp.content_type = "text/event-stream"
        try:  # A client gone before the headers are written is a disconnect too, not a 500.
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            await _pump(request, resp, audit, tail, start)
        except Exception as e:
            abort(request, "audit.stream_ended", e)
        return resp
    finally:
        tail.leave(task)


async def _pump(
    request: web.Request, resp: web.StreamResponse, audit: AuditLog, tail: Tail, start: int
) -> None:
    """Send records from ``start`` on as they are committed, until shutdown or disconnect."""
    loop = asyncio.get_running_loop()
    stall = request.app[keys.DEPLOYMENT].config.limits.idle_timeout_seconds
    nxt, quiet_since = start, loop.time()
    size = max(tail.size, (await audit.tree_head())[0])
    while not tail.stopping:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if size > nxt:
            rows = await audit.records(nxt, min(size, nxt + STREAM_BATCH))
            if rows:
                await write_or_drop(resp, b"".join(_sse(r) for r in rows), stall)
                nxt, quiet_since = rows[-1].index + 1, loop.time()
                continue
        changed = tail.changed  # Taken before checking the size: no wake-up is lost.
        if tail.size > nxt:
            size = tail.size
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # Also notice a disconnect within a second.
                await changed.wait()
        size = max(size, tail.size)
        if loop.time() - quiet_since >= HEARTBEAT_SECONDS:
            await write_or_drop(resp, b": keepalive\n\n", stall)
            quiet_since = loop.time()
    await resp.write_eof()


async def write_or_drop(resp: web.StreamResponse, data: bytes, stall: float) -> None:
    """Write, waiting at most ``stall`` seconds for the client to take the data, else raise
    ClientStalled (for :func:`abort`): the stream and the export both write this way."""
    try:
        async with asyncio.timeout(stall):
            await resp.write(data)
    except TimeoutError:
        raise ClientStalled(f"client stopped reading for {stall:g} s") from None


def _sse(r: StoredRecord) -> bytes:
    return b"id: %d\nevent: record\ndata: %s\n\n" % (r.index, orjson.dumps(record_item(r)))
