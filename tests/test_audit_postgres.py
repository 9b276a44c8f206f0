"""PostgreSQL audit store: the SQLite contract, plus what sharing one log across instances needs.

The contract tests are the functions of tests/test_audit_sqlite.py that take ``make_store``:
they are imported here by name (every one, including any added later) and pytest runs them a
second time with this module's ``make_store``, which opens stores on a fresh PostgreSQL schema.
Needs the real server (see tests/pg.py): these tests fail, never skip, when it is down.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import merkle
from gateway.audit.log import AuditLog
from gateway.audit.postgres import PostgresAuditStore, StoreCorrupted
from gateway.audit.store import AuditStore, Claim, RecordQuery, StoredCheckpoint
from tests import pg
from tests import test_audit_sqlite as contract

MakeStore = Callable[[], AuditStore]

# -- the shared contract, run against PostgreSQL ---------------------------------------------

# Contract tests that pin a SQLite detail, each with the PostgreSQL test that replaces it here.
_NOT_SHARED = {
    # Expects sqlite3.ProgrammingError; see test_a_closed_store_refuses_work_with_interface_error.
    "test_a_closed_store_refuses_work",
}
_CONTRACT = {
    name: fn
    for name, fn in vars(contract).items()
    if name.startswith("test_")
    and callable(fn)
    and "make_store" in inspect.signature(fn).parameters
    and name not in _NOT_SHARED
}
globals().update(_CONTRACT)


def test_the_contract_tests_are_really_shared() -> None:
    """Guards the import above: if it silently found nothing, PostgreSQL would be untested."""
    assert len(_CONTRACT) >= 8
    assert "test_tree_head_root_equals_reference_root_after_every_batch" in _CONTRACT


@pytest.fixture
def schema() -> Iterator[str]:
    with pg.fresh_schema() as name:
        yield name


@pytest.fixture
def make_store(schema: str) -> Iterator[MakeStore]:
    """Opens stores (separate connections) on one fresh schema; all closed after the test."""
    opened: list[AuditStore] = []

    def make() -> AuditStore:
        store = PostgresAuditStore(pg.schema_dsn(schema))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _store(schema: str, **kwargs: Any) -> PostgresAuditStore:
    return PostgresAuditStore(pg.schema_dsn(schema), **kwargs)


def _leaf_hashes(store: AuditStore) -> list[bytes]:
    return [r.leaf_hash for r in store.records(0, store.size())]


def test_a_closed_store_refuses_work_with_interface_error(make_store: MakeStore) -> None:
    store = make_store()
    store.append_batch([b"a"])
    store.close()
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        store.append_batch([b"late"])


# -- opening: lazy, schema from the DSN, concurrent creation ---------------------------------


def test_constructing_does_no_io_and_the_first_call_creates_the_schema() -> None:
    """AuditLog may build the store on the loop; it connects on the writer thread."""
    PostgresAuditStore("postgresql://nobody@127.0.0.1:1/none?schema=x").close()
    with pg.fresh_schema(create=False) as name:
        store = _store(name)
        assert pg.fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", name) == []
        assert store.tree_head() == (0, merkle.EMPTY_ROOT)
        tables = pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", name)
        assert sorted(r[0] for r in tables) == [
            "audit_checkpoints",
            "audit_claims",
            "audit_head",
            "audit_nodes",
            "audit_records",
        ]
        store.close()


def test_every_text_key_of_the_log_compares_byte_wise_whatever_the_database_collation(
    schema: str,
) -> None:
    """Replay ids (audit_claims.key) and the search columns are indexed text: under the
    database's default collation (a glibc locale), an operating-system upgrade that changes
    the locale's sort order silently corrupts such indexes, and a corrupt primary key can let
    a replayed request id through. "C" compares bytes, as SQLite does."""
    store = _store(schema)
    store.tree_head()  # creates the tables
    rows = pg.fetch(
        "SELECT table_name, column_name, collation_name FROM information_schema.columns"
        " WHERE table_schema = $1 AND data_type = 'text'",
        schema,
    )
    store.close()
    assert ("audit_claims", "key", "C") in {tuple(r) for r in rows}
    assert rows and all(r["collation_name"] == "C" for r in rows), rows


def test_the_schema_can_come_from_libpq_options_or_the_keyword(schema: str) -> None:
    """Without ?schema=, table names follow search_path, which the DSN may set libpq-style."""
    via_options = PostgresAuditStore(pg.with_params(pg.DSN, options=f"-csearch_path={schema}"))
    via_keyword = PostgresAuditStore(pg.DSN, schema=schema)
    try:
        via_options.append_batch([b"a"])
        assert via_keyword.get(0) is not None
        assert pg.fetch(f'SELECT count(*) FROM "{schema}".audit_records')[0][0] == 1
    finally:
        via_options.close()
        via_keyword.close()
    with pytest.raises(ValueError, match="twice"):
        PostgresAuditStore(pg.schema_dsn(schema), schema="other")


def test_instances_starting_together_create_the_tables_once() -> None:
    """The DDL runs under an advisory lock: no 'duplicate key' from racing CREATE TABLEs."""
    with pg.fresh_schema(create=False) as name:
        stores = [_store(name) for _ in range(6)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(stores))

        def open_one(store: PostgresAuditStore) -> None:
            barrier.wait()
            try:
                store.size()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for s in stores:
            s.close()
        assert errors == []


def test_commits_are_synchronous_even_if_the_session_default_is_off(schema: str) -> None:
    """Durable on return: a session told synchronous_commit=off turns it back on."""
    store = PostgresAuditStore(pg.with_params(pg.schema_dsn(schema), synchronous_commit="off"))

    async def show(conn: Any) -> str:
        return str(await conn.fetchval("SHOW synchronous_commit"))

    try:
        assert store._call(show) == "on"
    finally:
        store.close()


def test_calling_from_an_event_loop_thread_is_refused(schema: str) -> None:
    store = _store(schema)

    async def misuse() -> None:
        store.size()

    try:
        with pytest.raises(RuntimeError, match="off the event loop"):
            asyncio.run(misuse())
        assert store.size() == 0  # Still usable from a plain thread.
    finally:
        store.close()


# -- several instances, one log ----------------------------------------------------------------


def test_four_threads_with_their_own_stores_get_one_gap_free_tree(schema: str) -> None:
    """4 stores (4 connections) x 60 batches: indexes 0..N-1, each where its writer was told."""
    workers, batches = 4, 60
    stores = [_store(schema) for _ in range(workers)]
    told: dict[int, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(w: int) -> None:
        try:
            barrier.wait()
            for b in range(batches):
                batch = [b'{"w":%d,"b":%d,"i":%d}' % (w, b, i) for i in range(1 + (b % 5))]
                placed = stores[w].append_batch(batch)
                with lock:
                    for pos, record in zip(placed, batch, strict=True):
                        assert pos is not None and pos[1] == merkle.leaf_hash(record)
                        told[pos[0]] = record
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        total = workers * sum(1 + (b % 5) for b in range(batches))
        assert sorted(told) == list(range(total))
        stored = stores[0].records(0, total + 10)
        assert [r.record for r in stored] == [told[i] for i in range(total)]
        leaves = [merkle.leaf_hash(told[i]) for i in range(total)]
        assert all(stores[w].tree_head() == (total, merkle.root(leaves)) for w in range(workers))
    finally:
        for s in stores:
            s.close()


def test_a_claim_is_won_by_exactly_one_of_many_racing_instances(schema: str) -> None:
    workers = 8
    stores = [_store(schema) for _ in range(workers)]
    results: list[Any] = [None] * workers
    barrier = threading.Barrier(workers)

    def race(w: int) -> None:
        barrier.wait()
        claim = Claim("hcm.quan-1\nsame-id", expires_at=1e12, now=1.0)
        results[w] = stores[w].append_batch([b"w%d" % w, b"free"], [claim, None])

    threads = [threading.Thread(target=race, args=(w,)) for w in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sum(r[0] is not None for r in results) == 1
        assert all(r[1] is not None for r in results)  # Unclaimed records always go in.
        assert stores[0].size() == workers + 1
        assert stores[0].tree_head()[1] == merkle.root(_leaf_hashes(stores[0]))
        # And the other way round: a claim taken by one instance is refused by another.
        other = Claim("k2", expires_at=1e12, now=1.0)
        assert stores[1].append_batch([b"x"], [other])[0] is not None
        assert stores[2].append_batch([b"y"], [other]) == [None]
    finally:
        for s in stores:
            s.close()


def test_a_batch_waits_for_the_head_lock_then_fails_cleanly(schema: str) -> None:
    """Another session holding the head row past lock_timeout fails the batch, not the store."""
    store = _store(schema, lock_timeout=0.3)
    store.append_batch([b"a"])

    async def hold_head_then(action: Callable[[], Any]) -> Any:
        conn = await asyncpg.connect(pg.DSN)
        try:
            async with conn.transaction():
                await conn.execute(f'SELECT * FROM "{schema}".audit_head FOR UPDATE')
                return await asyncio.to_thread(action)
        finally:
            await conn.close()

    def blocked_append() -> float:
        start = time.monotonic()
        with pytest.raises(asyncpg.LockNotAvailableError):
            store.append_batch([b"b"])
        return time.monotonic() - start

    try:
        assert asyncio.run(hold_head_then(blocked_append)) >= 0.25
        assert store.append_batch([b"b"]) == [(1, merkle.leaf_hash(b"b"))]
    finally:
        store.close()


def test_a_broken_connection_fails_one_call_and_the_next_reconnects(schema: str) -> None:
    store = _store(schema)
    try:
        store.append_batch([b"a"])

        async def backend_pid(conn: Any) -> int:
            return int(conn.get_server_pid())

        pg.execute("SELECT pg_terminate_backend($1)", store._call(backend_pid))
        try:
            store.append_batch([b"b"])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            store.append_batch([b"b"])
        assert store.size() == 2
        assert store.tree_head()[1] == merkle.root([merkle.leaf_hash(x) for x in (b"a", b"b")])
    finally:
        store.close()


def _end_session_of(store: PostgresAuditStore) -> None:
    """End the store's session from the server side, as a restart, a failover or an
    idle_session_timeout does, and wait (bounded) until the server has let it go."""

    async def backend_pid(conn: Any) -> int:
        return int(conn.get_server_pid())

    pid = store._call(backend_pid)
    pg.execute("SELECT pg_terminate_backend($1)", pid)
    for _ in range(100):
        if not pg.fetch("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid):
            return
        time.sleep(0.05)
    raise AssertionError("the server did not end the session")


def test_a_session_the_server_ended_while_idle_costs_no_batch_and_no_read(schema: str) -> None:
    """The connection died between calls (the server restarted, or ended an idle session):
    nothing of the next call reached the server, so it is tried once on a new connection
    instead of failing (a failed batch is a 503 for every exchange in it)."""
    store = _store(schema)
    try:
        store.append_batch([b"a"], [Claim("k", expires_at=1e12, now=1.0)])
        _end_session_of(store)
        placed = store.append_batch([b"b", b"c"], [None, Claim("k2", expires_at=1e12, now=1.0)])
        assert placed == [(1, merkle.leaf_hash(b"b")), (2, merkle.leaf_hash(b"c"))]
        _end_session_of(store)
        assert store.tree_head() == (3, merkle.root(_leaf_hashes(store)))
        _end_session_of(store)
        assert store.query(RecordQuery()) == store.records(0, 3)
        _end_session_of(store)  # The claims were taken once: a replay is still refused.
        assert store.append_batch([b"d"], [Claim("k2", expires_at=1e12, now=2.0)]) == [None]
        assert store.size() == 3
    finally:
        store.close()


def test_sessions_ended_at_random_never_lose_repeat_or_reorder_a_record_or_a_claim(
    schema: str,
) -> None:
    """Three appenders with claims while their sessions are ended at random, mid-transaction,
    at COMMIT or idle: a batch reported appended is in the log at its index, none is there
    twice (a call is only run again when its COMMIT was not sent), a claim is won once, and
    the tree stays gap-free and consistent with its leaves."""
    import random
    import secrets

    app = "t_" + secrets.token_hex(6)  # this test's sessions only: others' are left alone
    dsn = pg.with_params(pg.schema_dsn(schema), application_name=app)
    reported: dict[bytes, int] = {}
    winners: dict[str, bytes] = {}
    guard = threading.Lock()
    done = threading.Event()
    rng = random.Random(7)

    def appender(w: int) -> None:
        store = PostgresAuditStore(dsn, lock_timeout=2)
        try:
            for n in range(40):
                recs = [b"w%d-%d-%d" % (w, n, i) for i in range(1 + n % 4)]
                claims = [
                    Claim(f"k{(w * 7 + n * 3 + i) % 50}", 1e12, 1.0) for i in range(len(recs))
                ]
                try:
                    placed = store.append_batch(recs, [c if n % 2 else None for c in claims])
                except Exception:  # a failed batch (asyncpg says so in several ways)
                    continue
                with guard:
                    for rec, claim, at in zip(recs, claims, placed, strict=True):
                        if at is not None:
                            reported[rec] = at[0]
                            if n % 2:
                                assert claim.key not in winners, claim.key
                                winners[claim.key] = rec
        finally:
            store.close()

    async def end_sessions() -> int:
        conn = await asyncpg.connect(pg.DSN, timeout=5)
        ended = 0
        try:
            for _ in range(2000):
                if done.is_set():
                    break
                rows = await conn.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = $1 AND random() < 0.3",
                    app,
                )
                ended += len(rows)
                await asyncio.sleep(rng.uniform(0.005, 0.03))
        finally:
            await conn.close()
        return ended

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    ender: list[int] = []
    killer = threading.Thread(target=lambda: ender.append(asyncio.run(end_sessions())))
    killer.start()
    for thread in threads:
        thread.join(120)
    done.set()
    killer.join(30)
    check = _store(schema)
    try:
        size, root = check.tree_head()
        stored = check.records(0, size)
        assert [r.index for r in stored] == list(range(size))
        assert root == merkle.root([r.leaf_hash for r in stored])
        where = {r.record: r.index for r in stored}
        assert len(where) == size  # no record twice
        assert all(where.get(rec) == at for rec, at in reported.items())
        assert reported and ender and ender[0] > 0  # the test appended, and ended sessions
    finally:
        check.close()


@pytest.fixture
def cutter() -> Iterator[pg.CommitCutter]:
    proxy = pg.CommitCutter()
    yield proxy
    proxy.close()


def test_a_commit_whose_answer_is_lost_but_which_committed_is_reported_as_done(
    schema: str, cutter: pg.CommitCutter
) -> None:
    """The server is asked (txid_status): a batch that is in the log is not reported failed."""
    store = PostgresAuditStore(cutter.dsn(schema))
    try:
        store.append_batch([b"a"])
        cutter.arm("after")
        assert store.append_batch([b"b", b"c"]) == [
            (1, merkle.leaf_hash(b"b")),
            (2, merkle.leaf_hash(b"c")),
        ]
        assert store.append_batch([b"d"]) == [(3, merkle.leaf_hash(b"d"))]
        assert store.tree_head()[1] == merkle.root(_leaf_hashes(store))
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["before", "hold"])
def test_a_commit_that_never_happened_fails_the_batch_and_leaves_no_trace(
    schema: str, cutter: pg.CommitCutter, mode: str
) -> None:
    """'hold': the old session still holds the head lock; it is ended, not waited for."""
    store = PostgresAuditStore(cutter.dsn(schema), lock_timeout=5)
    try:
        store.append_batch([b"a"])
        cutter.arm(mode)
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            store.append_batch([b"lost"], [Claim("k", expires_at=1e12, now=1.0)])
        start = time.monotonic()
        assert store.append_batch([b"b"], [Claim("k", expires_at=1e12, now=2.0)]) == [
            (1, merkle.leaf_hash(b"b"))
        ]
        assert time.monotonic() - start < 2  # Not a lock_timeout wait behind the old session.
        assert store.tree_head() == (2, merkle.root([merkle.leaf_hash(x) for x in (b"a", b"b")]))
    finally:
        store.close()


def test_an_instance_cut_off_inside_its_append_does_not_block_the_others_for_long(
    schema: str, cutter: pg.CommitCutter
) -> None:
    """Instance A loses the network right after its writes (its session stays idle in the
    transaction, holding the head lock) and cannot reach the server to end it. Without a
    bound, every other instance's batches failed on lock_timeout until TCP keepalive noticed
    (two hours by default): the shared log was down. The server now ends a session idle in a
    transaction after idle_in_transaction_timeout, releasing the lock."""
    cut_off = PostgresAuditStore(cutter.dsn(schema), idle_in_transaction_timeout=1.0)
    other = _store(schema, lock_timeout=0.5)
    try:
        cut_off.append_batch([b"a"])
        cutter.arm("hold")
        cutter.refuse_new = True  # A can no longer reach the server, not even to clean up
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            cut_off.append_batch([b"lost"])
        placed = None
        for _ in range(20):  # 20 x lock_timeout: far beyond the idle bound, far below 2 h
            try:
                placed = other.append_batch([b"b"])
                break
            except asyncpg.LockNotAvailableError:
                continue
        assert placed == [(1, merkle.leaf_hash(b"b"))]
        assert other.tree_head() == (2, merkle.root([merkle.leaf_hash(x) for x in (b"a", b"b")]))
    finally:
        cut_off.close()
        other.close()


# -- integrity ---------------------------------------------------------------------------------


def test_nodes_table_holds_every_perfect_subtree_of_the_vector_tree(schema: str) -> None:
    from tests.test_merkle import LEAVES, NH

    store = _store(schema)
    try:
        store.append_batch(LEAVES[:3])
        with pytest.raises(KeyError):
            store.subtree_hashes([(1, 1)])  # Leaves 2..3: not complete at size 3.
        store.append_batch(LEAVES[3:])
        ids = [(level, i) for level, hashes in enumerate(NH) for i in range(len(hashes))]
        assert store.subtree_hashes(ids) == [NH[level][i] for level, i in ids]
        assert store.subtree_hashes([(0, 0), (0, 0)]) == [NH[0][0]] * 2
        for bad in [(0, -1), (-1, 0), (0, 2**64), (99, 0)]:
            with pytest.raises(KeyError):
                store.subtree_hashes([bad])
    finally:
        store.close()


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_stored_nodes_and_head_match_the_reference_for_any_batching(sizes: list[int]) -> None:
    with pg.fresh_schema() as name:
        store = _store(name)
        try:
            hashes: list[bytes] = []
            for n in sizes:
                batch = [b"%d" % (len(hashes) + i) for i in range(n)]
                hashes += [p[1] for p in store.append_batch(batch) if p]
            assert store.tree_head() == (len(hashes), merkle.root(hashes))
            ids = [
                (level, i)
                for level in range(1, len(hashes).bit_length())
                for i in range(len(hashes) >> level)
            ]
            expected = [merkle.root(hashes[i << lvl : (i + 1) << lvl]) for lvl, i in ids]
            assert store.subtree_hashes(ids) == expected
        finally:
            store.close()


def test_a_failing_batch_writes_nothing_and_the_store_stays_usable(schema: str) -> None:
    """A row in the way (planted by hand) aborts the whole batch: no partial tree."""
    store = _store(schema)
    try:
        store.append_batch([b"a", b"b"])
        head = store.tree_head()
        records = f'"{schema}".audit_records'
        pg.execute(
            f"INSERT INTO {records} (idx, leaf_hash, record) VALUES (3, $1, $2)", b"\0" * 32, b"x"
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            store.append_batch([b"c", b"d"])
        assert store.tree_head() == head
        with pytest.raises(KeyError):
            store.subtree_hashes([(1, 1)])
        pg.execute(f"DELETE FROM {records} WHERE idx = 3")
        assert [p[0] for p in store.append_batch([b"c", b"d"]) if p] == [2, 3]
    finally:
        store.close()


def test_a_head_that_disagrees_with_the_records_is_refused(schema: str) -> None:
    store = _store(schema)
    store.append_batch([b"a", b"b", b"c"])
    store.close()
    pg.execute(f'DELETE FROM "{schema}".audit_records WHERE idx = 2')  # Truncated log.
    again = _store(schema)
    try:
        with pytest.raises(StoreCorrupted):
            again.size()
        with pytest.raises(StoreCorrupted):  # Still refused: no half-open connection kept.
            again.append_batch([b"d"])
    finally:
        again.close()


# -- search columns and checkpoints ------------------------------------------------------------


def test_query_filters_use_the_record_members_and_tolerate_any_bytes(schema: str) -> None:
    def rec(at: str, sender: Any, event: str) -> bytes:
        return (
            b'{"at":"%s","event":"%s","exchange_id":"x-%s","provider":"central.dan-cu",'
            b'"sender":%s,"service":"citizen-lookup.v1"}'
            % (at.encode(), event.encode(), at[17:19].encode(), sender)
        )

    records = [
        rec("2026-11-28T09:00:00.000Z", b'"hcm.quan-1"', "exchange.accepted"),
        b"not json",
        rec("2026-11-28T09:00:01.000Z", b"null", "exchange.rejected"),
        b'["a list"]',
        rec("2026-11-28T09:00:02.000Z", b'"hcm.quan-1"', "exchange.delivered"),
        b'{"sender":"has\\u0000nul","at":1}',
    ]
    store = _store(schema)
    try:
        store.append_batch(records)

        def idx(**kw: Any) -> list[int]:
            return [r.index for r in store.query(RecordQuery(**kw))]

        assert idx() == [0, 1, 2, 3, 4, 5]
        assert idx(sender="hcm.quan-1") == [0, 4]
        assert idx(event="exchange.rejected", service="citizen-lookup.v1") == [2]
        # Byte-wise, as in SQLite: "...01.000Z" < "...01Z", so callers pass the records' form.
        assert idx(since="2026-11-28T09:00:01Z") == [4]
        assert idx(since="2026-11-28T09:00:01.000Z", until="2026-11-28T09:00:02.000Z") == [2]
        assert idx(provider="central.dan-cu", after_index=0, limit=1) == [2]
        assert idx(exchange_id="x-02") == [4]
        assert idx(after_index=2**70) == [] and idx(limit=0) == []
        assert [r.index for r in store.records(-5, 2**70)] == [0, 1, 2, 3, 4, 5]
        assert store.query(RecordQuery(sender="hcm.quan-1"))[1].record == records[4]
    finally:
        store.close()


def test_checkpoints_keep_the_first_note_per_size(schema: str) -> None:
    store = _store(schema)
    try:
        assert store.latest_checkpoint() is None
        r2, r5 = merkle.leaf_hash(b"2"), merkle.leaf_hash(b"5")
        store.add_checkpoint(StoredCheckpoint(5, r5, b"note five", 2.0))
        store.add_checkpoint(StoredCheckpoint(2, r2, b"note two", 1.0))
        store.add_checkpoint(StoredCheckpoint(2, r2, b"note two", 1.0))  # Idempotent.
        store.add_checkpoint(StoredCheckpoint(2, r2, b"signed by the other instance", 3.0))
        assert store.checkpoints() == [
            StoredCheckpoint(2, r2, b"note two", 1.0),
            StoredCheckpoint(5, r5, b"note five", 2.0),
        ]
        assert store.checkpoints(after_size=2, limit=5) == [store.latest_checkpoint()]
        assert store.checkpoints(limit=0) == []
    finally:
        store.close()


# -- behind AuditLog (the only caller in the gateway) ------------------------------------------


def test_instances_storing_one_checkpoint_size_never_fail_whatever_the_default_isolation(
    schema: str,
) -> None:
    """Several instances publish checkpoints of one log and may store the same size at once:
    the first stays, the others' INSERT .. ON CONFLICT DO NOTHING is a no-op. Under a stricter
    default_transaction_isolation (from the DSN, role or database) the losers failed with a
    serialization error instead; the store's sessions use READ COMMITTED."""
    dsn = pg.with_params(pg.schema_dsn(schema), default_transaction_isolation="serializable")
    stores = [PostgresAuditStore(dsn) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def publish(store: PostgresAuditStore, n: int) -> None:
        barrier.wait()
        for size in range(1, 41):
            try:
                store.add_checkpoint(StoredCheckpoint(size, bytes(32), b"note %d" % n, 1.0))
            except BaseException as e:
                errors.append(e)

    try:
        stores[0].append_batch([b"r"] * 40)
        for store in stores:
            store.size()  # connected, so they all start storing at once
        threads = [threading.Thread(target=publish, args=(s, n)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert [c.size for c in stores[1].checkpoints()] == list(range(1, 41))
    finally:
        for store in stores:
            store.close()


def test_group_commit_through_audit_log_on_the_writer_threads_private_loop(schema: str) -> None:
    """The store's loop lives on AuditLog's writer thread; the gateway's loop never blocks."""
    store = _store(schema)

    async def main() -> tuple[list[int], int, tuple[int, bytes]]:
        log = await AuditLog.open(store)
        try:
            results = await asyncio.gather(*(log.append(b"r%d" % i) for i in range(300)))
            return [r.index for r in results], log.stats.batches, await log.tree_head()
        finally:
            await log.aclose()

    indexes, batches, head = asyncio.run(main())
    assert sorted(indexes) == list(range(300))
    assert batches < 300
    again = _store(schema)
    try:
        assert head == again.tree_head() == (300, merkle.root(_leaf_hashes(again)))
    finally:
        again.close()


def test_an_unreachable_server_fails_the_tests_and_says_how_to_start_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="pg_ctlcluster"):
        pg.require_server("postgresql://postgres@127.0.0.1:1/test")
