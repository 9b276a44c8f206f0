"""A real `gateway serve` (appender + workers) whose audit store fails under it, then recovers.

What is pinned: no 2xx without its durable record, a 503 problem (never a 500) while the
store fails, /readyz not ready meanwhile, and the log gap-free afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.devinit import init_deployment
from tests.support import ServerProcess, example, running_gateway, until_every_worker_serves

pytestmark = pytest.mark.slow


async def _exchange(url: str, token: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.post(
            f"{url}/v1/exchange/budget-proposal.v1",
            data=orjson.dumps(example("budget-proposal.v1")),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status, r.content_type


async def _ready(url: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.get(f"{url}/readyz") as r,
    ):
        return r.status


async def test_removing_the_audit_databases_directory_turns_answers_to_503_not_lost_200s(
    tmp_path: Path,
) -> None:
    """Before: SQLite kept committing into the unlinked file, every exchange got 200 and
    /readyz said ready, and all of it was gone once the process exited."""
    d = tmp_path / "dep"
    init_deployment(d)
    cfg = d / "gateway.toml"
    cfg.write_text(cfg.read_text().replace('path = "audit.db"', 'path = "data/audit.db"', 1))
    (d / "data").mkdir()
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    server = ServerProcess(cfg, workers=2)
    try:
        # Both workers up first: one still starting would fail to open the removed log and,
        # as at any start-up failure, stop the gateway (that is not what is tested here).
        await asyncio.to_thread(until_every_worker_serves, server, d)
        assert await _exchange(server.url, token) == (200, "application/json")
        shutil.rmtree(d / "data")
        for _ in range(3):
            assert await _exchange(server.url, token) == (503, "application/problem+json")
        assert await _ready(server.url) == 503
    finally:
        server.stop()


async def test_a_store_outage_503_is_a_problem_with_retry_after(tmp_path: Path) -> None:
    """The store comes back by itself: the 503 tells the sender when to retry (RFC 9110
    Retry-After), as the 429 does; before, it said nothing and clients guessed."""
    d = tmp_path / "dep"
    init_deployment(d)
    cfg = d / "gateway.toml"
    cfg.write_text(cfg.read_text().replace('path = "audit.db"', 'path = "data/audit.db"', 1))
    (d / "data").mkdir()
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        shutil.rmtree(d / "data")
        async with s.post(
            f"{gw.url}/v1/exchange/budget-proposal.v1",
            data=orjson.dumps(example("budget-proposal.v1")),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        ) as r:
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert (await r.json())["type"].endswith(":not-ready")
            assert int(r.headers["Retry-After"]) >= 1


async def test_readyz_is_not_ready_while_audit_writes_fail_though_reads_work(
    tmp_path: Path,
) -> None:
    """Another process holds the log's write lock past the busy timeout: reads (what /readyz
    tried) still work, so it said ok while every exchange got 503. Now the failed write makes
    it not ready, and the next exchange that is audited makes it ready again.

    A real `gateway serve`: its workers read the log on connections of their own, which the
    appender's stuck write does not hold up (in an app built alone, one thread does both)."""
    import sqlite3

    d = tmp_path / "dep"
    init_deployment(d)
    cfg = d / "gateway.toml"
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    server = ServerProcess(cfg)
    try:
        async with aiohttp.ClientSession() as s:
            assert await _exchange(server.url, token) == (200, "application/json")
            holder = sqlite3.connect(d / "audit.db", isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # held past the store's 10 s busy timeout
                assert await _exchange(server.url, token) == (503, "application/problem+json")
                async with s.get(f"{server.url}/readyz") as r:
                    doc = await r.json()
                assert r.status == 503, doc
                assert doc["checks"]["audit"] == "ok"  # the read side is fine...
                assert doc["checks"]["writes"].startswith("failing")  # ...the write side is not
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert await _exchange(server.url, token) == (200, "application/json")
            async with s.get(f"{server.url}/readyz") as r:
                assert r.status == 200, await r.text()
    finally:
        server.stop()


async def test_readyz_names_a_failing_store_without_its_error_text(tmp_path: Path) -> None:
    """/readyz is public (orchestrators call it unauthenticated). The state check answered
    the store's error text ("state database /srv/.../state.db was removed ...", or for
    PostgreSQL the server's address and user), unlike the audit check, which says only the
    error's type; the text belongs in the log."""
    d = tmp_path / "dep"
    init_deployment(d)
    cfg = d / "gateway.toml"
    text = cfg.read_text().replace('state_path = "state.db"', 'state_path = "data/state.db"', 1)
    cfg.write_text(text)
    (d / "data").mkdir()
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        shutil.rmtree(d / "data")
        async with s.get(f"{gw.url}/readyz") as r:
            body = await r.text()
            assert r.status == 503, body
    checks = orjson.loads(body)["checks"]
    assert checks["state"].startswith("failed"), checks
    assert str(tmp_path) not in body and "state.db" not in body, body


async def test_readyz_is_not_ready_while_the_appender_leaves_records_unanswered(
    tmp_path: Path,
) -> None:
    """The appender stalls (here SIGSTOP; a hung disk or store does the same): exchanges wait
    for their records, and /readyz said ok all along, since it only read the log on the
    worker's own connection, so a load balancer kept sending traffic into the stall."""
    import os
    import signal

    from tests.support import group_processes

    d = tmp_path / "dep"
    init_deployment(d)
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    server = ServerProcess(d / "gateway.toml")
    appender = next(p for p, name in group_processes(server.proc.pid) if name == "gw-appender")
    try:
        assert await _exchange(server.url, token) == (200, "application/json")
        os.kill(appender, signal.SIGSTOP)
        try:
            waiting = asyncio.create_task(_exchange(server.url, token))
            status = 200
            for _ in range(100):  # until the stall shows (at most 10 s)
                status = await _ready(server.url)
                if status == 503:
                    break
                await asyncio.sleep(0.1)
            assert status == 503
            assert not waiting.done()  # the record is merely late: nothing is answered yet
        finally:
            os.kill(appender, signal.SIGCONT)
        assert await waiting == (200, "application/json")
        assert await _ready(server.url) == 200
    finally:
        server.stop()
