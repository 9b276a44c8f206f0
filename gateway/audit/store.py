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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["AuditStore", "Claim", "StoredRecord"]


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
