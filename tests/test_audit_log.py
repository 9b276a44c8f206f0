"""AuditLog: group commit on one writer thread, failure without hangs, durability across kill -9."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import merkle
from gateway.audit.log import AppendResult, AuditLog, AuditUnavailable
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import StoredRecord
from gateway.errors import NotReady

REPO = Path(__file__).resolve().parents[1]


class MemoryStore:
    """An in-memory AuditStore with hooks: records batch sizes and threads, can fail or block."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.frontier = merkle.Frontier()
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()
        self.fail: Exception | None = None
        self.fail_head: Exception | None = None
        self.gate: threading.Event | None = None  # When set, append_batch waits for it...
        self.entered = threading.Event()  # ...after signalling it has started.
        self.closed = False

    def append_batch(self, records: Sequence[bytes]) -> list[tuple[int, bytes]]:
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.batch_sizes.append(len(records))
        out = []
        for r in records:
            h = merkle.leaf_hash(r)
            out.append((self.frontier.size, h))
            self.frontier.append(h)
            self.records.append(r)
        return out

    def size(self) -> int:
        return len(self.records)

    def get(self, index: int) -> StoredRecord | None:
        if 0 <= index < len(self.records):
            r = self.records[index]
            return StoredRecord(index, merkle.leaf_hash(r), r)
        return None

    def tree_head(self) -> tuple[int, bytes]:
        self.threads.add(threading.get_ident())
        if self.fail_head is not None:
            raise self.fail_head
        return self.frontier.size, self.frontier.root()

    def close(self) -> None:
        self.closed = True


async def test_2000_concurrent_appends_get_unique_indexes_in_few_transactions(
    tmp_path: Path,
) -> None:
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    log = await AuditLog.open(store)
    records = [b'{"n":%d}' % i for i in range(2000)]
    results = await asyncio.wait_for(asyncio.gather(*(log.append(r) for r in records)), 30)

    assert sorted(r.index for r in results) == list(range(2000))
    assert all(res.leaf_hash == merkle.leaf_hash(rec) for res, rec in zip(results, records))
    stats = log.stats
    assert stats.records == 2000
    assert stats.batches <= 100, stats  # Group commit: far fewer transactions than appends.
    size, root = await log.tree_head()
    assert size == 2000
    assert root == merkle.root([r.leaf_hash for r in sorted(results, key=lambda r: r.index)])
    assert await log.get(results[7].index) == StoredRecord(
        results[7].index, results[7].leaf_hash, records[7]
    )
    await log.aclose()


async def test_appends_arriving_during_a_write_form_the_next_batch() -> None:
    """While batch 1 is being written, later appends accumulate and share one transaction."""
    store = MemoryStore()
    log = await AuditLog.open(store)
    store.gate = threading.Event()
    first = asyncio.ensure_future(log.append(b"first"))
    await asyncio.to_thread(store.entered.wait, 10)
    rest = [asyncio.ensure_future(log.append(b"r%d" % i)) for i in range(50)]
    store.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert [r.index for r in results] == list(range(51))  # Queue order is index order.
    assert store.batch_sizes == [1, 50]
    await log.aclose()


async def test_batches_never_exceed_max_batch() -> None:
    store = MemoryStore()
    log = await AuditLog.open(store, max_batch=16)
    await asyncio.wait_for(asyncio.gather(*(log.append(b"%d" % i) for i in range(200))), 10)
    assert max(store.batch_sizes) <= 16
    assert sum(store.batch_sizes) == 200
    await log.aclose()
    with pytest.raises(ValueError):
        await AuditLog.open(MemoryStore(), max_batch=0)


async def test_store_runs_on_one_dedicated_thread_and_wakes_the_loop_once_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(callback: Callable[..., object], *args: Any, **kw: Any) -> asyncio.Handle:
        nonlocal wakeups
        wakeups += 1
        return original(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    store = MemoryStore()
    log = await AuditLog.open(store)  # One wakeup for the tree_head read.
    await asyncio.gather(*(log.append(b"%d" % i) for i in range(1000)))
    assert wakeups == 1 + log.stats.batches
    assert log.stats.batches < 1000
    await log.aclose()
    assert len(store.threads) == 1
    assert threading.get_ident() not in store.threads


async def test_a_failing_store_fails_every_future_of_the_batch_without_hanging() -> None:
    store = MemoryStore()
    log = await AuditLog.open(store)
    store.fail = OSError("disk full")
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(log.append(b"%d" % i) for i in range(100)), return_exceptions=True), 10
    )
    assert all(isinstance(o, AuditUnavailable) for o in outcomes)
    err = outcomes[0]
    assert isinstance(err, NotReady) and err.status == 503
    assert isinstance(err.__cause__, OSError)
    assert "disk full" in err.log_detail and "disk full" not in err.detail  # Cause stays inside.
    assert log.stats.failed_batches >= 1

    store.fail = None  # The writer survives a failed batch.
    assert await asyncio.wait_for(log.append(b"after"), 10) == AppendResult(
        0, merkle.leaf_hash(b"after")
    )
    await log.aclose()


async def test_a_record_that_is_not_bytes_is_refused_before_it_can_spoil_a_batch() -> None:
    log = await AuditLog.open(MemoryStore())
    with pytest.raises(TypeError):
        log.append_nowait("text")  # type: ignore[arg-type]
    await log.aclose()


async def test_a_store_returning_the_wrong_count_is_a_failure() -> None:
    class ShortStore(MemoryStore):
        def append_batch(self, records: Sequence[bytes]) -> list[tuple[int, bytes]]:
            return super().append_batch(records)[:-1]

    log = await AuditLog.open(ShortStore())
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(log.append(b"x"), 10)
    await log.aclose()


async def test_open_fails_fast_and_closes_the_store_when_it_cannot_read_the_head() -> None:
    store = MemoryStore()
    store.fail_head = OSError("cannot open")
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(AuditLog.open(store), 10)
    assert store.closed


async def test_aclose_writes_what_is_queued_then_refuses_appends() -> None:
    store = MemoryStore()
    log = await AuditLog.open(store)
    futures = [log.append_nowait(b"%d" % i) for i in range(100)]
    await asyncio.wait_for(log.aclose(), 10)
    assert [f.result().index for f in futures] == list(range(100))
    assert store.closed and len(store.records) == 100
    with pytest.raises(AuditUnavailable):
        await log.append(b"late")
    await log.aclose()  # Idempotent.


async def test_a_cancelled_append_is_still_written() -> None:
    """Once queued, a record is part of the log; cancelling only drops the notification."""
    store = MemoryStore()
    log = await AuditLog.open(store)
    store.gate = threading.Event()
    task = asyncio.ensure_future(log.append(b"cancelled"))
    await asyncio.to_thread(store.entered.wait, 10)
    task.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await log.append(b"next")).index == 1
    assert store.records == [b"cancelled", b"next"]
    await log.aclose()


# -- durability across kill -9 ---------------------------------------------------------------

APPENDER = r"""
import asyncio, sys
from gateway.audit.log import AuditLog
from gateway.audit.sqlite import SqliteAuditStore

async def appender(log, worker):
    n = 0
    while True:
        record = b'{"n":%d,"w":%d}' % (n, worker)
        result = await log.append(record)
        sys.stdout.write("%d %d %d\n" % (result.index, worker, n))  # Only after the commit.
        sys.stdout.flush()
        n += 1

async def main(path):
    log = await AuditLog.open(SqliteAuditStore(path))
    await asyncio.gather(*(appender(log, w) for w in range(8)))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
def test_every_acknowledged_append_survives_kill_9(tmp_path: Path) -> None:
    """An index printed after ``append`` returned is in the database after SIGKILL.

    kill -9 leaves the page cache intact, so this pins the ordering (acknowledge only after
    COMMIT) and crash recovery of a half-written batch, not fsync against power loss; that is
    what synchronous=FULL is for.
    """
    path = str(tmp_path / "audit.db")
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, path],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    buf = b""
    deadline = time.monotonic() + 30
    try:
        while len(lines) < 2000:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            assert ready, f"appender too slow: {len(lines)} lines"
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"appender exited early with {proc.poll()}"
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += done
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)  # Lines already in the pipe were acknowledged too.
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    *more, _partial = (buf + rest).split(b"\n")
    lines += more

    store = SqliteAuditStore(path)  # Opening also checks the head against the records.
    try:
        size, root = store.tree_head()
        assert size >= len(lines)
        for line in lines:
            index, worker, n = map(int, line.split())
            stored = store.get(index)
            assert stored is not None and stored.record == b'{"n":%d,"w":%d}' % (n, worker)
        hashes = [store.get(i).leaf_hash for i in range(size)]  # type: ignore[union-attr]
        assert root == merkle.root(hashes)
    finally:
        store.close()
