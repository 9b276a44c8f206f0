"""SQLite audit store: the AuditStore contract, crash-safe transactions, and multi-process appends.

The contract tests take a ``make_store`` fixture so a PostgreSQL store can be added as a second
parameter and pass the same tests.
"""

from __future__ import annotations

import json
import os
import re
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import merkle
from gateway.audit.sqlite import SqliteAuditStore, StoreCorrupted
from gateway.audit.store import AuditStore, StoredCheckpoint, StoredRecord

REPO = Path(__file__).resolve().parents[1]
MakeStore = Callable[[], AuditStore]


@pytest.fixture(params=["sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Opens stores on one shared database; every store opened is closed after the test."""
    opened: list[AuditStore] = []

    def make() -> AuditStore:
        store = SqliteAuditStore(str(tmp_path / "audit.db"))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _all_leaf_hashes(store: AuditStore) -> list[bytes]:
    out = []
    for i in range(store.size()):
        rec = store.get(i)
        assert rec is not None
        out.append(rec.leaf_hash)
    return out


# -- the contract --------------------------------------------------------------------------


def test_empty_store_has_the_empty_tree_head(make_store: MakeStore) -> None:
    store = make_store()
    assert store.tree_head() == (0, merkle.EMPTY_ROOT)
    assert store.size() == 0
    assert store.get(0) is None
    assert store.append_batch([]) == []


def test_batches_get_consecutive_indexes_and_leaf_hashes_of_the_bytes(
    make_store: MakeStore,
) -> None:
    store = make_store()
    first = store.append_batch([b"a", b"b", b"c"])
    second = store.append_batch([b"d"])
    third = store.append_batch([b"e", b"f"])
    assert [i for i, _ in first + second + third] == list(range(6))
    expected = [merkle.leaf_hash(r) for r in [b"a", b"b", b"c", b"d", b"e", b"f"]]
    assert [h for _, h in first + second + third] == expected
    assert store.size() == 6


def test_tree_head_root_equals_reference_root_after_every_batch(make_store: MakeStore) -> None:
    store = make_store()
    hashes: list[bytes] = []
    for n in [1, 2, 3, 1, 8, 5, 16, 1]:
        batch = [f"record {len(hashes) + i}".encode() for i in range(n)]
        hashes += [h for _, h in store.append_batch(batch)]
        assert store.tree_head() == (len(hashes), merkle.root(hashes))


def test_records_come_back_exactly_as_given(make_store: MakeStore) -> None:
    """Leaf hashes are over these bytes, so no decoding or re-serialization may happen."""
    records = [b"", b"\x00\xff\xfe", '{"name":"Nguyễn"}'.encode(), b"x" * 100_000]
    store = make_store()
    store.append_batch(records)
    for i, r in enumerate(records):
        assert store.get(i) == StoredRecord(i, merkle.leaf_hash(r), r)
    assert store.get(len(records)) is None
    assert store.get(-1) is None
    assert store.get(2**64) is None


def test_reopening_keeps_records_and_head_and_appends_continue(make_store: MakeStore) -> None:
    store = make_store()
    store.append_batch([b"one", b"two", b"three"])
    head = store.tree_head()
    store.close()
    store.close()  # Idempotent.

    again = make_store()
    assert again.tree_head() == head
    assert again.get(1) == StoredRecord(1, merkle.leaf_hash(b"two"), b"two")
    assert again.append_batch([b"four"]) == [(3, merkle.leaf_hash(b"four"))]
    assert again.tree_head() == (4, merkle.root(_all_leaf_hashes(again)))


def test_a_subtree_id_beyond_64_bits_is_missing_like_any_other(make_store: MakeStore) -> None:
    """KeyError, the Protocol's answer for a subtree not stored, in every store (SQLite raised
    OverflowError binding the id, PostgreSQL said KeyError)."""
    store = make_store()
    store.append_batch([b"a", b"b"])
    for node in [(0, 2**63), (2**63, 0), (64, 0), (0, -1), (-1, 0)]:
        with pytest.raises(KeyError) as missing:
            store.subtree_hashes([(1, 0), node])
        assert missing.value.args == (node,)
    assert store.subtree_hashes([(1, 0)]) == [merkle.root(_all_leaf_hashes(store))]


def test_a_closed_store_refuses_work(make_store: MakeStore) -> None:
    store = make_store()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.append_batch([b"late"])


# -- SQLite specifics ----------------------------------------------------------------------


def test_constructing_does_no_io_and_the_file_is_wal(tmp_path: Path) -> None:
    """Lazy open: AuditLog may build the store on the loop and open it on its writer thread."""
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(str(path))
    assert not path.exists()
    store.size()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection, so only the store's own connection can show it (FULL = 2):
    # in WAL mode, NORMAL would acknowledge commits that a power cut can still lose.
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()


def test_nodes_table_holds_every_perfect_subtree_of_the_vector_tree(tmp_path: Path) -> None:
    """Proofs (issue 3) are assembled from stored subtrees: they must be there and be right."""
    from tests.test_merkle import LEAVES, NH

    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    store.append_batch(LEAVES[:3])
    with pytest.raises(KeyError):
        store.subtree_hashes([(1, 1)])  # Leaves 2..3: not complete at size 3.
    store.append_batch(LEAVES[3:])
    ids = [(level, i) for level, hashes in enumerate(NH) for i in range(len(hashes))]
    assert store.subtree_hashes(ids) == [NH[level][i] for level, i in ids]
    store.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=8))
def test_stored_nodes_and_head_match_the_reference_for_any_batching(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteAuditStore(os.path.join(tmp, "audit.db"))
        hashes: list[bytes] = []
        for n in sizes:
            hashes += [
                h for _, h in store.append_batch([b"%d" % (len(hashes) + i) for i in range(n)])
            ]
        assert store.tree_head() == (len(hashes), merkle.root(hashes))
        ids = [
            (level, i)
            for level in range(1, len(hashes).bit_length())
            for i in range(len(hashes) >> level)
        ]
        expected = [merkle.root(hashes[i << lvl : (i + 1) << lvl]) for lvl, i in ids]
        assert store.subtree_hashes(ids) == expected
        store.close()


def test_a_failing_batch_writes_nothing_and_the_store_stays_usable(tmp_path: Path) -> None:
    """A row in the way (here planted by hand) aborts the whole batch: no partial tree."""
    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b"a", b"b"])
    head = store.tree_head()
    with sqlite3.connect(path) as other:
        other.execute("INSERT INTO audit_records VALUES (3, zeroblob(32), x'00')")
    with pytest.raises(sqlite3.IntegrityError):
        store.append_batch([b"c", b"d"])
    assert store.tree_head() == head
    with pytest.raises(KeyError):
        store.subtree_hashes([(1, 1)])
    with sqlite3.connect(path) as other:
        other.execute("DELETE FROM audit_records WHERE idx = 3")
    assert [i for i, _ in store.append_batch([b"c", b"d"])] == [2, 3]
    store.close()


def test_a_batch_waits_for_the_write_lock_then_fails_cleanly(tmp_path: Path) -> None:
    """Another process holding the write lock past busy_timeout fails the batch, not the store."""
    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path, busy_timeout=0.2)
    store.append_batch([b"a"])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    start = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.append_batch([b"b"])
    assert time.monotonic() - start >= 0.15
    other.execute("ROLLBACK")
    other.close()
    assert store.append_batch([b"b"]) == [(1, merkle.leaf_hash(b"b"))]
    store.close()


@pytest.mark.parametrize("how", ["directory-removed", "file-replaced"])
def test_a_database_file_removed_or_replaced_while_open_fails_every_call(
    tmp_path: Path, how: str
) -> None:
    """SQLite goes on writing to a file unlinked under it: the commits "succeed" into an inode
    that vanishes when the process exits, and the gateway acknowledged exchanges that no log
    will ever show. The store checks the path still names the file it opened."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    path = str(data / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b"a"])
    if how == "directory-removed":
        shutil.rmtree(data)
    else:
        os.rename(path, path + ".old")
        SqliteAuditStore(path).close()  # a new, empty log where the old one was
    with pytest.raises(sqlite3.OperationalError, match="removed or replaced"):
        store.append_batch([b"b"])
    with pytest.raises(sqlite3.OperationalError, match="removed or replaced"):
        store.tree_head()
    store.close()


def test_a_head_that_disagrees_with_the_records_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b"a", b"b", b"c"])
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit_records WHERE idx = 2")  # Truncated log.
    with pytest.raises(StoreCorrupted):
        SqliteAuditStore(path).size()


def test_other_tables_can_share_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE idempotency (key TEXT PRIMARY KEY, body_sha256 BLOB)")
        conn.execute("INSERT INTO idempotency VALUES ('k', x'01')")
    store = SqliteAuditStore(path)
    store.append_batch([b"a"])
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM idempotency").fetchone() == (1,)


# -- several processes, one file -----------------------------------------------------------

WORKER = r"""
import asyncio, json, sys
from gateway.audit.log import AuditLog
from gateway.audit.sqlite import SqliteAuditStore

async def main(path, worker, count, wave):
    log = await AuditLog.open(SqliteAuditStore(path))
    print("ready", flush=True)
    sys.stdin.readline()  # Start together.
    indexes = []
    for start in range(0, count, wave):
        stop = min(start + wave, count)
        results = await asyncio.gather(
            *(log.append(b'{"i":%d,"w":%d}' % (i, worker)) for i in range(start, stop))
        )
        indexes += [r.index for r in results]
    await log.aclose()
    print(json.dumps({"indexes": indexes, "batches": log.stats.batches}), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
"""


def _readline(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError("worker did not answer in time")
    return proc.stdout.readline()


@pytest.mark.slow
def test_four_processes_appending_concurrently_get_gap_free_unique_indexes(
    tmp_path: Path,
) -> None:
    """4 x 500 records from 4 processes: exactly 0..1999, each record where its writer was told."""
    path = str(tmp_path / "audit.db")
    workers, count = 4, 500
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, path, str(w), str(count), "25"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(workers)
    ]
    try:
        deadline = time.monotonic() + 30
        for p in procs:
            assert _readline(p, deadline).strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * workers

    told = {
        index: b'{"i":%d,"w":%d}' % (i, w)
        for w, out in enumerate(outputs)
        for i, index in enumerate(out["indexes"])
    }
    assert sorted(told) == list(range(workers * count))  # No gap, no duplicate.

    store = SqliteAuditStore(path)
    try:
        assert store.size() == workers * count
        records = [store.get(i) for i in range(workers * count)]
        assert [r.record for r in records if r] == [told[i] for i in range(workers * count)]
        assert store.tree_head()[1] == merkle.root(
            [merkle.leaf_hash(told[i]) for i in sorted(told)]
        )
        with sqlite3.connect(path) as conn:
            assert conn.execute(
                "SELECT count(*), min(idx), max(idx) FROM audit_records"
            ).fetchone() == (
                2000,
                0,
                1999,
            )
    finally:
        store.close()


# -- one-time claims (the replay guard, spent with the "accepted" record) -------------------


def test_a_claimed_key_refuses_its_record_and_keeps_indexes_gap_free(make_store: MakeStore) -> None:
    from gateway.audit.store import Claim

    store = make_store()
    c = Claim("hcm.quan-1\nid-1", expires_at=2000.0, now=1000.0)
    first = store.append_batch([b"a", b"b"], [c, None])
    assert first == [(0, merkle.leaf_hash(b"a")), (1, merkle.leaf_hash(b"b"))]
    # Same key again, in a later batch and twice within one batch: only new keys go through.
    d = Claim("hcm.quan-1\nid-2", expires_at=2000.0, now=1001.0)
    again = store.append_batch([b"c", b"d", b"e"], [c, d, d])
    assert again == [None, (2, merkle.leaf_hash(b"d")), None]
    assert store.size() == 3
    assert store.tree_head()[1] == merkle.root([merkle.leaf_hash(x) for x in (b"a", b"b", b"d")])


def test_an_expired_claim_can_be_taken_again(make_store: MakeStore) -> None:
    from gateway.audit.store import Claim

    store = make_store()
    assert store.append_batch([b"a"], [Claim("k", expires_at=10.0, now=1.0)])[0] is not None
    assert store.append_batch([b"b"], [Claim("k", expires_at=20.0, now=5.0)]) == [None]
    assert store.append_batch([b"c"], [Claim("k", expires_at=30.0, now=11.0)])[0] is not None


def test_claims_survive_reopening(make_store: MakeStore) -> None:
    from gateway.audit.store import Claim

    store = make_store()
    store.append_batch([b"a"], [Claim("k", expires_at=1e12, now=1.0)])
    store.close()
    assert make_store().append_batch([b"b"], [Claim("k", expires_at=1e12, now=2.0)]) == [None]


# -- checkpoints (issue 3) ---------------------------------------------------------------------


def _cp(size: int, note: bytes = b"note", at: float = 1.0) -> StoredCheckpoint:
    return StoredCheckpoint(size=size, root=bytes([size % 256]) * 32, note=note, created_at=at)


def test_checkpoints_are_kept_by_size_and_the_first_of_a_size_stays(
    make_store: MakeStore,
) -> None:
    store = make_store()
    assert store.latest_checkpoint() is None
    assert store.checkpoints() == []
    for size in (5, 1, 9):
        store.add_checkpoint(_cp(size))
    store.add_checkpoint(_cp(5, note=b"another note for 5", at=2.0))  # Never overwrites.
    assert store.latest_checkpoint() == _cp(9)
    assert store.checkpoints() == [_cp(1), _cp(5), _cp(9)]
    assert store.checkpoints(after_size=1, limit=1) == [_cp(5)]
    assert store.checkpoints(after_size=9) == []
    assert store.checkpoints(after_size=2**70) == []  # No OverflowError.
    store.close()
    assert make_store().latest_checkpoint() == _cp(9)  # Durable.


def test_a_checkpoint_the_table_refuses_raises_instead_of_vanishing(make_store: MakeStore) -> None:
    """Only a second checkpoint of a stored size is let go; one the table's checks refuse
    (negative size, root not 32 bytes) is an error in every store. SQLite's INSERT OR IGNORE
    dropped it silently (the caller thought it published), PostgreSQL raised."""
    store = make_store()
    bad = [
        StoredCheckpoint(size=-1, root=bytes(32), note=b"n", created_at=1.0),
        StoredCheckpoint(size=3, root=bytes(31), note=b"n", created_at=1.0),
    ]
    for checkpoint in bad:
        with pytest.raises(Exception, match=r"(?i)constraint|check"):
            store.add_checkpoint(checkpoint)
    store.add_checkpoint(_cp(3))  # The store is still usable, and the size still free.
    assert store.checkpoints() == [_cp(3)]


# -- search and export (issue 3) ---------------------------------------------------------------

RECORDS = [
    {"at": "2026-11-28T09:00:00.000Z", "event": "exchange.accepted", "exchange_id": "x1",
     "sender": "hcm.quan-1", "service": "citizen-lookup.v1", "provider": "central.dan-cu"},
    {"at": "2026-11-28T09:00:01.000Z", "event": "exchange.delivered", "exchange_id": "x1",
     "sender": "hcm.quan-1", "service": "citizen-lookup.v1", "provider": "central.dan-cu"},
    {"at": "2026-11-28T09:00:02.000Z", "event": "exchange.rejected", "exchange_id": "x2",
     "sender": None, "service": None, "status": 401},
    {"at": "2026-11-28T09:00:03.000Z", "event": "exchange.accepted", "exchange_id": "x3",
     "sender": "hcm.thu-duc", "service": "pilot-progress-report.v1", "provider": "hcm.ca-tp"},
    {"at": "2026-11-28T09:00:04.000Z", "event": "exchange.failed", "exchange_id": "x3",
     "sender": "hcm.thu-duc", "service": "pilot-progress-report.v1", "provider": "hcm.ca-tp"},
]  # fmt: skip


def _filled(store: AuditStore) -> list[bytes]:
    from gateway.crypto.canonical import canonicalize

    records = [canonicalize(r) for r in RECORDS]
    records.insert(2, b"not json at all \xff")  # Index 2: must not break appends or search.
    records.insert(3, b'["an", "array"]')
    store.append_batch(records[:4])
    store.append_batch(records[4:])
    return records


def _indexes(found: list[StoredRecord]) -> list[int]:
    return [r.index for r in found]


def test_query_ands_every_filter_and_pages_by_index(make_store: MakeStore) -> None:
    from gateway.audit.store import RecordQuery as Q

    store = make_store()
    records = _filled(store)
    assert _indexes(store.query(Q())) == list(range(len(records)))
    assert _indexes(store.query(Q(sender="hcm.quan-1"))) == [0, 1]
    assert _indexes(store.query(Q(exchange_id="x3"))) == [5, 6]
    assert _indexes(store.query(Q(exchange_id="x3", event="exchange.failed"))) == [6]
    assert _indexes(store.query(Q(provider="hcm.ca-tp", sender="hcm.quan-1"))) == []
    assert _indexes(store.query(Q(service="citizen-lookup.v1", after_index=0))) == [1]
    assert _indexes(store.query(Q(event="exchange.accepted", limit=1))) == [0]
    assert _indexes(store.query(Q(event="exchange.accepted", after_index=0, limit=1))) == [5]
    times = Q(since="2026-11-28T09:00:01.000Z", until="2026-11-28T09:00:04.000Z")
    assert _indexes(store.query(times)) == [1, 4, 5]  # since inclusive, until exclusive.
    assert _indexes(store.query(Q(sender="nobody"))) == []
    assert _indexes(store.query(Q(after_index=2**70))) == []
    found = store.query(Q(exchange_id="x1"))
    assert found[0] == StoredRecord(0, merkle.leaf_hash(records[0]), records[0])


def test_a_value_holding_nul_is_never_matched_by_any_store(make_store: MakeStore) -> None:
    """PostgreSQL text cannot hold NUL: a search value with NUL matches nothing in every store
    (PostgreSQL raised CharacterNotInRepertoireError, SQLite matched), and a record member
    holding NUL is left out of the search index (PostgreSQL had to, SQLite did not)."""
    from gateway.audit.store import RecordQuery as Q

    store = make_store()
    store.append_batch(
        [
            b'{"at":"2026-11-28T09:00:00.000Z","sender":"a\\u0000b","service":"s"}',
            b'{"at":"2026-11-28T09:00:01.000Z","sender":"a","service":"s\\u0000"}',
        ]
    )
    for nul in ("a\x00b", "\x00", "s\x00"):
        for field in ("sender", "service", "provider", "event", "exchange_id", "since", "until"):
            assert store.query(Q(**{field: nul})) == [], (field, nul)
    assert _indexes(store.query(Q(sender="a"))) == [1]
    assert _indexes(store.query(Q(service="s"))) == [0]
    assert _indexes(store.query(Q(since="2026-11-28T09:00:00.000Z"))) == [0, 1]


def test_query_sees_records_appended_by_another_store_on_the_same_file(
    make_store: MakeStore,
) -> None:
    from gateway.audit.store import RecordQuery as Q

    first, second = make_store(), make_store()
    _filled(first)
    assert _indexes(second.query(Q(sender="hcm.thu-duc"))) == [5, 6]
    second.append_batch([b'{"sender":"hcm.thu-duc"}'])
    assert _indexes(first.query(Q(sender="hcm.thu-duc"))) == [5, 6, 7]


def test_records_returns_a_range_in_index_order(make_store: MakeStore) -> None:
    store = make_store()
    records = _filled(store)
    assert [r.record for r in store.records(0, 100)] == records
    assert _indexes(store.records(2, 4)) == [2, 3]
    assert store.records(4, 4) == [] and store.records(5, 2) == []
    assert _indexes(store.records(-5, 1)) == [0]
    assert store.records(2**70, 2**71) == []


def test_search_index_is_filled_behind_the_log_never_in_the_append(tmp_path: Path) -> None:
    """Appends leave audit_search alone (the hot path); index_pending catches up in steps."""
    from gateway.audit.store import RecordQuery as Q

    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b'{"sender":"s%d"}' % (i % 3) for i in range(10)])
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM audit_search").fetchone() == (0,)
    assert store.index_pending(4) == 4
    assert store.index_pending(100) == 6
    assert store.index_pending() == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT min(idx), max(idx) FROM audit_search").fetchone() == (0, 9)
        assert conn.execute("SELECT sender FROM audit_search WHERE idx = 4").fetchone() == ("s1",)
    store.append_batch([b'{"sender":"s1"}'])
    assert _indexes(store.query(Q(sender="s1"))) == [1, 4, 7, 10]  # The query caught up.
    store.close()


def test_a_database_from_before_the_search_index_is_indexed_on_first_query(
    tmp_path: Path,
) -> None:
    from gateway.audit.store import RecordQuery as Q

    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b'{"sender":"a"}', b'{"sender":"b"}', b'{"sender":"a"}'])
    store.close()
    with sqlite3.connect(path) as conn:  # What a database made before issue 3 looks like.
        conn.execute("DROP TABLE audit_search")
        conn.execute("DROP TABLE audit_checkpoints")
    again = SqliteAuditStore(path)
    assert _indexes(again.query(Q(sender="a"))) == [0, 2]
    assert again.latest_checkpoint() is None
    again.close()


def test_index_pending_gives_up_at_once_when_another_process_writes(tmp_path: Path) -> None:
    """The idle-time caller must not sit in the busy wait an append would."""
    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path)
    store.append_batch([b"{}"])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    start = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        store.index_pending()
    assert time.monotonic() - start < 0.5
    other.execute("ROLLBACK")
    other.close()
    assert store.index_pending() == 1
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again.
    store.close()


def test_a_time_range_walks_index_order_from_the_cursor_and_never_sorts(tmp_path: Path) -> None:
    from gateway.audit.store import RecordQuery as Q

    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    store.append_batch([b'{"at":"2026-11-28T09:00:%02d.000Z"}' % i for i in range(60)])
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    found = store.query(
        Q(since="2026-11-28T09:00:10.000Z", until="2026-11-28T09:00:20.000Z", limit=3)
    )
    assert _indexes(found) == [10, 11, 12]
    store._connection().set_trace_callback(None)
    [sql] = [s for s in statements if s.startswith("SELECT r.idx")]
    plan = " | ".join(row[3] for row in store._connection().execute("EXPLAIN QUERY PLAN " + sql))
    assert "SEARCH s USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    store.close()


@pytest.mark.parametrize("field", ["exchange_id", "sender"])
def test_filters_use_their_index_and_need_no_sort(tmp_path: Path, field: str) -> None:
    """EXPLAIN QUERY PLAN of the very statement query() ran: an index range from the cursor."""
    from gateway.audit.store import RecordQuery as Q

    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    store.append_batch([b'{"sender":"a","exchange_id":"x%d"}' % i for i in range(100)])
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    assert len(store.query(Q(**{field: "x7" if field == "exchange_id" else "a"}, limit=3))) >= 1
    store._connection().set_trace_callback(None)
    [sql] = [s for s in statements if s.startswith("SELECT r.idx")]
    plan = " | ".join(row[3] for row in store._connection().execute("EXPLAIN QUERY PLAN " + sql))
    wanted = rf"SEARCH s USING (COVERING )?INDEX audit_search_{field} \({field}=\? AND rowid>\?\)"
    assert re.search(wanted, plan), plan
    assert "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    store.close()


def test_the_appending_store_checkpoints_its_wal_on_a_thread_not_in_its_commits(
    tmp_path: Path,
) -> None:
    """With background_checkpoints the writer's commits never copy the WAL into the file
    (their automatic threshold is the far backstop); the checkpointer thread does, beside."""
    path = str(tmp_path / "audit.db")
    store = SqliteAuditStore(path, background_checkpoints=True)
    records = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 2000) for i in range(300)]
    for i in range(0, 300, 3):
        store.append_batch(records[i : i + 3])
    conn = store._connection()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000
    checkpointer = store._checkpointer
    assert checkpointer is not None
    # In WAL mode only a checkpoint writes the database file itself; the writer's threshold
    # (10,000 pages) is far above these ~150 pages, so only the thread can have grown it.
    # A pass every 0.5 s; the deadline only keeps a broken thread from hanging the test (a
    # machine loaded by other tests' fsyncs made 10 s too short: a flaky failure).
    deadline = time.monotonic() + 120
    # Both: the thread counts a pass after its checkpoint returns, so the file can have grown
    # a moment before the count (a loaded machine once showed exactly that).
    while time.monotonic() < deadline and not (
        os.path.getsize(path) >= 300 * 2000 and checkpointer.checkpoints > 0
    ):
        time.sleep(0.05)
    assert os.path.getsize(path) >= 300 * 2000 and checkpointer.checkpoints > 0
    store.close()
    assert not checkpointer._thread.is_alive()  # close() stops it
    # Everything committed is there for a fresh reader, checkpointed or not.
    again = SqliteAuditStore(path)
    assert again.size() == 300 and again.get(299) is not None
    assert again.tree_head()[1] == merkle.root([merkle.leaf_hash(r) for r in records])
    again.close()


def test_a_store_that_only_reads_keeps_sqlite_automatic_checkpoints(tmp_path: Path) -> None:
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    store.append_batch([b'{"n":1}'])
    assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert store._checkpointer is None
    store.close()
