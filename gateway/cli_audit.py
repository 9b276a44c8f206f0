"""``gateway audit verify`` and ``gateway audit tail``: the audit log from a terminal.

``audit verify`` re-checks a whole log offline with :func:`gateway.audit.verify.verify_log`; the
readers here turn what it is given (a SQLite database read in one snapshot, or a JSON Lines
export with checkpoint notes, plus trusted notes saved earlier) into the lazy iterables that
function takes, and time the reading. ``audit tail`` follows ``GET /v1/audit/stream``. Apart from
:mod:`gateway.cli` because these readers are most of the command-line code and only the audit
commands need them.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway import config as config_mod
from gateway.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    _checkpoint_verifiers,
    _err,
    _gateway_url,
    _load,
    _stdout_closed,
    _tls_context,
)


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

    from gateway.audit.verify import Head

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
            # CAST: SQLite keeps a TEXT value put in a BLOB column, and bytes(str) would crash.
            "SELECT size, CAST(root AS BLOB), CAST(frontier AS BLOB) FROM audit_head WHERE id = 0"
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
        _read_stored_checkpoints(source, conn)
    return source


def _read_stored_checkpoints(source: _AuditSource, conn: sqlite3.Connection) -> None:
    """The notes in ``audit_checkpoints`` (when the database has that table), read lazily."""
    from gateway.audit.verify import NoteToCheck

    source.has_notes = (
        conn.execute("SELECT 1 FROM audit_checkpoints LIMIT 1").fetchone() is not None
    )
    source.checkpoints = (
        NoteToCheck(bytes(note), f"stored checkpoint {n}", size=n, root=bytes(r))
        for n, r, note in source.timed(
            conn.execute(
                "SELECT size, CAST(root AS BLOB), CAST(note AS BLOB) FROM audit_checkpoints"
                " ORDER BY size"
            )
        )
    )


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
    url = _gateway_url(dep, args.url, "/v1/audit/stream")
    if args.from_index is not None:
        url += f"?from={args.from_index}"
    headers = {"Accept": "text/event-stream"}
    if args.token_file:
        try:
            token = Path(args.token_file).read_bytes().strip()
        except OSError as e:
            _err(f"cannot read {args.token_file}: {e.strerror}")
            return EXIT_USAGE
        if not token or not all(0x21 <= b < 0x7F for b in token):
            _err(f"{args.token_file} does not hold a token (one line of printable ASCII)")
            return EXIT_USAGE
        headers["Authorization"] = "Bearer " + token.decode("ascii")
    ctx = _tls_context(dep, url)
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - the operator's own URL
    shown = 0
    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as resp:  # noqa: S310
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if not line.startswith("data:"):
                    continue
                try:
                    print(line[5:].strip(), flush=True)
                except BrokenPipeError:  # not the gateway's connection: see below
                    return _stdout_closed()
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
