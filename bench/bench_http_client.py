"""CPU per request of the http connector's client: aiohttp ``ClientSession`` vs ``Http11Pool``.

What is measured, on this machine, in one run: the client process's CPU time
(``time.process_time``: user + system, so the socket system calls count too) per request, for

* aiohttp: ``ClientSession.post`` used exactly as ``connectors/http.py`` used it before the switch
  (one pooled session, ``ClientTimeout(total, sock_connect)`` per call, redirects off, status and
  media type checked, the body read with the ``max_response_bytes`` cap);
* pool: ``connectors._http11.Http11Pool.request`` under ``asyncio.timeout_at``, the same checks;
* connector: the whole ``HttpConnector.deliver`` on the pool (adds the strict JSON parse, the
  breaker and the result): what an exchange now pays for delivery;
* floor: a bare ``asyncio.Protocol`` writing prebuilt bytes and waiting for ``Content-Length``
  bytes, with no checks at all: the event loop's and the kernel's share, which no client avoids.

Each runs N sequential requests (one in flight) and N requests from 16 concurrent tasks, against
``bench/_provider.py`` (aiohttp + uvloop, a fixed JSON answer) in a separate process on
127.0.0.1, with an envelope-sized request body. Rounds interleave the clients (the machine is
noisy); medians are reported, with the ratio pool/aiohttp. Every answer is checked (status 200,
the provider's exact bytes or, for the connector, its JSON), so a fast wrong client cannot win.

    .venv/bin/python bench/bench_http_client.py                # 5,000 + 5,000 per client, 3 rounds
    .venv/bin/python bench/bench_http_client.py --quick        # 1,000 + 1,000, 1 round
    .venv/bin/python bench/bench_http_client.py --loop asyncio # the stdlib loop instead of uvloop

Exit status: 0 when every answer was right, 1 otherwise, 2 when the provider did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from connectors._http11 import Http11Pool  # noqa: E402
from connectors.http import HttpConnector  # noqa: E402
from gateway.connector import ConnectorContext, OutboundMessage  # noqa: E402

SERVICE = "citizen-lookup.v1"
MAX_RESPONSE = 1 << 20
CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
HEADERS = {"Content-Type": "application/jose+json", "X-Exchange-Id": "0190b2c4-bench"}

Request = Callable[[], Awaitable[Any]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_provider(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(BENCH / "_provider.py"), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    print("provider did not start", file=sys.stderr)
    sys.exit(2)


def envelope_body() -> bytes:
    """An envelope-sized body (the gateway sends a JWS JSON of about this size)."""
    payload = (REPO / "schemas" / "examples" / f"{SERVICE}.json").read_bytes()
    envelope = {
        "payload": payload.hex(),
        "signatures": [{"protected": "e" * 180, "signature": "s" * 86, "header": {"kid": "k"}}],
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def aiohttp_client(session: aiohttp.ClientSession, url: str, body: bytes) -> Request:
    """The old connector's request path, minus the JSON parse (which both sides share)."""

    async def one() -> bytes:
        limits = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        async with session.post(
            url, data=body, headers=HEADERS, timeout=limits, allow_redirects=False
        ) as response:
            if response.status != 200 or response.content_type != "application/json":
                raise RuntimeError(f"unexpected answer {response.status}")
            declared = response.content_length
            if declared is not None and declared > MAX_RESPONSE:
                raise RuntimeError("too large")
            raw = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_RESPONSE:
                    raise RuntimeError("too large")
            return bytes(raw)

    return one


def pool_client(pool: Http11Pool, path: str, body: bytes) -> Request:
    headers = [
        (b"User-Agent", b"dtc-gateway"),
        (b"Accept", b"application/json"),
        (b"Accept-Encoding", b"identity"),
        *((k.encode(), v.encode()) for k, v in HEADERS.items()),
    ]
    loop = asyncio.get_running_loop()

    async def one() -> bytes:
        async with asyncio.timeout_at(loop.time() + TOTAL_TIMEOUT):
            response = await pool.request(
                "POST", path, headers, body, max_response_bytes=MAX_RESPONSE
            )
        media_type = response.headers.get("content-type", "").partition(";")[0].strip()
        if response.status != 200 or media_type != "application/json":
            raise RuntimeError(f"unexpected answer {response.status}")
        return response.body

    return one


def connector_client(connector: HttpConnector, body: bytes) -> Request:
    message = OutboundMessage(
        exchange_id="0190b2c4-bench",
        service=SERVICE,
        sender="bench",
        provider="bench",
        payload={},
        envelope={},
        envelope_bytes=body,
    )

    async def one() -> Any:
        return (await connector.deliver(message)).response

    return one


class _Floor(asyncio.Protocol):
    """One bare connection: write prebuilt bytes, complete when Content-Length bytes are in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        start = self.buffer.find(b"Content-Length: ") + 16
        length = int(self.buffer[start : self.buffer.find(b"\r\n", start)])
        if len(self.buffer) >= end + 4 + length:
            body, self.buffer = self.buffer[end + 4 : end + 4 + length], b""
            self.waiter.set_result(body)


def floor_client(port: int, path: str, body: bytes) -> Request:
    """The least any client can cost here: no checks, no parsing, no pool logic, no timeout."""
    loop = asyncio.get_running_loop()
    request = b"".join(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode(),
            *(f"{k}: {v}\r\n".encode() for k, v in HEADERS.items()),
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        )
    )
    idle: list[_Floor] = []

    async def one() -> bytes:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(_Floor, "127.0.0.1", port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        answer = await conn.waiter
        idle.append(conn)
        return answer

    return one


async def run(request: Request, count: int, concurrency: int, expected: Any) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``count`` requests, ``concurrency`` in flight."""
    remaining = count
    wrong = 0

    async def worker() -> None:
        nonlocal remaining, wrong
        while remaining > 0:
            remaining -= 1
            if await request() != expected:
                wrong += 1

    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if wrong:
        print(f"{wrong} wrong answers", file=sys.stderr)
        sys.exit(1)
    return cpu, wall


async def bench(
    args: argparse.Namespace, port: int
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    url = f"http://127.0.0.1:{port}/{SERVICE}"
    body = envelope_body()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "dtc-gateway", "Accept": "application/json"},
    )
    pool = Http11Pool(
        f"http://127.0.0.1:{port}", ssl_context=None, limit=100, connect_timeout=CONNECT_TIMEOUT
    )
    context = ConnectorContext(service=SERVICE, provider="bench", config_dir=str(REPO))
    connector = HttpConnector({"url": url, "send": "envelope"}, context)
    await connector.start()
    clients: dict[str, Request] = {
        "floor (bare protocol)": floor_client(port, f"/{SERVICE}", body),
        "aiohttp ClientSession": aiohttp_client(session, url, body),
        "Http11Pool": pool_client(pool, f"/{SERVICE}", body),
        "HttpConnector.deliver": connector_client(connector, body),
    }
    raw = await clients["aiohttp ClientSession"]()
    expected = {name: json.loads(raw) if "deliver" in name else raw for name in clients}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    modes = (("sequential", 1), (f"{args.concurrency} concurrent", args.concurrency))
    try:
        for name, client in clients.items():  # warm-up: connections open, code paths hot
            await run(client, args.warmup, args.concurrency, expected[name])
        for round_no in range(args.rounds):
            order = list(clients.items())
            if round_no % 2:
                order.reverse()
            for mode, concurrency in modes:
                for name, client in order:
                    sample = await run(client, args.requests, concurrency, expected[name])
                    results.setdefault((mode, name), []).append(sample)
    finally:
        await session.close()
        await pool.close()
        await connector.close()
    return results


def report(results: dict[tuple[str, str], list[tuple[float, float]]], count: int) -> None:
    rounds = len(next(iter(results.values())))
    print(f"\nCPU per request (client process, user+sys), median of {rounds} round(s)")
    print(f"{'mode':<14} {'client':<24} {'CPU µs/req':>11} {'min-max':>15} {'req/s (wall)':>13}")
    medians: dict[tuple[str, str], float] = {}
    for (mode, name), samples in results.items():
        cpu = [c / count * 1e6 for c, _ in samples]
        rate = statistics.median(count / w for _, w in samples)
        medians[(mode, name)] = statistics.median(cpu)
        spread = f"{min(cpu):.1f}-{max(cpu):.1f}"
        print(f"{mode:<14} {name:<24} {medians[(mode, name)]:>11.1f} {spread:>15} {rate:>13,.0f}")
    print()
    for mode in dict.fromkeys(m for m, _ in results):
        base = medians[(mode, "aiohttp ClientSession")]
        pool = medians[(mode, "Http11Pool")]
        print(f"{mode:<14} Http11Pool / aiohttp CPU = {pool / base:.2f}  ({base / pool:.1f}x less)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per client, mode and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--quick", action="store_true", help="1,000 requests, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.warmup = 1000, 1, 200
    loop_name = "asyncio"
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
        loop_name = f"uvloop {uvloop.__version__}"
    print(
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, {loop_name}, "
        f"{os.cpu_count()} cores; {args.requests} requests per client, mode and round"
    )
    port = free_port()
    provider = start_provider(port)
    try:
        results = asyncio.run(bench(args, port))
    finally:
        provider.terminate()
        provider.wait(timeout=10)
    report(results, args.requests)


if __name__ == "__main__":
    main()
