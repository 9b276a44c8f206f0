"""Idempotency keys in PostgreSQL: one answer per key across every gateway instance.

Why: with ``[audit] store = "postgres"`` several gateway instances (hosts) share one audit log
behind a load balancer. Keys kept in each host's ``state.db`` would let a retry that lands on
another host be delivered a second time: exactly what ``Idempotency-Key`` promises not to do.
Here a key is claimed by ONE atomic statement (``INSERT .. ON CONFLICT DO UPDATE .. WHERE
expired``), so of two instances racing on a new key exactly one goes ahead; the other sees the
pending entry (409 in progress) or, once the first has finished, its stored answer.

asyncpg on the worker's own event loop, through a small pool opened by the app's cleanup
context: only requests that carry an Idempotency-Key come here, and every call is one or two
single-statement transactions. Commits are durable (``synchronous_commit`` forced on, as the
audit store does, even if the DSN asks otherwise) and sessions use READ COMMITTED, which the
claim is written for (see :data:`~gateway.audit.postgres_session.READ_COMMITTED`). The table
lives in the audit DSN's schema, next to the log's tables.

Same methods and semantics as :class:`gateway.state.StateStore` (the SQLite one).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]

from gateway import state
from gateway.audit.postgres_schema import ensure_created, qualified
from gateway.audit.postgres_session import durable_pool, split_dsn
from gateway.state import IdempotencyEntry, PurgeSchedule, StateUnavailable

__all__ = ["PostgresStateStore"]

T = TypeVar("T")
_TABLE: Final = "gateway_idempotency"
# Statement templates; {t} is the (quoted, schema-qualified) table name, never input.
_SQL: Final = {
    "create": (
        "CREATE TABLE IF NOT EXISTS {t} ("
        ' sender TEXT COLLATE "C" NOT NULL,'
        ' service TEXT COLLATE "C" NOT NULL,'
        ' key TEXT COLLATE "C" NOT NULL,'
        " request_sha256 TEXT NOT NULL,"
        " state TEXT NOT NULL CHECK (state IN ('pending', 'done')),"
        " status INTEGER,"
        " body BYTEA,"
        " expires_at DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (sender, service, key))"
    ),
    "index": "CREATE INDEX IF NOT EXISTS gateway_idempotency_expires ON {t} (expires_at)",
    # Claimed when the key is new or its entry expired; a live entry is left as it is and
    # nothing is returned (the row is then read by "entry").
    "claim": (
        "INSERT INTO {t} AS t"
        " (sender, service, key, request_sha256, state, status, body, expires_at)"
        " VALUES ($1, $2, $3, $4, 'pending', NULL, NULL, $5)"
        " ON CONFLICT (sender, service, key) DO UPDATE SET"
        " request_sha256 = EXCLUDED.request_sha256, state = 'pending', status = NULL,"
        " body = NULL, expires_at = EXCLUDED.expires_at"
        " WHERE t.expires_at <= $6"
        " RETURNING 1"
    ),
    "entry": (
        "SELECT request_sha256, state, status, body FROM {t}"
        " WHERE sender = $1 AND service = $2 AND key = $3 AND expires_at > $4"
    ),
    # Only a pending claim is settled, and with $4 only the one for that body (see finish).
    "release": (
        "DELETE FROM {t} WHERE sender = $1 AND service = $2 AND key = $3"
        " AND state = 'pending' AND ($4::text IS NULL OR request_sha256 = $4)"
    ),
    "done": (
        "UPDATE {t} SET state = 'done', status = $5, body = $6,"
        " expires_at = COALESCE($7::float8, expires_at)"
        " WHERE sender = $1 AND service = $2 AND key = $3"
        " AND state = 'pending' AND ($4::text IS NULL OR request_sha256 = $4)"
    ),
    "purge": (
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {t} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2))"
    ),
    "check": "SELECT 1 FROM {t} LIMIT 1",
}


def _statements(table: str) -> dict[str, str]:
    return {name: sql.format(t=table) for name, sql in _SQL.items()}


class PostgresStateStore:
    """Idempotency state shared by every instance using the same database and schema."""

    def __init__(self, pool: Any, schema: str | None, clock: Callable[[], float]) -> None:
        """Use :meth:`open`; this only keeps what it is given."""
        self._pool = pool
        self._schema = schema
        self._table = qualified(schema, _TABLE)
        self._sql = _statements(self._table)
        self._clock = clock
        self._purges = PurgeSchedule()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Callable[[], float] = time.time,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        command_timeout: float = 10.0,
    ) -> PostgresStateStore:
        """Connect (a pool of at most ``max_connections``) and create the table if missing.

        ``dsn`` is the audit store's: a ``schema`` parameter puts the table in that schema.
        """
        schema = split_dsn(dsn)[1]
        try:
            pool = await durable_pool(
                dsn,
                "dtc-gateway state",
                max_size=max_connections,
                connect_timeout=connect_timeout,
                command_timeout=command_timeout,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StateUnavailable(f"cannot connect to the state database: {e}") from e
        store = cls(pool, schema, clock)
        try:
            await store._run(store._create)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _create(self, conn: Any) -> None:
        """Create the schema, table and index unless they exist (the audit store's way)."""
        ddl = [self._sql["create"], self._sql["index"]]
        await ensure_created(conn, self._schema, [self._table], ddl)

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(connection)`` on a pooled connection; any database failure is StateUnavailable,
        which the pipeline answers with 503 (never a delivery it cannot account for)."""
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StateUnavailable(f"state database failed: {type(e).__name__}: {e}") from e

    async def idempotency_begin(
        self, sender: str, service: str, key: str, request_sha256: str, ttl: float
    ) -> IdempotencyEntry | None:
        """Claim the key; None when claimed now, else the live entry (any state).

        Also purges expired keys now and then, as the SQLite store does (see
        :class:`gateway.state.PurgeSchedule`), each instance on its own schedule.
        """
        now = self._clock()
        if self._purges.due(now):
            self._purges.purged(await self.purge_expired(), now)

        async def op(conn: Any) -> IdempotencyEntry | None:
            # A live entry may be released (deleted) between the two statements; then the
            # claim is simply tried again. Three rounds cannot all lose to fresh releases
            # unless the key is being hammered; the last answer is then "in progress".
            for _ in range(3):
                claimed = await conn.fetchval(
                    self._sql["claim"], sender, service, key, request_sha256, now + ttl, now
                )
                if claimed is not None:
                    return None
                row = await conn.fetchrow(self._sql["entry"], sender, service, key, now)
                if row is not None:
                    body = row["body"]
                    return IdempotencyEntry(
                        row["request_sha256"],
                        row["state"],
                        row["status"],
                        None if body is None else bytes(body),
                    )
            return IdempotencyEntry(request_sha256, "pending", None, None)

        return await self._run(op)

    async def idempotency_finish(
        self,
        sender: str,
        service: str,
        key: str,
        status: int | None,
        body: bytes | None,
        *,
        request_sha256: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Store the final answer (status None: release the key so a retry may go through),
        as gateway.state.StateStore.idempotency_finish does."""
        expires = None if ttl is None else self._clock() + ttl
        mine = (sender, service, key, request_sha256)

        async def op(conn: Any) -> None:
            if status is None:
                await conn.execute(self._sql["release"], *mine)
            else:
                await conn.execute(self._sql["done"], *mine, status, body, expires)

        await self._run(op)

    async def purge_expired(self) -> int:
        """Delete up to ``PURGE_MAX_ROWS`` expired keys now; return how many were deleted."""
        now = self._clock()

        async def op(conn: Any) -> int:
            tag: str = await conn.execute(self._sql["purge"], now, state.PURGE_MAX_ROWS)
            return int(tag.rsplit(" ", 1)[-1])

        return await self._run(op)

    async def check(self) -> None:
        """Readiness: read the table (raises StateUnavailable when the database fails)."""

        async def op(conn: Any) -> None:
            await conn.fetch(self._sql["check"])

        await self._run(op)

    async def aclose(self) -> None:
        await self._pool.close()
