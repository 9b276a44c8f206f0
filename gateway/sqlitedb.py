"""SQLite connections shared by several worker processes: durable, and fair under contention.

Why not SQLite's own busy timeout: its default busy handler sleeps 1, 2, 5, 10, 20, ... 100 ms
between attempts, so when two worker processes take turns committing (each holds the write
lock for about one fsync, ~0.1-0.3 ms), the loser sleeps far longer than the lock is held and
p99 latency climbs to hundreds of milliseconds. Here the busy handler is off and
``begin_immediate`` retries with sleeps of tens of microseconds, growing to a millisecond,
until a deadline. The retry runs on the writer thread, never on the event loop.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _locked(e: sqlite3.OperationalError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in LOCKED_CODES
    return "locked" in str(e) or "busy" in str(e)


def retry_locked(conn: sqlite3.Connection, sql: str, *, timeout: float) -> None:
    """Execute ``sql``, retrying while another process holds the lock, up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = 0.00002
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as e:
            if not _locked(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


def begin_immediate(conn: sqlite3.Connection, *, timeout: float) -> None:
    """Take the write lock now (so a read at the start of the transaction stays true)."""
    retry_locked(conn, "BEGIN IMMEDIATE", timeout=timeout)


def file_identity(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None if there is none.

    Why: SQLite carries on with a database file unlinked under it (the directory removed, or
    another file moved into its place): commits "succeed" into an inode that vanishes when the
    process exits. A store compares this with what it opened before each use: one stat, a
    microsecond or two beside a commit's fsync.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def connect(path: Path | str, *, timeout: float = 10.0) -> sqlite3.Connection:
    """WAL, ``synchronous=FULL`` (a commit is on disk when it returns), no busy handler."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    try:
        retry_locked(conn, "PRAGMA journal_mode=WAL", timeout=timeout)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.NotSupportedError(f"{path}: WAL unavailable (journal mode {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn
