"""The idempotency state store: keys survive restarts, and expired keys do not pile up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway import state
from gateway.state import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM idempotency").fetchone()[0])


async def test_a_key_is_kept_until_it_expires_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = StateStore(tmp_path / "state.db", clock=clock)
    assert await store.idempotency_begin("s", "svc", "k", "h1", ttl=60) is None
    await store.idempotency_finish("s", "svc", "k", 200, b'{"ok":true}')
    store.close()
    store = StateStore(tmp_path / "state.db", clock=clock)
    entry = await store.idempotency_begin("s", "svc", "k", "h1", ttl=60)
    assert entry is not None and (entry.state, entry.status, entry.body) == (
        "done",
        200,
        b'{"ok":true}',
    )
    clock.now += 61  # expired: the key may be used again
    assert await store.idempotency_begin("s", "svc", "k", "h2", ttl=60) is None
    store.close()


async def test_expired_keys_are_purged_by_later_requests_in_bounded_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "PURGE_MAX_ROWS", 10)
    clock = Clock()
    path = tmp_path / "state.db"
    store = StateStore(path, clock=clock)
    for i in range(25):
        assert await store.idempotency_begin("s", "svc", f"old-{i}", "h", ttl=10) is None
    assert _rows(path) == 25
    clock.now += 5  # not expired yet, and the purge interval has not passed
    assert await store.idempotency_begin("s", "svc", "young", "h", ttl=1000) is None
    assert _rows(path) == 26
    clock.now += state.PURGE_EVERY_SECONDS  # the 25 old keys are expired now
    await store.idempotency_begin("s", "svc", "a", "h", ttl=1000)  # purges 10 (the cap) ...
    assert _rows(path) == 27 - 10
    await store.idempotency_begin("s", "svc", "b", "h", ttl=1000)  # ... so again at once
    await store.idempotency_begin("s", "svc", "c", "h", ttl=1000)
    assert _rows(path) == 29 - 25  # young, a, b, c: every expired key is gone
    assert await store.purge_expired() == 0
    # A key still in use is never purged, and its stored answer is still served.
    entry = await store.idempotency_begin("s", "svc", "young", "other", ttl=1000)
    assert entry is not None and entry.request_sha256 == "h"
    store.close()


def test_ping_reads_the_table_so_a_damaged_file_fails_readiness(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.ping()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE idempotency")  # what a restored, wrong file looks like
    with pytest.raises(sqlite3.Error):
        store.ping()
    store.close()


@pytest.mark.parametrize("how", ["directory-removed", "file-replaced"])
async def test_a_state_file_removed_or_replaced_while_open_is_unavailable(
    tmp_path: Path, how: str
) -> None:
    """SQLite would go on writing replay ids and keys into the unlinked file, gone at the next
    start (a retry then delivered twice): every write and readiness fail instead."""
    import os
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.db"
    store = StateStore(path)
    try:
        assert await store.idempotency_begin("a", "s.v1", "k1", "h", 60) is None
        if how == "directory-removed":
            shutil.rmtree(data)
        else:
            os.rename(path, data / "state.db.old")
            StateStore(path).close()  # a new, empty store where the old one was
        with pytest.raises(state.StateUnavailable, match="removed or replaced"):
            await store.idempotency_begin("a", "s.v1", "k2", "h", 60)
        with pytest.raises(state.StateUnavailable, match="removed or replaced"):
            store.ping()
    finally:
        store.close()
