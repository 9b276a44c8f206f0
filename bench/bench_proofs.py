"""Proof latency on a large SQLite audit log, against reading one record, in the same run.

Why: auditors ask for inclusion and consistency proofs (``GET /v1/audit/proof/...``) at any tree
size, and each one runs on the audit writer thread, in line with appends. Proofs are folded from
stored perfect-subtree hashes (gateway.audit.proofs): O(log n) B-tree lookups and at most a few
hashes, never a rehash of leaves. This measures that on a 1,000,000-leaf log and compares it with
the cheapest read there is, ``store.get`` of one record. It also times the deferred search index
(gateway.audit.sqlite): catching up a whole log on the first query, then filtered queries.

    .venv/bin/python bench/bench_proofs.py [--leaves 1000000] [--samples 2000] [--no-search]

Everything runs in a temporary directory with the production settings (WAL, synchronous=FULL);
loops are bounded by --samples; a sample of every kind of proof is verified (not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.audit import merkle, proofs
from gateway.audit.log import AuditLog
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import RecordQuery

SENDERS = ["hcm.quan-1", "hcm.quan-3", "hcm.thu-duc", "hcm.so-tc", "hcm.ca-tp", "hcm.ttcds"]


def _record(i: int) -> bytes:
    # ~330 bytes of canonical JSON, like an "accepted" record: metadata and digests only.
    return (
        b'{"at":"2026-11-28T09:%02d:%02d.%03dZ","event":"exchange.accepted",'
        b'"exchange_id":"0193f0c2-7a5e-7c4b-9d2e-%012d","provider":"central.dan-cu",'
        b'"request_sha256":"' + b"ab" * 32 + b'","sender":"%s",'
        b'"service":"citizen-lookup.v1","v":1}'
    ) % (i // 60000 % 60, i // 1000 % 60, i % 1000, i, SENDERS[i % 6].encode())


def _build(store: SqliteAuditStore, leaves: int, batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, leaves, batch):
        store.append_batch([_record(i) for i in range(first, min(first + batch, leaves))])
    return time.perf_counter() - start


def _timed(fn: Callable[[], object], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]


def _store_level(store: SqliteAuditStore, n: int, samples: int) -> dict[str, list[float]]:
    rng = random.Random(9162)
    fetch = store.subtree_hashes

    def inclusion(index: int, size: int) -> list[bytes]:
        nodes = proofs.inclusion_nodes(index, size)
        return nodes.rehash(fetch(nodes.ids))

    def consistency(size1: int, size2: int) -> list[bytes]:
        nodes = proofs.consistency_nodes(size1, size2)
        return nodes.rehash(fetch(nodes.ids))

    def older() -> tuple[int, int]:
        size = rng.randint(1, n)
        return rng.randrange(size), size

    def pair() -> tuple[int, int]:
        a, b = sorted(rng.sample(range(1, n + 1), 2))
        return a, b

    rows = {
        "store.get(i)  [baseline]": lambda: store.get(rng.randrange(n)),
        "inclusion, full size": lambda: inclusion(rng.randrange(n), n),
        "inclusion, older size": lambda: inclusion(*older()),
        "consistency, random pair": lambda: consistency(*pair()),
        "root at older size": lambda: proofs.root_from(fetch(proofs.root_nodes(rng.randint(1, n)))),
    }
    return {name: _timed(fn, samples) for name, fn in rows.items()}


def _check(store: SqliteAuditStore, n: int) -> None:
    """Not timed: proofs from the big store verify against roots folded from it."""
    rng = random.Random(1)
    for _ in range(50):
        size = rng.randint(1, n)
        index = rng.randrange(size)
        root = proofs.root_from(store.subtree_hashes(proofs.root_nodes(size)))
        nodes = proofs.inclusion_nodes(index, size)
        leaf = store.get(index)
        assert leaf is not None
        proof = nodes.rehash(store.subtree_hashes(nodes.ids))
        merkle.verify_inclusion(leaf.leaf_hash, index, size, proof, root)
        size1 = rng.randint(1, size)
        root1 = proofs.root_from(store.subtree_hashes(proofs.root_nodes(size1)))
        c = proofs.consistency_nodes(size1, size)
        merkle.verify_consistency(size1, size, c.rehash(store.subtree_hashes(c.ids)), root1, root)
    assert store.tree_head()[1] == proofs.root_from(store.subtree_hashes(proofs.root_nodes(n)))


async def _through_log(path: Path, n: int, samples: int) -> dict[str, list[float]]:
    """The same through AuditLog: adds the hop to the writer thread and back."""
    rng = random.Random(6962)
    log = await AuditLog.open(SqliteAuditStore(str(path)))
    out: dict[str, list[float]] = {"log.get(i)  [baseline]": [], "log.inclusion_proof": []}
    try:
        for _ in range(samples):
            t = time.perf_counter()
            await log.get(rng.randrange(n))
            out["log.get(i)  [baseline]"].append((time.perf_counter() - t) * 1e6)
            size = rng.randint(1, n)
            t = time.perf_counter()
            await log.inclusion_proof(rng.randrange(size), size)
            out["log.inclusion_proof"].append((time.perf_counter() - t) * 1e6)
    finally:
        await log.aclose()
    return out


def _search(store: SqliteAuditStore, samples: int) -> None:
    start = time.perf_counter()
    first = store.query(RecordQuery(sender="hcm.thu-duc", limit=100))
    catch_up = time.perf_counter() - start
    n = store.size()
    print(
        f"\nsearch index catch-up on the first query: {n:,} records in {catch_up:.1f} s "
        f"({catch_up / n * 1e6:.1f} us/record, off the append path); {len(first)} results"
    )
    rng = random.Random(7)
    rows = {
        "query exchange_id": lambda: store.query(
            RecordQuery(exchange_id=f"0193f0c2-7a5e-7c4b-9d2e-{rng.randrange(n):012d}")
        ),
        "query sender, page of 100 from a cursor": lambda: store.query(
            RecordQuery(sender=rng.choice(SENDERS), after_index=rng.randrange(n), limit=100)
        ),
    }
    for name, fn in rows.items():
        xs = _timed(fn, min(samples, 500))
        print(f"{name:42} p50 {_pct(xs, 0.5):9.1f} us  p99 {_pct(xs, 0.99):9.1f} us")


def main(leaves: int, samples: int, batch: int, search: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-proofs-") as tmp:
        path = Path(tmp) / "audit.db"
        store = SqliteAuditStore(str(path))
        elapsed = _build(store, leaves, batch)
        print(
            f"built {leaves:,} leaves in {elapsed:.1f} s ({elapsed / leaves * 1e6:.1f} us/leaf, "
            f"batches of {batch:,}); file {path.stat().st_size / 1e6:.0f} MB"
        )
        _check(store, leaves)
        results = _store_level(store, leaves, samples)
        base = statistics.median(results["store.get(i)  [baseline]"])
        print(f"\n{'store level, ' + str(samples) + ' samples each':42} {'p50 us':>9} "
              f"{'p99 us':>9} {'p50 / get':>10}")  # fmt: skip
        for name, xs in results.items():
            print(
                f"{name:42} {_pct(xs, 0.5):9.1f} {_pct(xs, 0.99):9.1f} "
                f"{statistics.median(xs) / base:9.1f}x"
            )
        store.close()
        through = asyncio.run(_through_log(path, leaves, samples))
        lbase = statistics.median(through["log.get(i)  [baseline]"])
        print(f"\n{'through AuditLog (writer thread hop)':42} {'p50 us':>9} {'p99 us':>9}")
        for name, xs in through.items():
            print(
                f"{name:42} {_pct(xs, 0.5):9.1f} {_pct(xs, 0.99):9.1f} "
                f"{statistics.median(xs) / lbase:9.1f}x"
            )
        if search:
            store = SqliteAuditStore(str(path))
            _search(store, samples)
            store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=50_000, help="records per build transaction")
    parser.add_argument("--no-search", action="store_true", help="skip the search index timing")
    args = parser.parse_args()
    main(args.leaves, args.samples, args.batch, not args.no_search)
