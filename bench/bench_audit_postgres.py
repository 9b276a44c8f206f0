"""PostgreSQL audit store throughput: group commit versus one append per transaction, same run.

Why: as with SQLite (bench_audit.py), every acknowledged exchange waits for a durable audit
append. Against PostgreSQL a transaction costs several round trips (BEGIN, head lock, write,
COMMIT) plus the WAL flush of synchronous_commit = on, so the per-record cost is dominated by
the transaction: group commit (many concurrent appenders through one AuditLog) shares it. A third
run splits the appenders over two stores (two connections, two writer threads), as two gateway
instances would, to show what the shared head-row lock costs.

Each run uses a fresh schema ``bench_<random>`` on the server at ``$GATEWAY_BENCH_POSTGRES_DSN``
(default: the test server), dropped at the end.

    .venv/bin/python bench/bench_audit_postgres.py [--records 20000] [--concurrency 64]
                                                   [--serial 1000] [--uvloop]
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import urllib.parse

import asyncpg
from _audit_cli import run_cli

from gateway.audit.log import AuditLog
from gateway.audit.postgres import PostgresAuditStore

DSN = os.environ.get("GATEWAY_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _record(worker: int, i: int) -> bytes:
    # Shaped like a real "accepted" record (~450 bytes), so the index columns are filled too.
    return (
        b'{"at":"2026-11-28T09:00:00.000Z","auth":"token","envelope_sha256":"'
        + b"cd" * 32
        + b'","event":"exchange.accepted","exchange_id":"0193f0c2-7a5e-7c4b-9d2e-%06d%06d",'
        b'"provider":"central.dan-cu","purpose":"budget","request_sha256":"'
        + b"ab" * 32
        + b'","sender":"hcm.quan-1","service":"citizen-lookup.v1","v":1}'
    ) % (worker, i)


def _dsn(schema: str) -> str:
    parts = urllib.parse.urlsplit(DSN)
    query = [*urllib.parse.parse_qsl(parts.query), ("schema", schema)]
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


async def _run(instances: int, count: int, concurrency: int) -> tuple[float, int]:
    """``concurrency`` appenders spread over ``instances`` AuditLogs; (seconds, transactions)."""
    schema = "bench_" + secrets.token_hex(4)
    logs = [await AuditLog.open(PostgresAuditStore(_dsn(schema))) for _ in range(instances)]
    per_worker = count // concurrency

    async def worker(w: int) -> None:
        log = logs[w % instances]
        for i in range(per_worker):
            await log.append(_record(w, i))

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        for log in logs:
            await log.aclose()
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return elapsed, sum(log.stats.batches for log in logs)


def _line(name: str, n: int, seconds: float, batches: int) -> float:
    us = seconds / n * 1e6
    print(
        f"{name}: {n} records, {batches} transactions (avg {n / batches:.1f} records each), "
        f"{n / seconds:,.0f} appends/s, {us:.1f} us/record"
    )
    return us


async def main(records: int, concurrency: int, serial: int) -> None:
    grouped_n = records // concurrency * concurrency
    s_us = _line("one append per transaction", serial, *await _run(1, serial, 1))
    g_us = _line(
        f"group commit ({concurrency} appenders, 1 instance)",
        grouped_n,
        *await _run(1, grouped_n, concurrency),
    )
    t_us = _line(
        f"group commit ({concurrency} appenders, 2 instances)",
        grouped_n,
        *await _run(2, grouped_n, concurrency),
    )
    print(f"ratio: group commit is {s_us / g_us:.1f}x the baseline's throughput")
    print(f"ratio: two instances sharing the head lock run at {g_us / t_us:.2f}x one instance")


if __name__ == "__main__":
    run_cli(__doc__ or "", main)
