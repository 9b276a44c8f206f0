"""The audit log's single appender per process: durable appends with group commit.

Why group commit: an exchange may be acknowledged only once its audit record is fsync'd, and an
fsync'd SQLite transaction costs far more than the insert itself (a few hundred microseconds per
record when each append is its own transaction handed to a thread). So appends are queued, and
one dedicated writer thread takes everything pending (up to ``max_batch``) and commits it in one
transaction; while that is being written, new appends pile up for the next one. Under load many
records share one fsync (the cost per record drops to a few tens of microseconds), and a lone
append still commits at once: there is no timer, no linger.

How it is wired:

* ``append`` (event loop thread) creates a future and puts ``(record, future)`` on a
  ``queue.SimpleQueue``; nothing blocking happens on the loop.
* The writer (a ``threading.Thread`` owned by this object, not the default executor, so audit
  writes never queue behind unrelated blocking work) drains the queue, calls
  ``store.append_batch`` and hands the outcome back with ONE ``loop.call_soon_threadsafe`` per
  batch, which resolves every future of the batch on the loop.
* A failing batch fails all of its futures with :class:`AuditUnavailable` (HTTP 503, so the
  exchange is not acknowledged) and the writer carries on with the next batch: a transient
  "database is locked" does not take the log down.
* Reads that the loop needs (``tree_head``, ``get``, proofs, search, checkpoints) run on the same
  thread, in queue order, so they never touch the store concurrently with a write and never
  block the loop. The price: a read waits for the batch being written (one fsync, a few ms at
  worst), and a slow read (a search over a large index backlog) delays the appends queued
  behind it. Proofs are cheap (O(log n) stored subtree hashes, :mod:`gateway.audit.proofs`,
  never a rehash of leaves), so sharing the thread is the simple choice for now; a separate
  read connection on its own thread is the way out if searches get heavy.
* After :data:`IDLE_AFTER` (5 ms) with nothing queued, the writer lets the store do deferred
  work (``index_pending``: the SQLite store's search index, see gateway.audit.sqlite), a small
  step at a time, so it never sits on the acknowledged path, never runs while appenders keep
  the queue busy, and an append arriving meanwhile waits for one small step at most.

Cancelling a task waiting in ``append`` does not withdraw its record: once queued it is written
(an audit log records attempts too); only the notification is dropped.

This module is the loop side; the writer thread is :mod:`gateway.audit.log_writer`, and what an
append can come to (:class:`AppendResult`, :class:`AuditUnavailable`, :class:`ClaimRefused`) is
:mod:`gateway.audit.outcomes`, re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.audit import proofs
from gateway.audit.log_writer import Append, Call, Indexed, LogWriter, settle
from gateway.audit.outcomes import (
    AppendResult,
    AuditUnavailable,
    ClaimRefused,
    Refusal,
    unavailable,
)
from gateway.audit.store import (
    AuditStore,
    Claim,
    RecordQuery,
    StoredCheckpoint,
    StoredRecord,
    root_at,
)

__all__ = [
    "AppendResult",
    "AuditLog",
    "AuditLogStats",
    "AuditUnavailable",
    "CheckpointMismatch",
    "ClaimRefused",
    "SizeBeyondLog",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AuditLogStats:
    """Counters since open, for metrics and for tests that check batching really happens."""

    batches: int  # Committed transactions.
    records: int  # Records in committed transactions.
    failed_batches: int


class SizeBeyondLog(Refusal):
    """A tree size larger than the log's: no proof or root exists for it (yet)."""


class CheckpointMismatch(Refusal):
    """A checkpoint whose root is not the log's root at its size: it must never be stored."""


IDLE_AFTER = 0.005
"""Seconds without a queued item after which the writer does the store's deferred work (read
when a log is created)."""
CATCH_UP_STEP = 2000
"""Records indexed per writer-thread call when a query finds the search index behind."""


class AuditLog:
    """Durable, group-committed appends to an :class:`AuditStore`. Create with :meth:`open`.

    Use from the event loop that opened it. One per process: several processes may share one
    store (the store serializes them), but two logs in one process would only split batches.
    """

    def __init__(self, store: AuditStore, loop: asyncio.AbstractEventLoop, max_batch: int) -> None:
        """Start the writer thread. Prefer :meth:`open`, which also checks the store works."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._loop = loop
        self._closed: asyncio.Future[None] | None = None
        self._batches = self._records = self._failed_batches = 0
        self._writer = LogWriter(
            store,
            loop,
            max_batch=max_batch,
            idle_after=IDLE_AFTER,
            on_batch=self._settle_batch,
            on_closed=self._mark_closed,
        )

    @classmethod
    async def open(cls, store: AuditStore, *, max_batch: int = 512) -> AuditLog:
        """Start the appender and read the tree head once on its thread.

        Reading once makes a store that cannot open (bad path, corrupted head, locked for too
        long) fail at start-up with :class:`AuditUnavailable`, not on the first exchange; and it
        lets a lazily connecting store open its file off the event loop.
        """
        log = cls(store, asyncio.get_running_loop(), max_batch)
        try:
            await log.tree_head()
        except BaseException:
            await log.aclose()
            raise
        return log

    @property
    def stats(self) -> AuditLogStats:
        """Batch and record counters (updated on the loop thread, so always consistent)."""
        return AuditLogStats(self._batches, self._records, self._failed_batches)

    def append_nowait(
        self, record: bytes, *, claim: Claim | None = None
    ) -> asyncio.Future[AppendResult]:
        """Queue ``record`` and return a future that resolves once it is durably committed.

        For callers that want to overlap the wait with other work; :meth:`append` is the usual
        form. Raises :class:`AuditUnavailable` at once if the log is closed.
        """
        if not isinstance(record, bytes):  # Caught here, or it would fail the whole batch.
            raise TypeError(f"audit record must be bytes, not {type(record).__name__}")
        self._check_open()
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self._writer.put(Append(record, future, claim))
        return future

    async def append(self, record: bytes, *, claim: Claim | None = None) -> AppendResult:
        """Append one record (canonical JSON bytes); return once it is fsync'd.

        With ``claim``, the claim is taken in the same transaction; if it was already taken
        the record is not appended and :class:`ClaimRefused` is raised.
        Raises :class:`AuditUnavailable` if the store failed the batch or the log is closed.
        """
        return await self.append_nowait(record, claim=claim)

    async def tree_head(self) -> tuple[int, bytes]:
        """(size, root) as committed, read on the writer thread."""
        return await self._call(self._store.tree_head)

    async def get(self, index: int) -> StoredRecord | None:
        """One stored record, read on the writer thread."""
        return await self._call(lambda: self._store.get(index))

    # -- proofs (RFC 9162), from stored subtree hashes ----------------------------------------

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves.

        ValueError unless 0 <= index < size; :class:`SizeBeyondLog` (a ValueError) if the log
        has fewer than ``size`` records.
        """
        nodes = proofs.inclusion_nodes(index, size)
        return await self._call(lambda: self._proof(nodes, size))

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """The consistency proof from the tree of ``size1`` leaves to ``size2``.

        ValueError unless 0 <= size1 <= size2; SizeBeyondLog if size2 is beyond the log. From
        the empty tree (size1 == 0) and between equal sizes the proof is empty, as RFC 9162's
        PROOF and merkle.verify_consistency define it; an empty tree's checkpoint is checked
        by its root (merkle.EMPTY_ROOT), not by a proof.
        """
        nodes = proofs.consistency_nodes(size1, size2)
        return await self._call(lambda: self._proof(nodes, size2))

    async def root_at(self, size: int) -> bytes:
        """The root of the tree of the first ``size`` records (an earlier tree head).

        Folded from at most log2(size) stored perfect subtrees. ValueError if size < 0,
        SizeBeyondLog if the log is shorter.
        """
        proofs.root_nodes(size)  # ValueError for a negative size, before anything is queued
        return await self._call(lambda: self._root(size))

    # -- search, export, checkpoints --------------------------------------------------------

    async def query(self, q: RecordQuery) -> list[StoredRecord]:
        """Records matching ``q`` (every filter), in index order after ``q.after_index``.

        A store with a deferred search index is first caught up in steps of its own, so
        appends queued meanwhile are written between steps instead of waiting for a whole
        backlog (about 8 us per record; large only after long saturation or on a database
        from before the index existed).
        """
        store = self._store
        if isinstance(store, Indexed):
            while await self._call(lambda: store.index_pending(CATCH_UP_STEP, timeout=10.0)):
                pass
        return await self._call(lambda: self._store.query(q))

    async def records(self, start: int, end: int) -> list[StoredRecord]:
        """Records with start <= index < end, in index order (the store may cap the count)."""
        return await self._call(lambda: self._store.records(start, end))

    async def add_checkpoint(self, cp: StoredCheckpoint) -> None:
        """Store a signed checkpoint after checking its root is the log's root at its size.

        :class:`CheckpointMismatch` if not (signing it was a mistake; storing it would serve
        a lie), SizeBeyondLog if the log is shorter than the checkpoint.
        """
        proofs.root_nodes(cp.size)  # ValueError for a negative size, before anything is queued

        def add() -> None:
            if self._root(cp.size) != cp.root:
                raise CheckpointMismatch(f"checkpoint root differs from the log's at {cp.size}")
            self._store.add_checkpoint(cp)

        await self._call(add)

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The stored checkpoint with the largest size, or None."""
        return await self._call(self._store.latest_checkpoint)

    async def checkpoints(
        self, *, after_size: int = -1, limit: int = 1000
    ) -> list[StoredCheckpoint]:
        """Stored checkpoints with size > after_size, by size ascending."""
        return await self._call(lambda: self._store.checkpoints(after_size=after_size, limit=limit))

    async def aclose(self) -> None:
        """Write everything already queued, close the store, stop the thread. Idempotent.

        Appends made after this call starts raise :class:`AuditUnavailable`.
        """
        if self._closed is None:
            self._closed = self._loop.create_future()
            self._writer.put(None)
        await asyncio.shield(self._closed)

    # -- loop side ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None or not self._writer.is_alive():
            raise AuditUnavailable("the audit log is closed")

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        self._check_open()
        future: asyncio.Future[T] = self._loop.create_future()
        self._writer.put(Call(fn, future))
        return future

    def _settle_batch(
        self,
        batch: Sequence[Append],
        results: Sequence[tuple[int, bytes] | None],
        error: Exception | None,
    ) -> None:
        """Resolve every future of one batch: called once per batch, on the loop."""
        if error is None:
            self._batches += 1
            for item, placed in zip(batch, results, strict=True):
                if placed is not None:
                    self._records += 1
                if item.future.done():  # Cancelled by its caller: record is written anyway.
                    continue
                if placed is None:
                    item.future.set_exception(ClaimRefused("claim already taken"))
                else:
                    item.future.set_result(AppendResult(placed[0], placed[1]))
            return
        self._failed_batches += 1
        for item in batch:
            if not item.future.done():
                item.future.set_exception(unavailable(error))

    def _mark_closed(self, error: Exception | None) -> None:
        if self._closed is None:  # The writer stopped without aclose (a bug): say closed.
            self._closed = self._loop.create_future()
        settle(self._closed, None, error)

    # -- run on the writer thread ---------------------------------------------------------

    def _proof(self, nodes: proofs.ProofNodes, size: int) -> list[bytes]:
        """Writer thread: fetch the nodes of a proof for a tree of ``size`` and fold them."""
        self._require_size(size)
        return nodes.rehash(self._store.subtree_hashes(nodes.ids))

    def _root(self, size: int) -> bytes:
        """Writer thread: the root at ``size`` from its stored perfect subtrees."""
        self._require_size(size)
        return root_at(self._store, size)

    def _require_size(self, size: int) -> None:
        # Nodes are written with the leaves that complete them and never change, so every
        # subtree inside a committed size is there, whoever appended it.
        have = self._store.size()
        if size > have:
            raise SizeBeyondLog(f"tree size {size} is beyond the log's {have} records")
