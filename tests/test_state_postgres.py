"""Idempotency keys in PostgreSQL: the SQLite store's behaviour, shared by every instance.

Real server (tests/pg.py), one fresh schema per test. Two stores on one schema stand for two
gateway instances behind a load balancer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from gateway import state
from gateway.state import StateUnavailable
from gateway.state_postgres import PostgresStateStore
from tests import pg


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def schema() -> Iterator[str]:
    with pg.fresh_schema(create=False) as name:
        yield name


async def _rows(schema: str) -> int:
    conn = await asyncpg.connect(pg.DSN, timeout=5)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".gateway_idempotency'))
    finally:
        await conn.close()


async def test_a_key_is_claimed_once_answered_from_any_instance_and_released_on_failure(
    schema: str,
) -> None:
    a = await PostgresStateStore.open(pg.schema_dsn(schema))
    b = await PostgresStateStore.open(pg.schema_dsn(schema))  # another instance, same schema
    try:
        assert await a.idempotency_begin("s", "svc.v1", "k", "h1", ttl=60) is None
        pending = await b.idempotency_begin("s", "svc.v1", "k", "h1", ttl=60)
        assert pending is not None and (pending.state, pending.request_sha256) == ("pending", "h1")
        await a.idempotency_finish("s", "svc.v1", "k", 200, b'{"exchange_id":"x"}')
        done = await b.idempotency_begin("s", "svc.v1", "k", "h1", ttl=60)
        assert done is not None
        assert (done.state, done.status, done.body) == ("done", 200, b'{"exchange_id":"x"}')
        # Another key, failed exchange: released, so a retry on either instance goes ahead.
        assert await a.idempotency_begin("s", "svc.v1", "k2", "h", ttl=60) is None
        await a.idempotency_finish("s", "svc.v1", "k2", None, None)
        assert await b.idempotency_begin("s", "svc.v1", "k2", "h", ttl=60) is None
        await a.check()
    finally:
        await a.aclose()
        await b.aclose()


async def test_instances_racing_on_new_keys_let_exactly_one_exchange_through(schema: str) -> None:
    stores = [await PostgresStateStore.open(pg.schema_dsn(schema)) for _ in range(3)]
    try:
        for round_ in range(15):
            key = f"race-{round_}"
            outcomes = await asyncio.gather(
                *(s.idempotency_begin("s", "svc.v1", key, "h", ttl=60) for s in stores * 2)
            )
            assert sum(o is None for o in outcomes) == 1, outcomes
            assert all(o is None or o.state == "pending" for o in outcomes)
    finally:
        for s in stores:
            await s.aclose()


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
async def test_racing_instances_get_in_progress_not_unavailable_whatever_the_default_isolation(
    schema: str, isolation: str
) -> None:
    """The claim statements are written for READ COMMITTED (ON CONFLICT waits for the winner's
    row, then re-checks it). A DSN, role or database whose default_transaction_isolation is
    stricter made the losers fail with a serialization error: StateUnavailable, a 503 (and an
    outage mark) instead of 409 in progress. The store's sessions use READ COMMITTED."""
    dsn = pg.with_params(pg.schema_dsn(schema), default_transaction_isolation=isolation)
    stores = [await PostgresStateStore.open(dsn) for _ in range(3)]
    try:
        for round_ in range(10):
            outcomes = await asyncio.gather(
                *(s.idempotency_begin("s", "svc.v1", f"r{round_}", "h", ttl=60) for s in stores * 2)
            )
            assert sum(o is None for o in outcomes) == 1, outcomes
            assert all(o is None or o.state == "pending" for o in outcomes)
    finally:
        for s in stores:
            await s.aclose()


async def test_expired_keys_are_reclaimed_and_purged_in_bounded_steps(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "PURGE_MAX_ROWS", 10)
    clock = Clock()
    store = await PostgresStateStore.open(pg.schema_dsn(schema), clock=clock)
    try:
        for i in range(25):
            assert await store.idempotency_begin("s", "svc", f"old-{i}", "h", ttl=10) is None
        await store.idempotency_finish("s", "svc", "old-0", 200, b"{}")
        clock.now += 5  # not expired yet, and the purge interval has not passed
        entry = await store.idempotency_begin("s", "svc", "old-0", "h", ttl=10)
        assert entry is not None and entry.state == "done"
        assert await _rows(schema) == 25
        clock.now += state.PURGE_EVERY_SECONDS  # all 25 expired
        assert await store.idempotency_begin("s", "svc", "fresh", "h", ttl=1000) is None
        assert await _rows(schema) == 25 - 10 + 1  # purged 10 (the cap), then claimed
        await store.idempotency_begin("s", "svc", "a", "h", ttl=1000)  # cap hit: purge again
        await store.idempotency_begin("s", "svc", "b", "h", ttl=1000)
        assert await store.purge_expired() == 0
        assert await _rows(schema) == 3  # fresh, a, b: every expired key is gone
        # An expired key that no purge removed yet is claimed anew, with the new body.
        assert await store.idempotency_begin("s", "svc", "short", "h", ttl=10) is None
        await store.idempotency_finish("s", "svc", "short", 200, b"{}")
        clock.now += 11  # expired, and the next purge is not due for a minute
        assert await store.idempotency_begin("s", "svc", "short", "h2", ttl=10) is None
        entry = await store.idempotency_begin("s", "svc", "short", "h2", ttl=10)
        assert entry is not None and (entry.state, entry.request_sha256) == ("pending", "h2")
        assert await _rows(schema) == 4
    finally:
        await store.aclose()


async def test_an_unreachable_database_is_state_unavailable_not_a_crash() -> None:
    with pytest.raises(StateUnavailable):
        await PostgresStateStore.open("postgresql://postgres@127.0.0.1:9/test", connect_timeout=2)


async def test_a_dsn_asking_for_synchronous_commit_off_still_gets_durable_commits(
    schema: str,
) -> None:
    """As the audit store: a stored answer is on disk before the exchange goes on."""
    dsn = pg.with_params(pg.schema_dsn(schema), synchronous_commit="off")
    store = await PostgresStateStore.open(dsn)
    try:
        async with store._pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await store.idempotency_begin("s", "svc.v1", "k", "h", ttl=60) is None
    finally:
        await store.aclose()
