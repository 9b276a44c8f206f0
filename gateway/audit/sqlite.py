"""The embedded, default audit store: one SQLite file shared by every gateway worker process.

Why it looks like this:

* WAL journal + ``synchronous=FULL``: a commit is fsync'd to the WAL before ``append_batch``
  returns, which is what lets the gateway acknowledge an exchange only once its audit record is
  durable; readers never block the writer.
* Several processes (``gateway serve --workers N``) append to the same file. Each batch is one
  ``BEGIN IMMEDIATE`` transaction that takes the database's single write lock first, then reads
  the current size and frontier, so indexes stay consecutive and gap-free across processes. Nothing
  about the tree is cached between transactions: another process may have appended meanwhile.
  Waiting for the lock is bounded by the busy timeout (10 s by default), after which the batch
  fails and the caller reports the audit log as unavailable.
* Every table is prefixed ``audit_`` and nothing file-global (``PRAGMA user_version``) is used, so
  other components (idempotency keys, replay cache, queue) can keep their tables in the same file.

The tables and every SQL statement are in :mod:`gateway.audit.sqlite_schema`.

The store is blocking and is meant to be driven from one worker thread (AuditLog's writer); a lock
makes it safe to share between threads anyway. The connection is opened lazily on first use, so
constructing a store does no I/O and may happen on the event loop thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final

from gateway import sqlitedb
from gateway.audit import merkle
from gateway.audit import sqlite_schema as sql
from gateway.audit.sqlite_checkpointer import BACKSTOP_PAGES, Checkpointer
from gateway.audit.store import (
    Claim,
    RecordQuery,
    StoredCheckpoint,
    StoredRecord,
    search_values,
    unsearchable,
)

__all__ = ["SqliteAuditStore", "StoreCorrupted", "StoreMoved"]

_MAX_INDEX: Final = 2**63
_MAX_ROWS: Final = 10_000  # Rows per query() or records() answer: bounds memory per request.


class StoreCorrupted(sqlite3.DatabaseError):
    """The stored tree state contradicts the stored leaves; appending would extend a lie."""


class StoreMoved(sqlite3.OperationalError):
    """The path no longer names the file this store opened (deleted, or another put there).

    SQLite would carry on with the unlinked file: commits "durable" in an inode that vanishes
    when the process exits, or a log split across two files. Every call fails instead (the
    exchange gets 503, readiness fails) until the gateway is restarted on a proper file.
    """


class SqliteAuditStore:
    """:class:`gateway.audit.store.AuditStore` on one SQLite file. Blocking; see module doc."""

    def __init__(
        self, path: str, *, busy_timeout: float = 10.0, background_checkpoints: bool = False
    ) -> None:
        """Remember where the database lives; the file is opened on first use, not here.

        ``path`` must be a file (WAL and multi-process sharing need one). ``busy_timeout`` (s)
        bounds how long a batch waits for another process's write transaction.
        ``background_checkpoints``: for the process that appends (the appender, or an AuditLog
        writing itself), WAL checkpoints run on a thread of their own instead of inside a
        commit (see gateway.audit.sqlite_checkpointer).
        """
        self._path = path
        self._busy_timeout = busy_timeout
        self._checkpointer = Checkpointer(path) if background_checkpoints else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._claims_since_purge = 0
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opening it (and creating the schema) on first use. Hold _lock."""
        if self._closed:
            raise sqlite3.ProgrammingError("audit store is closed")
        if self._conn is None:
            self._conn = self._open()
        elif sqlitedb.file_identity(self._path) != self._file:
            raise StoreMoved(f"audit database {self._path} was removed or replaced while open")
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, we issue BEGIN IMMEDIATE ourselves.
        # WAL, synchronous=FULL, no SQLite busy handler (see gateway.sqlitedb for why);
        # check_same_thread=False: calls are serialized by self._lock instead.
        conn = sqlitedb.connect(self._path, timeout=self._busy_timeout)
        try:
            self._file = sqlitedb.file_identity(self._path)
            # Several processes may create the schema at once.
            with _immediate(conn, self._busy_timeout):
                for statement in sql.SCHEMA:
                    conn.execute(statement)
                conn.execute(sql.INIT_HEAD, (merkle.EMPTY_ROOT, merkle.Frontier().to_bytes()))
                _check_head(conn)
            if self._checkpointer is not None:
                conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                self._checkpointer.start()
        except BaseException:
            conn.close()
            raise
        return conn

    def append_batch(
        self, records: Sequence[bytes], claims: Sequence[Claim | None] | None = None
    ) -> list[tuple[int, bytes] | None]:
        """Append ``records`` as leaves size, size+1, ... in one durable transaction.

        Leaf hashes are computed before taking the write lock (they do not depend on position)
        so the lock is held only for the claims, the frontier update and the inserts.
        """
        if not records:
            return []
        if claims is not None and len(claims) != len(records):
            raise ValueError("one claim (or None) per record")
        hashes = [merkle.leaf_hash(r) for r in records]
        with self._lock:
            conn = self._connection()
            with _immediate(conn, self._busy_timeout):
                if claims is not None and any(claims):
                    refused = self._claim(conn, claims)
                    if refused:
                        keep = [i for i in range(len(records)) if i not in refused]
                        placed = self._append_locked(
                            conn, [records[i] for i in keep], [hashes[i] for i in keep]
                        )
                        out: list[tuple[int, bytes] | None] = [None] * len(records)
                        for i, pos in zip(keep, placed, strict=True):
                            out[i] = pos
                        return out
                return list(self._append_locked(conn, records, hashes))

    def _claim(self, conn: sqlite3.Connection, claims: Sequence[Claim | None]) -> set[int]:
        """Insert the claims; return the positions whose claim was already taken."""
        refused: set[int] = set()
        now = 0.0
        for i, claim in enumerate(claims):
            if claim is None:
                continue
            now = max(now, claim.now)
            cur = conn.execute(sql.CLAIM, (claim.key, claim.expires_at, claim.now))
            if cur.rowcount != 1:
                refused.add(i)
        self._claims_since_purge += 1
        if self._claims_since_purge >= 1000:
            self._claims_since_purge = 0
            conn.execute(sql.PURGE_CLAIMS, (now,))
        return refused

    def _append_locked(
        self, conn: sqlite3.Connection, records: Sequence[bytes], hashes: Sequence[bytes]
    ) -> list[tuple[int, bytes]]:
        """Inside the write transaction: place the records after the current end."""
        if not records:
            return []
        first, frontier = _read_frontier(conn)
        completed: list[merkle.SubtreeHash] = []
        for h in hashes:
            completed.extend(frontier.append(h))
        indexes = range(first, first + len(records))
        conn.executemany(sql.INSERT_RECORD, zip(indexes, hashes, records, strict=True))
        conn.executemany(sql.INSERT_NODE, ((n.level, n.index, n.hash) for n in completed))
        conn.execute(sql.UPDATE_HEAD, (frontier.size, frontier.root(), frontier.to_bytes()))
        return list(zip(indexes, hashes, strict=True))

    def size(self) -> int:
        """Committed size, read from the head row (no COUNT over the table)."""
        return self.tree_head()[0]

    def get(self, index: int) -> StoredRecord | None:
        """The record at ``index`` or None."""
        if not 0 <= index < _MAX_INDEX:  # SQLite integers are 64-bit: no OverflowError here.
            return None
        with self._lock:
            row = self._connection().execute(sql.GET_RECORD, (index,)).fetchone()
        if row is None:
            return None
        return StoredRecord(index=index, leaf_hash=bytes(row[0]), record=bytes(row[1]))

    def tree_head(self) -> tuple[int, bytes]:
        """(size, root) from the head row: one row, so always a consistent pair."""
        with self._lock:
            size, root = self._connection().execute(sql.TREE_HEAD).fetchone()
        return int(size), bytes(root)

    def subtree_hashes(self, ids: Iterable[tuple[int, int]]) -> list[bytes]:
        """Hashes of the perfect subtrees ``(level, index)``, in the order asked.

        The building blocks of proofs (see the module doc): level 0 comes from audit_records,
        higher levels from audit_nodes. Raises KeyError for a subtree not (yet) complete.
        Callers wanting a consistent view across several calls should ask for ids inside one
        committed tree size; nodes are never rewritten, so a stale size is still consistent.
        """
        wanted = list(ids)
        # Ids outside SQLite's integers can name no stored subtree: KeyError, as for any other
        # missing one (binding them would raise OverflowError instead).
        asked = [(lv, i) for lv, i in wanted if 0 <= lv < 64 and 0 <= i < _MAX_INDEX]
        found: dict[tuple[int, int], bytes] = {}
        with self._lock:
            conn = self._connection()
            for start in range(0, len(asked), sql.IDS_PER_QUERY):
                chunk = asked[start : start + sql.IDS_PER_QUERY]
                values = ",".join("(?, ?)" for _ in chunk)
                rows = conn.execute(
                    sql.SUBTREES.format(values=values), [x for node in chunk for x in node]
                )
                found.update(((level, idx), bytes(h)) for level, idx, h in rows if h is not None)
        try:
            return [found[node] for node in wanted]
        except KeyError as e:
            raise KeyError(e.args[0]) from None

    # -- checkpoints ------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        """Keep a published checkpoint; if one of that size is stored already, keep that one.

        Two instances may sign the same size; the first stored stays, so what was served for a
        size never changes.
        """
        with self._lock:
            conn = self._connection()
            with _immediate(conn, self._busy_timeout):
                conn.execute(
                    sql.ADD_CHECKPOINT,
                    (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.created_at),
                )

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The stored checkpoint with the largest size (the primary key: one index probe)."""
        rows = self._read(sql.LATEST_CHECKPOINT, ())
        return _checkpoint(rows[0]) if rows else None

    def checkpoints(self, *, after_size: int = -1, limit: int = 1000) -> list[StoredCheckpoint]:
        """Stored checkpoints with size > after_size, by size ascending, at most ``limit``."""
        rows = self._read(sql.CHECKPOINTS, (_clamp(after_size), _limit(limit)))
        return [_checkpoint(row) for row in rows]

    # -- search -------------------------------------------------------------------------------

    def query(self, query: RecordQuery) -> list[StoredRecord]:
        """Records matching every filter of ``query``, index ascending, after its cursor.

        Catches the search index up first (see the module doc), then one statement: the
        planner walks one audit_search index from the cursor and stops after ``limit`` rows.
        """
        if unsearchable(query):
            return []
        while self.index_pending(5000, timeout=self._busy_timeout):
            pass
        where: list[str] = ["s.idx > ?"]
        params: list[object] = [_clamp(query.after_index)]
        # Time bounds filter rows while walking idx order ("+" keeps the planner from using an
        # index on at: ranging over at and sorting the whole range by idx for every page costs
        # O(range) per page; walking idx from the cursor stops after ``limit`` matches).
        if query.since is not None:
            where.append("+s.at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("+s.at < ?")
            params.append(query.until)
        for name in sql.FIELDS[1:]:
            value = getattr(query, name)
            if value is not None:
                where.append(f"s.{name} = ?")  # A name from sql.FIELDS, never from the caller.
                params.append(value)
        params.append(_limit(query.limit))
        rows = self._read(sql.SEARCH.format(where=" AND ".join(where)), params)
        return [StoredRecord(int(i), bytes(h), bytes(r)) for i, h, r in rows]

    def records(self, start: int, end: int) -> list[StoredRecord]:
        """Records with start <= index < end in index order, at most 10,000 per call."""
        start = _clamp(max(0, start))
        end = min(_clamp(end), start + _MAX_ROWS)
        rows = self._read(sql.RECORDS, (start, end))
        return [StoredRecord(int(i), bytes(h), bytes(r)) for i, h, r in rows]

    def index_pending(self, max_records: int = 256, *, timeout: float = 0.0) -> int:
        """Add the next (at most ``max_records``) unindexed records to audit_search.

        Returns how many were indexed; 0 means the index has caught up with the log. With the
        default ``timeout`` it gives up at once (OperationalError) when another process holds
        the write lock: the idle-time caller (AuditLog) just tries again later.
        """
        with self._lock:
            conn = self._connection()
            last, size = conn.execute(sql.SEARCH_PROGRESS).fetchone()
            if (-1 if last is None else last) + 1 >= size:
                return 0  # Caught up: no need for the write lock.
            conn.execute("PRAGMA synchronous=NORMAL")  # Derived data: see the module doc.
            try:
                with _immediate(conn, timeout):
                    (last,) = conn.execute(sql.LAST_INDEXED).fetchone()
                    rows = conn.execute(
                        sql.UNINDEXED, (-1 if last is None else last, max(1, max_records))
                    ).fetchall()
                    conn.executemany(
                        sql.INSERT_SEARCH, ((i, *search_values(bytes(r))) for i, r in rows)
                    )
            finally:
                conn.execute("PRAGMA synchronous=FULL")
        return len(rows)

    def _read(self, statement: str, params: Sequence[object]) -> list[Any]:
        with self._lock:
            return self._connection().execute(statement, params).fetchall()

    def close(self) -> None:
        """Close the connection; later calls raise sqlite3.ProgrammingError. Idempotent."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception.

    IMMEDIATE takes the write lock up front, so the size read at the start of the transaction is
    still the size when it commits (a deferred transaction could read, then lose the race).
    """

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    def __enter__(self) -> None:
        sqlitedb.begin_immediate(self._conn, timeout=self._timeout)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _read_frontier(conn: sqlite3.Connection) -> tuple[int, merkle.Frontier]:
    size, blob = conn.execute(sql.HEAD_FRONTIER).fetchone()
    frontier = merkle.Frontier.from_bytes(bytes(blob))
    if frontier.size != size:
        raise StoreCorrupted(f"audit_head size {size} but frontier size {frontier.size}")
    return int(size), frontier


def _check_head(conn: sqlite3.Connection) -> None:
    """Refuse a file whose head disagrees with its leaves (truncated, or rows added by hand)."""
    size, frontier = _read_frontier(conn)
    (root,) = conn.execute(sql.HEAD_ROOT).fetchone()
    if bytes(root) != frontier.root():
        raise StoreCorrupted("audit_head root does not match its frontier")
    (last,) = conn.execute(sql.LAST_RECORD).fetchone()
    if (-1 if last is None else last) != size - 1:
        raise StoreCorrupted(f"audit_head says {size} records, audit_records ends at {last}")


def _clamp(value: int) -> int:
    """Keep a caller's integer inside SQLite's 64-bit range (no OverflowError from sqlite3)."""
    return max(-1, min(value, _MAX_INDEX - 1))


def _limit(limit: int) -> int:
    return max(0, min(limit, _MAX_ROWS))


def _checkpoint(row: Any) -> StoredCheckpoint:
    size, root, note, created_at = row
    return StoredCheckpoint(int(size), bytes(root), bytes(note), float(created_at))
