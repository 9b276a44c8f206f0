"""Two real gateway processes, one PostgreSQL log: concurrent load, then verify the whole tree.

This is the deployment the PostgreSQL store exists for (CONTRACT: "PostgreSQL for several
gateway instances sharing one log"): two ``gateway serve`` processes on different ports, same
configuration, same database schema. Every exchange either of them acknowledged must be in the
one log, indexes must be gap-free across both, and the stored tree head must be the RFC 9162
root of exactly the stored records. Needs the real server (see tests/pg.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.audit import merkle
from gateway.audit.postgres import PostgresAuditStore
from gateway.devinit import init_deployment
from tests import pg
from tests.support import REPO, ServerProcess

pytestmark = pytest.mark.slow

EXCHANGES = 300
IN_FLIGHT = 32
SERVICE = "budget-proposal.v1"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A development deployment whose [audit] uses a fresh (not yet created) schema."""
    with pg.fresh_schema(create=False) as schema:
        d = tmp_path / "dep"
        init_deployment(d)
        cfg = d / "gateway.toml"
        text, n = re.subn(
            r'(?m)^store = "sqlite"$',
            f'store = "postgres"\ndsn = "{pg.schema_dsn(schema)}"',
            cfg.read_text(),
        )
        assert n == 1, "gateway init no longer writes store = sqlite under [audit]"
        cfg.write_text(text)
        yield cfg, schema


def _receipt_payload(receipt: dict[str, Any]) -> dict[str, Any]:
    raw = receipt["payload"]
    payload: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return payload


async def _load(urls: list[str], token: str) -> list[tuple[int, dict[str, Any]]]:
    """EXCHANGES posts, alternating between the instances, IN_FLIGHT at a time."""
    body = (REPO / "schemas" / "examples" / f"{SERVICE}.json").read_bytes()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, dict[str, Any]]:
        async with (
            gate,
            session.post(f"{urls[i % 2]}/v1/exchange/{SERVICE}", data=body, headers=headers) as r,
        ):
            answer: dict[str, Any] = await r.json(content_type=None)
        if r.status == 200:
            answer["receipt_index"] = _receipt_payload(answer["receipt"])["audit"]["index"]
        return r.status, answer

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.timeout(120):
        return await asyncio.gather(*(one(session, i) for i in range(EXCHANGES)))


async def _checkpoints(urls: list[str]) -> list[tuple[int, bytes]] | None:
    """(size, root) of each instance's published checkpoint, or None if not served (yet)."""
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for url in urls:
            async with session.get(f"{url}/v1/audit/checkpoint") as r:
                if r.status == 404:
                    return None
                assert r.status == 200, await r.text()
                lines = (await r.read()).decode().split("\n")
                out.append((int(lines[1]), base64.b64decode(lines[2])))
    return out


def _same_published_tree(urls: list[str], size: int, leaves: list[bytes]) -> None:
    """Where GET /v1/audit/checkpoint exists, both instances publish a prefix of this tree."""
    deadline = time.monotonic() + 15
    while True:
        published = asyncio.run(_checkpoints(urls))
        if published is None:
            return  # Route not there: the store checks below already cover the shared tree.
        for cp_size, cp_root in published:
            assert cp_size <= size
            assert cp_root == merkle.root(leaves[:cp_size])
        if all(s == size for s, _ in published) or time.monotonic() > deadline:
            assert all(s == size for s, _ in published), f"checkpoints {published} lag {size}"
            return
        time.sleep(0.2)


def _ready(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
        body = orjson.loads(r.read())
    assert r.status == 200 and body["checks"]["audit"] == body["checks"]["state"] == "ok", body


def test_two_instances_under_load_build_one_gap_free_verifiable_tree(
    deployment: tuple[Path, str],
) -> None:
    cfg, schema = deployment
    token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
    servers: list[ServerProcess] = []
    try:
        servers.append(ServerProcess(cfg, workers=1))
        servers.append(ServerProcess(cfg, workers=1))
        urls = [s.url for s in servers]
        results = asyncio.run(_load(urls, token))
        for url in urls:
            _ready(url)

        assert not (cfg.parent / "audit.db").exists(), "an instance fell back to SQLite"
        acked = [body for status, body in results if 200 <= status < 300]
        assert len(acked) == EXCHANGES, sorted({status for status, _ in results})
        # Both instances really appended at the same time: their records interleave.
        first, second = ({b["receipt_index"] for b in acked[k::2]} for k in (0, 1))
        assert min(second) < max(first) and min(first) < max(second)

        store = PostgresAuditStore(pg.schema_dsn(schema))
        try:
            size, root = store.tree_head()
            records = store.records(0, size + 100)
        finally:
            store.close()
        _verify_tree(schema, size, root, records, acked)
        _same_published_tree(urls, size, [r.leaf_hash for r in records])
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()


def _verify_tree(
    schema: str, size: int, root: bytes, records: list[Any], acked: list[dict[str, Any]]
) -> None:
    # Gap-free, unique, and exactly the head's size (counted by the server, not the store).
    assert [r.index for r in records] == list(range(size))
    (count, lo, hi), *_ = pg.fetch(
        f'SELECT count(*), min(idx), max(idx) FROM "{schema}".audit_records'
    )
    assert (count, lo, hi) == (size, 0, size - 1)
    # Each leaf hash is over the exact record bytes, and the head is the root of them all.
    assert all(r.leaf_hash == merkle.leaf_hash(r.record) for r in records)
    assert root == merkle.root([r.leaf_hash for r in records])
    # Every acknowledged exchange: its receipt points at its "accepted" record, and its
    # "delivered" record follows it.
    by_xid: dict[str, dict[str, int]] = {}
    for r in records:
        rec = orjson.loads(r.record)
        by_xid.setdefault(rec["exchange_id"], {})[rec["event"]] = r.index
    for body in acked:
        receipt = _receipt_payload(body["receipt"])
        xid = body["exchange_id"]
        assert receipt["exchange_id"] == xid
        index = receipt["audit"]["index"]
        assert by_xid[xid]["exchange.accepted"] == index
        assert records[index].leaf_hash.hex() == receipt["audit"]["leaf_hash"]
        assert by_xid[xid]["exchange.delivered"] > index
    assert size == 2 * EXCHANGES  # Nothing else was appended: no rejection, no failure.


async def _keyed(url: str, token: str, key: str) -> tuple[int, dict[str, Any], str | None]:
    body = (REPO / "schemas" / "examples" / f"{SERVICE}.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "Idempotency-Key": key,
    }
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{url}/v1/exchange/{SERVICE}", data=body, headers=headers) as r,
    ):
        answer: dict[str, Any] = await r.json(content_type=None)
        return r.status, answer, r.headers.get("Idempotent-Replayed")


def test_an_idempotency_key_delivers_once_whichever_instance_the_retry_reaches(
    deployment: tuple[Path, str],
) -> None:
    """Behind a load balancer a retry may reach the other instance: it must get the stored
    answer, and two instances racing on one key must not both deliver."""
    import hashlib
    import shutil

    cfg, schema = deployment
    token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
    keys = [f"order-{i}" for i in range(6)]
    # Two hosts: the same configuration in two directories, so nothing on disk is shared.
    other = cfg.parent.parent / "host-b"
    shutil.copytree(cfg.parent, other)
    servers: list[ServerProcess] = []
    try:
        servers.append(ServerProcess(cfg, workers=1))
        servers.append(ServerProcess(other / cfg.name, workers=1))
        urls = [s.url for s in servers]

        async def race() -> list[list[tuple[int, dict[str, Any], str | None]]]:
            return list(
                await asyncio.gather(
                    *(asyncio.gather(*(_keyed(u, token, k) for u in urls)) for k in keys)
                )
            )

        first = dict(zip(keys, asyncio.run(race()), strict=True))
        for key, answers in first.items():
            statuses = sorted(status for status, _, _ in answers)
            assert statuses in ([200, 200], [200, 409]), (key, answers)
            fresh = [s for s, _, replayed in answers if s == 200 and replayed != "true"]
            assert len(fresh) == 1, (key, answers)  # one delivery; the other is a replay
        # Every retry, on either instance, is the stored answer of the one delivered exchange.
        for key in keys:
            originals = {a["exchange_id"] for s, a, replayed in first[key] if s == 200}
            for url in urls:
                status, answer, replayed = asyncio.run(_keyed(url, token, key))
                assert (status, replayed) == (200, "true")
                assert answer["exchange_id"] in originals
        for url in urls:
            _ready(url)
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
    records = [
        orjson.loads(bytes(row[0]))
        for row in pg.fetch(f'SELECT record FROM "{schema}".audit_records')
    ]
    digests = [r["idempotency_key_sha256"] for r in records if r["event"] == "exchange.accepted"]
    assert sorted(digests) == sorted(hashlib.sha256(k.encode()).hexdigest() for k in keys)
