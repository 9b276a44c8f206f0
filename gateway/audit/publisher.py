"""Publishing signed checkpoints of the audit log, and refusing to start on a rolled-back log.

Why a publisher: a Merkle root is only evidence once it is signed and handed out. Every
``interval`` seconds while the log grows, the publisher signs a C2SP checkpoint of the current
tree head (gateway.audit.checkpoint), stores it with the log (``GET /v1/audit/checkpoint``
serves the latest by size) and writes it to ``published_path``.

Why the file: the database can be restored from an older backup, or replaced by one with another
history, and nothing inside it would show. The file keeps the newest checkpoint this gateway
published, outside the database; at start-up :func:`check_not_rolled_back` refuses a log that
is shorter than that checkpoint or has another root at its size. (Once the roots agree at the
published size, the log's later growth is consistent with it by construction: the stored
subtrees of that prefix never change.) The file is replaced atomically (temporary file, fsync,
rename, fsync of the directory) and only ever moves forward, also when several worker
processes publish: a lock file serializes the compare-and-replace.

Several instances sharing one store may publish checkpoints of different sizes; each is
consistent with the log, and the latest by size is what is served.

Two drivers, one rule (:func:`_stale`). ``gateway serve`` publishes periodically from ONE
:class:`PublisherThread` in the appender process (the only writer, so the head it signs is the
head it wrote); its workers keep a :class:`CheckpointPublisher` only for ``POST
/v1/audit/checkpoint``. An application built alone (tests, tools) has no appender and runs the
periodic task of its own :class:`CheckpointPublisher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from gateway.audit.checkpoint import Checkpoint, NoteError, NoteSigner, parse_checkpoint
from gateway.audit.checkpoint import sign_checkpoint as _sign
from gateway.audit.log import AuditLog
from gateway.audit.store import AuditStore, StoredCheckpoint

__all__ = [
    "CheckpointPublisher",
    "PublisherThread",
    "RolledBack",
    "check_not_rolled_back",
    "read_published",
]

log = structlog.get_logger("gateway.audit")


class RolledBack(Exception):
    """The audit database is behind, or forked from, the checkpoint this gateway published.

    Starting would serve a log that contradicts a signed statement already handed out, so the
    gateway must not start; ``reason`` says what differs and names the file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Publisher:
    """What both publishers share: the signer and settings, and how a checkpoint is made."""

    def __init__(
        self,
        signer: NoteSigner,
        origin: str,
        *,
        interval: float,
        published_path: Path,
        clock: Callable[[], float],
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        Checkpoint(origin, 0, bytes(32))  # Fail at construction on an unusable origin line.
        self._signer = signer
        self._origin = origin
        self._interval = interval
        self._path = published_path
        self._clock = clock
        self._written = -1  # Size of the newest checkpoint this publisher wrote to the file.

    def _checkpoint(self, size: int, root: bytes) -> StoredCheckpoint:
        note = _sign(Checkpoint(self._origin, size, root), self._signer)
        return StoredCheckpoint(size=size, root=root, note=note, created_at=self._clock())

    @staticmethod
    def _first_of_its_size(
        cp: StoredCheckpoint, stored: list[StoredCheckpoint]
    ) -> StoredCheckpoint:
        """The stored checkpoint of cp's size if another instance stored one first, else cp."""
        return stored[0] if stored and stored[0].size == cp.size else cp


class CheckpointPublisher(_Publisher):
    """Signs and publishes checkpoints of one AuditLog. Start with :meth:`start`.

    ``clock`` gives Unix seconds for ``created_at`` (injectable for tests). Use from the event
    loop that owns ``log``.
    """

    def __init__(
        self,
        log: AuditLog,
        signer: NoteSigner,
        origin: str,
        *,
        interval: float,
        published_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            signer, origin, interval=interval, published_path=published_path, clock=clock
        )
        self._log = log
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # One publication at a time within this process.

    async def start(self) -> None:
        """Start the periodic task (publishes at once if the log has no checkpoint yet).

        Not under ``gateway serve``: there the appender's :class:`PublisherThread` does it.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="checkpoint-publisher")

    async def stop(self) -> None:
        """Stop the background task; a publication in progress is cancelled. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def publish_now(self) -> StoredCheckpoint:
        """Sign the current tree head, store it and write the file; return the checkpoint.

        If a checkpoint of that size is stored already (another instance published it), the
        stored one stays and is the one written to the file and returned.
        """
        async with self._lock:
            cp = self._checkpoint(*await self._log.tree_head())
            await self._log.add_checkpoint(cp)
            stored = await self._log.checkpoints(after_size=cp.size - 1, limit=1)
            cp = self._first_of_its_size(cp, stored)
            await asyncio.to_thread(write_published, self._path, cp.note)
            self._written = max(self._written, cp.size)
            return cp

    async def publish_if_grown(self) -> StoredCheckpoint | None:
        """Publish if the log is larger than its latest stored checkpoint (or has none), or
        than the last checkpoint this publisher wrote to the file (a failed write is retried,
        and each process brings the file up to date once at start)."""
        size, _ = await self._log.tree_head()
        if not _stale(size, await self._log.latest_checkpoint(), self._written):
            return None
        return await self.publish_now()

    async def _run(self) -> None:
        while True:
            try:
                cp = await self.publish_if_grown()
            except Exception as e:  # The log or the disk failed: try again next interval.
                log.warning("audit.checkpoint_failed", error=f"{type(e).__name__}: {e}")
            else:
                if cp is not None:
                    log.info("audit.checkpoint_published", size=cp.size)
            await asyncio.sleep(self._interval)


def _stale(size: int, latest: StoredCheckpoint | None, written: int) -> bool:
    """A checkpoint is due: the log outgrew the latest stored one, or the file lags behind."""
    return latest is None or latest.size < size or written < size


class PublisherThread(_Publisher):
    """The periodic publisher of ``gateway serve``: a thread of the appender process.

    Why there: the appender is the one writer, so one publisher per gateway signs each size
    once, instead of one per worker racing for the lock file every interval. It reads the head
    and stores the checkpoint through the appender's own store (thread-safe), so a publication
    holds the store only for one small transaction; the file's fsyncs happen outside it.
    """

    def __init__(
        self,
        store: AuditStore,
        signer: NoteSigner,
        origin: str,
        *,
        interval: float,
        published_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            signer, origin, interval=interval, published_path=published_path, clock=clock
        )
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the publication in progress, if any. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def publish_if_grown(self) -> StoredCheckpoint | None:
        """Blocking: sign, store and write a checkpoint if one is due (see :func:`_stale`)."""
        size, root = self._store.tree_head()
        if not _stale(size, self._store.latest_checkpoint(), self._written):
            return None
        cp = self._checkpoint(size, root)
        self._store.add_checkpoint(cp)
        cp = self._first_of_its_size(cp, self._store.checkpoints(after_size=size - 1, limit=1))
        write_published(self._path, cp.note)
        self._written = max(self._written, cp.size)
        return cp

    def _run(self) -> None:
        while True:
            try:
                cp = self.publish_if_grown()
            except Exception as e:  # The log or the disk failed: try again next interval.
                log.warning("audit.checkpoint_failed", error=f"{type(e).__name__}: {e}")
            else:
                if cp is not None:
                    log.info("audit.checkpoint_published", size=cp.size)
            if self._stop.wait(self._interval):
                return


def read_published(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path`` (the note's text, signature not checked), or None if absent.

    Blocking. Raises RolledBack if the file exists but is not a checkpoint note: a damaged
    rollback guard must stop the gateway, not be ignored.
    """
    try:
        note = path.read_bytes()
    except FileNotFoundError:
        return None
    split = note.rfind(b"\n\n")
    try:
        if split < 0:
            raise NoteError("no blank line before the signatures")
        return parse_checkpoint(note[: split + 1])
    except NoteError as e:
        raise RolledBack(f"{path}: the published checkpoint is unreadable ({e.reason})") from None


def write_published(path: Path, note: bytes) -> None:
    """Replace ``path`` with ``note`` atomically, unless it holds a larger checkpoint already.

    Blocking (fsyncs). An flock on ``path.lock`` makes compare-and-replace atomic across worker
    processes; the temporary file name is unique per process, so writers never share one.
    """
    new = parse_checkpoint(note[: note.rfind(b"\n\n") + 1])
    lock_fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        current = read_published(path)
        if current is not None and current.size > new.size:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, note)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # The rename itself is durable only once the directory is.
        finally:
            os.close(dir_fd)
    finally:
        os.close(lock_fd)  # Also releases the flock.


async def check_not_rolled_back(
    published_path: Path, tree_size: int, root_at: Callable[[int], Awaitable[bytes]]
) -> None:
    """Raise RolledBack if the log contradicts the checkpoint published in ``published_path``.

    ``tree_size`` is the log's current size and ``root_at`` gives its root at an earlier size
    (AuditLog.root_at). No file (a new deployment) passes. Call at start-up, before serving.
    """
    published = await asyncio.to_thread(read_published, published_path)
    if published is None:
        return
    if tree_size < published.size:
        raise RolledBack(
            f"the audit log has {tree_size} records but checkpoint {published.size} was "
            f"published ({published_path}): the database was restored from an older copy"
        )
    if await root_at(published.size) != published.root:
        raise RolledBack(
            f"the audit log's root at size {published.size} differs from the published "
            f"checkpoint ({published_path}): the database holds another history"
        )
