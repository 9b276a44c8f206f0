"""AuditLog: group commit on one writer thread, failure without hangs, durability across kill -9."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import merkle
from gateway.audit.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
    verify_note,
)
from gateway.audit.log import (
    AppendResult,
    AuditLog,
    AuditUnavailable,
    CheckpointMismatch,
    SizeBeyondLog,
)
from gateway.audit.publisher import (
    CheckpointPublisher,
    RolledBack,
    check_not_rolled_back,
    read_published,
    write_published,
)
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import StoredCheckpoint, StoredRecord
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


# -- proofs, search and checkpoints through the log (issue 3) ----------------------------------


async def _log_with(tmp_path: Path, count: int, batch: int = 7) -> tuple[AuditLog, list[bytes]]:
    log = await AuditLog.open(SqliteAuditStore(str(tmp_path / "audit.db")))
    records = [b'{"n":%d,"sender":"s%d"}' % (i, i % 3) for i in range(count)]
    for start in range(0, count, batch):
        await asyncio.gather(*(log.append(r) for r in records[start : start + batch]))
    return log, [merkle.leaf_hash(r) for r in records]


async def test_proofs_and_roots_from_the_log_equal_the_reference_and_verify(
    tmp_path: Path,
) -> None:
    log, leaves = await _log_with(tmp_path, 37)
    for size in (1, 2, 7, 8, 31, 32, 37):
        root = await log.root_at(size)
        assert root == merkle.root(leaves[:size])
        for index in {0, size // 2, size - 1}:
            proof = await log.inclusion_proof(index, size)
            assert proof == merkle.inclusion_proof(index, size, leaves)
            merkle.verify_inclusion(leaves[index], index, size, proof, root)
        for size1 in {1, size // 2 or 1, size - 1 or 1, size}:
            proof = await log.consistency_proof(size1, size)
            assert proof == merkle.consistency_proof(size1, size, leaves)
            merkle.verify_consistency(size1, size, proof, merkle.root(leaves[:size1]), root)
    assert await log.root_at(0) == merkle.EMPTY_ROOT
    assert await log.root_at(37) == (await log.tree_head())[1]
    await log.aclose()


async def test_requests_outside_the_tree_are_value_errors_and_the_log_carries_on(
    tmp_path: Path,
) -> None:
    log, _ = await _log_with(tmp_path, 10)
    for index, size in [(10, 10), (-1, 5), (0, 0)]:
        with pytest.raises(ValueError):
            await log.inclusion_proof(index, size)
    with pytest.raises(SizeBeyondLog):
        await log.inclusion_proof(0, 11)
    with pytest.raises(ValueError):
        await log.consistency_proof(5, 4)
    with pytest.raises(SizeBeyondLog):
        await log.consistency_proof(1, 11)
    with pytest.raises(SizeBeyondLog):
        await log.consistency_proof(0, 11)  # Even a trivial proof needs the tree to exist.
    assert await log.consistency_proof(0, 10) == []  # RFC 9162: from the empty tree.
    assert await log.consistency_proof(0, 0) == []
    assert await log.consistency_proof(10, 10) == []
    with pytest.raises(ValueError):
        await log.root_at(-1)
    with pytest.raises(SizeBeyondLog):
        await log.root_at(11)
    assert isinstance(SizeBeyondLog("x"), ValueError) and not isinstance(
        SizeBeyondLog("x"), AuditUnavailable
    )
    assert (await log.append(b"after")).index == 10  # Refusals are not store failures.
    assert log.stats.failed_batches == 0
    assert len(await log.inclusion_proof(0, 11)) == 4
    await log.aclose()


class _CountingStore(SqliteAuditStore):
    """A real store that counts what proofs read: they must not touch leaves or records."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.record_reads = 0
        self.node_reads: list[int] = []

    def get(self, index: int) -> StoredRecord | None:
        self.record_reads += 1
        return super().get(index)

    def records(self, start: int, end: int) -> list[StoredRecord]:
        self.record_reads += 1
        return super().records(start, end)

    def subtree_hashes(self, ids: Iterable[tuple[int, int]]) -> list[bytes]:
        ids = list(ids)
        self.node_reads.append(len(ids))
        return super().subtree_hashes(ids)


async def test_proofs_read_a_logarithmic_number_of_stored_subtrees_and_no_record(
    tmp_path: Path,
) -> None:
    store = _CountingStore(str(tmp_path / "audit.db"))
    log = await AuditLog.open(store)
    await asyncio.gather(*(log.append(b"%d" % i) for i in range(1000)))
    await log.inclusion_proof(517, 1000)
    await log.consistency_proof(333, 999)
    await log.root_at(777)
    assert store.record_reads == 0
    assert len(store.node_reads) == 3 and max(store.node_reads) <= 2 * (1000).bit_length()
    await log.aclose()


async def test_add_checkpoint_stores_only_a_checkpoint_of_this_log(tmp_path: Path) -> None:
    log, leaves = await _log_with(tmp_path, 5)
    good = StoredCheckpoint(size=3, root=merkle.root(leaves[:3]), note=b"n3", created_at=1.0)
    await log.add_checkpoint(good)
    with pytest.raises(CheckpointMismatch):
        await log.add_checkpoint(StoredCheckpoint(4, merkle.root(leaves[:3]), b"n4", 2.0))
    with pytest.raises(SizeBeyondLog):
        await log.add_checkpoint(StoredCheckpoint(6, merkle.root(leaves), b"n6", 2.0))
    empty = StoredCheckpoint(0, merkle.EMPTY_ROOT, b"n0", 0.5)
    await log.add_checkpoint(empty)
    assert await log.latest_checkpoint() == good
    assert await log.checkpoints() == [empty, good]
    assert await log.checkpoints(after_size=0, limit=5) == [good]
    await log.aclose()


async def test_query_and_records_go_through_the_writer_thread(tmp_path: Path) -> None:
    from gateway.audit.store import RecordQuery

    log, _ = await _log_with(tmp_path, 10)
    assert [r.index for r in await log.query(RecordQuery(sender="s1"))] == [1, 4, 7]
    assert [r.index for r in await log.query(RecordQuery(sender="s1", after_index=1))] == [4, 7]
    assert [r.index for r in await log.records(3, 6)] == [3, 4, 5]
    await log.aclose()


async def test_an_idle_writer_fills_the_search_index_without_any_query(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log, _ = await _log_with(tmp_path, 600, batch=100)

    def indexed() -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM audit_search").fetchone()[0])

    deadline = time.monotonic() + 10
    while indexed() < 600 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert indexed() == 600
    await log.aclose()


# -- the checkpoint publisher and the rollback guard -----------------------------------------


def _note_signer() -> NoteSigner:
    return NoteSigner("gw.example/audit", ed25519.Ed25519PrivateKey.generate())


async def _until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_publisher_publishes_after_appends_and_not_when_nothing_grew(
    tmp_path: Path,
) -> None:
    log = await AuditLog.open(SqliteAuditStore(str(tmp_path / "audit.db")))
    signer = _note_signer()
    published = tmp_path / "audit.published"
    pub = CheckpointPublisher(
        log, signer, "gw.example/audit", interval=0.02, published_path=published,
        clock=lambda: 1234.5,
    )  # fmt: skip
    await pub.start()
    await pub.start()  # Idempotent.

    async def size_is(n: int) -> bool:
        latest = await log.latest_checkpoint()
        return latest is not None and latest.size == n

    await _until(lambda: size_is(0))  # No checkpoint yet: the empty tree is published.
    await asyncio.gather(*(log.append(b"%d" % i) for i in range(3)))
    await _until(lambda: size_is(3))

    async def file_holds(n: int) -> bool:
        # The note is stored first and written to the file after: a publication ends there.
        cp = await asyncio.to_thread(read_published, published)
        return cp is not None and cp.size == n

    await _until(lambda: file_holds(3))
    latest = await log.latest_checkpoint()
    assert latest is not None and latest.created_at == 1234.5
    verified = verify_note(latest.note, [NoteVerifier.for_signer(signer)], origin=signer.name)
    assert (verified.checkpoint.size, verified.checkpoint.root) == await log.tree_head()
    assert published.read_bytes() == latest.note

    count = len(await log.checkpoints())
    await asyncio.sleep(0.2)  # Ten intervals, nothing appended.
    assert len(await log.checkpoints()) == count  # 0, 3, and maybe 1 (appends were 1 + 2).
    await pub.stop()
    await pub.stop()
    await log.append(b"after stop")
    await asyncio.sleep(0.1)
    assert len(await log.checkpoints()) == count
    await log.aclose()


async def test_the_publisher_survives_a_failed_publication(tmp_path: Path) -> None:
    log = await AuditLog.open(SqliteAuditStore(str(tmp_path / "audit.db")))
    missing = tmp_path / "not yet" / "audit.published"
    pub = CheckpointPublisher(
        log, _note_signer(), "gw.example/audit", interval=0.02, published_path=missing
    )
    await pub.start()
    await asyncio.sleep(0.1)  # Writing the file fails: logged, retried.
    missing.parent.mkdir()
    await _until(lambda: asyncio.to_thread(missing.exists))
    await pub.stop()
    await log.aclose()


async def test_the_published_file_only_moves_forward(tmp_path: Path) -> None:
    log, _ = await _log_with(tmp_path, 4)
    signer = _note_signer()
    published = tmp_path / "audit.published"
    pub = CheckpointPublisher(log, signer, signer.name, interval=60, published_path=published)
    four = await pub.publish_now()
    assert four.size == 4 and published.read_bytes() == four.note
    older = sign_checkpoint(Checkpoint(signer.name, 2, await log.root_at(2)), signer)
    write_published(published, older)  # Another worker, slower: must not regress the guard.
    assert published.read_bytes() == four.note
    assert read_published(published) == Checkpoint(signer.name, 4, four.root)
    assert await pub.publish_now() == four  # Same size again: the stored checkpoint stays.
    assert not list(tmp_path.glob(".audit.published.*.tmp"))
    await log.aclose()


async def test_a_restored_older_database_is_refused_at_start_up(tmp_path: Path) -> None:
    db, published = tmp_path / "audit.db", tmp_path / "audit.published"
    log, _ = await _log_with(tmp_path, 5)
    await log.aclose()  # Last connection closed: SQLite folds the WAL into the file.
    assert not Path(f"{db}-wal").exists()
    shutil.copy(db, tmp_path / "backup.db")

    log = await AuditLog.open(SqliteAuditStore(str(db)))
    await asyncio.gather(*(log.append(b"later %d" % i) for i in range(3)))
    signer = _note_signer()
    pub = CheckpointPublisher(log, signer, signer.name, interval=60, published_path=published)
    assert (await pub.publish_now()).size == 8
    size, _ = await log.tree_head()
    await check_not_rolled_back(published, size, log.root_at)  # The real one passes.
    await log.aclose()

    shutil.copy(tmp_path / "backup.db", db)  # The operator restores last night's backup.
    log = await AuditLog.open(SqliteAuditStore(str(db)))
    size, _ = await log.tree_head()
    assert size == 5
    with pytest.raises(RolledBack, match="5 records but checkpoint 8"):
        await check_not_rolled_back(published, size, log.root_at)
    await log.aclose()


async def test_a_database_with_another_history_is_refused_at_start_up(tmp_path: Path) -> None:
    published = tmp_path / "audit.published"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    log, _ = await _log_with(tmp_path / "a", 6)
    signer = _note_signer()
    await CheckpointPublisher(
        log, signer, signer.name, interval=60, published_path=published
    ).publish_now()
    await log.aclose()

    other = await AuditLog.open(SqliteAuditStore(str(tmp_path / "b" / "audit.db")))
    for i in range(9):  # Longer, but a different record at index 2: a fork.
        await other.append(b'{"n":%d,"sender":"s%d"}' % (i, i % 3) if i != 2 else b"forged")
    size, _ = await other.tree_head()
    with pytest.raises(RolledBack, match="another history"):
        await check_not_rolled_back(published, size, other.root_at)
    await other.aclose()


async def test_no_published_file_passes_and_a_damaged_one_stops_the_start(tmp_path: Path) -> None:
    async def root_at(size: int) -> bytes:
        return merkle.EMPTY_ROOT

    published = tmp_path / "audit.published"
    await check_not_rolled_back(published, 0, root_at)  # A new deployment.
    published.write_bytes(b"not a note")
    with pytest.raises(RolledBack, match="unreadable"):
        await check_not_rolled_back(published, 0, root_at)


async def test_a_query_catches_a_lagging_index_up_in_steps_appends_can_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step is its own writer-thread call, so appends queue between steps, not behind all."""
    from gateway.audit import log as log_module
    from gateway.audit.store import RecordQuery

    monkeypatch.setattr(log_module, "IDLE_AFTER", 60.0)  # No idle indexing in this test.
    monkeypatch.setattr(log_module, "CATCH_UP_STEP", 100)

    calls: list[int] = []

    class Steps(SqliteAuditStore):
        def index_pending(self, max_records: int = 256, *, timeout: float = 0.0) -> int:
            done = super().index_pending(max_records, timeout=timeout)
            calls.append(done)
            return done

    store = Steps(str(tmp_path / "audit.db"))
    log = await AuditLog.open(store)
    await asyncio.gather(*(log.append(b'{"sender":"s%d"}' % (i % 2)) for i in range(1000)))
    query = asyncio.ensure_future(log.query(RecordQuery(sender="s1", limit=1000)))
    late = asyncio.ensure_future(log.append(b'{"sender":"s1"}'))
    found = await query
    assert late.done() and late.result().index == 1000  # Written between two steps.
    assert calls[:10] == [100] * 10 and len(calls) >= 11
    assert [r.index for r in found][:3] == [1, 3, 5] and len(found) == 501
    await log.aclose()
