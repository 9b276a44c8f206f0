"""Durable exchange state shared by every worker process: idempotency keys and their results.

Why SQLite with group commit: an idempotent retry must get the stored answer even after a
restart and from another ``--workers`` process, so keys and answers live on disk. (Signed
request ids, the replay guard, are spent in the audit store, in the same transaction as the
"accepted" record.) Writes from
concurrent exchanges are batched by one writer thread into one transaction (one fsync), as the
audit log does, because a thread hop plus an fsync per request would cap throughput.

Each operation runs inside its own SAVEPOINT of the shared transaction, so one operation that
fails (a constraint, say) does not undo the others in its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway import sqlitedb
from gateway.idempotency import IdempotencyStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    sender TEXT NOT NULL,
    service TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    body BLOB,
    expires_at REAL NOT NULL,
    PRIMARY KEY (sender, service, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires_at);
"""

# Settling a claim touches only a pending one, and (when the body's digest is given) only
# the one for that body: see StateStore.idempotency_finish.
_RELEASE = (
    "DELETE FROM idempotency WHERE sender=? AND service=? AND key=?"
    " AND state='pending' AND (? IS NULL OR request_sha256=?)"
)
_ANSWER = (
    "UPDATE idempotency SET state='done', status=?, body=?, expires_at=COALESCE(?, expires_at)"
    " WHERE sender=? AND service=? AND key=?"
    " AND state='pending' AND (? IS NULL OR request_sha256=?)"
)

# Expired keys are deleted in the transaction of a later idempotency_begin, at most this often
# and this many at a time, so the table stays about one TTL's worth of keys and no purge holds
# the writer long. A purge that hits the cap runs again at the next begin.
PURGE_EVERY_SECONDS = 60.0
PURGE_MAX_ROWS = 1000


class PurgeSchedule:
    """When a store purges expired keys: due at the first begin, then every
    ``PURGE_EVERY_SECONDS``, and at once again after a purge that hit ``PURGE_MAX_ROWS``."""

    def __init__(self) -> None:
        self._next = 0.0  # clock time of the next purge

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + PURGE_EVERY_SECONDS
        return True

    def purged(self, deleted: int, now: float) -> None:
        if deleted >= PURGE_MAX_ROWS:
            self._next = now  # more to delete: again at the next begin


_STOP = object()


class StateUnavailable(Exception):
    """The state database could not be written; the exchange must not proceed."""


class BatchWriter:
    """One thread, one connection; everything pending runs in one transaction.

    ``submit`` returns an asyncio future resolved after COMMIT (durable), with a single
    ``call_soon_threadsafe`` per batch to wake the loop.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, max_batch: int = 512):
        self._conn = conn
        self._path = path
        self._file = sqlitedb.file_identity(path)
        self._max = max_batch
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()
        self.batches = 0

    @property
    def file(self) -> tuple[int, int] | None:
        """(device, inode) of the database file this writer opened."""
        return self._file

    def submit(
        self, op: Callable[[sqlite3.Connection], T], *, savepoint: bool = True
    ) -> asyncio.Future[T]:
        """Queue ``op``; ``savepoint=False`` for a single statement that cannot half-apply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._q.put((op, fut, loop, savepoint))
        return fut

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            items = [item]
            stop = False
            while len(items) < self._max:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                items.append(nxt)
            self._write(items)
            if stop:
                return

    def _write(self, items: list[Any]) -> None:
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            _require_same_file(self._path, self._file)
            sqlitedb.begin_immediate(self._conn, timeout=30)
            for op, fut, _, savepoint in items:
                if not savepoint:
                    results.append((fut, True, op(self._conn)))
                    continue
                self._conn.execute("SAVEPOINT op")
                try:
                    value = op(self._conn)
                except Exception as e:
                    self._conn.execute("ROLLBACK TO op")
                    results.append((fut, False, e))
                else:
                    results.append((fut, True, value))
                self._conn.execute("RELEASE op")
            self._conn.execute("COMMIT")
            self.batches += 1
        except Exception as e:
            # Whatever went wrong, every waiter gets an answer: a writer thread that died
            # silently would leave exchanges hanging forever.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            err = StateUnavailable(f"state database write failed: {e}")
            results = [(item[1], False, err) for item in items]
        loop = items[0][2]
        loop.call_soon_threadsafe(_settle, results)

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=30)


def _require_same_file(path: Path, opened: tuple[int, int] | None) -> None:
    """StateUnavailable once ``path`` no longer names the file opened (see
    sqlitedb.file_identity): replay ids and idempotency keys written to an unlinked file are
    gone at the next start, and a retry would be delivered twice."""
    if sqlitedb.file_identity(path) != opened:
        raise StateUnavailable(f"state database {path} was removed or replaced while open")


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


@dataclass(frozen=True, slots=True)
class IdempotencyEntry:
    request_sha256: str
    state: str  # "pending" | "done"
    status: int | None
    body: bytes | None


class StateStore:
    """Replay ids and idempotency records, durable and shared across processes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self._path = path
        self._clock = clock
        conn = sqlitedb.connect(path, timeout=30)
        sqlitedb.begin_immediate(conn, timeout=30)
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("COMMIT")
        self._reader = sqlitedb.connect(path, timeout=30)
        self._reader_lock = threading.Lock()
        self._writer = BatchWriter(conn, path)
        self._purges = PurgeSchedule()

    async def idempotency_begin(
        self, sender: str, service: str, key: str, request_sha256: str, ttl: float
    ) -> IdempotencyEntry | None:
        """Claim the key; None when claimed now, else the existing entry (any state).

        Also purges expired keys now and then (see ``PURGE_EVERY_SECONDS``).
        """
        now = self._clock()
        purge = self._purges.due(now)

        def op(conn: sqlite3.Connection) -> IdempotencyEntry | None:
            row = conn.execute(
                "SELECT request_sha256, state, status, body, expires_at FROM idempotency "
                "WHERE sender=? AND service=? AND key=?",
                (sender, service, key),
            ).fetchone()
            if purge:
                self._purges.purged(_purge(conn, now), now)
            if row is not None and row[4] > now:
                return IdempotencyEntry(row[0], row[1], row[2], row[3])
            conn.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, 'pending', NULL, NULL, ?)",
                (sender, service, key, request_sha256, now + ttl),
            )
            return None

        return await self._writer.submit(op)

    async def idempotency_finish(
        self,
        sender: str,
        service: str,
        key: str,
        status: int | None,
        body: bytes | None,
        *,
        request_sha256: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Store the final answer (status None: release the key so a retry may go through),
        kept ``ttl`` seconds from now (None: until the claim's own expiry).

        Only a pending claim is settled, and with ``request_sha256`` only the one for that
        body: a claim whose lease ran out may have been taken again since (see
        gateway.idempotency.pending_lease), and its answer must not be overwritten or
        deleted by the first attempt finishing late.
        """
        expires = None if ttl is None else self._clock() + ttl
        where = (sender, service, key, request_sha256, request_sha256)

        def op(conn: sqlite3.Connection) -> None:
            if status is None:
                conn.execute(_RELEASE, where)
            else:
                conn.execute(_ANSWER, (status, body, expires, *where))

        await self._writer.submit(op)

    async def purge_expired(self) -> int:
        """Delete up to ``PURGE_MAX_ROWS`` expired keys now; return how many were deleted."""
        now = self._clock()
        return await self._writer.submit(lambda conn: _purge(conn, now))

    def ping(self) -> None:
        """Blocking (call from a thread): read the table, so a lost or damaged file shows."""
        with self._reader_lock:
            _require_same_file(self._path, self._writer.file)
            self._reader.execute("SELECT 1 FROM idempotency LIMIT 1").fetchall()

    async def check(self) -> None:
        """Readiness: ``ping`` from a thread (disk I/O stays off the event loop)."""
        await asyncio.to_thread(self.ping)

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


def _purge(conn: sqlite3.Connection, now: float) -> int:
    """Delete expired keys, oldest first, at most PURGE_MAX_ROWS (uses idempotency_expires)."""
    cur = conn.execute(
        "DELETE FROM idempotency WHERE (sender, service, key) IN (SELECT sender, service, key"
        " FROM idempotency WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, PURGE_MAX_ROWS),
    )
    return max(0, cur.rowcount)


class ExchangeState(IdempotencyStore, Protocol):
    """What the gateway needs of a state store, SQLite (:class:`StateStore`) or PostgreSQL
    (:class:`gateway.state_postgres.PostgresStateStore`): the pipeline's idempotency calls,
    and a readiness check."""

    async def check(self) -> None: ...


def prepare(kind: str, path: Path, dsn: str | None) -> None:
    """Blocking: create the state store (file, or table in the audit DSN's schema) once, before
    worker processes open it, so a database that refuses shows at start-up."""

    async def open_and_close() -> None:
        async with opened(kind, path, dsn):
            pass

    asyncio.run(open_and_close())


@contextlib.asynccontextmanager
async def opened(kind: str, path: Path, dsn: str | None) -> AsyncIterator[ExchangeState]:
    """The state store beside the audit log: with ``kind`` "postgres" (a log shared by several
    instances) the keys are shared too, in the log's database; otherwise in ``path``."""
    if kind == "postgres":
        from gateway.state_postgres import PostgresStateStore  # asyncpg: the postgres extra

        if dsn is None:
            raise ValueError("a PostgreSQL state store needs the audit DSN")
        shared = await PostgresStateStore.open(dsn)
        try:
            yield shared
        finally:
            await shared.aclose()
        return
    local = StateStore(path)
    try:
        yield local
    finally:
        local.close()


__all__ = [
    "BatchWriter",
    "ExchangeState",
    "IdempotencyEntry",
    "PurgeSchedule",
    "StateStore",
    "StateUnavailable",
    "opened",
    "prepare",
]
