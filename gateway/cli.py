"""The ``gateway`` command; the only place that maps errors to exit codes.

Exit status: 0 when what was asked holds; 1 when it does not (a refused exchange, a signature
that does not verify); 2 for a usage or configuration problem. Messages name the cause.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import signal
import socket
import sqlite3
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway import config as config_mod
from gateway.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"gateway: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from gateway.devinit import GATEWAY_ID, init_deployment

    target = Path(args.dir)
    try:
        owners = init_deployment(target, port=args.port)
    except FileExistsError as e:
        _err(str(e))
        return EXIT_USAGE
    print(f"Development deployment written to {target} (gateway {GATEWAY_ID}).")
    print(f"  config:        {target / 'gateway.toml'}")
    print(f"  trust anchor:  {target / 'pki/ca.crt'}  (DEVELOPMENT CA: not for production)")
    print(f"  participants:  {', '.join(owners)} (keys, certificates, dev tokens in participants/)")
    print(f"  examples:      {target / 'examples'}")
    print(f"Next: cd {target} && gateway serve")
    return EXIT_OK


# ---------------------------------------------------------------- serve
def _load(args: argparse.Namespace) -> config_mod.Deployment:
    return config_mod.load(config_mod.find_config(args.config))


def _bind(host: str, port: int) -> socket.socket:
    """One listening socket, inherited by every worker (the pre-fork model).

    Not SO_REUSEPORT: the kernel then spreads connections by a hash of their addresses, and
    with a few dozen keep-alive clients one worker measured 20 connections to the other's 12
    (and saturated first). With one shared socket, whichever worker is free accepts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _run_appender(dep: config_mod.Deployment, address: str, ready: Any) -> None:
    """The audit appender process: the only writer of audit records while the gateway runs."""
    from gateway.audit.appender import serve
    from gateway.audit.factory import open_store

    serve(open_store(dep), address, ready=ready.set)


def _run_worker(
    dep: config_mod.Deployment, sock: socket.socket, worker: int, appender: str
) -> None:
    """One worker process: its own event loop and app; the shared socket and appender."""
    from gateway.http.app import create_app, run, server_ssl_context
    from gateway.logging import configure

    configure(dep.config.logging.level)
    # Helper threads (reads for proofs and search, the state store) need the GIL for a few
    # microseconds at a time; with the default 5 ms switch interval a busy event loop keeps
    # them waiting that long. 0.5 ms keeps those waits short.
    sys.setswitchinterval(0.0005)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app = create_app(dep, appender_address=appender)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations, so full collections under load stay short (they show up in p99 latency).
    gc.collect()
    gc.freeze()
    run(app, sock, server_ssl_context(dep))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.http.app import create_app, prepare_stores, server_ssl_context

    dep = _load(args)
    g = dep.config.gateway
    host = args.host or g.host
    port = g.port if args.port is None else args.port
    workers = args.workers or g.workers
    # Build once in the parent so a bad config (schema, key, connector) fails before any fork.
    create_app(dep)
    server_ssl_context(dep)
    from gateway.audit.publisher import RolledBack

    try:
        prepare_stores(dep)
    except RolledBack as e:
        _err(f"refusing to serve: {e}")
        return EXIT_FAILED
    sock = _bind(host, port)
    actual_port = sock.getsockname()[1]
    scheme = "https" if g.tls else "http"
    base = f"{scheme}://{host}:{actual_port}"
    print(f"gateway {g.id} listening on {base} with {workers} worker(s)", flush=True)
    print(
        "  first payload: gateway send citizen-lookup.v1 examples/citizen-lookup.v1.json"
        f" --url {base}",
        flush=True,
    )
    return _supervise(dep, sock, workers)


def _supervise(dep: config_mod.Deployment, sock: socket.socket, workers: int) -> int:
    """Fork the appender, then the workers; if any dies, stop all and exit non-zero.

    Stop order matters: workers first (they finish in-flight exchanges, whose audit records the
    appender still commits), then the appender.
    """
    from multiprocessing.connection import wait

    from gateway.audit.appender import new_address

    ctx = multiprocessing.get_context("fork")
    address = new_address()
    ready = ctx.Event()
    appender = ctx.Process(target=_run_appender, args=(dep, address, ready), name="appender")
    appender.start()
    if not ready.wait(60) or not appender.is_alive():
        _err("the audit appender did not start")
        appender.terminate()
        return EXIT_FAILED
    procs = [
        ctx.Process(target=_run_worker, args=(dep, sock, i, address), name=f"worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    sock.close()
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait([p.sentinel for p in [*procs, appender]])
    if not stopping:
        _err("a gateway process exited unexpectedly; stopping the others")
        stop(signal.SIGTERM, None)
    for p in procs:
        p.join(timeout=30)
    if appender.is_alive() and appender.pid:
        os.kill(appender.pid, signal.SIGTERM)
    appender.join(timeout=30)
    ok = stopping and all(p.exitcode == 0 for p in [*procs, appender])
    return EXIT_OK if ok else EXIT_FAILED


# ---------------------------------------------------------------- send
def _participant_files(dep: config_mod.Deployment, pid: str) -> tuple[bytes, bytes]:
    d = dep.base_dir / "participants" / pid
    try:
        return (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes()
    except OSError as e:
        raise ConfigError(
            str(dep.path), "--as", f"no key/certificate for {pid} in {d}: {e.strerror}"
        ) from None


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.crypto import jws
    from gateway.crypto.keys import load_certificates, load_private_key
    from gateway.models import rfc3339
    from gateway.strictjson import JsonError, loads

    dep = _load(args)
    g = dep.config.gateway
    sender = args.as_ or _default_sender(dep)
    try:
        payload = loads(Path(args.file).read_bytes())
    except OSError as e:
        _err(f"cannot read {args.file}: {e.strerror}")
        return EXIT_USAGE
    except JsonError as e:
        _err(f"{args.file} is not valid JSON: {e}")
        return EXIT_USAGE
    key_pem, cert_pem = _participant_files(dep, sender)
    key = load_private_key(key_pem)
    chain = load_certificates(cert_pem)
    request = {
        "id": str(uuid.uuid4()),
        "sender": sender,
        "service": args.service,
        "created": rfc3339(datetime.now(UTC)).replace(".000Z", "Z"),
        "payload": payload,
    }
    body = jws.serialize(jws.sign(request, key, chain, typ="request+jws"))
    base = args.url or f"{'https' if g.tls else 'http'}://{g.host}:{g.port}"
    url = f"{base.rstrip('/')}/v1/exchange/{args.service}"
    headers = {"Content-Type": "application/jose+json", "Accept": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    ctx = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(dep.resolve(g.trust_anchors[0])))
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=args.timeout, context=ctx) as resp:  # noqa: S310
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        _err(f"cannot reach {url}: {getattr(e, 'reason', e)}")
        return EXIT_FAILED
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        _err(f"HTTP {status} with a non-JSON body")
        return EXIT_FAILED
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    if not 200 <= status < 300:
        _err(f"HTTP {status}: {doc.get('title', '')}: {doc.get('detail', '')}")
        return EXIT_FAILED
    out = Path(args.receipt or f"receipt-{doc.get('exchange_id', 'unknown')}.json")
    out.write_bytes(orjson.dumps(doc["receipt"], option=orjson.OPT_INDENT_2) + b"\n")
    print(f"receipt saved to {out}", file=sys.stderr)
    return EXIT_OK


def _default_sender(dep: config_mod.Deployment) -> str:
    for p in dep.config.participants:
        if p.tier == "unit":
            return p.id
    return dep.config.participants[0].id


# ---------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.verify import describe_verification

    dep = _load(args)
    try:
        raw = Path(args.file).read_bytes()
    except OSError as e:
        _err(f"cannot read {args.file}: {e.strerror}")
        return EXIT_USAGE
    payloads: dict[str, bytes] = {}
    for name in ("request", "response"):
        path = getattr(args, name)
        if path:
            try:
                payloads[name] = Path(path).read_bytes()
            except OSError as e:
                _err(f"cannot read {path}: {e.strerror}")
                return EXIT_USAGE
    try:
        verifiers = _checkpoint_verifiers(dep, args.vkey or [])
    except ValueError as e:
        _err(f"checkpoint verifier key: {e}")
        return EXIT_USAGE
    ok, lines = describe_verification(
        raw,
        dep.trust_anchor_pems,
        now=datetime.now(UTC),
        payloads=payloads,
        note_verifiers=verifiers,
        gateway_id=dep.config.gateway.id,
        gateway_kids=_gateway_kids(dep),
        origin=dep.config.audit.origin,
    )
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


def _checkpoint_verifiers(dep: config_mod.Deployment | None, vkeys: list[str]) -> tuple[Any, ...]:
    """Note verifiers: ``--vkey`` values plus the one derived from the config's checkpoint key."""
    from gateway.audit.checkpoint import NoteError
    from gateway.crypto.keys import CryptoError
    from gateway.verify import checkpoint_verifiers

    origin = dep.config.audit.origin if dep else None
    pem = dep.checkpoint_key_pem if dep else None
    try:
        return checkpoint_verifiers(origin, pem, vkeys)
    except NoteError as e:
        raise ValueError(e.reason) from None
    except CryptoError as e:
        raise ValueError(f"audit.checkpoint_key: {e.reason}") from None


def _gateway_kids(dep: config_mod.Deployment) -> dict[str, str]:
    """Thumbprint -> "current"/"retired" for the gateway's configured certificates."""
    from gateway.crypto.keys import CryptoError, jwk_thumbprint, load_certificates

    kids: dict[str, str] = {}
    for status, pems in (
        ("current", [dep.certificate_pem]),
        ("retired", dep.retired_certificate_pems),
    ):
        for pem in pems:
            try:
                kids.setdefault(jwk_thumbprint(load_certificates(pem)[0].public_key()), status)
            except (CryptoError, IndexError):
                continue
    return kids


# ---------------------------------------------------------------- audit verify
def _optional_config(args: argparse.Namespace) -> config_mod.Deployment | None:
    """The deployment when ``--config`` is given or ./gateway.toml (or $GATEWAY_CONFIG) exists."""
    path = config_mod.find_config(args.config)
    if args.config is None and not path.is_file():
        return None
    return config_mod.load(path)


class _AuditSource:
    """What ``audit verify`` reads, as lazy iterables, and how long the reading took.

    A database is read in one read transaction (``mode=ro``): head, records, nodes and
    checkpoints are one snapshot even while the gateway keeps appending.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.reading = 0.0  # Seconds spent fetching and decoding rows.
        self.rows: Iterator[Any] = iter(())
        self.checkpoints: list[Any] | Iterator[Any] = []
        self.trusted: list[Any] = []
        self.head: Any = None
        self.nodes: Callable[[int], Iterator[tuple[int, bytes]]] | None = None
        self.has_notes = False
        self._conn: sqlite3.Connection | None = None

    def timed(self, cursor: sqlite3.Cursor, batch: int = 8192) -> Iterator[Any]:
        while True:
            t = time.perf_counter()
            rows = cursor.fetchmany(batch)
            self.reading += time.perf_counter() - t
            if not rows:
                return
            yield from rows

    def close(self) -> None:
        close = getattr(self.rows, "close", None)
        if close is not None:  # A generator stopped early: run its cleanup (closes files).
            close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _open_audit_source(args: argparse.Namespace, dep: config_mod.Deployment | None) -> _AuditSource:
    """Open the database or the export, with the trusted notes. ValueError/OSError: usage.

    The trusted notes (and the published file) are read *before* the database snapshot is
    taken: a checkpoint published while this runs is then never ahead of the snapshot, so a
    live gateway cannot trigger a false rollback alarm.
    """
    from gateway.audit.verify import NoteToCheck

    trusted = [
        NoteToCheck(_published_note(Path(f).read_bytes()), f"trusted checkpoint {f}", True)
        for f in args.trusted or []
    ]
    if (
        not args.export  # An export is a snapshot: the live published file may be ahead of it.
        and dep is not None
        and not args.no_published
        and dep.published_path().is_file()
    ):
        published = dep.published_path()
        note = _published_note(published.read_bytes())
        trusted.append(NoteToCheck(note, f"published {published}", True))
    if args.export:
        source = _export_source(Path(args.export), args.checkpoints)
    else:
        if args.checkpoints:
            raise ValueError("--checkpoints goes with --export (a database holds its own)")
        if args.db:
            db = Path(args.db)
        elif dep is None:
            raise ValueError("no config found: give --config, --db or --export")
        elif dep.config.audit.store != "sqlite":
            raise ValueError(
                "offline verification reads SQLite files; for PostgreSQL, export the log "
                "(GET /v1/audit/export) and use --export with --checkpoints"
            )
        else:
            db = dep.audit_path()
        source = _db_source(db)
    source.trusted = trusted
    source.has_notes = source.has_notes or bool(trusted)
    return source


def _published_note(data: bytes) -> bytes:
    """A saved checkpoint: the note text, or the JSON form with a ``note`` member."""
    if data.lstrip().startswith(b"{"):
        doc = orjson.loads(data)
        if isinstance(doc, dict) and isinstance(doc.get("note"), str):
            return str(doc["note"]).encode("utf-8")
    return data


def _db_source(db: Path) -> _AuditSource:
    from urllib.parse import quote

    from gateway.audit.verify import Head, NoteToCheck

    if not db.is_file():
        raise ValueError(f"no audit database at {db}")
    source = _AuditSource(str(db))
    conn = sqlite3.connect(
        f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, isolation_level=None
    )
    source._conn = conn
    try:
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"audit_records", "audit_head", "audit_nodes"} <= tables:
            raise ValueError(f"{db} is not an audit database (no audit_records/audit_head)")
        size, root, frontier = conn.execute(
            "SELECT size, root, frontier FROM audit_head WHERE id = 0"
        ).fetchone()
    except (sqlite3.DatabaseError, TypeError) as e:
        source.close()
        raise ValueError(f"cannot read {db}: {e}") from None
    source.head = Head(int(size), bytes(root), bytes(frontier))
    source.rows = source.timed(
        conn.execute(
            "SELECT idx, ifnull(CAST(leaf_hash AS BLOB), X''), ifnull(CAST(record AS BLOB), X'')"
            " FROM audit_records ORDER BY idx"
        )
    )
    source.nodes = lambda level: source.timed(
        conn.execute(
            "SELECT idx, CAST(hash AS BLOB) FROM audit_nodes WHERE level = ? ORDER BY idx", (level,)
        )
    )
    if "audit_checkpoints" in tables:
        source.has_notes = (
            conn.execute("SELECT 1 FROM audit_checkpoints LIMIT 1").fetchone() is not None
        )
        source.checkpoints = (
            NoteToCheck(bytes(note), f"stored checkpoint {n}", size=n, root=bytes(r))
            for n, r, note in source.timed(
                conn.execute("SELECT size, root, note FROM audit_checkpoints ORDER BY size")
            )
        )
    return source


def _export_source(export: Path, checkpoints: str | None) -> _AuditSource:
    from gateway.audit.verify import NoteToCheck

    source = _AuditSource(str(export))
    if not export.is_file():
        raise ValueError(f"no export file at {export}")

    def rows() -> Iterator[Any]:
        from gateway.audit.verify import LogInvalid
        from gateway.crypto.canonical import canonicalize

        with export.open("rb") as f:
            for n, line in enumerate(f, start=1):
                t = time.perf_counter()
                try:
                    doc = orjson.loads(line)
                    record = doc["record"]
                    data = canonicalize(record) if not isinstance(record, str) else record.encode()
                    row = (doc["index"], bytes.fromhex(doc["leaf_hash"]), data)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise LogInvalid(
                        "unreadable", f"{export} line {n} is not an export line: {e}", index=n - 1
                    ) from None
                source.reading += time.perf_counter() - t
                yield row

    source.rows = rows()
    notes = (
        [NoteToCheck(note, f"checkpoint {name}") for name, note in _read_notes(checkpoints)]
        if checkpoints
        else []
    )
    notes.sort(key=lambda n: _note_size(n.note))
    source.checkpoints = notes
    source.has_notes = bool(notes)
    return source


def _read_notes(where: str) -> list[tuple[str, bytes]]:
    """Checkpoint notes from a directory (one per file) or a file (one or several, or JSONL)."""
    path = Path(where)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out: list[tuple[str, bytes]] = []
    for file in files:
        data = file.read_bytes()
        if data.lstrip().startswith(b"{"):
            for i, line in enumerate(data.splitlines(), start=1):
                if line.strip():
                    out.append((f"{file}:{i}", _published_note(line)))
            continue
        notes = _split_notes(data.decode("utf-8", errors="replace"))
        for i, note in enumerate(notes, start=1):
            out.append((f"{file}" + (f" #{i}" if len(notes) > 1 else ""), note.encode()))
    return out


def _split_notes(text: str) -> list[str]:
    """Concatenated signed notes: a note ends at the first line after its signature lines."""
    notes: list[str] = []
    current: list[str] = []
    in_signatures = False
    for line in text.splitlines(keepends=True):
        if in_signatures and not line.startswith("\u2014 "):
            notes.append("".join(current))
            current, in_signatures = [], False
            if not line.strip():
                continue
        if not in_signatures and line == "\n" and current:
            in_signatures = True
        current.append(line)
    if current:
        notes.append("".join(current))
    return notes


def _note_size(note: bytes) -> int:
    from gateway.audit.checkpoint import NoteError, parse_checkpoint, parse_note

    try:
        return parse_checkpoint(parse_note(note)[0]).size
    except NoteError:
        return -1  # Checked first, and refused with the reason.


def _audit_summary(report: Any, source: _AuditSource, elapsed: float) -> list[str]:
    n = report.size
    rate = n / elapsed if elapsed > 0 else float("inf")
    lines = [
        f"OK    {source.name}: {n} records, indexes 0..{n - 1} with no gap, duplicate or "
        "reordering; every record hashes to its leaf hash",
        f"OK    tree size {n}, root {report.root.hex()}"
        + (" (equals the stored head)" if report.head_checked else ""),
    ]
    if report.nodes_checked:
        lines.append(
            f"OK    {report.nodes_checked} stored interior nodes match the recomputed tree"
        )
    signers = ", ".join(report.signers) or "-"
    if report.checkpoints_checked:
        lines.append(
            f"OK    {report.checkpoints_checked} checkpoints verify (key {signers}) and equal the "
            f"log's root at their sizes; latest at size {report.latest_checkpoint}"
        )
    else:
        lines.append("      no stored checkpoint to check")
    for label, size in report.trusted:
        lines.append(f"OK    {label} (size {size}): the log still extends it")
    if report.latest_checkpoint is not None and report.latest_checkpoint < n:
        lines.append(
            f"      records {report.latest_checkpoint}..{n - 1} are not covered by a checkpoint yet"
        )
    lines.append(
        f"      {n} records in {elapsed:.2f} s ({rate:,.0f} records/s): reading "
        f"{source.reading:.2f} s, hashing and checks {max(elapsed - source.reading, 0):.2f} s"
    )
    return lines


def cmd_audit_tail(args: argparse.Namespace) -> int:
    """Print audit records as they are appended, one JSON line each (Server-Sent Events)."""
    dep = _load(args)
    g = dep.config.gateway
    base = args.url or f"{'https' if g.tls else 'http'}://{g.host}:{g.port}"
    url = f"{base.rstrip('/')}/v1/audit/stream"
    if args.from_index is not None:
        url += f"?from={args.from_index}"
    headers = {"Accept": "text/event-stream"}
    if args.token_file:
        try:
            headers["Authorization"] = "Bearer " + Path(args.token_file).read_text().strip()
        except OSError as e:
            _err(f"cannot read {args.token_file}: {e.strerror}")
            return EXIT_USAGE
    ctx = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(dep.resolve(g.trust_anchors[0])))
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - the operator's own URL
    shown = 0
    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as resp:  # noqa: S310
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if not line.startswith("data:"):
                    continue
                print(line[5:].strip(), flush=True)
                shown += 1
                if args.max is not None and shown >= args.max:
                    return EXIT_OK
    except urllib.error.HTTPError as e:
        _err(f"HTTP {e.code} from {url}: {e.read()[:300].decode('utf-8', 'replace')}")
        return EXIT_FAILED
    except (urllib.error.URLError, OSError) as e:
        _err(f"cannot follow {url}: {getattr(e, 'reason', e)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit.verify import LogInvalid, verify_log

    dep = _optional_config(args)
    try:
        verifiers = _checkpoint_verifiers(dep, args.vkey or [])
        source = _open_audit_source(args, dep)
    except (ValueError, OSError) as e:
        _err(str(e))
        return EXIT_USAGE
    if not verifiers and source.has_notes:
        _err(
            "there are checkpoints to check but no verifier key: give --vkey, or a config "
            "with audit.origin and audit.checkpoint_key"
        )
        source.close()
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        report = verify_log(
            source.rows,
            verifiers=verifiers,
            checkpoints=source.checkpoints,
            trusted=source.trusted,
            head=source.head,
            nodes=source.nodes,
            origin=dep.config.audit.origin if dep else None,
        )
    except LogInvalid as e:
        print(f"FAIL  [{e.cause}] {e.message}")
        print(f"      source {source.name}; {time.perf_counter() - started:.2f} s")
        return EXIT_FAILED
    except sqlite3.DatabaseError as e:
        print(f"FAIL  [unreadable] the database cannot be read to the end: {e}")
        return EXIT_FAILED
    finally:
        source.close()
    for line in _audit_summary(report, source, time.perf_counter() - started):
        print(line)
    return EXIT_OK


# ---------------------------------------------------------------- keys rotate
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from gateway.keyrotation import RotationError, rotate

    path = config_mod.find_config(args.config)
    try:
        r = rotate(
            path,
            now=datetime.now(UTC),
            key=Path(args.key) if args.key else None,
            certificate=Path(args.certificate) if args.certificate else None,
        )
    except RotationError as e:
        _err(f"key rotation refused, nothing changed: {e}")
        return EXIT_FAILED
    except FileExistsError as e:
        _err(f"{e.filename} already exists; nothing changed (retry in a second)")
        return EXIT_FAILED
    if r.mode == "csr":
        print(f"New signing key: {r.key_path} (kid {r.new_kid}); certificate request: {r.csr_path}")
        print("No development CA key (pki/ca.key) next to the config, so the certificate must")
        print("come from your CA. Send it this request (CN and SAN name the gateway; key usage")
        print("digitalSignature); when the certificate (PEM, leaf first) comes back, install it:")
        print(f"  gateway keys rotate --key {r.key_path} --certificate NEW-CERT.pem")
        print("gateway.toml is unchanged: the gateway keeps signing with its current key.\n")
        print((r.csr_pem or b"").decode("ascii"), end="")
        return EXIT_OK
    print(f"New signing key {r.key_path} (kid {r.new_kid}), certificate {r.certificate_path}.")
    print(
        f"{path}: key and certificate now point at them; {r.retired_certificate} moved to "
        f"retired_certificates (old config kept as {r.backup_path})."
    )
    print(
        f"Restart the gateway: new receipts are signed with kid {r.new_kid}; everything signed "
        f"with kid {r.old_kid} still verifies (the JWKS lists it as a retired key)."
    )
    print(
        f"The old private key {r.old_key} is no longer used: destroy it once the restart is done."
    )
    return EXIT_OK


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Data-sharing integration gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="write a development deployment into DIR")
    s.add_argument("dir")
    s.add_argument("--port", type=int, default=8080)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("send", help="sign FILE as a unit system and send it to SERVICE")
    s.add_argument("service")
    s.add_argument("file")
    s.add_argument("--config")
    s.add_argument("--as", dest="as_", metavar="PARTICIPANT")
    s.add_argument("--url")
    s.add_argument("--receipt")
    s.add_argument("--idempotency-key")
    s.add_argument("--timeout", type=float, default=30.0)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser(
        "verify",
        help="check any artifact offline: receipt, envelope, signed request, checkpoint, "
        "inclusion proof bundle",
    )
    s.add_argument("file")
    s.add_argument("--request", help="the request payload (JSON) a receipt should bind")
    s.add_argument("--response", help="the response payload (JSON) a receipt should bind")
    s.add_argument("--config")
    s.add_argument("--vkey", action="append", help="checkpoint verifier key (note vkey)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("audit", help="the audit log")
    audit_sub = s.add_subparsers(dest="audit_command", required=True)
    a = audit_sub.add_parser(
        "verify", help="check the whole audit log offline: records, tree, head, checkpoints"
    )
    a.add_argument("--config")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--db", help="the SQLite audit database (default: the config's audit.path)")
    src.add_argument("--export", help="a JSON Lines export (GET /v1/audit/export) of the log")
    a.add_argument("--checkpoints", help="with --export: a checkpoint note file or directory")
    a.add_argument("--trusted", action="append", help="a checkpoint note saved earlier")
    a.add_argument("--vkey", action="append", help="checkpoint verifier key (note vkey)")
    a.add_argument(
        "--no-published",
        action="store_true",
        help="with a database: ignore the published file (audit.published)",
    )
    a.set_defaults(func=cmd_audit_verify)
    t = audit_sub.add_parser("tail", help="follow the audit log live (GET /v1/audit/stream)")
    t.add_argument("--config")
    t.add_argument("--url", help="the gateway's base URL (default: the configured address)")
    t.add_argument("--token-file", help="a file holding an operator/auditor token")
    t.add_argument("--from", dest="from_index", type=int, help="start at this index")
    t.add_argument("--max", type=int, help="stop after this many records")
    t.set_defaults(func=cmd_audit_tail)

    s = sub.add_parser("keys", help="the gateway's signing keys")
    keys_sub = s.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("rotate", help="new signing key and certificate; the old one retires")
    k.add_argument("--config")
    k.add_argument("--key", help="install: the key made by an earlier rotate (production CA)")
    k.add_argument("--certificate", help="install: the certificate your CA issued for --key")
    k.set_defaults(func=cmd_keys_rotate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        _err(f"configuration error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
