"""Witness state in PostgreSQL: one witness, whichever gateway instance a checkpoint reaches.

Why: with ``[audit] store = "postgres"`` several gateway instances (hosts) serve one gateway
behind a load balancer, and they all cosign with the same ``[witness] key``. State kept in
each host's ``state.db`` would be one witness per host under one key: host A cosigns a log's
checkpoint of size N, and host B, which never saw it, cosigns a fork of size N (or a smaller
tree) from ``old 0``. That is exactly the split view a witness exists to refuse. So these
instances keep the latest cosigned checkpoint per origin in the shared database, with the same
compare-and-swap as gateway.witness_store.WitnessStore (SQLite):

* a first checkpoint is ``INSERT .. ON CONFLICT DO NOTHING``; a later one is ``UPDATE .. WHERE
  size = <read> AND root = <read>``. Under READ COMMITTED a second writer that read the same
  state waits for the first and then finds its WHERE false (or the row present), so exactly
  one of two racing instances advances; the other re-reads and decides again;
* commits are durable before the cosignature leaves (``synchronous_commit`` forced on, as the
  audit store does, even if the DSN asks otherwise), and sessions use READ COMMITTED whatever
  the DSN, role or database default (see gateway.audit.postgres_session.READ_COMMITTED).

The tables live in the audit DSN's schema, next to the log's tables. asyncpg on the worker's
own event loop, through a small pool opened by the witness route's cleanup context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]

from gateway.audit.postgres_schema import ensure_created, qualified
from gateway.audit.postgres_session import durable_pool, split_dsn
from gateway.witness import Witnessed
from gateway.witness_store import Evidence, WitnessStoreUnavailable

__all__ = ["PostgresWitnessStore"]

T = TypeVar("T")
_STATE: Final = "gateway_witness_state"
_EVIDENCE: Final = "gateway_witness_evidence"
# Statement templates; {s} and {e} are the (quoted, schema-qualified) table names, never input.
_SQL: Final = {
    "create_state": (
        "CREATE TABLE IF NOT EXISTS {s} ("
        ' origin TEXT COLLATE "C" PRIMARY KEY,'
        " size BIGINT NOT NULL CHECK (size >= 0),"
        " root BYTEA NOT NULL CHECK (length(root) = 32),"
        " cosigned_at BIGINT NOT NULL DEFAULT 0)"
    ),
    "create_evidence": (
        "CREATE TABLE IF NOT EXISTS {e} ("
        " checkpoint_sha256 BYTEA PRIMARY KEY,"
        ' origin TEXT COLLATE "C" NOT NULL,'
        " cause TEXT NOT NULL,"
        " note BYTEA NOT NULL,"
        " held_size BIGINT,"
        " held_root BYTEA,"
        " seen_at BIGINT NOT NULL)"
    ),
    "latest": "SELECT size, root, cosigned_at FROM {s} WHERE origin = $1",
    "insert": (
        "INSERT INTO {s} (origin, size, root, cosigned_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (origin) DO NOTHING RETURNING 1"
    ),
    "update": (
        "UPDATE {s} SET size = $2, root = $3, cosigned_at = $4"
        " WHERE origin = $1 AND size = $5 AND root = $6 AND cosigned_at = $7 RETURNING 1"
    ),
    "keep": (
        "INSERT INTO {e}"
        " (checkpoint_sha256, origin, cause, note, held_size, held_root, seen_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (checkpoint_sha256) DO NOTHING RETURNING 1"
    ),
    "evidence": (
        "SELECT cause, note, held_size, held_root, seen_at FROM {e}"
        " WHERE origin = $1 ORDER BY seen_at, checkpoint_sha256"
    ),
}


class PostgresWitnessStore:
    """Witness state shared by every instance using the same database and schema.

    Same methods and semantics as gateway.witness_store.WitnessStore.
    """

    def __init__(self, pool: Any, schema: str | None) -> None:
        """Use :meth:`open`; this only keeps what it is given."""
        self._pool = pool
        self._schema = schema
        self._tables = (qualified(schema, _STATE), qualified(schema, _EVIDENCE))
        s, e = self._tables
        self._sql = {name: sql.format(s=s, e=e) for name, sql in _SQL.items()}

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        max_connections: int = 2,
        connect_timeout: float = 10.0,
        command_timeout: float = 10.0,
    ) -> PostgresWitnessStore:
        """Connect and create the tables if missing. ``dsn`` is the audit store's (a
        ``schema`` parameter puts the tables in that schema)."""
        schema = split_dsn(dsn)[1]
        try:  # READ COMMITTED: what the compare-and-swap is written for.
            pool = await durable_pool(
                dsn,
                "dtc-gateway witness",
                max_size=max_connections,
                connect_timeout=connect_timeout,
                command_timeout=command_timeout,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise WitnessStoreUnavailable(f"cannot connect to the witness database: {e}") from e
        store = cls(pool, schema)
        try:
            await store._run(store._create)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _create(self, conn: Any) -> None:
        ddl = [self._sql["create_state"], self._sql["create_evidence"]]
        await ensure_created(conn, self._schema, list(self._tables), ddl)

    async def aclose(self) -> None:
        await self._pool.close()

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(connection)`` on a pooled connection; a database failure is unavailability
        (503, nothing cosigned), never a cosignature the state does not back."""
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise WitnessStoreUnavailable(
                f"witness state database failed: {type(e).__name__}: {e}"
            ) from e

    async def latest(self, origin: str) -> Witnessed | None:
        """The latest checkpoint cosigned for ``origin`` by any instance, or None."""

        async def op(conn: Any) -> Witnessed | None:
            row = await conn.fetchrow(self._sql["latest"], origin)
            if row is None:
                return None
            return Witnessed(int(row["size"]), bytes(row["root"]), int(row["cosigned_at"]))

        return await self._run(op)

    async def compare_and_swap(
        self, origin: str, expected: Witnessed | None, new: Witnessed
    ) -> bool:
        """Store ``new`` if the stored state is still ``expected`` (None: no row); True once
        committed, False if another request (on any instance) changed it first."""

        async def op(conn: Any) -> bool:
            stored = (new.size, new.root, new.cosigned_at)
            if expected is None:
                done = await conn.fetchval(self._sql["insert"], origin, *stored)
            else:
                was = (expected.size, expected.root, expected.cosigned_at)
                done = await conn.fetchval(self._sql["update"], origin, *stored, *was)
            return done is not None

        return await self._run(op)

    async def keep_evidence(
        self,
        origin: str,
        cause: str,
        checkpoint_text: bytes,
        note: bytes,
        held: Witnessed | None,
        *,
        seen_at: int,
    ) -> bool:
        """Keep a refused log-signed note, once per checkpoint text; True if it was new."""
        key = hashlib.sha256(checkpoint_text).digest()
        held_size, held_root = (held.size, held.root) if held else (None, None)

        async def op(conn: Any) -> bool:
            done = await conn.fetchval(
                self._sql["keep"], key, origin, cause, note, held_size, held_root, seen_at
            )
            return done is not None

        return await self._run(op)

    async def evidence(self, origin: str) -> list[Evidence]:
        """Kept evidence for ``origin``, oldest first."""

        async def op(conn: Any) -> list[Evidence]:
            rows = await conn.fetch(self._sql["evidence"], origin)
            return [
                Evidence(
                    origin,
                    str(r["cause"]),
                    bytes(r["note"]),
                    None
                    if r["held_size"] is None
                    else Witnessed(int(r["held_size"]), bytes(r["held_root"])),
                    int(r["seen_at"]),
                )
                for r in rows
            ]

        return await self._run(op)
