"""The single appender: one process that writes the audit log for every worker of a gateway.

Why a process of its own. With ``gateway serve --workers N`` each worker used to commit its own
batches: the workers then took turns on SQLite's single write lock (one fsync each, so every
exchange waited behind the other workers' commits), and inside each worker the writer thread
fought the event loop for the GIL after every statement. Here the workers send their records
over a Unix socket; the appender reads everything that has arrived from all of them, writes it
as ONE transaction (one fsync for all workers), and answers each worker with the index and leaf
hash of its records only after COMMIT returned, so an exchange is still acknowledged only once
its record is durable. Nobody else appends to the store while the gateway runs (the checkpoint
publisher only adds checkpoints), and indexes stay gap-free because one process assigns them.

Wire format, both directions: frames of a 4-byte big-endian length and an orjson array.
Worker -> appender: ``[[seq, record (str), claim_key | null, claim_expires, claim_now], ...]``.
Appender -> worker: ``[[seq, index | null, leaf_hash_hex | null, error | null], ...]`` where
index null and error null means the record's claim was already taken (a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.audit.outcomes import AppendResult, AuditUnavailable, ClaimRefused
from gateway.audit.publisher import PublisherThread
from gateway.audit.store import AuditStore, Claim

_LEN = struct.Struct(">I")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_FRAME = 64 * 1024 * 1024
# Per recv: below malloc's mmap threshold. recv(1 MiB) allocated (mmap) and released (munmap)
# a fresh megabyte on every wake-up, 14 us against 1.4 us here; a larger frame simply takes
# a few reads (the socket stays readable).
_RECV_BYTES = 64 * 1024


def new_address() -> str:
    """A Linux abstract-namespace socket name: nothing to clean up, private to this host.

    Not private to this user: an abstract socket has no file mode and its name is listed in
    /proc/net/unix for anyone to read, so the appender checks who connects (:func:`_own_user`).
    """
    return f"\0dtc-gateway-appender-{os.getpid()}-{os.urandom(6).hex()}"


# ------------------------------------------------------------------------------ server side
@dataclass
class _Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


def _frames(conn: _Conn) -> list[Any]:
    out = []
    buf = conn.buf
    while len(buf) >= 4:
        (n,) = _LEN.unpack_from(buf)
        if n > MAX_FRAME:
            raise ValueError("frame too large")
        if len(buf) < 4 + n:
            break
        out.append(_checked(orjson.loads(bytes(buf[4 : 4 + n]))))
        del buf[: 4 + n]
    return out


def _checked(frame: Any) -> list[Any]:
    """The frame if it is a list of ``[seq, record, claim_key, expires, now]``; else ValueError.

    Checked on arrival, so a bad frame costs only its own connection: found in ``_write`` it
    raised out of the appender's loop, and the appender (every worker's audit log) died.
    """
    if not isinstance(frame, list):
        raise ValueError("a frame is a list of items")
    for item in frame:
        if not (
            isinstance(item, list)
            and len(item) == 5
            and isinstance(item[0], int)
            and isinstance(item[1], str)
            and (item[2] is None or isinstance(item[2], str))
            and all(isinstance(x, int | float) for x in item[3:])
        ):
            raise ValueError("an item is [seq, record, claim_key, expires, now]")
    return frame


def _send(sock: socket.socket, doc: Any) -> None:
    body = orjson.dumps(doc)
    sock.sendall(_LEN.pack(len(body)) + body)


def serve(
    store: AuditStore,
    address: str,
    *,
    ready: Callable[[], None] | None = None,
    stop_event: threading.Event | None = None,
    publisher: PublisherThread | None = None,
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    drain_seconds: float = 0.0,
) -> None:
    """Run the appender until one of ``stop_signals`` (main thread) or ``stop_event``. Blocking.

    ``publisher`` (the periodic checkpoint publisher) runs beside it on the same store, from
    when the store is open until before it is closed.

    ``drain_seconds``: once told to stop, take no new connection but go on serving the
    connected workers until they have all hung up, for at most that long. Why: when the
    supervisor is killed (SIGKILL, the OOM killer), the kernel signals every child at once;
    workers still finishing delivered exchanges then found the appender gone and answered
    them 503 ("retry"), so a client's retry delivered them twice. Normally the supervisor
    stops the appender after the workers have exited, and it stops at once.
    """
    listener = _listen(address)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    stop = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stop
        stop = True

    if threading.current_thread() is threading.main_thread():
        for signum in stop_signals:
            signal.signal(signum, on_signal)
    store.size()  # open (and check) the store before anyone may append
    if publisher is not None:
        publisher.start()
    if ready is not None:
        ready()
    conns: dict[int, _Conn] = {}
    index_pending = getattr(store, "index_pending", None)  # deferred search indexing (SQLite)
    behind = index_pending is not None
    drain_until: float | None = None
    try:
        while True:
            if drain_until is None and (stop or (stop_event is not None and stop_event.is_set())):
                drain_until = time.monotonic() + drain_seconds
                sel.unregister(listener)
                listener.close()  # no new worker; the connected ones may finish
            if drain_until is not None and (not conns or time.monotonic() >= drain_until):
                break
            events = sel.select(timeout=0.005 if behind else 0.5)
            if not events and behind and index_pending is not None:
                behind = _index_some(index_pending)  # idle for 5 ms: then look at the sockets again
                continue
            batch = _accept_and_read(events, listener, sel, conns)
            if batch:
                _write(store, batch)
                behind = index_pending is not None
    finally:
        if publisher is not None:
            publisher.stop()
        for conn in conns.values():
            conn.sock.close()
        listener.close()
        store.close()


def _listen(address: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    return listener


def _index_some(index_pending: Callable[[int], int]) -> bool:
    """Index a few records for search while idle; True while some are still pending."""
    try:
        return index_pending(256) > 0
    except Exception:  # the lock was busy or the step failed: try again later
        return True


def _accept_and_read(
    events: list[tuple[selectors.SelectorKey, int]],
    listener: socket.socket,
    sel: selectors.BaseSelector,
    conns: dict[int, _Conn],
) -> list[tuple[_Conn, list[Any]]]:
    """Accept new workers, read what the others sent; return the complete frames, in order.

    A worker whose connection closed (or failed) is dropped; its partial frame goes with it.
    """
    batch: list[tuple[_Conn, list[Any]]] = []
    for key, _ in events:
        if key.data is None:
            sock, _addr = listener.accept()
            if not _own_user(sock):
                sock.close()
                continue
            conn = _Conn(sock)
            conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)
            continue
        conn = key.data
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except OSError:
            data = b""
        if not data:
            _drop(conn, sel, conns)
            continue
        conn.buf += data
        try:
            frames = _frames(conn)
        except ValueError:  # not a worker speaking (orjson's decode error is a ValueError)
            _drop(conn, sel, conns)
            continue
        for frame in frames:
            batch.append((conn, frame))
    return batch


def _drop(conn: _Conn, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
    sel.unregister(conn.sock)
    conns.pop(conn.sock.fileno(), None)
    conn.sock.close()


def _own_user(sock: socket.socket) -> bool:
    """Whether the peer runs as this process's user (SO_PEERCRED, set by the kernel at connect).

    Anyone else could otherwise append records of their choosing to the audit log (they would
    be signed into checkpoints and served as the gateway's), or crash the appender.
    """
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    _pid, uid, _gid = _CREDS.unpack(creds)
    return bool(uid == os.geteuid())


def _write(store: AuditStore, batch: list[tuple[_Conn, list[Any]]]) -> None:
    """One transaction for everything that arrived; then each worker gets its answers."""
    owners: list[tuple[_Conn, int]] = []
    records: list[bytes] = []
    claims: list[Claim | None] = []
    for conn, items in batch:
        for seq, record, key, expires, now in items:
            owners.append((conn, seq))
            records.append(record.encode("utf-8"))
            claims.append(None if key is None else Claim(key, expires, now))
    answers: dict[int, tuple[_Conn, list[Any]]] = {}
    try:
        placed = store.append_batch(records, claims if any(claims) else None)
        rows: list[list[Any]] = [
            [seq, None, None, None] if p is None else [seq, p[0], p[1].hex(), None]
            for (_, seq), p in zip(owners, placed, strict=True)
        ]
    except Exception as e:  # the batch failed as a whole: every waiter learns it
        rows = [[seq, None, None, f"{type(e).__name__}: {e}"] for _, seq in owners]
    for (conn, _), row in zip(owners, rows, strict=True):
        answers.setdefault(id(conn), (conn, []))[1].append(row)
    for conn, out in answers.values():
        with contextlib.suppress(OSError):  # a worker that went away just misses its answers
            _send(conn.sock, out)


# ------------------------------------------------------------------------------ worker side
class RemoteAppender:
    """The worker's end: the same ``append`` as AuditLog, carried to the appender process.

    Records travel in frames, at most one frame in flight per worker (Nagle's rule, applied to
    commits): while a frame is unanswered the appender is busy committing it, so later records
    could only join its NEXT transaction anyway. Holding them in the outbox until the answer
    arrives, then sending them as one frame, costs them nothing, and a busy worker pays one
    write (and wakes the appender once) per commit instead of once per record: those writes
    were a sixth of a loaded worker's CPU. An idle worker still sends at once (the first
    record of a quiet moment waits for nothing).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[AppendResult]] = {}
        self._outbox: list[list[Any]] = []
        self._flush_scheduled = False
        self._in_flight = 0  # records sent and not yet answered
        self._sent_at: float | None = None  # monotonic time the frame in flight was sent
        self._broken: str | None = None
        self._task = self._loop.create_task(self._receive())

    @classmethod
    async def connect(cls, address: str) -> RemoteAppender:
        # Connected by hand: uvloop refuses abstract-namespace names given as a path.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    def append_nowait(
        self, record: bytes, *, claim: Claim | None = None
    ) -> asyncio.Future[AppendResult]:
        if self._broken is not None:
            raise AuditUnavailable(self._broken)
        self._seq += 1
        fut: asyncio.Future[AppendResult] = self._loop.create_future()
        self._waiting[self._seq] = fut
        if claim is None:
            self._outbox.append([self._seq, record.decode("utf-8"), None, 0.0, 0.0])
        else:
            self._outbox.append(
                [self._seq, record.decode("utf-8"), claim.key, claim.expires_at, claim.now]
            )
        if not self._flush_scheduled and not self._in_flight:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    async def append(self, record: bytes, *, claim: Claim | None = None) -> AppendResult:
        """Return once the appender has committed the record; ClaimRefused for a replay."""
        return await self.append_nowait(record, claim=claim)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._broken is not None:
            return
        body = orjson.dumps(self._outbox)
        self._in_flight += len(self._outbox)
        self._outbox = []
        self._sent_at = time.monotonic()
        self._writer.write(_LEN.pack(len(body)) + body)

    def _answered(self, rows: list[Any]) -> None:
        """An answer came: once everything sent is answered, send what waited meanwhile."""
        self._in_flight = max(0, self._in_flight - len(rows))
        if not self._in_flight:
            self._sent_at = None
            if self._outbox:
                self._flush()

    def trouble(self, now: float, patience: float) -> str | None:
        """Why records cannot be committed now, or None: the connection is gone, or the
        frame in flight has waited over ``patience`` s for its answer (a stalled appender).
        For /readyz, which said ok while every exchange waited for a stalled appender."""
        if self._broken is not None:
            return self._broken
        sent = self._sent_at
        if sent is not None and now - sent > patience:
            return f"records unanswered for {now - sent:.1f} s"
        return None

    async def _receive(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(4)
                (n,) = _LEN.unpack(head)
                rows = orjson.loads(await self._reader.readexactly(n))
                self._answered(rows)
                for seq, index, leaf_hex, error in rows:
                    fut = self._waiting.pop(seq, None)
                    if fut is None or fut.done():
                        continue
                    if error is not None:
                        fut.set_exception(AuditUnavailable(error))
                    elif index is None:
                        fut.set_exception(ClaimRefused("claim already taken"))
                    else:
                        fut.set_result(AppendResult(index, bytes.fromhex(leaf_hex)))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self._fail(f"the audit appender went away: {type(e).__name__}")
        except asyncio.CancelledError:
            self._fail("the audit appender connection was closed")
            raise

    def _fail(self, why: str) -> None:
        self._broken = why
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(AuditUnavailable(why))
        self._waiting.clear()

    async def aclose(self) -> None:
        self._flush()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
