"""The audit log's writer thread: the one thread that touches the store.

Why a module of its own: :class:`~gateway.audit.log.AuditLog` is what the event loop sees
(appends that return futures, reads, proofs, checkpoints); this is the other end of its queue,
where nothing runs on the loop. The writer takes everything pending (appends up to
``max_batch``) and commits it as ONE store transaction, runs reads in queue order between
batches, lets the store do deferred work once idle, and finally closes the store. Outcomes go
back to the loop only through ``loop.call_soon_threadsafe``: once per batch, once per read. Why
the log is built this way (group commit, no timer, reads sharing the thread) is told in
:mod:`gateway.audit.log`; this module is how.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from gateway.audit.outcomes import AppendResult, AuditUnavailable, Refusal, unavailable
from gateway.audit.store import AuditStore, Claim

__all__ = ["Append", "BatchDone", "Call", "Indexed", "Item", "LogWriter", "settle"]

T = TypeVar("T")


@dataclass(slots=True)
class Append:
    """A record to append, the future its appender awaits, and its one-time claim if any."""

    record: bytes
    future: asyncio.Future[AppendResult]
    claim: Claim | None = None


@dataclass(slots=True)
class Call(Generic[T]):
    """A function to run on the writer thread (a read), and the future of its result."""

    fn: Callable[[], T]
    future: asyncio.Future[T]


Item = Append | Call[Any] | None  # None tells the writer to close the store and stop.

BatchDone = Callable[[Sequence[Append], Sequence[tuple[int, bytes] | None], Exception | None], None]
"""Called on the loop once per batch: the batch, the store's placements, or the store's error."""


@runtime_checkable
class Indexed(Protocol):
    """A store with deferred work to do when idle (gateway.audit.sqlite's search index)."""

    def index_pending(self, max_records: int = ..., *, timeout: float = ...) -> int: ...


class _Idle:
    """What _next_item returns when the writer has been idle long enough."""


_IDLE = _Idle()


class LogWriter:
    """The writer thread of one AuditLog, started on construction; see the module doc.

    ``on_batch`` and ``on_closed`` run on ``loop``: after each batch, and once the store is
    closed (with the error closing it raised, if any). ``idle_after`` is the seconds without a
    queued item after which the store's deferred work is done.
    """

    def __init__(
        self,
        store: AuditStore,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int,
        idle_after: float,
        on_batch: BatchDone,
        on_closed: Callable[[Exception | None], None],
    ) -> None:
        self._store = store
        self._loop = loop
        self._max_batch = max_batch
        self._idle_after = idle_after
        self._on_batch = on_batch
        self._on_closed = on_closed
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._behind = True  # The store may have deferred work (e.g. records to index).
        self._thread = threading.Thread(target=self._run, name="audit-log-writer", daemon=True)
        self._thread.start()

    def put(self, item: Item) -> None:
        """Queue an append, a call, or None (stop); never blocks. Any thread."""
        self._queue.put(item)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        """Writer loop: one queue item or one batch of appends at a time, until ``None``."""
        carry: Item = None
        has_carry = False
        try:
            while True:
                if has_carry:
                    item, has_carry = carry, False
                else:
                    nxt_item = self._next_item()
                    if isinstance(nxt_item, _Idle):
                        self._maintain()
                        continue
                    item = nxt_item
                if item is None:
                    return
                if isinstance(item, Call):
                    self._run_call(item)
                    continue
                batch = [item]
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, Append):  # A read or the stop: after this batch.
                        carry, has_carry = nxt, True
                        break
                    batch.append(nxt)
                self._write(batch)
                self._behind = True
        finally:
            self._finish()

    def _next_item(self) -> Item | _Idle:
        """The next queue item; or _IDLE once nothing came for idle_after s and work waits."""
        if not self._behind:
            return self._queue.get()
        try:
            return self._queue.get(timeout=self._idle_after)
        except queue.Empty:
            return _IDLE

    def _write(self, batch: list[Append]) -> None:
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
        self._post(self._on_batch, batch, results, error)

    def _maintain(self) -> None:
        """Writer thread, idle: let the store do deferred work in small steps.

        Runs only after idle_after s without a queued item, so under load (appenders keep the
        queue busy) the writer only writes. Stops as soon as something is queued (an append
        waits for one step at most), when the work is done, or on any error.
        """
        if not isinstance(self._store, Indexed):
            self._behind = False
            return
        try:
            while self._queue.empty():
                if not self._store.index_pending(256):
                    self._behind = False
                    return
        except Exception:  # Locked by another process, or worse: retry after the next write
            self._behind = False  # (a search catches up by itself and reports real errors).

    def _run_call(self, call: Call[Any]) -> None:
        try:
            result = call.fn()
        except Refusal as exc:  # The caller's request, refused: not a store failure.
            self._post(settle, call.future, None, exc)
        except Exception as exc:
            self._post(settle, call.future, None, unavailable(exc))
        else:
            self._post(settle, call.future, result, None)

    def _finish(self) -> None:
        """Close the store, then report it; fail whatever is still queued (if we crashed)."""
        error: Exception | None = None
        try:
            self._store.close()
        except Exception as exc:
            error = unavailable(exc)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._post(settle, item.future, None, AuditUnavailable("writer stopped"))
        self._post(self._on_closed, error)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # Loop already closed: nobody left to notify.
            self._loop.call_soon_threadsafe(fn, *args)


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Resolve ``future`` with ``result`` or ``error``, unless it is done (cancelled). Loop."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
