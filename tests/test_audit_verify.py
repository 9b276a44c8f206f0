"""`gateway audit verify`: a sound log passes; every way of tampering with it is named.

The log is built with the real SQLite store (and, in one test, by the running gateway), its
checkpoints signed with the deployment's checkpoint key as the gateway signs them. Each test
tampers with a copy of the database the way an insider with file access would, runs the command
in-process and checks the exit status and the first bad index or checkpoint it names.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.audit import merkle
from gateway.audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier, sign_checkpoint
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import StoredCheckpoint
from gateway.audit.verify import Head, LogInvalid, NoteToCheck, verify_log
from gateway.config import load
from gateway.crypto import devpki
from gateway.crypto.canonical import canonicalize
from gateway.crypto.keys import load_private_key
from gateway.devinit import init_deployment
from tests.support import example, make_deployment, running_gateway, signed_request

N = 100
CHECKPOINT_SIZES = (10, 37, 64, N)


def record(i: int) -> bytes:
    """An audit record shaped like the pipeline's (about 400 bytes of canonical JSON)."""
    return canonicalize(
        {
            "v": 1,
            "event": "exchange.accepted",
            "exchange_id": f"0190f0e2-7b7c-7000-8000-{i:012d}",
            "at": f"2026-11-28T09:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "service": "citizen-lookup.v1",
            "sender": "hcm.quan-1",
            "provider": "central.dan-cu",
            "auth": "signed",
            "purpose": "Xác minh thông tin công dân khi giải quyết thủ tục hành chính",
            "legal_basis": "Nghị định 47/2020/NĐ-CP, Điều 14",
            "request_sha256": f"{i:064x}",
            "envelope_sha256": f"{i * 7:064x}",
        }
    )


@dataclass
class Log:
    dir: Path
    config: Path
    db: Path
    signer: NoteSigner
    notes: dict[int, bytes]

    def copy_db(self, tmp: Path, name: str = "copy.db") -> Path:
        dst = tmp / name
        shutil.copyfile(self.db, dst)
        return dst


def _signer(config: Path) -> NoteSigner:
    dep = load(config)
    assert dep.checkpoint_key_pem is not None and dep.config.audit.origin is not None
    return NoteSigner(dep.config.audit.origin, load_private_key(dep.checkpoint_key_pem))


def sign_at(signer: NoteSigner, size: int, root: bytes) -> bytes:
    return sign_checkpoint(Checkpoint(signer.name, size, root), signer)


def build_log(d: Path, *, n: int = N, sizes: tuple[int, ...] = CHECKPOINT_SIZES) -> Log:
    init_deployment(d)
    config = d / "gateway.toml"
    signer = _signer(config)
    db = d / "audit.db"
    store = SqliteAuditStore(str(db))
    notes: dict[int, bytes] = {}
    try:
        done = 0
        for size in sizes:
            store.append_batch([record(i) for i in range(done, size)])
            done = size
            got, root = store.tree_head()
            assert got == size
            notes[size] = sign_at(signer, size, root)
            store.add_checkpoint(StoredCheckpoint(size, root, notes[size], time.time()))
        store.append_batch([record(i) for i in range(done, n)])
    finally:
        store.close()
    (d / "audit.published").write_bytes(notes[max(notes)])
    return Log(d, config, db, signer, notes)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    return build_log(tmp_path_factory.mktemp("audit-verify") / "dep")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["audit", "verify", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def tamper(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def rebuild_tree(db: Path) -> None:
    """What an insider without the checkpoint key can do: rehash leaves, nodes and head."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            f = merkle.Frontier()
            conn.execute("DELETE FROM audit_nodes")
            rows = conn.execute("SELECT idx, CAST(record AS BLOB) FROM audit_records ORDER BY idx")
            for idx, rec in rows.fetchall():
                h = merkle.leaf_hash(rec)
                conn.execute("UPDATE audit_records SET leaf_hash = ? WHERE idx = ?", (h, idx))
                for node in f.append(h):
                    conn.execute(
                        "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
                        (node.level, node.index, node.hash),
                    )
            conn.execute(
                "UPDATE audit_head SET size = ?, root = ?, frontier = ?",
                (f.size, f.root(), f.to_bytes()),
            )
    finally:
        conn.close()


# -- a sound log -------------------------------------------------------------------------


def test_a_sound_log_passes_with_a_summary(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "--config", str(log.config))
    assert code == 0, out
    assert f"{N} records" in out
    assert "4 checkpoints verify" in out and f"latest at size {N}" in out
    assert "audit.published (size 100): the log still extends it" in out
    assert "records/s" in out and "reading" in out


def test_trusted_checkpoint_from_earlier_is_still_extended(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "cp37.txt"
    saved.write_bytes(log.notes[37])
    code, out = run(capsys, "--config", str(log.config), "--trusted", str(saved))
    assert code == 0, out
    assert f"trusted checkpoint {saved} (size 37): the log still extends it" in out


def test_vkey_alone_verifies_a_database_without_a_config(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "--db", str(log.db), "--vkey", log.signer.vkey())
    assert code == 0, out
    code, out = run(capsys, "--db", str(log.db))
    assert code == 2 and "no verifier key" in out


# -- tampering, one way each -----------------------------------------------------------------


def test_a_changed_record_is_named_by_its_index(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(
        db,
        (
            "UPDATE audit_records SET record = replace(record, 'quan-1', 'quan-3') WHERE idx = 41",
            (),
        ),
    )
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[record-changed] index 41:" in out


def test_a_deleted_row_is_named(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(db, ("DELETE FROM audit_records WHERE idx = 41", ()))
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[sequence] index 41: record 41 is missing" in out


def test_swapped_records_are_named_by_the_first(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    conn = sqlite3.connect(db)
    a, b = (
        conn.execute("SELECT record FROM audit_records WHERE idx = ?", (i,)).fetchone()[0]
        for i in (20, 30)
    )
    conn.close()
    tamper(
        db,
        ("UPDATE audit_records SET record = ? WHERE idx = 20", (b,)),
        ("UPDATE audit_records SET record = ? WHERE idx = 30", (a,)),
    )
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1 and "[record-changed] index 20:" in out


def test_rows_moved_with_their_leaf_hashes_are_caught_by_the_stored_nodes(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(
        db,
        ("UPDATE audit_records SET idx = 1000000 WHERE idx = 21", ()),
        ("UPDATE audit_records SET idx = 21 WHERE idx = 30", ()),
        ("UPDATE audit_records SET idx = 30 WHERE idx = 1000000", ()),
    )
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[node-mismatch]" in out and "records 20..21" in out


def test_a_cut_off_tail_is_truncation(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(db, ("DELETE FROM audit_records WHERE idx >= 90", ()))
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[truncated] index 90:" in out


def test_a_cut_off_tail_with_a_rewritten_head_is_caught_by_the_checkpoints(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(db, ("DELETE FROM audit_records WHERE idx >= 90", ()))
    rebuild_tree(db)
    code, out = run(capsys, "--config", str(log.config), "--db", str(db), "--no-published")
    assert code == 1
    assert "[truncated] stored checkpoint 100 has size 100 but the log has only 90" in out
    # ... and with the stored checkpoints deleted too, the published file still knows.
    tamper(db, ("DELETE FROM audit_checkpoints WHERE size > 90", ()))
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[rollback]" in out and "audit.published has size 100" in out


def test_an_older_copy_of_the_database_is_a_rollback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dep"
    older = tmp_path / "older.db"
    log = build_log(d, n=64, sizes=(10, 37, 64))
    shutil.copyfile(log.db, older)
    # The log goes on: more records, a newer checkpoint, published.
    store = SqliteAuditStore(str(log.db))
    store.append_batch([record(i) for i in range(64, 80)])
    size, root = store.tree_head()
    note = sign_at(log.signer, size, root)
    store.add_checkpoint(StoredCheckpoint(size, root, note, time.time()))
    store.close()
    (d / "audit.published").write_bytes(note)
    # The older copy is restored over the database.
    shutil.copyfile(older, log.db)
    code, out = run(capsys, "--config", str(log.config))
    assert code == 1
    assert "[rollback]" in out and "has size 80 but the log has only 64 records" in out
    # Without the published file, a checkpoint saved earlier catches it just the same.
    saved = tmp_path / "saved.txt"
    saved.write_bytes(note)
    code, out = run(capsys, "--config", str(log.config), "--no-published", "--trusted", str(saved))
    assert code == 1 and f"[rollback] trusted checkpoint {saved} has size 80" in out
    # With neither, the older copy is a consistent log: nothing in it can tell.
    code, out = run(capsys, "--config", str(log.config), "--no-published")
    assert code == 0, out


def test_a_checkpoint_that_forks_is_named(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    forged_root = merkle.leaf_hash(b"another history")
    note = sign_at(log.signer, 80, forged_root)
    tamper(
        db,
        (
            "INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, 0)",
            (80, forged_root, note),
        ),
    )
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[fork] stored checkpoint 80 (size 80) is validly signed but its root" in out


def test_a_rehashed_record_change_is_caught_by_the_next_checkpoint(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    tamper(
        db,
        (
            "UPDATE audit_records SET record = replace(record, 'quan-1', 'quan-3') WHERE idx = 41",
            (),
        ),
    )
    rebuild_tree(db)
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1
    assert "[fork] stored checkpoint 64" in out and "records 37..63 are in question" in out


def test_a_checkpoint_signed_by_another_key_is_refused(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = log.copy_db(tmp_path)
    other = NoteSigner(log.signer.name, devpki.generate_key("ed25519"))
    tamper(
        db,
        (
            "UPDATE audit_checkpoints SET note = ? WHERE size = 37",
            (sign_at(other, 37, b"\0" * 32),),
        ),
    )
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1 and "[checkpoint-invalid] stored checkpoint 37" in out


def test_a_head_root_or_checkpoint_note_rewritten_as_text_is_named_not_a_crash(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite keeps a TEXT value in a BLOB column: the reader must still compare bytes."""
    db = log.copy_db(tmp_path, "root.db")
    tamper(db, ("UPDATE audit_head SET root = 'forged'", ()))
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1 and "[head-mismatch] the stored head root" in out
    db = log.copy_db(tmp_path, "note.db")
    tamper(db, ("UPDATE audit_checkpoints SET note = 'forged' WHERE size = 37", ()))
    code, out = run(capsys, "--config", str(log.config), "--db", str(db))
    assert code == 1 and "[checkpoint-invalid] stored checkpoint 37" in out


def test_a_missing_database_is_a_usage_error(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--config", str(log.config), "--db", str(tmp_path / "nope.db"))
    assert code == 2 and "no audit database" in out


# -- the export path ---------------------------------------------------------------------------


def export(log: Log, tmp: Path) -> tuple[Path, Path]:
    conn = sqlite3.connect(log.db)
    lines = [
        orjson.dumps({"index": i, "leaf_hash": h.hex(), "record": orjson.Fragment(r)})
        for i, h, r in conn.execute("SELECT idx, leaf_hash, record FROM audit_records ORDER BY idx")
    ]
    conn.close()
    out = tmp / "export.jsonl"
    out.write_bytes(b"\n".join(lines) + b"\n")
    cps = tmp / "checkpoints"
    cps.mkdir()
    for size, note in log.notes.items():
        (cps / f"{size}.txt").write_bytes(note)
    return out, cps


def test_an_export_with_its_checkpoints_verifies(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl, cps = export(log, tmp_path)
    code, out = run(
        capsys, "--config", str(log.config), "--export", str(jsonl), "--checkpoints", str(cps)
    )
    assert code == 0, out
    assert "4 checkpoints verify" in out
    # One file holding all the notes, concatenated, works too.
    bundle = tmp_path / "all.txt"
    bundle.write_bytes(b"".join(log.notes[s] for s in sorted(log.notes, reverse=True)))
    code, out = run(
        capsys, "--config", str(log.config), "--export", str(jsonl), "--checkpoints", str(bundle)
    )
    assert code == 0, out


def test_a_changed_or_reordered_export_is_named(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl, cps = export(log, tmp_path)
    lines = jsonl.read_bytes().splitlines()
    changed = orjson.loads(lines[57])
    changed["record"]["sender"] = "hcm.thu-duc"
    edited = [*lines[:57], orjson.dumps(changed), *lines[58:]]
    jsonl.write_bytes(b"\n".join(edited) + b"\n")
    code, out = run(
        capsys, "--config", str(log.config), "--export", str(jsonl), "--checkpoints", str(cps)
    )
    assert code == 1 and "[record-changed] index 57:" in out
    reordered = [*lines[:12], lines[13], lines[12], *lines[14:]]
    jsonl.write_bytes(b"\n".join(reordered) + b"\n")
    code, out = run(
        capsys, "--config", str(log.config), "--export", str(jsonl), "--checkpoints", str(cps)
    )
    assert code == 1 and "[sequence] index 12:" in out
    short = lines[:95]  # An export cut short: the checkpoint at 100 is beyond its end.
    jsonl.write_bytes(b"\n".join(short) + b"\n")
    code, out = run(
        capsys, "--config", str(log.config), "--export", str(jsonl), "--checkpoints", str(cps)
    )
    assert code == 1 and "[truncated]" in out and "only 95 records" in out


# -- the log the gateway itself writes -------------------------------------------------------


async def test_the_log_written_by_the_gateway_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import aiohttp

    config = make_deployment(tmp_path / "dep")
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        for _ in range(5):
            body = signed_request(
                gw.dir, "hcm.quan-1", "citizen-lookup.v1", example("citizen-lookup.v1")
            )
            async with http.post(
                f"{gw.url}/v1/exchange/citizen-lookup.v1",
                data=body,
                headers={"Content-Type": "application/jose+json"},
            ) as r:
                assert r.status == 200
        async with http.post(f"{gw.url}/v1/exchange/citizen-lookup.v1", json={}) as r:
            assert r.status == 401  # Refused, and audited too.
    code, out = run(capsys, "--config", str(config))
    assert code == 0, out
    assert "11 records" in out


# -- the pure core -----------------------------------------------------------------------------


def _rows(n: int) -> list[tuple[int, bytes | None, bytes]]:
    return [(i, merkle.leaf_hash(record(i)), record(i)) for i in range(n)]


_KEY = NoteSigner("example.org/log", devpki.generate_key("ed25519"))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_any_single_changed_record_is_named_exactly(n: int, data: st.DataObject) -> None:
    rows = _rows(n)
    bad = data.draw(st.integers(0, n - 1))
    i, h, rec = rows[bad]
    rows[bad] = (i, h, rec + b" ")
    with pytest.raises(LogInvalid) as e:
        verify_log(rows)
    assert e.value.cause == "record-changed" and e.value.index == bad


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_checkpoints_at_every_size_match_the_recomputed_tree(n: int, data: st.DataObject) -> None:
    rows = _rows(n)
    hashes = [h for _, h, _ in rows]
    sizes = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=5))))
    notes = [NoteToCheck(sign_at(_KEY, s, merkle.root(hashes[:s])), f"cp {s}") for s in sizes]
    f = merkle.Frontier()
    for h in hashes:
        f.append(h)
    report = verify_log(
        rows,
        verifiers=[NoteVerifier.for_signer(_KEY)],
        checkpoints=notes,
        head=Head(n, f.root(), f.to_bytes()),
    )
    assert report.size == n and report.root == merkle.root(hashes)
    assert report.checkpoints_checked == len(sizes)


def test_without_verifier_a_checkpoint_is_refused_not_skipped() -> None:
    rows = _rows(4)
    note = NoteToCheck(sign_at(_KEY, 4, merkle.root([h for _, h, _ in rows])), "cp 4")
    with pytest.raises(LogInvalid) as e:
        verify_log(rows, checkpoints=[note])
    assert e.value.cause == "checkpoint-invalid"


def test_a_duplicated_index_is_named() -> None:
    rows = _rows(5)
    rows.insert(3, rows[2])
    with pytest.raises(LogInvalid) as e:
        verify_log(iter(rows))
    assert e.value.cause == "sequence" and e.value.index == 3 and "appears twice" in str(e.value)
