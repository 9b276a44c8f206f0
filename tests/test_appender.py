"""The single appender process: every worker's records in one transaction, answers after COMMIT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.audit import merkle
from gateway.audit.appender import RemoteAppender, new_address, serve
from gateway.audit.log import AuditUnavailable, ClaimRefused
from gateway.audit.sqlite import SqliteAuditStore
from gateway.audit.store import Claim


@pytest.fixture
def appender(tmp_path: Path) -> Iterator[str]:
    address = new_address()
    ready, stop = threading.Event(), threading.Event()
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    t = threading.Thread(
        target=serve, args=(store, address), kwargs={"ready": ready.set, "stop_event": stop}
    )
    t.start()
    assert ready.wait(10)
    yield address
    stop.set()
    t.join(10)


async def test_concurrent_appends_from_two_workers_are_gap_free_and_match_the_tree(
    tmp_path: Path, appender: str
) -> None:
    address = appender
    a = await RemoteAppender.connect(address)
    b = await RemoteAppender.connect(address)
    records = [b'{"n":%d}' % i for i in range(400)]
    results = await asyncio.gather(*((a if i % 2 else b).append(r) for i, r in enumerate(records)))
    assert sorted(r.index for r in results) == list(range(400))
    by_index = {r.index: r.leaf_hash for r in results}
    for r, res in zip(records, results, strict=True):
        assert res.leaf_hash == merkle.leaf_hash(r)
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    size, root = store.tree_head()
    assert size == 400 and root == merkle.root([by_index[i] for i in range(400)])
    store.close()
    await a.aclose()
    await b.aclose()


async def test_a_stopping_appender_serves_connected_workers_until_they_hang_up(
    tmp_path: Path,
) -> None:
    """With ``drain_seconds``, stopping closes the door to new workers but the connected ones
    still get their records committed, and the appender ends once the last one hangs up (the
    kernel stops every child at once when the supervisor is killed)."""
    address = new_address()
    ready, stop = threading.Event(), threading.Event()
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    t = threading.Thread(
        target=serve,
        args=(store, address),
        kwargs={"ready": ready.set, "stop_event": stop, "drain_seconds": 30.0},
    )
    t.start()
    try:
        assert ready.wait(10)
        w = await RemoteAppender.connect(address)
        assert (await w.append(b'{"n":0}')).index == 0
        stop.set()
        for _ in range(100):  # until the listener is closed: a new worker is refused
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(address)
                except OSError:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("a stopping appender still takes new workers")
        assert (await w.append(b'{"n":1}')).index == 1  # the connected worker is still served
        assert t.is_alive()
        await w.aclose()
        await asyncio.to_thread(t.join, 10)
        assert not t.is_alive(), "the appender did not end when its last worker hung up"
    finally:
        stop.set()
        t.join(40)


async def test_a_frame_larger_than_one_read_arrives_whole(appender: str) -> None:
    """The appender reads 64 KiB at a time: a bigger frame is assembled over several reads."""
    w = await RemoteAppender.connect(appender)
    big = b'{"pad":"' + b"x" * 300_000 + b'"}'
    results = await asyncio.gather(w.append(b'{"n":1}'), w.append(big), w.append(b'{"n":2}'))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].leaf_hash == merkle.leaf_hash(big)
    await w.aclose()


async def test_a_taken_claim_is_refused_through_the_appender(appender: str) -> None:
    address = appender
    w = await RemoteAppender.connect(address)
    claim = Claim("hcm.quan-1\nid-1", expires_at=1e12, now=1.0)
    first = await w.append(b'{"a":1}', claim=claim)
    with pytest.raises(ClaimRefused):
        await w.append(b'{"a":2}', claim=claim)
    nxt = await w.append(b'{"a":3}')
    assert nxt.index == first.index + 1  # the refused record took no index
    await w.aclose()


async def _fake_appender() -> tuple[RemoteAppender, socket.socket, socket.socket]:
    """A worker's RemoteAppender connected to a bare socket the test plays the appender on:
    (worker end, the accepted connection, the listener)."""
    address = new_address()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(1)
    w = await RemoteAppender.connect(address)
    conn, _ = listener.accept()
    return w, conn, listener


async def test_waiters_get_audit_unavailable_when_the_appender_goes_away(tmp_path: Path) -> None:
    w, conn, listener = await _fake_appender()
    fut = w.append_nowait(b'{"a":1}')
    await asyncio.sleep(0.05)
    conn.close()
    listener.close()
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(fut, 5)
    with pytest.raises(AuditUnavailable):
        w.append_nowait(b'{"a":2}')
    await w.aclose()


async def test_records_wait_while_a_frame_is_unanswered_then_travel_as_one_frame() -> None:
    """Nagle's rule on commits: an idle worker sends at once; while its frame is unanswered
    (the appender is committing it), later records wait and then go together in one write."""
    w, conn, listener = await _fake_appender()
    conn.settimeout(5)

    def read_frame() -> list[list[object]]:
        head = conn.recv(4, socket.MSG_WAITALL)
        (n,) = struct.unpack(">I", head)
        return orjson.loads(conn.recv(n, socket.MSG_WAITALL))  # type: ignore[no-any-return]

    def nothing_arrives() -> bool:
        conn.settimeout(0.2)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except TimeoutError:
            return True
        finally:
            conn.settimeout(5)

    def answer(frame: list[list[object]], first_index: int) -> None:
        rows = [[item[0], first_index + i, "00" * 32, None] for i, item in enumerate(frame)]
        body = orjson.dumps(rows)
        conn.sendall(struct.pack(">I", len(body)) + body)

    first = w.append_nowait(b'{"n":0}')
    frame = await asyncio.to_thread(read_frame)
    assert [item[1] for item in frame] == ['{"n":0}']  # idle: sent without waiting
    later = [w.append_nowait(b'{"n":%d}' % i) for i in (1, 2, 3)]
    assert await asyncio.to_thread(nothing_arrives)  # held while frame 1 is unanswered
    answer(frame, 0)
    assert (await asyncio.wait_for(first, 5)).index == 0
    frame = await asyncio.to_thread(read_frame)
    assert [item[1] for item in frame] == ['{"n":1}', '{"n":2}', '{"n":3}']  # one frame
    answer(frame, 1)
    assert [r.index for r in await asyncio.wait_for(asyncio.gather(*later), 5)] == [1, 2, 3]
    await w.aclose()
    conn.close()
    listener.close()


# --- the periodic checkpoint publisher runs in the appender process ----------------------------
def _published_sizes(db: Path) -> list[int]:
    store = SqliteAuditStore(str(db))
    try:
        return [cp.size for cp in store.checkpoints()]
    finally:
        store.close()


async def test_the_appender_publishes_checkpoints_of_what_it_wrote_and_stops_with_it(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.audit.checkpoint import NoteSigner, NoteVerifier, verify_note
    from gateway.audit.publisher import PublisherThread, read_published

    db, published = tmp_path / "audit.db", tmp_path / "audit.published"
    signer = NoteSigner("gw.example/audit", ed25519.Ed25519PrivateKey.generate())
    store = SqliteAuditStore(str(db))
    publisher = PublisherThread(
        store, signer, signer.name, interval=0.02, published_path=published, clock=lambda: 7.0
    )
    address = new_address()
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(
        target=serve,
        args=(store, address),
        kwargs={"ready": ready.set, "stop_event": stop, "publisher": publisher},
    )
    t.start()
    assert ready.wait(10)
    w = await RemoteAppender.connect(address)
    await asyncio.gather(*(w.append(b'{"n":%d}' % i) for i in range(5)))

    async def published_size() -> int:
        cp = await asyncio.to_thread(read_published, published)
        return -1 if cp is None else cp.size

    for _ in range(500):
        if await published_size() == 5:
            break
        await asyncio.sleep(0.01)
    assert await published_size() == 5
    # Nothing grew: ten more intervals publish nothing.
    count = len(_published_sizes(db))
    await asyncio.sleep(0.2)
    assert len(_published_sizes(db)) == count
    await w.aclose()
    stop.set()
    t.join(10)
    assert not t.is_alive()
    # The note in the file is the stored one, signed over the tree the appender wrote.
    check = SqliteAuditStore(str(db))
    latest = check.latest_checkpoint()
    size, root = check.tree_head()
    check.close()
    assert latest is not None and published.read_bytes() == latest.note
    assert latest.created_at == 7.0
    verified = verify_note(latest.note, [NoteVerifier.for_signer(signer)], origin=signer.name)
    assert (verified.checkpoint.size, verified.checkpoint.root) == (size, root) == (5, root)


def test_a_failed_publication_is_retried_and_does_not_stop_the_thread(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.audit.checkpoint import NoteSigner
    from gateway.audit.publisher import PublisherThread

    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    signer = NoteSigner("gw.example/audit", ed25519.Ed25519PrivateKey.generate())
    target = tmp_path / "not yet" / "audit.published"  # its directory is missing at first
    publisher = PublisherThread(store, signer, signer.name, interval=0.02, published_path=target)
    publisher.start()
    try:
        import time

        time.sleep(0.1)
        assert not target.exists()
        target.parent.mkdir()
        for _ in range(500):
            if target.exists():
                break
            time.sleep(0.01)
        assert target.exists()
    finally:
        publisher.stop()
        publisher.stop()  # idempotent
        store.close()


# --- who may talk to the appender --------------------------------------------------------------
def _frame(items: object) -> bytes:
    body = orjson.dumps(items)
    return struct.pack(">I", len(body)) + body


def _store_size(db: Path) -> int:
    store = SqliteAuditStore(str(db))
    try:
        return store.size()
    finally:
        store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another local user needs root")
def test_a_process_of_another_local_user_cannot_append_through_the_appender(
    tmp_path: Path,
) -> None:
    """The appender's name is listed in /proc/net/unix, readable by every local user, and an
    abstract socket has no file mode: only processes of the gateway's own user may append."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()  # before any thread starts: the child only connects and reports
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)  # nobody
            address = os.read(to_child_r, 4096).decode()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(address)
            with contextlib.suppress(OSError):
                s.sendall(_frame([[1, '{"event":"forged"}', None, 0.0, 0.0]]))
            try:
                answer = s.recv(4096)
            except OSError:
                answer = b""
            os.write(from_child_w, b"answered" if answer else b"refused")
            code = 0
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    address = new_address()
    ready, stop = threading.Event(), threading.Event()
    store = SqliteAuditStore(str(tmp_path / "audit.db"))
    t = threading.Thread(
        target=serve, args=(store, address), kwargs={"ready": ready.set, "stop_event": stop}
    )
    t.start()
    try:
        assert ready.wait(10)
        os.write(to_child_w, address.encode())
        with open(from_child_r, "rb") as f:
            said = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(to_child_w)
        stop.set()
        t.join(10)
    assert said == b"refused"
    assert _store_size(tmp_path / "audit.db") == 0


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 5) + b"[1,2]",  # items that are not [seq, record, key, exp, now]
        struct.pack(">I", 7) + b"not json",
        _frame([[1, 2, None, 0.0, 0.0]]),  # a record that is not text
        struct.pack(">I", 2**31),  # beyond any frame size
    ],
    ids=["not-items", "not-json", "record-not-text", "too-large"],
)
async def test_a_malformed_frame_drops_its_connection_and_the_appender_serves_on(
    tmp_path: Path, appender: str, garbage: bytes
) -> None:
    """A bad frame used to raise out of the appender's loop: the appender died, and with it
    every worker's audit log (the supervisor then stopped the whole gateway)."""
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(appender)
    bad.settimeout(5)
    bad.sendall(garbage)
    assert await asyncio.to_thread(bad.recv, 4096) == b""  # dropped, nothing answered
    bad.close()
    w = await RemoteAppender.connect(appender)
    result = await asyncio.wait_for(w.append(b'{"a":1}'), 5)
    assert result.index == 0
    await w.aclose()


def test_a_trickled_frame_from_a_half_closed_peer_is_answered(appender: str) -> None:
    """A frame sent a few bytes at a time, then the peer's write side shut: the appender
    waits for the whole frame (serving others meanwhile), commits it and answers before it
    sees the end of the stream."""
    body = orjson.dumps([[1, '{"n":1}', None, 0.0, 0.0]])
    frame = struct.pack(">I", len(body)) + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.connect(appender)
        peer.settimeout(10)
        for i in range(0, len(frame), 3):
            peer.sendall(frame[i : i + 3])
            time.sleep(0.01)
        peer.shutdown(socket.SHUT_WR)
        answer = b""
        for _ in range(100):  # until the appender closes its end
            chunk = peer.recv(4096)
            if not chunk:
                break
            answer += chunk
    (n,) = struct.unpack(">I", answer[:4])
    assert orjson.loads(answer[4 : 4 + n]) == [[1, 0, merkle.leaf_hash(b'{"n":1}').hex(), None]]
