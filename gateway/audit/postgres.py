"""The shared audit store: one PostgreSQL database behind several gateway instances (asyncpg).

Why it looks like this:

* Blocking outside, asyncpg inside. The :class:`~gateway.audit.store.AuditStore` Protocol is
  blocking because :class:`~gateway.audit.log.AuditLog` calls it from its own writer thread, so
  every call runs one asyncpg coroutine on a *private* event loop, never on the gateway's
  (:mod:`gateway.audit.postgres_session` holds that loop and the connection).
* Several gateway instances append to one log. Each ``append_batch`` is one READ COMMITTED
  transaction that first locks the single head row (``SELECT ... FROM audit_head WHERE id = 0
  FOR UPDATE``), then reads the size and frontier *inside* that transaction, takes the claims,
  writes records, completed subtrees and the new head in one statement, and commits. The row lock
  serializes appenders of every instance, so indexes are consecutive and gap-free; nothing about
  the tree is cached between transactions. Every transaction that touches ``audit_claims`` holds
  the head lock first, so appenders cannot deadlock on claims. Waiting for the lock is bounded by
  ``lock_timeout`` (10 s by default), after which the batch fails (LockNotAvailableError) and
  AuditLog reports the log as unavailable. Holding it is bounded too: the server ends a session
  idle inside its transaction for ``idle_in_transaction_session_timeout`` (30 s), e.g. of an
  instance cut off mid-append, which could otherwise stop every instance until TCP keepalive.
* Durability: a commit returns only once its WAL record is flushed, with PostgreSQL's default
  ``synchronous_commit = on``. A session that finds it ``off`` (set by a DBA or a role default)
  turns it back ``on`` for itself; stronger settings (remote_write, remote_apply) are kept.
* Where the tables live: ``schema=`` (keyword, or ``?schema=NAME`` in the DSN, parsed out before
  asyncpg sees the DSN, since the gateway config carries only ``dsn``) qualifies every table name
  and the schema is created if missing. Without it, names resolve through the session's
  ``search_path``, which a DSN can also set (``?options=-csearch_path%3Dname`` as with libpq, or
  ``?search_path=name``: asyncpg sends unknown DSN parameters as server settings).
* Tables are created if missing (see :mod:`gateway.audit.postgres_schema`, which holds the
  table and index definitions and every SQL statement).
* The connection opens on first use (constructing does no I/O); a connection that broke (network,
  timeout, server restart) is dropped and the next call reconnects (a batch that finds it closed
  before its COMMIT was sent just runs again on a new one). If it broke after COMMIT was sent,
  the outcome is asked on a new connection (``txid_status`` of the transaction id read with the
  head lock; a session still running it is ended first): a batch that committed is reported as
  appended, one that did not as failed. Only when the server cannot be reached at all does a
  batch count as failed although it may be in the log (the exchange is then not acknowledged;
  the log holds an extra attempt).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from gateway.audit import merkle
from gateway.audit.postgres_claims import take_claims
from gateway.audit.postgres_schema import (
    COLUMNS,
    QUERY_HEAD,
    create_tables,
    query_statement,
    statements,
    table_names,
)
from gateway.audit.postgres_session import (
    BlockingConnection,
    Connection,
    session_settings,
    split_dsn,
)
from gateway.audit.store import (
    Claim,
    RecordQuery,
    StoredCheckpoint,
    StoredRecord,
    search_values,
    unsearchable,
)

__all__ = ["PostgresAuditStore", "StoreCorrupted"]

T = TypeVar("T")

_MAX_INDEX: Final = 2**63
_MAX_LIMIT: Final = 10_000  # Rows per query, records() or checkpoints() call, as in SQLite.


class StoreCorrupted(RuntimeError):
    """The stored tree state contradicts the stored leaves; appending would extend a lie."""


class PostgresAuditStore:
    """:class:`gateway.audit.store.AuditStore` on PostgreSQL, shareable by many instances.

    Blocking; see the module doc for the private event loop and the locking design.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        lock_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        idle_in_transaction_timeout: float = 30.0,
    ) -> None:
        """Remember where the log lives; nothing connects until the first call.

        ``lock_timeout`` (s) bounds the wait for another appender's head lock; ``command_timeout``
        (s) bounds any one statement, so a hung server fails a batch instead of stalling the
        writer thread forever; ``idle_in_transaction_timeout`` (s): the server ends a session
        of this store idle inside a transaction that long (its instance cut off mid-append),
        so the head lock it holds cannot stop every instance's appends. DSN parameters of the
        same names (``lock_timeout``, ``idle_in_transaction_session_timeout``) win.
        """
        dsn, dsn_schema, dsn_settings = split_dsn(dsn)
        if schema is not None and dsn_schema is not None and schema != dsn_schema:
            raise ValueError(f"schema {schema!r} given twice, differently ({dsn_schema!r})")
        self._schema = schema if schema is not None else dsn_schema
        if self._schema is not None and not 0 < len(self._schema.encode()) < 64:
            raise ValueError("schema name must be 1..63 bytes")
        self._t = table_names(self._schema)
        self._q = statements(self._t)
        self._query_head = QUERY_HEAD.format(**self._t)
        settings = session_settings(
            "dtc-gateway audit",
            dsn_settings,
            lock_timeout=lock_timeout,
            idle_in_transaction_session_timeout=idle_in_transaction_timeout,
        )
        self._db = BlockingConnection(
            dsn,
            settings=settings,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            setup=self._setup,
        )
        self._claims_since_purge = 0

    # -- the connection -----------------------------------------------------------------------

    def _call(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` on the private loop and return its result. Blocking."""
        return self._db.call(fn)

    async def _setup(self, conn: Connection) -> None:
        """A new connection: durable commits, the tables, and a head that matches its leaves."""
        if await conn.fetchval("SHOW synchronous_commit") == "off":
            await conn.execute("SET synchronous_commit = on")
        await create_tables(conn, self._q, self._t, self._schema)
        await self._check_head(conn)

    async def _check_head(self, conn: Connection) -> None:
        """Refuse a log whose head disagrees with its leaves (truncated, or rows added by hand)."""
        row = await conn.fetchrow(self._q["check_head"])
        if row is None:
            raise StoreCorrupted("audit_head has no row")
        frontier = _frontier(row["size"], row["frontier"])
        if bytes(row["root"]) != frontier.root():
            raise StoreCorrupted("audit_head root does not match its frontier")
        last = row["last"]
        if (-1 if last is None else last) != frontier.size - 1:
            raise StoreCorrupted(f"audit_head says {frontier.size} records, last index is {last}")

    def close(self) -> None:
        """Close the connection and the private loop; later calls raise InterfaceError."""
        self._db.close()

    # -- appends ------------------------------------------------------------------------------

    def append_batch(
        self, records: Sequence[bytes], claims: Sequence[Claim | None] | None = None
    ) -> list[tuple[int, bytes] | None]:
        """Append ``records`` as leaves size, size+1, ... in one durable transaction.

        Leaf hashes and index columns are computed before the transaction (they do not depend
        on position) so the head lock is held only for the claims, the frontier and the writes.
        """
        if not records:
            return []
        if claims is not None and len(claims) != len(records):
            raise ValueError("one claim (or None) per record")
        hashes = [merkle.leaf_hash(r) for r in records]
        columns = [search_values(r) for r in records]
        wanted = claims if claims is not None and any(claims) else None
        sent: list[Any] = []  # (txid, backend pid, result) once the writes are done.

        async def run(conn: Connection) -> list[tuple[int, bytes] | None]:
            async with conn.transaction(isolation="read_committed"):
                head = await conn.fetchrow(self._q["lock_head"])
                frontier = _frontier(head["size"], head["frontier"])
                first = frontier.size
                refused = await self._claim(conn, wanted) if wanted else set()
                keep = [i for i in range(len(records)) if i not in refused]
                out: list[tuple[int, bytes] | None] = [None] * len(records)
                if keep:
                    await self._write(
                        conn,
                        frontier,
                        [records[i] for i in keep],
                        [hashes[i] for i in keep],
                        [columns[i] for i in keep],
                    )
                    for pos, i in enumerate(keep):
                        out[i] = (first + pos, hashes[i])
                sent[:] = [head["txid"], conn.get_server_pid(), out]
            return out

        try:
            return self._db.call(run, may_retry=lambda: not sent)  # not sent: no COMMIT either
        except Exception:
            # The session ended after COMMIT may have been sent: the server knows the outcome.
            # (A server-reported error on a live session means the transaction rolled back.)
            if sent and self._db.dropped() and self._outcome(sent[0], sent[1]) == "committed":
                return list(sent[2])
            raise

    def _outcome(self, txid: int, pid: int) -> str | None:
        """Whether a transaction whose COMMIT went unanswered committed (on a new connection).

        ``txid_status`` answers from the commit log, also after a server restart. A session
        still running it (the network failed, not the server) is ended first, so the answer is
        final. None if the server cannot be asked: the batch then counts as failed, although
        its records may be in the log.
        """

        async def ask(conn: Connection) -> str | None:
            for _ in range(100):
                status = await conn.fetchval(self._q["txid_status"], txid)
                if status != "in progress":
                    return None if status is None else str(status)
                await conn.execute(self._q["end_session"], pid, txid)
                await asyncio.sleep(0.05)
            return None

        try:
            return self._call(ask)
        except Exception:
            return None

    async def _claim(self, conn: Connection, claims: Sequence[Claim | None]) -> set[int]:
        """Take the claims (:func:`take_claims`); now and then purge the expired ones."""
        refused = await take_claims(conn, self._q["claim"], claims)
        self._claims_since_purge += 1
        if self._claims_since_purge >= 1000:
            self._claims_since_purge = 0
            now = max(c.now for c in claims if c is not None)
            await conn.execute(self._q["purge_claims"], now)
        return refused

    async def _write(
        self,
        conn: Connection,
        frontier: merkle.Frontier,
        records: Sequence[bytes],
        hashes: Sequence[bytes],
        columns: Sequence[tuple[str | None, ...]],
    ) -> None:
        """Extend ``frontier`` and write leaves, completed subtrees and head: one round trip."""
        first = frontier.size
        completed: list[merkle.SubtreeHash] = []
        for h in hashes:
            completed.extend(frontier.append(h))
        await conn.execute(
            self._q["write"],
            list(range(first, frontier.size)),
            hashes,
            records,
            *([c[k] for c in columns] for k in range(len(COLUMNS))),
            [n.level for n in completed],
            [n.index for n in completed],
            [n.hash for n in completed],
            frontier.size,
            frontier.root(),
            frontier.to_bytes(),
        )

    # -- reads --------------------------------------------------------------------------------

    def size(self) -> int:
        """Committed size, read from the head row (no count over the table)."""
        return self.tree_head()[0]

    def tree_head(self) -> tuple[int, bytes]:
        """(size, root) from the head row: one row, so always a consistent pair."""

        async def run(conn: Connection) -> tuple[int, bytes]:
            row = await conn.fetchrow(self._q["tree_head"])
            return int(row["size"]), bytes(row["root"])

        return self._call(run)

    def get(self, index: int) -> StoredRecord | None:
        """The record at ``index`` or None (also for indexes outside BIGINT)."""
        found = self.records(index, index + 1) if 0 <= index < _MAX_INDEX else []
        return found[0] if found else None

    def records(self, start: int, end: int) -> list[StoredRecord]:
        """Records with start <= index < end, in index order (at most 10,000 per call)."""
        start = max(start, 0)
        end = min(end, _MAX_INDEX - 1, start + _MAX_LIMIT)
        if start >= end:
            return []
        return self._fetch_records(self._q["records"], start, end)

    def query(self, query: RecordQuery) -> list[StoredRecord]:
        """Records matching every filter, index ascending, strictly after ``after_index``.

        As in SQLite: ``since <= at < until``, compared byte-wise (the columns are COLLATE
        "C"); ``limit`` capped at 10,000. Each equality filter has an index on (column, idx),
        so the planner can walk it from the cursor and stop after ``limit`` rows.
        """
        if query.limit <= 0 or query.after_index >= _MAX_INDEX - 1 or unsearchable(query):
            return []
        sql, args = query_statement(self._query_head, query, min(query.limit, _MAX_LIMIT))
        return self._fetch_records(sql, *args)

    def _fetch_records(self, sql: str, *args: Any) -> list[StoredRecord]:
        async def run(conn: Connection) -> list[StoredRecord]:
            rows = await conn.fetch(sql, *args)
            return [StoredRecord(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

        return self._call(run)

    def subtree_hashes(self, ids: Iterable[tuple[int, int]]) -> list[bytes]:
        """Hashes of the perfect subtrees ``(level, index)``, in the order asked; one query.

        Level 0 comes from audit_records, higher levels from audit_nodes. KeyError for a
        subtree not (yet) complete. Nodes are never rewritten, so answers stay valid.
        """
        wanted = list(ids)
        valid = [(lv, i) for lv, i in wanted if 0 <= lv < 64 and 0 <= i < _MAX_INDEX]
        for node in wanted:
            if node not in valid:
                raise KeyError(node)

        async def run(conn: Connection) -> dict[tuple[int, int], bytes]:
            rows = await conn.fetch(
                self._q["subtrees"],
                [i for lv, i in valid if lv == 0],
                [lv for lv, _ in valid if lv > 0],
                [i for lv, i in valid if lv > 0],
            )
            return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}

        found = self._call(run) if valid else {}
        try:
            return [found[node] for node in wanted]
        except KeyError as e:
            raise KeyError(e.args[0]) from None

    # -- checkpoints --------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        """Keep a published checkpoint; if one of that size is stored already, keep that one.

        Several instances publish checkpoints of one shared log and may sign the same size;
        the first stored stays (as in SQLite), so what was served for a size never changes.
        """

        async def run(conn: Connection) -> None:
            await conn.execute(
                self._q["add_checkpoint"],
                checkpoint.size,
                checkpoint.root,
                checkpoint.note,
                checkpoint.created_at,
            )

        self._call(run)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint with the largest size, or None."""
        found = self._fetch_checkpoints(self._q["latest_checkpoint"])
        return found[0] if found else None

    def checkpoints(self, *, after_size: int = -1, limit: int = 1000) -> list[StoredCheckpoint]:
        """Stored checkpoints with size > after_size, by size ascending, at most ``limit``."""
        if limit <= 0 or after_size >= _MAX_INDEX - 1:
            return []
        return self._fetch_checkpoints(
            self._q["checkpoints"], max(after_size, -1), min(limit, _MAX_LIMIT)
        )

    def _fetch_checkpoints(self, sql: str, *args: Any) -> list[StoredCheckpoint]:
        async def run(conn: Connection) -> list[StoredCheckpoint]:
            rows = await conn.fetch(sql, *args)
            return [
                StoredCheckpoint(int(r[0]), bytes(r[1]), bytes(r[2]), float(r[3])) for r in rows
            ]

        return self._call(run)


def _frontier(size: int, blob: bytes) -> merkle.Frontier:
    frontier = merkle.Frontier.from_bytes(bytes(blob))
    if frontier.size != size:
        raise StoreCorrupted(f"audit_head size {size} but frontier size {frontier.size}")
    return frontier
