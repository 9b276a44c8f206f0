"""WAL checkpoints off the commit path, for the one process that appends to a SQLite log.

Why: SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past
``wal_autocheckpoint`` pages (1000 by default). That commit then copies the WAL's pages into
the database file and fsyncs it, and every exchange waiting for that commit waits for all of
it: with two durable appends per exchange, about one exchange in a hundred. Measured with
``bench/bench_exchange.py``: the p99 of an unloaded exchange's audit wait (its log's
``audit_ms``) was 1.9-4.0 ms over seven runs with automatic checkpoints, 1.2-2.1 ms with this
thread every 0.5 s. Why not more often: every 50 ms, the checkpoint's fsync of the database
file, twenty times a second beside the WAL's, slowed commits enough under load that the
bench's 1,000/s phase saturated (p99 199-312 ms against 39-57 ms; at 0.5 s and 1 s: 46-49 ms).

A PASSIVE checkpoint from another connection runs beside the writer (in WAL mode it takes no
write lock, and Python's sqlite3 releases the GIL while it runs), so commits stop paying for
it. The writer's connection keeps a far higher automatic threshold (:data:`BACKSTOP_PAGES`) as
a backstop: should this thread stop or fall behind (a reader holding an old snapshot), the WAL
is still checkpointed, just on the commit path again. Checkpoints are crash-safe either way.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Final

from gateway import sqlitedb

__all__ = ["BACKSTOP_PAGES", "Checkpointer"]

#: The writer's own ``wal_autocheckpoint`` while a Checkpointer runs (about 40 MB of WAL).
BACKSTOP_PAGES: Final = 10_000


class Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds
    on its own connection to ``path``, from ``start()`` until ``stop()``.

    At 0.5 s a busy gateway here writes a few thousand WAL pages between checkpoints, well
    under :data:`BACKSTOP_PAGES`."""

    def __init__(self, path: str, *, interval: float = 0.5) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-wal-checkpoint", daemon=True)
        self.checkpoints = 0  # passes that ran (for tests and curiosity)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass under way (if any); idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        # The project's one way to open this database: WAL checked, synchronous=FULL (so the
        # checkpoint's copy is fsynced before the WAL is reused), no busy handler.
        conn = sqlitedb.connect(self._path)
        try:
            while not self._stop.wait(self._interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    continue  # busy or a passing fault: the next pass (or the backstop) will do
                self.checkpoints += 1
        finally:
            conn.close()
