"""Benchmark provider: a minimal aiohttp app answering every POST with one fixed, valid answer.

Why fixed: the benchmark measures the gateway and the baseline proxy, not the provider, so the
provider does as little as it can (read the body, write canned bytes). The answer is what the demo
provider returns for the example citizen-lookup.v1 payload, computed once at start-up, so it is
valid against ``schemas/citizen-lookup.v1.response.json``.

    .venv/bin/python bench/_provider.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
SERVICE = "citizen-lookup.v1"


def canned_answer() -> bytes:
    """The demo provider's answer to the example payload (valid against the response schema)."""
    from connectors.demo import DemoConnector
    from gateway.connector import ConnectorContext, OutboundMessage
    from gateway.models import uuid7

    payload: Any = orjson.loads((REPO / "schemas" / "examples" / f"{SERVICE}.json").read_bytes())
    demo = DemoConnector({}, ConnectorContext(service=SERVICE, provider="bench", config_dir="."))
    message = OutboundMessage(
        exchange_id=uuid7(),
        service=SERVICE,
        sender="bench",
        provider="bench",
        payload=payload,
        envelope={},
        envelope_bytes=b"{}",
    )
    result = asyncio.run(demo.deliver(message))
    return orjson.dumps(result.response)


def make_app(answer: bytes) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()  # consume the body, as a real provider would
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{service}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--print-answer", action="store_true", help="print the answer and exit")
    args = parser.parse_args()
    answer = canned_answer()
    if args.print_answer:
        sys.stdout.write(answer.decode() + "\n")
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    web.run_app(make_app(answer), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
