"""Idempotency-Key decisions, on the real state stores: replay, conflict, in progress, release."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import idempotency
from gateway.errors import IdempotencyConflict, NotReady
from gateway.models import ExchangeResult
from gateway.state import StateStore
from gateway.state_postgres import PostgresStateStore
from tests import pg


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite; for PostgreSQL a fresh schema (blocking setup: a sync fixture)."""
    if request.param == "sqlite":
        yield None
        return
    with pg.fresh_schema(create=False) as schema:
        yield schema


@pytest.fixture
async def store(backend: str | None, tmp_path: Path) -> AsyncIterator[Any]:
    """Each decision on both state stores: the SQLite one and the shared PostgreSQL one."""
    if backend is None:
        s = StateStore(tmp_path / "state.db")
        yield s
        s.close()
        return
    p = await PostgresStateStore.open(pg.schema_dsn(backend))
    yield p
    await p.aclose()


async def _begin(store: StateStore, sha: str = "h1") -> Any:
    return await idempotency.begin(store, "hcm.quan-1", "svc.v1", "key-1", sha, 60)


async def finish(store: Any, result: ExchangeResult | None, sha: str = "h1") -> bool:
    return await idempotency.finish(
        store, "hcm.quan-1", "svc.v1", "key-1", result, request_sha=sha, ttl=3600
    )


async def test_a_finished_exchange_is_replayed_with_its_answer(store: StateStore) -> None:
    assert await _begin(store) is None  # claimed: go ahead
    body = orjson.dumps({"exchange_id": "x-1", "status": "delivered"})
    await finish(store, ExchangeResult(status=200, body=body))
    again = await _begin(store)
    assert isinstance(again, ExchangeResult)
    assert (again.status, again.body, again.exchange_id) == (200, body, "x-1")
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_an_accepted_async_exchange_is_replayed_with_its_202(store: StateStore) -> None:
    """The stored status is handed out again, not a 200: a retry of an async exchange must
    still read "accepted, come back at Location", not "done"."""
    assert await _begin(store) is None
    body = orjson.dumps({"exchange_id": "x-2", "status": "queued"})
    await finish(store, ExchangeResult(status=202, body=body))
    again = await _begin(store)
    assert isinstance(again, ExchangeResult)
    assert (again.status, again.body, again.exchange_id) == (202, body, "x-2")
    # The request's canonical log line names the replay, its sender and its service.
    assert again.log == {
        "event": "exchange.idempotent_replay",
        "sender": "hcm.quan-1",
        "service": "svc.v1",
    }


@pytest.mark.parametrize(("status", "kept"), [(199, False), (200, True), (299, True), (300, False)])
async def test_only_a_2xx_answer_is_kept_for_retries(
    store: StateStore, status: int, kept: bool
) -> None:
    """Exactly 200..299 is an answer to give again; anything else releases the key."""
    assert await _begin(store) is None
    await finish(store, ExchangeResult(status=status, body=b'{"exchange_id":"x-3"}'))
    again = await _begin(store)
    if kept:
        assert isinstance(again, ExchangeResult) and again.status == status
    else:
        assert again is None  # released: the retry is processed afresh


async def test_a_released_key_hands_the_store_neither_status_nor_body() -> None:
    """Releasing is ``status=None, body=None``; a refusal's body must not reach the store."""
    calls: list[tuple[int | None, bytes | None]] = []

    class Recording:
        async def idempotency_begin(self, *args: Any) -> Any:
            raise AssertionError("not reached")

        async def idempotency_finish(
            self,
            sender: str,
            service: str,
            key: str,
            status: int | None,
            body: bytes | None,
            **kwargs: Any,
        ) -> None:
            calls.append((status, body))

    assert await finish(Recording(), ExchangeResult(status=409, body=b'{"refused":1}'))
    assert await finish(Recording(), None)
    assert await finish(Recording(), ExchangeResult(status=200, body=b'{"ok":1}'))
    assert calls == [(None, None), (None, None), (200, b'{"ok":1}')]


def test_the_provider_key_is_a_digest_scoped_to_sender_and_service() -> None:
    """Two senders' equal keys must be two keys to the provider; no key, no provider key."""
    expected = hashlib.sha256(b"hcm.quan-1\nsvc.v1\nkey-1").hexdigest()
    assert idempotency.provider_key("hcm.quan-1", "svc.v1", "key-1") == expected
    assert idempotency.provider_key("hcm.quan-2", "svc.v1", "key-1") != expected
    assert idempotency.provider_key("hcm.quan-1", "svc.v2", "key-1") != expected
    assert idempotency.provider_key("hcm.quan-1", "svc.v1", None) is None


async def test_another_body_with_the_same_key_is_a_conflict(store: StateStore) -> None:
    assert await _begin(store) is None
    err = await _begin(store, sha="h2")
    assert isinstance(err, IdempotencyConflict) and err.slug == "idempotency-conflict"


async def test_a_key_still_in_progress_is_a_conflict_of_its_own(store: StateStore) -> None:
    assert await _begin(store) is None
    err = await _begin(store)  # same body, first exchange not finished
    assert isinstance(err, IdempotencyConflict) and err.slug == "idempotency-in-progress"


@pytest.mark.parametrize("outcome", ["5xx", "exception"])
async def test_a_failed_exchange_releases_the_key_for_a_retry(
    store: StateStore, outcome: str
) -> None:
    assert await _begin(store) is None
    result = ExchangeResult(status=502, body=b"{}") if outcome == "5xx" else None
    await finish(store, result)
    assert await _begin(store) is None  # the retry goes through


async def test_an_unavailable_store_refuses_instead_of_delivering_twice() -> None:
    class Broken:
        async def idempotency_begin(self, *args: Any) -> Any:
            raise OSError("disk gone")

        async def idempotency_finish(self, *args: Any) -> None:
            raise AssertionError("not reached")

    err = await idempotency.begin(Broken(), "s", "svc.v1", "k", "h", 60)
    assert isinstance(err, NotReady) and "state store unavailable" in err.detail


async def test_a_store_failing_to_settle_a_finished_exchange_does_not_raise() -> None:
    """The exchange is delivered and audited when its key is settled: a store failing then
    used to raise out of the pipeline, and the sender got a 503 (retry) for a delivered
    exchange, whose retries then met the key still pending."""

    class Broken:
        async def idempotency_begin(self, *args: Any) -> Any:
            raise AssertionError("not reached")

        async def idempotency_finish(self, *args: Any) -> None:
            raise OSError("disk gone")

    answered = ExchangeResult(status=200, body=b"{}")
    assert await finish(Broken(), answered) is False


class _Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked(backend: str | None, tmp_path: Path) -> AsyncIterator[tuple[Any, _Clock]]:
    """Both state stores again, on a clock the test moves."""
    clock = _Clock()
    if backend is None:
        s = StateStore(tmp_path / "state.db", clock=clock)
        yield s, clock
        s.close()
        return
    p = await PostgresStateStore.open(pg.schema_dsn(backend), clock=clock)
    yield p, clock
    await p.aclose()


async def test_a_key_whose_exchange_never_finished_is_free_again_after_its_lease(
    clocked: tuple[Any, _Clock],
) -> None:
    """A process that died mid-delivery never settles its key: it used to stay "in progress"
    for the whole TTL (a day), refusing every retry of its sender. It is free after the lease;
    and the first attempt, should it finish late, cannot settle the claim taken since."""
    store, clock = clocked
    lease = idempotency.pending_lease(10.0)
    assert lease == 80.0
    assert await idempotency.begin(store, "s", "svc.v1", "k", "h1", lease) is None
    clock.now += lease - 1
    err = await idempotency.begin(store, "s", "svc.v1", "k", "h1", lease)
    assert isinstance(err, IdempotencyConflict) and err.slug == "idempotency-in-progress"
    clock.now += 2
    assert await idempotency.begin(store, "s", "svc.v1", "k", "h2", lease) is None  # a retry
    late = ExchangeResult(status=200, body=b'{"exchange_id":"first"}')
    assert await idempotency.finish(
        store, "s", "svc.v1", "k", late, request_sha="h1", ttl=3600
    )  # settles nothing: the claim is the retry's now
    err = await idempotency.begin(store, "s", "svc.v1", "k", "h2", lease)
    assert isinstance(err, IdempotencyConflict) and err.slug == "idempotency-in-progress"


async def test_an_answer_is_kept_for_the_ttl_from_when_it_was_given(
    clocked: tuple[Any, _Clock],
) -> None:
    store, clock = clocked
    lease = idempotency.pending_lease(10.0)
    assert await idempotency.begin(store, "s", "svc.v1", "k", "h1", lease) is None
    clock.now += 70  # a slow exchange, answered within its lease
    done = ExchangeResult(status=200, body=b'{"exchange_id":"x-1"}')
    assert await idempotency.finish(store, "s", "svc.v1", "k", done, request_sha="h1", ttl=3600)
    clock.now += 3500  # long past the lease, within the TTL from the answer
    again = await idempotency.begin(store, "s", "svc.v1", "k", "h1", lease)
    assert isinstance(again, ExchangeResult) and again.exchange_id == "x-1"
    clock.now += 101
    assert await idempotency.begin(store, "s", "svc.v1", "k", "h1", lease) is None  # expired
