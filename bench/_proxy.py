"""Baseline for bench_exchange.py: a bare aiohttp pass-through proxy.

Each POST body is forwarded unchanged to the upstream URL and the upstream answer (status, body,
content type) is returned. No parsing, no signing, no audit: this is the floor of what any Python
aiohttp gateway with one hop to a provider costs on this machine.

It runs like ``gateway serve --workers N``: the parent binds one listening socket (SO_REUSEADDR and
SO_REUSEPORT, backlog 1024) and forks N workers that share it, each with uvloop and one
``aiohttp.ClientSession`` (keep-alive pool of 100 connections, like the http connector's default).

    .venv/bin/python bench/_proxy.py --port 9001 --upstream http://127.0.0.1:9000/citizen-lookup.v1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        )
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with request.app[SESSION].post(upstream, data=body, headers=headers) as answer:
            data = await answer.read()
            return web.Response(status=answer.status, body=data, content_type=answer.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def _worker(sock: socket.socket, upstream: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(make_app(upstream), sock=sock, access_log=None, print=None, shutdown_timeout=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(sock, args.upstream), daemon=False)
        for _ in range(max(1, args.workers))
    ]
    for p in procs:
        p.start()

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
