"""Durable witness state: the latest checkpoint cosigned per origin, and evidence of forks.

Why durable, and why a compare-and-swap: a witness's promise is "I never cosign two
checkpoints of one log that are not consistent, nor a smaller tree after a larger one". That
promise must outlive a restart (the state is on disk, committed with ``synchronous=FULL``
before any cosignature leaves) and hold with ``gateway serve --workers N``, where two
processes may receive checkpoints of the same log at once. tlog-witness spells out the race:
two requests both checked against size N, the larger one stored, then the smaller one stored
over it, rolling the witness back. So the decision (gateway.witness.decide, pure) is made
against a state read here, and the new state is written with :meth:`WitnessStore.compare_and_swap`:
an ``UPDATE ... WHERE size = ? AND root = ?`` (an ``INSERT`` that does nothing if a row exists,
for an origin never cosigned) inside one write transaction. Exactly one of two writers that read
the same state succeeds; the other re-reads and decides again (typically: 409, stale ``old``).

With ``[audit] store = "postgres"`` the state lives in the shared database instead
(gateway.witness_store_postgres, same semantics): every instance is one witness. Otherwise
the tables live in the deployment's state database (``audit.state_path``), next to
gateway.state's idempotency table, on a connection of their own: witness traffic is one
request per peer checkpoint, so it gains nothing from gateway.state's group commit, and a
separate connection keeps the two from sharing a transaction. The write lock is shared
with that writer and with other processes; ``sqlitedb.begin_immediate`` waits for it.

Every SQLite call runs on this store's own single worker thread, never on the event loop.

``witness_evidence`` keeps log-signed checkpoints that contradict what was cosigned (a fork),
once per checkpoint text: only the log's key can make new ones, so the table stays small.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from gateway import sqlitedb
from gateway.witness import Witnessed

__all__ = ["Evidence", "WitnessState", "WitnessStore", "WitnessStoreUnavailable"]

T = TypeVar("T")

LOCK_TIMEOUT = 30.0
"""Seconds to wait for the database's write lock before failing the request (503)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS witness_state (
        origin TEXT PRIMARY KEY,
        size INTEGER NOT NULL CHECK (size >= 0),
        root BLOB NOT NULL CHECK (length(root) = 32),
        cosigned_at INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS witness_evidence (
        checkpoint_sha256 BLOB PRIMARY KEY,
        origin TEXT NOT NULL,
        cause TEXT NOT NULL,
        note BLOB NOT NULL,
        held_size INTEGER,
        held_root BLOB,
        seen_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


class WitnessStoreUnavailable(Exception):
    """The state database could not be read or written: answer 503, cosign nothing."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """A kept refusal: the log-signed note, why it was refused, and what was held then."""

    origin: str
    cause: str
    note: bytes
    held: Witnessed | None
    seen_at: int


class WitnessState(Protocol):
    """What the witness needs of its state: :class:`WitnessStore` (SQLite, one host) or
    gateway.witness_store_postgres.PostgresWitnessStore (every instance sharing a PostgreSQL
    log). Failures raise :class:`WitnessStoreUnavailable`."""

    async def latest(self, origin: str) -> Witnessed | None: ...

    async def compare_and_swap(
        self, origin: str, expected: Witnessed | None, new: Witnessed
    ) -> bool: ...

    async def keep_evidence(
        self,
        origin: str,
        cause: str,
        checkpoint_text: bytes,
        note: bytes,
        held: Witnessed | None,
        *,
        seen_at: int,
    ) -> bool: ...

    async def evidence(self, origin: str) -> list[Evidence]: ...

    async def aclose(self) -> None: ...


class WitnessStore:
    """The ``witness_state`` and ``witness_evidence`` tables of one state database.

    Open with :meth:`open`, close with :meth:`aclose`; one per process (each has its own
    connection and thread). Safe to share between coroutines of one event loop.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        pool: ThreadPoolExecutor,
        path: Path,
        file: tuple[int, int] | None,
    ) -> None:
        self._conn = conn
        self._pool = pool
        self._path = path
        self._file = file  # (device, inode) opened: see sqlitedb.file_identity.

    @classmethod
    async def open(cls, path: Path) -> WitnessStore:
        """Connect and create the tables if missing (on the store's thread)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="witness-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(pool, _connect, path)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(conn, pool, path, sqlitedb.file_identity(path))

    async def aclose(self) -> None:
        """Close the connection on its thread, then stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        """``fn`` on the store's thread, once the database is still the file that was opened.

        Why the check: SQLite goes on committing into a file unlinked under it (its directory
        removed, another file moved into its place). The witness would cosign growth that it
        forgets at the next start, and that a worker opening the new file never sees, and could
        then cosign a fork of it from ``old 0``. So that is unavailability (503), as for
        gateway.state's writer on the same file.
        """

        def checked() -> T:
            if sqlitedb.file_identity(self._path) != self._file:
                raise WitnessStoreUnavailable(
                    f"witness state database {self._path} was removed or replaced while open"
                )
            return fn()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, checked)
        except sqlite3.Error as e:
            raise WitnessStoreUnavailable(f"witness state database failed: {e}") from e

    async def latest(self, origin: str) -> Witnessed | None:
        """The latest checkpoint cosigned for ``origin``, or None if it never was."""
        return await self._run(lambda: _latest(self._conn, origin))

    async def compare_and_swap(
        self, origin: str, expected: Witnessed | None, new: Witnessed
    ) -> bool:
        """Store ``new`` as the latest cosigned checkpoint if the stored one is still
        ``expected`` (None: no row). True once committed (durable); False if another
        request changed the state first, in which case nothing was written."""
        return await self._run(lambda: _swap(self._conn, origin, expected, new))

    async def keep_evidence(
        self,
        origin: str,
        cause: str,
        checkpoint_text: bytes,
        note: bytes,
        held: Witnessed | None,
        *,
        seen_at: int,
    ) -> bool:
        """Keep a refused log-signed note, once per checkpoint text; True if it was new.

        Keyed by the signed text, not the whole note: anyone can append signature lines of
        unknown keys to a note, but only the log's key can make a new checkpoint text.
        """
        key = hashlib.sha256(checkpoint_text).digest()
        return await self._run(lambda: _keep(self._conn, key, origin, cause, note, held, seen_at))

    async def evidence(self, origin: str) -> list[Evidence]:
        """Kept evidence for ``origin``, oldest first (for operators and tests)."""
        return await self._run(lambda: _evidence(self._conn, origin))


# -- on the store's thread -----------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlitedb.connect(path, timeout=LOCK_TIMEOUT)

    def create() -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(witness_state)")}
        if "cosigned_at" not in columns:  # A state database from before the column.
            conn.execute(
                "ALTER TABLE witness_state ADD COLUMN cosigned_at INTEGER NOT NULL DEFAULT 0"
            )

    try:
        _write(conn, create)
    except BaseException:
        conn.close()
        raise
    return conn


def _write(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """Run ``fn`` in one IMMEDIATE transaction: committed (on disk) when this returns."""
    sqlitedb.begin_immediate(conn, timeout=LOCK_TIMEOUT)
    try:
        result = fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _latest(conn: sqlite3.Connection, origin: str) -> Witnessed | None:
    row = conn.execute(
        "SELECT size, root, cosigned_at FROM witness_state WHERE origin = ?", (origin,)
    ).fetchone()
    return None if row is None else Witnessed(int(row[0]), bytes(row[1]), int(row[2]))


def _swap(
    conn: sqlite3.Connection, origin: str, expected: Witnessed | None, new: Witnessed
) -> bool:
    def op() -> bool:
        if expected is None:
            cur = conn.execute(
                "INSERT INTO witness_state (origin, size, root, cosigned_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (origin) DO NOTHING",
                (origin, new.size, new.root, new.cosigned_at),
            )
        else:
            cur = conn.execute(
                "UPDATE witness_state SET size = ?, root = ?, cosigned_at = ? "
                "WHERE origin = ? AND size = ? AND root = ? AND cosigned_at = ?",
                (
                    new.size,
                    new.root,
                    new.cosigned_at,
                    origin,
                    expected.size,
                    expected.root,
                    expected.cosigned_at,
                ),
            )
        return cur.rowcount == 1

    return _write(conn, op)


def _keep(
    conn: sqlite3.Connection,
    key: bytes,
    origin: str,
    cause: str,
    note: bytes,
    held: Witnessed | None,
    seen_at: int,
) -> bool:
    def op() -> bool:
        cur = conn.execute(
            "INSERT INTO witness_evidence VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (checkpoint_sha256) DO NOTHING",
            (
                key,
                origin,
                cause,
                note,
                held.size if held else None,
                held.root if held else None,
                seen_at,
            ),
        )
        return cur.rowcount == 1

    return _write(conn, op)


def _evidence(conn: sqlite3.Connection, origin: str) -> list[Evidence]:
    rows = conn.execute(
        "SELECT cause, note, held_size, held_root, seen_at FROM witness_evidence "
        "WHERE origin = ? ORDER BY seen_at, checkpoint_sha256",
        (origin,),
    ).fetchall()
    return [
        Evidence(
            origin,
            str(cause),
            bytes(note),
            None if size is None else Witnessed(int(size), bytes(root)),
            int(seen_at),
        )
        for cause, note, size, root, seen_at in rows
    ]
