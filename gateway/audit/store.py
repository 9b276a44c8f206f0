"""The storage contract of the audit log, so SQLite and (later) PostgreSQL pass the same tests.

Why a Protocol and blocking methods: the only caller that writes is :class:`gateway.audit.log.
AuditLog`, which runs every store call on its own writer thread, so a store can use a plain
blocking driver (sqlite3) and stay simple. A store must never be called from the event loop
thread.

What every store guarantees:

* ``append_batch`` is one atomic, durable transaction: when it returns, the records are on disk
  (fsync'd); when it raises, none of them is.
* Indexes are consecutive from 0, unique and gap-free even when several processes append to the
  same store; so a store never caches the size or the tree state across transactions.
* ``tree_head`` is the RFC 9162 root over all leaf hashes in index order, and each leaf hash is
  :func:`gateway.audit.merkle.leaf_hash` of the exact record bytes given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import orjson

from gateway.audit import proofs

__all__ = [
    "SEARCH_FIELDS",
    "AuditStore",
    "Claim",
    "RecordQuery",
    "StoredCheckpoint",
    "StoredRecord",
    "search_values",
    "unsearchable",
]

SEARCH_FIELDS: Final = ("at", "sender", "service", "provider", "event", "exchange_id")
"""The top-level record members every store copies into its search columns, in this order."""
_NO_VALUES: Final[tuple[str | None, ...]] = (None,) * len(SEARCH_FIELDS)


def search_values(record: bytes) -> tuple[str | None, ...]:
    """A record's :data:`SEARCH_FIELDS`: its string members, None where absent or not text
    (all None for bytes that are no JSON object), or holding NUL (see :func:`unsearchable`)."""
    try:
        obj = orjson.loads(record)
    except orjson.JSONDecodeError:
        return _NO_VALUES
    if not isinstance(obj, dict):
        return _NO_VALUES
    return tuple(
        v if isinstance(v := obj.get(f), str) and "\x00" not in v else None for f in SEARCH_FIELDS
    )


def unsearchable(query: RecordQuery) -> bool:
    """Whether a filter of ``query`` holds NUL, so that it matches nothing in any store.

    PostgreSQL text cannot hold NUL, so no store indexes such a value (:func:`search_values`)
    and a search for one finds nothing, in SQLite as in PostgreSQL (which would refuse it).
    """
    values = (query.since, query.until, query.sender, query.service, query.provider)
    return any(v is not None and "\x00" in v for v in (*values, query.event, query.exchange_id))


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as published: its tree size and root, and the signed note text.

    ``note`` is the whole C2SP signed note (checkpoint body, blank line, signature lines),
    UTF-8, exactly as served at ``GET /v1/audit/checkpoint``. ``created_at`` is Unix seconds.
    """

    size: int
    root: bytes
    note: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Operators' search over audit records. Every filter is optional; all given must match.

    Times are RFC 3339 strings compared on the record's ``at`` member (records carry UTC
    millisecond times, which sort as strings). ``after_index`` is the cursor: results are in
    index order, strictly after it. ``limit`` is already capped by the caller. A value holding
    NUL matches nothing (see :func:`unsearchable`).
    """

    since: str | None = None
    until: str | None = None
    sender: str | None = None
    service: str | None = None
    provider: str | None = None
    event: str | None = None  # exchange.accepted | exchange.delivered | exchange.failed | ...
    exchange_id: str | None = None
    after_index: int = -1
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Claim:
    """A one-time id: ``key`` (e.g. sender + request id) is refused again until ``expires_at``.

    ``now`` lets the store forget expired claims; both are Unix seconds.
    """

    key: str
    expires_at: float
    now: float


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One leaf of the log as stored: its index, its leaf hash and the record bytes.

    ``record`` is the canonical JSON (RFC 8785) of the audit record, byte for byte as appended:
    the leaf hash is computed over these bytes, so they must never be re-serialized.
    """

    index: int
    leaf_hash: bytes
    record: bytes


class AuditStore(Protocol):
    """A durable, append-only sequence of records with its Merkle tree head. Blocking."""

    def append_batch(
        self, records: Sequence[bytes], claims: Sequence[Claim | None] | None = None
    ) -> list[tuple[int, bytes] | None]:
        """Append ``records`` in one transaction; return (index, leaf_hash) per record, in order.

        Durable on return. Raises on failure, in which case nothing of the batch was written.

        ``claims`` (one per record, or None) are one-time ids claimed in the same transaction:
        a record whose claim was already taken is not appended and gets None instead of a
        position (the following records still get consecutive indexes). This is how a signed
        request id is spent exactly when its exchange is accepted, with one fsync for both.
        """
        ...

    def size(self) -> int:
        """Number of records committed so far (by any process)."""
        ...

    def get(self, index: int) -> StoredRecord | None:
        """The record at ``index``, or None if the log is not that long (or index < 0)."""
        ...

    def tree_head(self) -> tuple[int, bytes]:
        """(size, root) of the latest committed tree, read together in one snapshot."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...

    # -- proofs and checkpoints (verifiable log) ---------------------------------------------

    def subtree_hashes(self, ids: Iterable[tuple[int, int]]) -> list[bytes]:
        """Hashes of the complete perfect subtrees ``(level, index)``, in the order asked.

        Node (level, index) covers leaves [index * 2**level, (index + 1) * 2**level); level 0
        is the leaf hash. KeyError for a subtree not (yet) complete. Proofs are computed from
        these (gateway.audit.proofs), never by rehashing all leaves.
        """
        ...

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        """Keep a published checkpoint (idempotent for the same size and note)."""
        ...

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint with the largest size, or None."""
        ...

    def checkpoints(self, *, after_size: int = -1, limit: int = 1000) -> list[StoredCheckpoint]:
        """Stored checkpoints with size > after_size, by size ascending."""
        ...

    # -- search (operators, auditors) ----------------------------------------------------------

    def query(self, query: RecordQuery) -> list[StoredRecord]:
        """Records matching every filter of ``query``, index ascending, after the cursor."""
        ...

    def records(self, start: int, end: int) -> list[StoredRecord]:
        """Records with start <= index < end, in index order (export, verification, stream)."""
        ...


def root_at(store: AuditStore, size: int) -> bytes:
    """Blocking: the root of the store's first ``size`` records, folded from at most log2(size)
    stored perfect subtrees (the empty tree's root for 0). KeyError if a subtree is missing."""
    return proofs.root_from(store.subtree_hashes(proofs.root_nodes(size)))
