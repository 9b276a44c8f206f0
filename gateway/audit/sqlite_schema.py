"""The SQLite audit store's schema: its tables, indexes and every SQL statement, as text.

Apart from :mod:`gateway.audit.sqlite` (the store's behaviour: transactions, the frontier,
deferred search indexing) so that a change to a table, an index or a statement is reviewed in
one place, as :mod:`gateway.audit.postgres_schema` does for PostgreSQL. Nothing here opens a
database. Values always travel as ``?`` parameters; the only text filled in later is the proof
query's ``{values}`` placeholders and the search filters, built from :data:`FIELDS` only.

Schema::

    audit_records(idx INTEGER PRIMARY KEY, leaf_hash BLOB, record BLOB)
        One row per leaf. idx is the leaf index (0-based, the rowid, so rows are appended at the
        end of the B-tree); record is the exact bytes given; leaf_hash = merkle.leaf_hash(record).
    audit_nodes(level, idx, hash) PRIMARY KEY (level, idx), WITHOUT ROWID
        Every perfect subtree of height >= 1 that is complete: node (level, idx) covers leaves
        [idx * 2**level, (idx + 1) * 2**level). Level 0 is not duplicated here: it is
        audit_records.leaf_hash. Rows are written in the same transaction as the leaf that
        completes them (:meth:`Frontier.append` reports them), so at any committed size every
        perfect subtree inside the tree is stored. An RFC 9162 inclusion or consistency proof is
        a list of such perfect subtrees plus, on the right border, hashes of imperfect subtrees
        that are folded from a few perfect ones, so proofs need O(log n) lookups, no leaf rehash.
    audit_head(id = 0, size, root, frontier)
        One row: the tree head after the last commit and the serialized merkle.Frontier that the
        next batch extends. Read and rewritten inside every append transaction.
    audit_search(idx INTEGER PRIMARY KEY, at, sender, service, provider, event, exchange_id)
        The operators' search index, one row per record: the record's top-level JSON string
        members of those names (NULL when absent, not a string, holding NUL as PostgreSQL
        must, or the record is not a JSON object). Each column but ``at`` has an index;
        SQLite ends every index key with the rowid (idx), so ``sender = ? AND idx > ? ORDER
        BY idx LIMIT n`` is one range scan, no sort. Time bounds are checked while walking idx
        order (records are appended in roughly time order; an index on ``at`` would need a
        sort by idx for every page).
        It is filled BEHIND the log, not in the append transaction: six index updates per
        record doubled the group-commit cost per record (measured with bench/bench_audit.py,
        14 -> 30 us, whether the columns were SQLite generated columns or filled in Python),
        and the append is what every acknowledged exchange waits for. :meth:`index_pending`
        indexes the next records in idx order (so the indexed records are always a prefix of
        the log); AuditLog calls it when its writer is idle, and :meth:`query` catches up
        first, so a query sees every record committed before it started and a cursor can never
        step over a record that is not indexed yet. Those transactions run with
        ``synchronous=NORMAL``: the table is derived from audit_records, so a crash may only
        lose index rows that the next catch-up rebuilds. A database from before this table
        existed is indexed the same way, on first use.
    audit_checkpoints(size INTEGER PRIMARY KEY, root BLOB, note BLOB, created_at REAL)
        Signed checkpoints as published. The first one stored for a size stays: a signed
        statement is never overwritten (ON CONFLICT (size) DO NOTHING).
"""

from __future__ import annotations

from typing import Final

from gateway.audit.store import SEARCH_FIELDS

IDS_PER_QUERY: Final = 400  # Subtree ids per statement (2 variables each).
# One statement for all the subtrees of a proof: each id is a primary-key probe, of
# audit_records for leaves (level 0) and of audit_nodes above (checked with EXPLAIN QUERY PLAN).
SUBTREES: Final = (
    "WITH want(level, idx) AS (VALUES {values})"
    " SELECT w.level, w.idx, CASE WHEN w.level = 0 THEN r.leaf_hash ELSE n.hash END FROM want w"
    " LEFT JOIN audit_nodes n ON w.level > 0 AND n.level = w.level AND n.idx = w.idx"
    " LEFT JOIN audit_records r ON w.level = 0 AND r.idx = w.idx"
)
# Top-level record members copied into audit_search, in column order (see the module doc).
FIELDS: Final = SEARCH_FIELDS

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
        record BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_nodes (
        level INTEGER NOT NULL CHECK (level >= 1),
        idx INTEGER NOT NULL CHECK (idx >= 0),
        hash BLOB NOT NULL CHECK (length(hash) = 32),
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS audit_claims (
        key TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        frontier BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_search (
        idx INTEGER PRIMARY KEY,
        at TEXT, sender TEXT, service TEXT, provider TEXT, event TEXT, exchange_id TEXT
    )""",
    # No index on at: see query().
    *(f"CREATE INDEX IF NOT EXISTS audit_search_{f} ON audit_search ({f})" for f in FIELDS[1:]),
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size INTEGER PRIMARY KEY CHECK (size >= 0),
        root BLOB NOT NULL CHECK (length(root) = 32),
        note BLOB NOT NULL,
        created_at REAL NOT NULL
    )""",
)

# -- statements, grouped by what the store does with them ------------------------------------

INIT_HEAD: Final = "INSERT OR IGNORE INTO audit_head (id, size, root, frontier) VALUES (0, 0, ?, ?)"
HEAD_FRONTIER: Final = "SELECT size, frontier FROM audit_head WHERE id = 0"
HEAD_ROOT: Final = "SELECT root FROM audit_head WHERE id = 0"
LAST_RECORD: Final = "SELECT max(idx) FROM audit_records"
TREE_HEAD: Final = "SELECT size, root FROM audit_head"

# A claim is taken if its key is new or its previous claim expired before this one's ``now``.
CLAIM: Final = (
    "INSERT INTO audit_claims (key, expires_at) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE audit_claims.expires_at < ?"
)
PURGE_CLAIMS: Final = "DELETE FROM audit_claims WHERE expires_at < ?"
INSERT_RECORD: Final = "INSERT INTO audit_records (idx, leaf_hash, record) VALUES (?, ?, ?)"
INSERT_NODE: Final = "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)"
UPDATE_HEAD: Final = "UPDATE audit_head SET size = ?, root = ?, frontier = ? WHERE id = 0"

GET_RECORD: Final = "SELECT leaf_hash, record FROM audit_records WHERE idx = ?"
RECORDS: Final = (
    "SELECT idx, leaf_hash, record FROM audit_records WHERE idx >= ? AND idx < ? ORDER BY idx"
)

# The first checkpoint stored for a size stays (see audit_checkpoints above). Only that
# conflict is let go: OR IGNORE would also drop a row failing a CHECK, silently.
ADD_CHECKPOINT: Final = (
    "INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (size) DO NOTHING"
)
LATEST_CHECKPOINT: Final = (
    "SELECT size, root, note, created_at FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
)
CHECKPOINTS: Final = (
    "SELECT size, root, note, created_at FROM audit_checkpoints"
    " WHERE size > ? ORDER BY size LIMIT ?"
)

# audit_search, filled behind the log (see above): how far it is, the next records, their rows.
SEARCH_PROGRESS: Final = "SELECT (SELECT max(idx) FROM audit_search), (SELECT size FROM audit_head)"
LAST_INDEXED: Final = "SELECT max(idx) FROM audit_search"
UNINDEXED: Final = "SELECT idx, record FROM audit_records WHERE idx > ? ORDER BY idx LIMIT ?"
INSERT_SEARCH: Final = (
    "INSERT INTO audit_search (idx, at, sender, service, provider, event,"
    " exchange_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# query(): ``{where}`` is conditions on s.idx, s.at and columns named in FIELDS, joined by AND.
SEARCH: Final = (
    "SELECT r.idx, r.leaf_hash, r.record FROM audit_search s"
    " JOIN audit_records r ON r.idx = s.idx WHERE {where}"
    " ORDER BY s.idx LIMIT ?"
)
