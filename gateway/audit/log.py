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
* Reads that the loop needs (``tree_head``, ``get``) run on the same thread, in queue order, so
  they never touch the store concurrently with a write and never block the loop.

Cancelling a task waiting in ``append`` does not withdraw its record: once queued it is written
(an audit log records attempts too); only the notification is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from gateway.audit.store import AuditStore, Claim, StoredRecord
from gateway.errors import NotReady

__all__ = ["AppendResult", "AuditLog", "AuditLogStats", "AuditUnavailable", "ClaimRefused"]

T = TypeVar("T")


class AuditUnavailable(NotReady):
    """The audit log could not durably record: the exchange must not be acknowledged (503).

    The client sees one fixed detail; the cause (the store's error) goes to ``log_detail`` and
    ``__cause__``, never to the client, since it may name files or SQL.
    """

    PUBLIC_DETAIL: ClassVar[str] = (
        "The audit log is unavailable, so the exchange could not be recorded. Retry later."
    )

    def __init__(self, cause: str) -> None:
        super().__init__(self.PUBLIC_DETAIL, log_detail=f"audit log unavailable: {cause}")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where a record landed: its leaf index and leaf hash (both go into the receipt)."""

    index: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class AuditLogStats:
    """Counters since open, for metrics and for tests that check batching really happens."""

    batches: int  # Committed transactions.
    records: int  # Records in committed transactions.
    failed_batches: int


class ClaimRefused(Exception):
    """The record's one-time claim was already taken (a replay): the record was not appended."""


@dataclass(slots=True)
class _Append:
    record: bytes
    future: asyncio.Future[AppendResult]
    claim: Claim | None = None


@dataclass(slots=True)
class _Call(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]


_Item = _Append | _Call[Any] | None  # None tells the writer to close the store and stop.


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
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed: asyncio.Future[None] | None = None
        self._batches = self._records = self._failed_batches = 0
        self._thread = threading.Thread(target=self._run, name="audit-log-writer", daemon=True)
        self._thread.start()

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
        self._queue.put(_Append(record, future, claim))
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

    async def aclose(self) -> None:
        """Write everything already queued, close the store, stop the thread. Idempotent.

        Appends made after this call starts raise :class:`AuditUnavailable`.
        """
        if self._closed is None:
            self._closed = self._loop.create_future()
            self._queue.put(None)
        await asyncio.shield(self._closed)

    # -- loop side ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None or not self._thread.is_alive():
            raise AuditUnavailable("the audit log is closed")

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        self._check_open()
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Call(fn, future))
        return future

    def _settle_batch(
        self,
        batch: Sequence[_Append],
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
                item.future.set_exception(_unavailable(error))

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        """Writer loop: one queue item or one batch of appends at a time, until ``None``."""
        carry: _Item = None
        has_carry = False
        try:
            while True:
                item = carry if has_carry else self._queue.get()
                has_carry = False
                if item is None:
                    return
                if isinstance(item, _Call):
                    self._run_call(item)
                    continue
                batch = [item]
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _Append):  # A read or the stop: after this batch.
                        carry, has_carry = nxt, True
                        break
                    batch.append(nxt)
                self._write(batch)
        finally:
            self._finish()

    def _write(self, batch: list[_Append]) -> None:
        results: list[tuple[int, bytes] | None] = []
        error: Exception | None = None
        try:
            claims = [item.claim for item in batch]
            records = [item.record for item in batch]
            if any(claims):
                results = self._store.append_batch(records, claims)
            else:
                results = self._store.append_batch(records)
            if len(results) != len(batch):
                raise RuntimeError(f"store returned {len(results)} results for {len(batch)}")
        except Exception as exc:  # Any store failure fails the batch, never the writer.
            error = exc
        self._post(self._settle_batch, batch, results, error)

    def _run_call(self, call: _Call[Any]) -> None:
        try:
            result = call.fn()
        except Exception as exc:
            self._post(_settle, call.future, None, _unavailable(exc))
        else:
            self._post(_settle, call.future, result, None)

    def _finish(self) -> None:
        """Close the store, then wake ``aclose``; fail whatever is still queued (if we crashed)."""
        error: Exception | None = None
        try:
            self._store.close()
        except Exception as exc:
            error = _unavailable(exc)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._post(_settle, item.future, None, AuditUnavailable("writer stopped"))
        self._post(self._mark_closed, error)

    def _mark_closed(self, error: Exception | None) -> None:
        if self._closed is None:  # The writer stopped without aclose (a bug): say closed.
            self._closed = self._loop.create_future()
        _settle(self._closed, None, error)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # Loop already closed: nobody left to notify.
            self._loop.call_soon_threadsafe(fn, *args)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _unavailable(cause: Exception) -> AuditUnavailable:
    """A fresh exception per waiter (tracebacks are per raise), chained to the store's error."""
    exc = AuditUnavailable(f"{type(cause).__name__}: {cause}")
    exc.__cause__ = cause
    return exc
