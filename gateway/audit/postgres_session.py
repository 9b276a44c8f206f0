"""One asyncpg connection behind a blocking call, on a private event loop, reconnecting on loss.

Why a module of its own: the :class:`~gateway.audit.store.AuditStore` Protocol is blocking
because :class:`~gateway.audit.log.AuditLog` calls it from its own writer thread, and asyncpg is
asynchronous. Bridging the two is plumbing that knows nothing about the log's tables, head lock
or recovery, which stay in :mod:`gateway.audit.postgres`; here it can be read (and changed) on
its own:

* A *private* asyncio event loop, created lazily by the first call (in the thread making it:
  the writer thread, or the ``prepare_stores`` call in the parent process) and reused for every
  later call, which runs one coroutine on it with ``run_until_complete``. The loop is never
  installed as any thread's current loop and never shared with aiohttp's, so the gateway's
  event loop never waits on the database. Calls are serialized by a lock (a loop runs in one
  thread at a time, whichever that is); calling from a thread that is running an event loop is
  refused with RuntimeError, since ``run_until_complete`` cannot nest.
* The connection opens on first use (constructing does no I/O) and is handed to a ``setup``
  coroutine before its first call; a connection whose session is in doubt (network, timeout,
  cancellation, server restart) is dropped, and the next call reconnects. A call that finds
  its connection closed (the server restarted, or ended the idle session) runs once more on a
  new connection if its caller says nothing it did can have taken effect: without that, the
  first batch after every restart or idle timeout failed, a 503 for each exchange in it.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]

__all__ = [
    "READ_COMMITTED",
    "BlockingConnection",
    "Connection",
    "durable_pool",
    "session_settings",
    "split_dsn",
]

T = TypeVar("T")
Connection = Any  # asyncpg.Connection; asyncpg ships no type information.

READ_COMMITTED: Final = {"default_transaction_isolation": "read committed"}
"""A startup setting of every session of the gateway's stores, whatever the DSN, role or
database default says: their statements are written for READ COMMITTED (an ``INSERT .. ON
CONFLICT`` waits for a concurrent writer's row, then acts on its committed version). Under
REPEATABLE READ or SERIALIZABLE the instance that lost such a race got a serialization error
instead of its answer: a failed checkpoint, or a 503 where a 409 "in progress" was due."""


class BlockingConnection:
    """Blocking calls on one lazily opened asyncpg connection; see the module doc."""

    def __init__(
        self,
        dsn: str,
        *,
        settings: Mapping[str, str],
        connect_timeout: float,
        command_timeout: float,
        setup: Callable[[Connection], Awaitable[None]],
    ) -> None:
        """Remember how to connect; ``setup`` runs on each new connection before it is used."""
        self._dsn = dsn
        self._settings = {**settings, **READ_COMMITTED}
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._setup = setup
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Connection | None = None
        self._lost = False  # the last call's connection was found closed
        self._closed = False

    def call(
        self,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        may_retry: Callable[[], bool] = lambda: True,
    ) -> T:
        """Run ``fn(connection)`` on the private loop and return its result. Blocking.

        A connection that was found closed (the server restarted, or ended the idle session)
        is replaced and ``fn`` run once more, if ``may_retry()`` says nothing it did can have
        taken effect (a read always; a write whose COMMIT was not sent).
        """
        with self._lock:
            if self._closed:
                raise asyncpg.InterfaceError("audit store is closed")
            if _loop_running_here():
                raise RuntimeError("PostgresAuditStore is blocking: call it off the event loop")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            reused = self._conn is not None
            try:
                return self._loop.run_until_complete(self._with_connection(fn))
            except Exception:
                if not (reused and self._lost and may_retry()):
                    raise
            return self._loop.run_until_complete(self._with_connection(fn))

    def dropped(self) -> bool:
        """Whether there is no connection now (the last call dropped it, or none was made)."""
        with self._lock:
            return self._conn is None

    async def _with_connection(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        if self._conn is None:
            self._conn = await self._connect()
        conn = self._conn
        self._lost = False
        try:
            return await fn(conn)
        except BaseException as exc:
            # Gone, not failed: the server or the network closed it (not a statement error).
            self._lost = conn.is_closed() or isinstance(
                exc, asyncpg.PostgresConnectionError | ConnectionError
            )
            if not _session_survives(exc, conn):
                self._conn = None
                conn.terminate()
            raise

    async def _connect(self) -> Connection:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._settings,
        )
        try:
            await self._setup(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def close(self) -> None:
        """Close the connection and the private loop; later calls raise InterfaceError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, loop = self._conn, self._loop
            self._conn = self._loop = None
            if loop is None:
                return
            try:
                if conn is not None and _loop_running_here():
                    conn.terminate()
                elif conn is not None:
                    try:
                        loop.run_until_complete(conn.close(timeout=5))
                    except Exception:
                        conn.terminate()
                        loop.run_until_complete(asyncio.sleep(0))  # Let the socket close.
            finally:
                loop.close()


async def durable_pool(
    dsn: str,
    name: str,
    *,
    max_size: int,
    connect_timeout: float,
    command_timeout: float,
) -> Any:
    """An asyncpg pool (at most ``max_size`` sessions) for the state and witness stores.

    Its sessions are named ``name``, commit durably and run READ COMMITTED whatever the DSN,
    the role or the database default say (:data:`READ_COMMITTED`). These are startup settings,
    not SETs: the pool's RESET ALL on release returns a session to its startup values, so a SET
    (or a DSN's ``synchronous_commit=off``) would not last. ``dsn`` is the audit store's, with
    its ``schema`` parameter taken out (:func:`split_dsn`); asyncpg's and the server's errors
    pass through for the caller to name its store.
    """
    plain, _, given = split_dsn(dsn)
    settings = session_settings(name, given)
    settings["synchronous_commit"] = "on"
    settings.update(READ_COMMITTED)
    return await asyncpg.create_pool(
        plain,
        min_size=1,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        server_settings=settings,
    )


def session_settings(name: str, given: set[str], **timeouts: float) -> dict[str, str]:
    """Startup settings: ``application_name`` = ``name`` and each timeout (seconds, sent in
    milliseconds, at least 1), except those the DSN sets itself (``given``: the DSN wins)."""
    settings = {"application_name": name}
    settings.update({k: f"{max(1, round(v * 1000))}ms" for k, v in timeouts.items()})
    return {k: v for k, v in settings.items() if k not in given}


def split_dsn(dsn: str) -> tuple[str, str | None, set[str]]:
    """Take ``schema`` out of the DSN's query; also return the names of the other parameters.

    asyncpg would send an unknown ``schema`` parameter to the server as a setting (and fail),
    so it is removed here; the rest of the DSN is passed on unchanged.
    """
    parts = urllib.parse.urlsplit(dsn)
    if not parts.query:
        return dsn, None, set()
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = [v for k, v in params if k == "schema"]
    rest = [(k, v) for k, v in params if k != "schema"]
    query = urllib.parse.urlencode(rest, quote_via=urllib.parse.quote)
    return (
        parts._replace(query=query).geturl(),
        (schema[-1] if schema else None),
        {k for k, _ in rest},
    )


def _session_survives(exc: BaseException, conn: Connection) -> bool:
    """A server-reported SQL error leaves the session usable (its transaction rolled back);
    a lost connection, a timeout or a cancellation leave it in doubt: it is dropped."""
    return (
        isinstance(exc, asyncpg.PostgresError)
        and not isinstance(exc, asyncpg.PostgresConnectionError)
        and not conn.is_closed()
    )


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
