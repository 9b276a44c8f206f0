"""Taking one-time ids (signed request ids) in the PostgreSQL audit store's append transaction.

Apart from :mod:`gateway.audit.postgres` (the log's transaction, head lock and recovery) because
it is a concern of its own with a subtlety of its own: one ``INSERT .. ON CONFLICT`` statement
may not touch the same row twice, so a key repeated within a batch is taken in rounds, and the
outcome must still be the one SQLite's one-at-a-time upserts give. Runs on the connection it is
given, inside the caller's transaction (which holds the head lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.audit.store import Claim

__all__ = ["take_claims"]


async def take_claims(conn: Any, statement: str, claims: Sequence[Claim | None]) -> set[int]:
    """Take the claims with ``statement`` (the store's "claim"); return the positions whose
    claim was already (and still) taken.

    Round r holds the r-th occurrence of each key, so the second occurrence of a key is tried
    after the first was taken, and refused, as SQLite would.
    """
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, claim in enumerate(claims):
        if claim is not None:
            r = seen[claim.key] = seen.get(claim.key, -1) + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)
    refused: set[int] = set()
    for positions in rounds:
        batch = [c for c in (claims[i] for i in positions) if c is not None]
        rows = await conn.fetch(
            statement,
            [c.key for c in batch],
            [c.expires_at for c in batch],
            [c.now for c in batch],
        )
        taken = {row[0] for row in rows}
        refused.update(i for i, c in zip(positions, batch, strict=True) if c.key not in taken)
    return refused
