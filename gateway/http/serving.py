"""Serve one worker's app on its inherited socket until it is told to stop.

Why a module of its own: how a worker stops is a contract with its supervisor
(gateway.cli_serve), not part of composing the app (gateway.http.app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.http.protocol import GatewayRunner

log = structlog.get_logger("gateway.http")


class _ServerLog(logging.Handler):
    """aiohttp's own error log (logger ``aiohttp.server``), as structured lines.

    Why: a request aiohttp cannot parse (a control character in a header, a line over 8 KiB)
    is logged by aiohttp with a traceback whose message quotes the offending raw line: a
    whole ``Authorization: Bearer ...`` header, or a path with a citizen id, went unredacted
    to stderr, outside the JSON log. A client's malformed request becomes one line naming the
    error's kind and status only; anything else aiohttp logs (a fault of ours) keeps its
    traceback, in the JSON log where redaction applies.
    """

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.info("http.malformed_request", error=type(exc).__name__, status=exc.code)
        else:
            log.error("http.server_error", message=record.getMessage(), exc_info=record.exc_info)


def route_server_log() -> None:
    """Send ``aiohttp.server``'s records through :class:`_ServerLog` only (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    server_log.handlers = [_ServerLog()]
    server_log.propagate = False


def run(
    app: web.Application,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    stop_signal: int,
    *,
    idle_timeout: float,
    grace: float = 10.0,
) -> None:
    """Serve ``app`` on an already bound socket (one worker process) until ``stop_signal``, the
    supervisor's (see gateway.cli_serve).

    ``idle_timeout`` (``limits.idle_timeout_seconds``) becomes aiohttp's keep-alive timeout,
    which closes a connection that has not completed a request's headers that long after it
    opened or after its last response: a silent or trickling client cannot hold a connection
    (and a file descriptor) for aiohttp's default of an hour. Streams (the audit SSE tail) are
    responses in progress, which it leaves alone; request bodies have their own limit
    (gateway.http.bodies).

    ``grace``: how long in-flight requests get to finish once told to stop (aiohttp's
    shutdown timeout); the supervisor derives it from the delivery timeout."""
    route_server_log()
    loop = asyncio.new_event_loop()
    stopping = False
    started = False  # the app's start-up (cleanup_ctx, on_startup) has completed
    asked = False  # the stop signal came while it had not

    def stop() -> None:
        nonlocal stopping, asked
        if not started:
            # Not now: _serve's start-up (runner.setup, as in web.run_app) is outside its
            # try/finally, so a GracefulExit there cancels it and never runs the app's
            # cleanup. The loop then closes the half-unwound cleanup_ctx generators all at
            # once, racing each other ("athrow(): asynchronous generator is already running",
            # a traceback, resources not closed in order). Stop as soon as start-up is done instead.
            asked = True
            return
        if not stopping:  # one graceful shutdown; a repeat must not break its cleanup
            stopping = True
            signal.signal(stop_signal, signal.SIG_IGN)  # nor, the loop closed, kill us
            raise web.GracefulExit()

    async def on_started(_: web.Application) -> None:
        """The last start-up hook: from here on _serve cleans up after a GracefulExit."""
        nonlocal started
        started = True
        if asked:  # runs at the next await, which is inside _serve's try (site start)
            loop.call_soon(stop)

    app.on_startup.append(on_started)
    loop.add_signal_handler(stop_signal, stop)
    runner = GatewayRunner(  # web.run_app's, with problem answers to unparsable requests
        app,
        access_log=None,  # one structured line per exchange instead (handlers.py)
        handle_signals=False,  # stop() instead: SIGTERM, SIGINT, SIGHUP are the supervisor's
        shutdown_timeout=grace,
        keepalive_timeout=idle_timeout,
    )
    main = loop.create_task(_serve(runner, sock, ssl_context))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except web.GracefulExit:
        pass
    finally:
        _close(loop, main)


async def _serve(runner: GatewayRunner, sock: socket.socket, ssl: ssl.SSLContext | None) -> None:
    """What ``web.run_app`` does with one socket: start-up outside the try (see ``stop``),
    then serve until cancelled or told to stop, and clean up."""
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=ssl).start()
        await asyncio.Event().wait()  # until stop() raises GracefulExit out of the loop
    finally:
        await runner.cleanup()


def _close(loop: asyncio.AbstractEventLoop, main: asyncio.Task[None]) -> None:
    """As ``web.run_app`` ends: the serving task finished (its cleanup run), the rest
    cancelled, the async generators closed, the loop closed."""
    try:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
    finally:
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
