"""Witnessing with ``[audit] store = "postgres"``: every instance of the gateway is ONE witness.

Two gateway instances ("hosts": the same configuration in two directories, nothing on disk
shared) serve one gateway behind a load balancer and cosign with the same ``[witness] key``.
A log may reach either. What one instance cosigned must bind the other: otherwise a log
shows host A one checkpoint and host B a fork of it, and gets both cosigned by one witness
key. Both instances run in this process on 127.0.0.1, on one fresh PostgreSQL schema (see
tests/pg.py). The log is a key held by the test; its trees are gateway.audit.merkle's.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import merkle
from gateway.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from gateway.http import witness_api
from gateway.witness import SIZE_CONTENT_TYPE, Witnessed, encode_add_checkpoint
from gateway.witness_store_postgres import PostgresWitnessStore
from tests import pg
from tests.support import Gateway, make_deployment, running_gateway
from tests.test_audit_api import quiet_checkpoints

ORIGIN = "peer.example/log"


def _leaves(n: int, tag: bytes) -> list[bytes]:
    return [merkle.leaf_hash(tag + b"%d" % i) for i in range(n)]


def _note(log: NoteSigner, size: int, leaves: list[bytes]) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, merkle.root(leaves[:size])), log)


async def _post(gw: Gateway, body: bytes) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url + witness_api.ADD_CHECKPOINT_PATH, data=body) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Path, Path, NoteSigner, str]]:
    """Two hosts of one gateway on a fresh schema, witnessing the test's log ``ORIGIN``."""
    log = NoteSigner(ORIGIN, ed25519.Ed25519PrivateKey.generate())
    with pg.fresh_schema(create=False) as schema:
        cfg = quiet_checkpoints(make_deployment(tmp_path / "host-a"))
        text, n = re.subn(
            r'(?m)^store = "sqlite"$',
            f'store = "postgres"\ndsn = "{pg.schema_dsn(schema)}"',
            cfg.read_text(),
        )
        assert n == 1, "gateway init no longer writes store = sqlite under [audit]"
        peer = f'\n[[witness.peers]]\norigin = "{ORIGIN}"\nverifier_key = "{log.vkey()}"\n'
        cfg.write_text(text + peer)
        other = tmp_path / "host-b"
        shutil.copytree(cfg.parent, other)
        yield cfg, other / cfg.name, log, schema


async def test_what_one_instance_cosigned_binds_every_instance_sharing_the_log(
    hosts: tuple[Path, Path, NoteSigner, str],
) -> None:
    a_cfg, b_cfg, log, schema = hosts
    good, fork = _leaves(12, b"good"), _leaves(12, b"fork")
    async with running_gateway(a_cfg) as a, running_gateway(b_cfg) as b:
        assert (await _post(a, encode_add_checkpoint(0, [], _note(log, 5, good))))[0] == 200
        # Host B never saw that request: a fork of size 5 from old 0 must still be refused
        # with the size the witness holds, not cosigned under the same witness key.
        fork5 = encode_add_checkpoint(0, [], _note(log, 5, fork))
        assert await _post(b, fork5) == (409, SIZE_CONTENT_TYPE, b"5\n")
        # B advances from what A cosigned; A then holds B's size.
        grow = encode_add_checkpoint(5, merkle.consistency_proof(5, 8, good), _note(log, 8, good))
        assert (await _post(b, grow))[0] == 200
        assert await _post(a, grow) == (409, SIZE_CONTENT_TYPE, b"8\n")
        # A fork at the held size, on either host: 409 fork, kept as evidence once.
        fork8 = encode_add_checkpoint(8, [], _note(log, 8, fork))
        for gw in (a, b):
            status, ctype, body = await _post(gw, fork8)
            assert (status, ctype) == (409, "application/problem+json") and b"fork" in body
        # Two hosts racing from the same old size: exactly one advances the witness.
        racing = await asyncio.gather(
            *(
                _post(gw, encode_add_checkpoint(8, merkle.consistency_proof(8, n, good), note))
                for gw, n in ((a, 10), (b, 11))
                for note in [_note(log, n, good)]
            )
        )
        assert sorted(r[0] for r in racing) == [200, 409], racing
    store = await PostgresWitnessStore.open(pg.schema_dsn(schema))
    try:
        held = await store.latest(ORIGIN)
        assert held is not None and held.size in (10, 11)
        assert held.root == merkle.root(good[: held.size]) and held.cosigned_at > 0
        # The fork of 5 (stale old, another root at the held size) and the fork of 8 (sent to
        # both hosts), each kept once.
        kept = sorted(e.cause for e in await store.evidence(ORIGIN))
        assert kept == ["fork", "stale-old-size"]
    finally:
        await store.aclose()


async def test_postgres_compare_and_swap_lets_exactly_one_instance_advance(
    hosts: tuple[Path, Path, NoteSigner, str],
) -> None:
    """The store alone, as two instances use it: of writers that read the same state, one
    wins; state survives closing every connection (a restart of every instance)."""
    *_, schema = hosts
    leaves = _leaves(10, b"x")

    def held(n: int) -> Witnessed:
        return Witnessed(n, merkle.root(leaves[:n]))

    one = await PostgresWitnessStore.open(pg.schema_dsn(schema))
    two = await PostgresWitnessStore.open(pg.schema_dsn(schema))
    try:
        firsts = await asyncio.gather(
            one.compare_and_swap(ORIGIN, None, held(3)), two.compare_and_swap(ORIGIN, None, held(4))
        )
        assert sorted(firsts) == [False, True]
        winner = held(3) if firsts[0] else held(4)
        nexts = await asyncio.gather(
            one.compare_and_swap(ORIGIN, winner, held(7)),
            two.compare_and_swap(ORIGIN, winner, held(9)),
        )
        assert sorted(nexts) == [False, True]
        assert not await one.compare_and_swap(ORIGIN, winner, held(10))  # Stale expectation.
        assert await one.keep_evidence(ORIGIN, "fork", b"t", b"n", winner, seen_at=1)
        assert not await two.keep_evidence(ORIGIN, "fork", b"t", b"n2", None, seen_at=2)
    finally:
        await one.aclose()
        await two.aclose()
    again = await PostgresWitnessStore.open(pg.schema_dsn(schema))
    try:
        assert await again.latest(ORIGIN) == (held(7) if nexts[0] else held(9))
        [kept] = await again.evidence(ORIGIN)
        assert (kept.cause, kept.note, kept.held, kept.seen_at) == ("fork", b"n", winner, 1)
    finally:
        await again.aclose()


@pytest.fixture
def schema() -> Iterator[str]:
    with pg.fresh_schema(create=False) as name:
        yield name


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
async def test_racing_instances_lose_the_swap_not_the_store_whatever_the_default_isolation(
    schema: str, isolation: str
) -> None:
    """The compare-and-swap is written for READ COMMITTED (the second writer waits, then finds
    its WHERE false). Under a stricter default_transaction_isolation (DSN, role or database)
    the losers got a serialization error: WitnessStoreUnavailable, a 503 instead of a re-read.
    The store's sessions use READ COMMITTED."""
    leaves = _leaves(40, b"x")

    def held(n: int) -> Witnessed:
        return Witnessed(n, merkle.root(leaves[:n]))

    dsn = pg.with_params(pg.schema_dsn(schema), default_transaction_isolation=isolation)
    stores = [await PostgresWitnessStore.open(dsn) for _ in range(3)]
    try:
        assert await stores[0].compare_and_swap(ORIGIN, None, held(1))
        state = held(1)
        for size in range(2, 12):
            won = await asyncio.gather(
                *(s.compare_and_swap(ORIGIN, state, held(size)) for s in stores * 2)
            )
            assert sum(won) == 1, won
            state = held(size)
    finally:
        for s in stores:
            await s.aclose()
