"""PostgreSQL for the tests: the real server, one fresh schema per test, dropped afterwards.

Why schemas: tests (and pytest-xdist workers, and several developers' runs) share one database;
a schema per test keeps them from seeing each other's tables and leaves nothing behind.

The server is found at ``$GATEWAY_TEST_POSTGRES_DSN`` (default below). When it cannot be reached
the tests FAIL with a message saying how to start it: CI must not go green by skipping the
only tests of the shared log.

These helpers block (they run their own ``asyncio.run``): call them from sync fixtures or tests,
never from a coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import pytest

DSN = os.environ.get("GATEWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def with_params(dsn: str, **params: str) -> str:
    """``dsn`` with query parameters added (e.g. ``schema=``), keeping the ones it has."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


def schema_dsn(schema: str) -> str:
    """The DSN a store (or gateway.toml) uses to keep its tables in ``schema``."""
    return with_params(DSN, schema=schema)


async def _execute(sql: str, *args: object, dsn: str = DSN) -> None:
    conn = await asyncpg.connect(dsn, timeout=5, server_settings={"lock_timeout": "10s"})
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def execute(sql: str, *args: object) -> None:
    """Run one statement on a separate admin connection (blocking)."""
    asyncio.run(_execute(sql, *args))


async def _fetch(sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(sql: str, *args: object) -> list[asyncpg.Record]:
    """Rows of one query on a separate admin connection (blocking)."""
    return asyncio.run(_fetch(sql, *args))


def require_server(dsn: str = DSN) -> None:
    """Fail the calling test, with the command that starts PostgreSQL, if it is unreachable."""
    try:
        asyncio.run(_execute("SELECT 1", dsn=dsn))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {dsn} ({type(e).__name__}: {e}). These tests need "
            f"a real server: start it with `{START}`, or point GATEWAY_TEST_POSTGRES_DSN at one.",
            pytrace=False,
        )


@contextmanager
def fresh_schema(*, create: bool = True) -> Iterator[str]:
    """A new schema name ``t_<random>`` (created unless ``create=False``), dropped on exit.

    Close every store using it before leaving the block: DROP waits for their locks.
    """
    require_server()
    name = "t_" + secrets.token_hex(6)
    if create:
        execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class CommitCutter:
    """A TCP proxy to the server that can cut a session at its next COMMIT, three ways.

    ``arm("after")``: COMMIT reaches the server (which commits) but the answer never reaches
    the client. ``arm("before")``: COMMIT is dropped and both sides are closed, so the server
    rolls back. ``arm("hold")``: COMMIT is dropped, the client side is closed, the server side
    stays open, idle in its transaction (a network partition). Runs its own loop on a thread,
    so blocking stores can use it from the test's thread.
    """

    def __init__(self) -> None:
        self.refuse_new = False  # True: new connections are closed at once (host cut off)
        self._armed: str | None = None
        self._held: list[asyncio.StreamWriter] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def dsn(self, schema: str) -> str:
        """DSN through the proxy, tables in ``schema``."""
        parts = urllib.parse.urlsplit(schema_dsn(schema))
        netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    def arm(self, mode: str) -> None:
        self._armed = mode

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for w in self._held:
                w.close()
            for task in self._sessions:
                task.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.refuse_new:
            writer.transport.abort()
            return
        self._sessions.add(task)
        parts = urllib.parse.urlsplit(DSN)
        up_r, up_w = await asyncio.open_connection(parts.hostname, parts.port or 5432)
        muted = False

        async def to_client() -> None:
            while data := await up_r.read(65536):
                if not muted:
                    writer.write(data)
            writer.close()

        async def to_server() -> None:
            nonlocal muted
            while data := await reader.read(65536):
                mode = self._armed
                if mode and b"COMMIT;\x00" in data:  # asyncpg's COMMIT, not READ COMMITTED.
                    self._armed, muted = None, True
                    if mode == "after":
                        up_w.write(data)
                        await asyncio.sleep(0.3)  # The server commits; the client never hears.
                    writer.transport.abort()
                    if mode == "hold":
                        self._held.append(up_w)
                    else:
                        up_w.close()
                    return
                up_w.write(data)
            up_w.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(to_client(), to_server())
