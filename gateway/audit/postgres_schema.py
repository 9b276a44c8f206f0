"""The PostgreSQL audit store's schema: tables, indexes, every SQL statement, and their creation.

Why this is a module of its own: :mod:`gateway.audit.postgres` owns the store's behaviour (the
private event loop, the connection, the head lock, recovery after a lost COMMIT); this module
owns the text that reaches the server. A change to a table, an index or a statement is then
reviewed in one place, and the store's logic reads without a hundred lines of SQL in between.
Nothing here opens a connection: :func:`create_tables` runs on one it is given. The query
columns are filled from each record by :func:`gateway.audit.store.search_values` (as in
SQLite), and a search's statement is put together by :func:`query_statement`, next to the
columns and indexes they depend on.

Every statement is a template over the (schema-qualified, quoted) table names, filled in once
per store by :func:`statements`, so no value ever reaches SQL text; values always travel as bind
parameters. Column names come from the fixed :data:`COLUMNS` only.

Tables are created if missing, in one transaction under ``pg_advisory_xact_lock`` so instances
starting together do not race on the catalog; if they all exist no DDL runs at all, so a role
without CREATE rights can use tables an administrator made.

Schema (the logical schema of :mod:`gateway.audit.sqlite`, BYTEA for hashes and records)::

    audit_records(idx BIGINT PRIMARY KEY, leaf_hash, record, at, sender, service, provider,
                  event, exchange_id)
        The last six are copied from the record's JSON members of the same name (strings only,
        else NULL; NULL for a record that is not a JSON object) when appending, in Python: a
        generated column over ``record::jsonb`` would make a non-JSON record fail its batch.
        They are ``COLLATE "C"`` so ``at`` compares byte-wise like SQLite's, and indexed for
        :meth:`PostgresAuditStore.query`: (column, idx) for the equality filters, so a cursor
        page is one index range scan with no sort; ``at`` and ``exchange_id`` on their own.
    audit_nodes(level, idx, hash)   every complete perfect subtree of height >= 1
    audit_head(id = 0, size, root, frontier)   one row, read and rewritten by every append
    audit_claims(key, expires_at)   one-time ids (signed request ids), see Claim
    audit_checkpoints(size, root, note, created_at)   published signed checkpoints
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from gateway.audit import merkle
from gateway.audit.store import SEARCH_FIELDS, RecordQuery

__all__ = [
    "COLUMNS",
    "QUERY_HEAD",
    "QUERY_TAIL",
    "create_tables",
    "ensure_created",
    "qualified",
    "query_statement",
    "quote_ident",
    "statements",
    "table_names",
]

Connection = Any  # asyncpg.Connection; asyncpg ships no type information.

COLUMNS: Final = SEARCH_FIELDS
_DDL_LOCK: Final = int.from_bytes(
    hashlib.sha256(b"dtc-gateway audit ddl").digest()[:8], signed=True
)
_TABLES: Final = ("records", "nodes", "claims", "head", "checkpoints")

_TABLES_EXIST: Final = "SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest($1::text[]) AS t"

_SQL: Final = {
    "init_head": "INSERT INTO {head} (id, size, root, frontier) VALUES (0, 0, $1, $2)"
    " ON CONFLICT (id) DO NOTHING",
    # One statement, so one snapshot: a concurrent append cannot land between the two reads.
    "check_head": "SELECT size, root, frontier, (SELECT max(idx) FROM {records}) AS last"
    " FROM {head} WHERE id = 0",
    "lock_head": "SELECT size, frontier, txid_current() AS txid FROM {head} WHERE id = 0"
    " FOR UPDATE",
    "txid_status": "SELECT txid_status($1)",
    # Only the session still running that transaction: a pid alone may have been reused.
    "end_session": "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1"
    " AND backend_xid::text::bigint = $2 % 4294967296",
    "claim": "WITH input AS (SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[])"
    " AS i(key, expires_at, claimed_at))"
    " INSERT INTO {claims} AS c (key, expires_at) SELECT key, expires_at FROM input"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE c.expires_at < (SELECT claimed_at FROM input WHERE input.key = excluded.key)"
    " RETURNING c.key",
    "purge_claims": "DELETE FROM {claims} WHERE expires_at < $1",
    "write": "WITH r AS (INSERT INTO {records} (idx, leaf_hash, record, {columns})"
    " SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::text[])),"
    " n AS (INSERT INTO {nodes} (level, idx, hash)"
    " SELECT * FROM unnest($10::smallint[], $11::bigint[], $12::bytea[]))"
    " UPDATE {head} SET size = $13, root = $14, frontier = $15 WHERE id = 0",
    "tree_head": "SELECT size, root FROM {head} WHERE id = 0",
    "records": "SELECT idx, leaf_hash, record FROM {records}"
    " WHERE idx >= $1 AND idx < $2 ORDER BY idx",
    "subtrees": "SELECT 0, idx, leaf_hash FROM {records} WHERE idx = ANY($1::bigint[])"
    " UNION ALL SELECT n.level, n.idx, n.hash FROM {nodes} n"
    " JOIN unnest($2::smallint[], $3::bigint[]) AS q(level, idx)"
    " ON n.level = q.level AND n.idx = q.idx",
    "add_checkpoint": "INSERT INTO {checkpoints} (size, root, note, created_at)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING",
    "latest_checkpoint": "SELECT size, root, note, created_at FROM {checkpoints}"
    " ORDER BY size DESC LIMIT 1",
    "checkpoints": "SELECT size, root, note, created_at FROM {checkpoints}"
    " WHERE size > $1 ORDER BY size LIMIT $2",
}
# query(): the filters (column names from COLUMNS only) go between these two halves.
QUERY_HEAD: Final = "SELECT idx, leaf_hash, record FROM {records} WHERE "
QUERY_TAIL: Final = " ORDER BY idx LIMIT "


def query_statement(head: str, query: RecordQuery, limit: int) -> tuple[str, list[Any]]:
    """The statement and arguments of a search: ``idx > after_index``, each filter, ``limit``.

    ``head`` is :data:`QUERY_HEAD` with the table names filled in. Every value is a ``$n``
    parameter; the conditions name columns of this module only.
    """
    args: list[Any] = [max(query.after_index, -1)]
    where = ["idx > $1"]
    filters = [
        ("at >= ", query.since),
        ("at < ", query.until),
        ("sender = ", query.sender),
        ("service = ", query.service),
        ("provider = ", query.provider),
        ("event = ", query.event),
        ("exchange_id = ", query.exchange_id),
    ]
    for condition, value in filters:
        if value is not None:
            args.append(value)
            where.append(condition + "$" + str(len(args)))
    args.append(limit)
    return head + " AND ".join(where) + QUERY_TAIL + "$" + str(len(args)), args


def table_names(schema: str | None) -> dict[str, str]:
    """Each table's name as SQL text (``audit_records``...), qualified by ``schema`` if given."""
    return {name: qualified(schema, f"audit_{name}") for name in _TABLES}


def qualified(schema: str | None, table: str) -> str:
    """``table`` as SQL text, in ``schema`` (quoted) if given: ``"s".audit_records``."""
    return table if schema is None else f"{quote_ident(schema)}.{table}"


def statements(tables: Mapping[str, str]) -> dict[str, str]:
    """Every statement, by name, with the table names of :func:`table_names` filled in."""
    return {k: v.format(columns=", ".join(COLUMNS), **tables) for k, v in _SQL.items()}


async def create_tables(
    conn: Connection, sql: Mapping[str, str], tables: Mapping[str, str], schema: str | None
) -> None:
    """Create the log's tables if missing (see :func:`ensure_created`), then its empty head.

    ``sql`` and ``tables`` are what :func:`statements` and :func:`table_names` gave for
    ``schema``.
    """

    async def init_head(conn: Connection) -> None:
        await conn.execute(sql["init_head"], merkle.EMPTY_ROOT, merkle.Frontier().to_bytes())

    await ensure_created(conn, schema, list(tables.values()), _ddl(tables), then=init_head)


async def ensure_created(
    conn: Connection,
    schema: str | None,
    tables: Sequence[str],
    ddl: Sequence[str],
    *,
    then: Callable[[Connection], Awaitable[None]] | None = None,
) -> None:
    """Run ``ddl`` (all IF NOT EXISTS), and ``then``, unless every one of ``tables`` (as
    :func:`qualified` names them) exists; creates ``schema`` first if missing. Serialized across
    instances (and across the gateway's stores) by one transaction advisory lock."""
    if await conn.fetchval(_TABLES_EXIST, list(tables)):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _DDL_LOCK)
        # Checked first: CREATE SCHEMA needs the database's CREATE right even if it exists.
        if schema is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
        ):
            await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        for statement in ddl:
            await conn.execute(statement)
        if then is not None:
            await then(conn)


def _ddl(t: Mapping[str, str]) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements (all IF NOT EXISTS) for the tables ``t``."""
    text = 'TEXT COLLATE "C"'
    return [
        f"""CREATE TABLE IF NOT EXISTS {t["records"]} (
            idx BIGINT PRIMARY KEY CHECK (idx >= 0),
            leaf_hash BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
            record BYTEA NOT NULL,
            {", ".join(f"{c} {text}" for c in COLUMNS)}
        )""",
        f"""CREATE TABLE IF NOT EXISTS {t["nodes"]} (
            level SMALLINT NOT NULL CHECK (level >= 1),
            idx BIGINT NOT NULL CHECK (idx >= 0),
            hash BYTEA NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, idx)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {t["claims"]} (
            key {text} PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS {t["head"]} (
            id SMALLINT PRIMARY KEY CHECK (id = 0),
            size BIGINT NOT NULL,
            root BYTEA NOT NULL,
            frontier BYTEA NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS {t["checkpoints"]} (
            size BIGINT PRIMARY KEY CHECK (size >= 0),
            root BYTEA NOT NULL CHECK (length(root) = 32),
            note BYTEA NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        f"CREATE INDEX IF NOT EXISTS audit_records_at ON {t['records']} (at)",
        *(
            f"CREATE INDEX IF NOT EXISTS audit_records_{c} ON {t['records']} ({c}, idx)"
            for c in ("sender", "service", "provider", "event")
        ),
        f"CREATE INDEX IF NOT EXISTS audit_records_exchange_id ON {t['records']} (exchange_id)",
    ]


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier; ValueError if it holds NUL."""
    if "\x00" in name:
        raise ValueError("schema name contains NUL")
    return '"' + name.replace('"', '""') + '"'
