"""SQLite and PostgreSQL stores given the same operations give the same answers.

CONTRACT.md: "Both pass the same tests". The shared contract tests pin chosen cases; here
hypothesis draws whole sequences (batches with claims and duplicate keys, records that are no
JSON or hold NUL, searches with every filter and cursor, ranges, proofs' subtree ids,
checkpoints) and runs each against a fresh SQLite file and a fresh PostgreSQL schema, comparing
every answer, an exception by its kind. The state stores get the same treatment: idempotency
keys begun, finished, purged, expired by a test clock, and the stores restarted in between.
Real server (tests/pg.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import AuditStore, Claim, RecordQuery, StoredCheckpoint
from tests import pg

_TEXT = st.sampled_from(["a", "b", "hcm.quan-1", "Thủ Đức", "a\x00b", "", "z" * 3])
_AT = st.sampled_from(
    ["2026-11-28T09:00:00.000Z", "2026-11-28T09:00:00.500Z", "2026-11-28T10:00:00.000Z", "x"]
)


@st.composite
def _record(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "not-json", "array"]))
    if kind == "not-json":
        return draw(st.binary(max_size=8))
    if kind == "array":
        return b'["sender","a"]'
    obj: dict[str, Any] = {}
    for field in ("sender", "service", "provider", "event", "exchange_id"):
        if draw(st.booleans()):
            obj[field] = draw(st.one_of(_TEXT, st.integers(0, 3), st.none()))
    if draw(st.booleans()):
        obj["at"] = draw(_AT)
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


_CLAIM = st.one_of(
    st.none(),
    st.builds(
        Claim,
        key=st.sampled_from(["s\nr1", "s\nr2", "t\nr1"]),
        expires_at=st.sampled_from([10.0, 20.0, 30.0]),
        now=st.sampled_from([5.0, 15.0, 25.0, 35.0]),
    ),
)
_BATCH = st.lists(st.tuples(_record(), _CLAIM), min_size=0, max_size=6)
_INDEX = st.integers(-2, 12) | st.sampled_from([2**63 - 1, 2**63, 2**64])
_QUERY = st.builds(
    RecordQuery,
    since=st.none() | _AT,
    until=st.none() | _AT,
    sender=st.none() | _TEXT,
    service=st.none() | _TEXT,
    provider=st.none() | _TEXT,
    event=st.none() | _TEXT,
    exchange_id=st.none() | _TEXT,
    after_index=_INDEX,
    limit=st.integers(-1, 5),
)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), _BATCH),
        st.tuples(st.just("query"), _QUERY),
        st.tuples(st.just("records"), st.tuples(_INDEX, _INDEX)),
        st.tuples(st.just("get"), _INDEX),
        st.tuples(st.just("head"), st.none()),
        st.tuples(
            st.just("subtrees"),
            st.lists(st.tuples(st.integers(-1, 4) | st.just(64), _INDEX), max_size=4),
        ),
        st.tuples(st.just("checkpoint"), st.tuples(st.integers(0, 8), st.sampled_from([1, 2]))),
        st.tuples(st.just("checkpoints"), st.tuples(_INDEX, st.integers(-1, 4))),
    ),
    min_size=1,
    max_size=12,
)


def _outcome(fn: Callable[[], Any]) -> Any:
    """What a call answered, comparable across stores: its value, or the kind of its error."""
    try:
        return ("ok", fn())
    except KeyError:  # which of several missing subtrees is named is left to the store
        return ("error", "KeyError")
    except Exception as e:  # any other failure is a difference unless both fail alike
        return ("error", type(e).__name__)


def _apply(store: AuditStore, op: str, arg: Any) -> Any:
    if op == "append":
        records = [r for r, _ in arg]
        claims = [c for _, c in arg]
        return _outcome(lambda: store.append_batch(records, claims))
    if op == "query":
        return _outcome(lambda: store.query(arg))
    if op == "records":
        return _outcome(lambda: store.records(*arg))
    if op == "get":
        return _outcome(lambda: store.get(arg))
    if op == "head":
        return _outcome(store.tree_head)
    if op == "subtrees":
        return _outcome(lambda: store.subtree_hashes(arg))
    if op == "checkpoint":
        size, version = arg
        note = f"note {size} v{version}".encode()
        cp = StoredCheckpoint(size, bytes([size]) * 32, note, 1_700_000_000.5 + version)
        return _outcome(lambda: store.add_checkpoint(cp))
    if op == "checkpoints":
        after, limit = arg
        return (
            _outcome(lambda: store.checkpoints(after_size=after, limit=limit)),
            _outcome(store.latest_checkpoint),
        )
    raise AssertionError(op)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=_OPS)
def test_sqlite_and_postgres_answer_every_operation_alike(ops: list[tuple[str, Any]]) -> None:
    pg.require_server()
    with tempfile.TemporaryDirectory() as tmp, pg.fresh_schema() as schema:
        lite = SqliteAuditStore(str(Path(tmp) / "audit.db"))
        shared = PostgresAuditStore(pg.schema_dsn(schema))
        try:
            for step, (op, arg) in enumerate(ops):
                expected = _apply(lite, op, arg)
                got = _apply(shared, op, arg)
                assert got == expected, f"step {step}: {op}({arg!r})"
            assert shared.tree_head() == lite.tree_head()
        finally:
            lite.close()
            shared.close()


# -- state stores: idempotency keys ------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


_KEY = st.tuples(
    st.sampled_from(["s", "t"]),
    st.sampled_from(["svc.v1", "svc.v2"]),
    st.sampled_from(["k1", "k2"]),
)
_STATE_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("begin"),
            st.tuples(_KEY, st.sampled_from(["h1", "h2"]), st.sampled_from([0.5, 10.0, 60.0])),
        ),
        st.tuples(
            st.just("finish"),
            st.tuples(
                _KEY,
                st.sampled_from([None, 200, 202]),
                st.sampled_from([b"{}", b""]),
                st.sampled_from([None, "h1", "h2"]),  # the claim's body digest, if given
                st.sampled_from([None, 5.0, 60.0]),  # how long an answer is kept
            ),
        ),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 5.0, 10.0, 61.0])),
        st.tuples(st.just("purge"), st.none()),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=1,
    max_size=14,
)


async def _state_run(ops: list[tuple[str, Any]], schema: str, tmp: Path) -> None:
    from gateway.state import StateStore
    from gateway.state_postgres import PostgresStateStore

    clock = _Clock()
    dsn = pg.schema_dsn(schema)

    async def open_both() -> tuple[Any, Any]:
        return StateStore(tmp / "state.db", clock=clock), await PostgresStateStore.open(
            dsn, clock=clock
        )

    lite, shared = await open_both()
    try:
        for step, (op, arg) in enumerate(ops):
            if op == "advance":
                clock.now += arg
                continue
            if op == "restart":
                lite.close()
                await shared.aclose()
                lite, shared = await open_both()
                continue
            answers = []
            for store in (lite, shared):
                if op == "begin":
                    (sender, service, key), sha, ttl = arg
                    answers.append(await store.idempotency_begin(sender, service, key, sha, ttl))
                elif op == "finish":
                    (sender, service, key), status, body, sha, ttl = arg
                    answers.append(
                        await store.idempotency_finish(
                            sender, service, key, status, body, request_sha256=sha, ttl=ttl
                        )
                    )
                else:
                    answers.append(await store.purge_expired())
            assert answers[0] == answers[1], f"step {step}: {op}({arg!r})"
    finally:
        lite.close()
        await shared.aclose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_STATE_OPS)
def test_sqlite_and_postgres_state_stores_keep_and_expire_keys_alike(
    ops: list[tuple[str, Any]],
) -> None:
    """Same answers to begin / finish / purge, with TTL expiry and restarts in between."""
    import asyncio

    pg.require_server()
    with tempfile.TemporaryDirectory() as tmp, pg.fresh_schema(create=False) as schema:
        asyncio.run(_state_run(ops, schema, Path(tmp)))
