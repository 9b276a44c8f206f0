"""kill -9 under concurrent load, restart: every exchange that got a 2xx is in the audit log."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.devinit import init_deployment
from tests.support import ServerProcess, example

pytestmark = pytest.mark.slow


async def _load(url: str, token: str, acked: list[str], stop_at: float, n_max: int) -> None:
    body = orjson.dumps(example("budget-proposal.v1"))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    sent = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.monotonic() < stop_at and sent < n_max:
            sent += 1
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    if r.status == 200:
                        acked.append((await r.json())["exchange_id"])
            except (TimeoutError, aiohttp.ClientError):
                return  # the server died under us


async def test_kill_9_under_load_loses_no_acknowledged_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "dep"
    init_deployment(d)
    # kill -9 gives the supervisor no chance to remove its metrics directory: keep it here.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    server = ServerProcess(d / "gateway.toml", workers=2)
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    acked: list[str] = []
    url = f"{server.url}/v1/exchange/budget-proposal.v1"
    stop_at = time.monotonic() + 20
    tasks = [asyncio.create_task(_load(url, token, acked, stop_at, 2000)) for _ in range(16)]
    while len(acked) < 300 and time.monotonic() < stop_at:
        await asyncio.sleep(0.05)
    server.kill9()
    await asyncio.gather(*tasks)
    assert len(acked) >= 300, "the load never got going"

    conn = sqlite3.connect(d / "audit.db")
    rows = conn.execute("SELECT idx, record FROM audit_records ORDER BY idx").fetchall()
    conn.close()
    assert [r[0] for r in rows] == list(range(len(rows))), "indexes are not gap-free"
    delivered = {orjson.loads(r[1])["exchange_id"] for r in rows if b"exchange.delivered" in r[1]}
    missing = [x for x in acked if x not in delivered]
    assert not missing, f"{len(missing)} acknowledged exchanges missing from the log"

    # And the gateway restarts on the same files and keeps appending after the last index.
    server = ServerProcess(d / "gateway.toml", workers=1)
    url = f"{server.url}/v1/exchange/budget-proposal.v1"
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url,
                data=orjson.dumps(example("budget-proposal.v1")),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            ) as r,
        ):
            assert r.status == 200
    finally:
        server.stop()
    conn = sqlite3.connect(d / "audit.db")
    (n,) = conn.execute("SELECT count(*) FROM audit_records").fetchone()
    (mx,) = conn.execute("SELECT max(idx) FROM audit_records").fetchone()
    later = conn.execute(
        "SELECT idx, record FROM audit_records WHERE idx >= ? ORDER BY idx", (len(rows),)
    ).fetchall()
    conn.close()
    # Twice under a loaded machine, 8-9 records more than counted after the kill appeared by
    # the restart's one exchange. Say what they were, should it happen again.
    docs = [(i, orjson.loads(r)) for i, r in later]
    seen = [(i, doc["event"], doc.get("exchange_id") in acked) for i, doc in docs]
    assert n == mx + 1 == len(rows) + 2, f"after the {len(rows)} read after the kill: {seen}"
