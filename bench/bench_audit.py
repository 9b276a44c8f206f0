"""Audit log throughput: group commit versus one append per transaction, in the same run.

Why: every acknowledged exchange waits for a durable audit append, so the per-record cost of that
append bounds the gateway's throughput. The baseline awaits each append before making the next
(so every record is its own fsync'd transaction, handed to the writer thread); the group-commit
run has many concurrent appenders, as a busy gateway does, and lets records share transactions.
Both use a fresh SQLite file in a temporary directory with the production settings (WAL,
synchronous=FULL).

    .venv/bin/python bench/bench_audit.py [--records 20000] [--concurrency 64] [--serial 1000]
                                          [--uvloop]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from _audit_cli import run_cli

from gateway.audit.log import AuditLog
from gateway.audit.sqlite import SqliteAuditStore


def _record(worker: int, i: int) -> bytes:
    # Shaped like a real record: metadata and digests, ~300 bytes of canonical JSON.
    return (
        b'{"exchange_id":"0193f0c2-7a5e-7c4b-9d2e-%06d%06d","outcome":"accepted",'
        b'"received_at":"2026-11-28T09:00:00Z","request_sha256":"'
        + b"ab" * 32
        + b'","sender":"hcm.quan-1","service":"citizen-lookup.v1","provider":"central.dan-cu"}'
    ) % (worker, i)


async def _serial(path: Path, count: int) -> tuple[float, int]:
    log = await AuditLog.open(SqliteAuditStore(str(path)))
    try:
        start = time.perf_counter()
        for i in range(count):
            await log.append(_record(0, i))
        elapsed = time.perf_counter() - start
    finally:
        await log.aclose()
    return elapsed, log.stats.batches


async def _grouped(path: Path, count: int, concurrency: int) -> tuple[float, int]:
    log = await AuditLog.open(SqliteAuditStore(str(path)))
    per_worker = count // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            await log.append(_record(w, i))

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await log.aclose()
    return elapsed, log.stats.batches


async def main(records: int, concurrency: int, serial: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        s_time, s_batches = await _serial(Path(tmp) / "serial.db", serial)
        grouped_n = records // concurrency * concurrency
        g_time, g_batches = await _grouped(Path(tmp) / "grouped.db", grouped_n, concurrency)
    s_us = s_time / serial * 1e6
    g_us = g_time / grouped_n * 1e6
    print(
        f"one append per transaction: {serial} records, {s_batches} transactions, "
        f"{serial / s_time:,.0f} appends/s, {s_us:.1f} us/record"
    )
    print(
        f"group commit ({concurrency} appenders): {grouped_n} records, {g_batches} "
        f"transactions (avg {grouped_n / g_batches:.1f} records each), "
        f"{grouped_n / g_time:,.0f} appends/s, {g_us:.1f} us/record"
    )
    print(f"ratio: group commit is {s_us / g_us:.1f}x the baseline's throughput")


if __name__ == "__main__":
    run_cli(__doc__ or "", main)
