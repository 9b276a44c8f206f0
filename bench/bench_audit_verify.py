"""`gateway audit verify` on a large log: how long a full offline check takes, and where it goes.

Why: a security officer verifies the whole log, not a sample, so the check must stay practical
as the log grows (target: a million records in under two minutes on two cores). The log is built
directly in SQLite with the store's own schema (records of about 400 bytes of canonical JSON,
interior nodes, head, a signed checkpoint every ``--every`` records), which is much faster than
appending through the store yet gives the same file. Then the real command runs as a
subprocess, and the same run measures two baselines in-process for the ratios: a bare read of
every row, and a read plus one leaf hash per row (the least any full check must do).

    .venv/bin/python bench/bench_audit_verify.py [--records 1000000] [--every 50000]

Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import merkle
from gateway.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from gateway.audit.sqlite import SqliteAuditStore

ORIGIN = "bench.example/audit"
_SEARCH = ("at", "sender", "service", "provider", "event", "exchange_id")
_SENDERS = ("hcm.quan-1", "hcm.thu-duc", "hcm.so-tc", "hcm.ca-tp")


def _record(i: int) -> tuple[bytes, tuple[str, ...]]:
    """A canonical JSON record shaped like the pipeline's, and its search column values."""
    sender = _SENDERS[i % 4]
    xid = f"0193f0c2-7a5e-7c4b-9d2e-{i:012d}"
    hh, mm, ss = i // 3600000 % 24, i // 60000 % 60, i // 1000 % 60
    at = f"2026-11-28T{hh:02d}:{mm:02d}:{ss:02d}.{i % 1000:03d}Z"
    if i % 2 == 0:
        event = "exchange.accepted"
        body = (
            f'{{"at":"{at}","auth":"signed","envelope_sha256":"{i:064x}","event":"{event}",'
            f'"exchange_id":"{xid}","idempotency_key_sha256":null,"legal_basis":"Nghị định '
            f'47/2020/NĐ-CP, Điều 14","provider":"central.dan-cu","purpose":"Xác minh thông tin '
            f'công dân","request_schema":{{"id":"citizen-lookup.v1","sha256":"{7 * i:064x}"}},'
            f'"request_sha256":"{3 * i:064x}","sender":"{sender}","service":"citizen-lookup.v1",'
            f'"v":1}}'
        )
    else:
        event = "exchange.delivered"
        body = (
            f'{{"accepted_index":{i - 1},"at":"{at}","attempts":1,"event":"{event}",'
            f'"exchange_id":"{xid}","provider":"central.dan-cu","receipt_sha256":"{5 * i:064x}",'
            f'"response_sha256":"{11 * i:064x}","sender":"{sender}",'
            f'"service":"citizen-lookup.v1","status":200,"v":1}}'
        )
    return body.encode(), (at, sender, "citizen-lookup.v1", "central.dan-cu", event, xid)


def build(db: Path, records: int, every: int, signer: NoteSigner) -> list[bytes]:
    """Write the log straight into the store's schema; return the signed checkpoint notes."""
    store = SqliteAuditStore(str(db))
    store.size()  # Creates the real schema (tables, indexes, head row).
    store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # Building a test file: durability is not the point.
    columns = {r[1] for r in conn.execute("PRAGMA table_info(audit_records)")}
    search = all(c in columns for c in _SEARCH)
    insert = (
        "INSERT INTO audit_records (idx, leaf_hash, record, "
        + ", ".join(_SEARCH)
        + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        if search
        else "INSERT INTO audit_records (idx, leaf_hash, record) VALUES (?, ?, ?)"
    )
    frontier = merkle.Frontier()
    notes: list[bytes] = []
    stored: list[tuple[int, bytes, bytes]] = []
    batch = 50_000
    for start in range(0, records, batch):
        rows, nodes = [], []
        for i in range(start, min(start + batch, records)):
            rec, fields = _record(i)
            h = merkle.leaf_hash(rec)
            nodes.extend((n.level, n.index, n.hash) for n in frontier.append(h))
            rows.append((i, h, rec, *fields) if search else (i, h, rec))
            if frontier.size % every == 0:
                root = frontier.root()
                notes.append(sign_checkpoint(Checkpoint(ORIGIN, frontier.size, root), signer))
                stored.append((frontier.size, root, notes[-1]))
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        conn.execute(
            "UPDATE audit_head SET size = ?, root = ?, frontier = ? WHERE id = 0",
            (frontier.size, frontier.root(), frontier.to_bytes()),
        )
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, 0)",
        stored,
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return notes


def baseline(db: Path, *, hash_leaves: bool) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    leaf_hash = merkle.leaf_hash
    start = time.perf_counter()
    cur = conn.execute("SELECT idx, leaf_hash, record FROM audit_records ORDER BY idx")
    while rows := cur.fetchmany(8192):
        if hash_leaves:
            for _, _, rec in rows:
                leaf_hash(rec)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=50_000, help="a checkpoint every N records")
    args = ap.parse_args()
    signer = NoteSigner(ORIGIN, ed25519.Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        db = Path(tmp) / "audit.db"
        t = time.perf_counter()
        notes = build(db, args.records, args.every, signer)
        built = time.perf_counter() - t
        trusted = Path(tmp) / "trusted.txt"
        trusted.write_bytes(notes[len(notes) // 2] if notes else b"")
        print(
            f"built {args.records:,} records, {len(notes)} checkpoints in {built:.1f} s "
            f"({db.stat().st_size / 2**20:.0f} MiB)"
        )
        read_only = baseline(db, hash_leaves=False)
        read_hash = baseline(db, hash_leaves=True)
        cmd = [sys.executable, "-m", "gateway.cli", "audit", "verify", "--db", str(db)]
        cmd += ["--vkey", signer.vkey()]
        if notes:
            cmd += ["--trusted", str(trusted)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"audit verify exited {proc.returncode}")
    m = re.search(
        r"in ([0-9.]+) s .*reading ([0-9.]+) s, hashing and checks ([0-9.]+) s", proc.stdout
    )
    checked = float(m.group(1)) if m else wall
    print(
        f"baseline: read every row {read_only:.2f} s; "
        f"read + one leaf hash per row {read_hash:.2f} s"
    )
    print(
        f"gateway audit verify: {wall:.2f} s wall (process start included), "
        f"{args.records / checked:,.0f} records/s; "
        f"{checked / read_hash:.2f}x the read+hash baseline"
    )
    if m:
        print(f"split: reading {m.group(2)} s, hashing and checks {m.group(3)} s")


if __name__ == "__main__":
    main()
