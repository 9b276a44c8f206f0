"""Latency clients for bench_exchange.py: a raw HTTP/1.1 keep-alive client on asyncio streams.

Why not aiohttp's client: at these latencies (a millisecond or two) the client's own cost is part
of every sample; writing prebuilt request bytes and reading ``Content-Length`` bytes back keeps it
to a few tens of microseconds, the same for both targets.

* :func:`sequential`: one connection, one request at a time (unloaded latency).
* :func:`open_loop`: requests scheduled at a fixed rate regardless of how earlier ones fare; each
  latency is measured from the request's *scheduled* send time, so a stall shows up in every
  request it delays (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class HttpConn:
    """One keep-alive HTTP/1.1 connection; requests must not overlap on it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConn:
        self._r, self._w = await asyncio.open_connection(self.host, self.port)
        return self

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def build(
        self, path: str, body: bytes, content_type: str, request_id: str | None = None
    ) -> bytes:
        rid = f"X-Request-Id: {request_id}\r\n" if request_id else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{rid}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send prebuilt request bytes; return (status, body)."""
        if self._w is None or self._r is None:
            await self.open()
        assert self._w is not None and self._r is not None
        self._w.write(request)
        head = await self._r.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lname == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = await self._read_chunked()
        elif length is not None:
            body = await self._r.readexactly(length)
        else:
            body = await self._r.read()
            close = True
        if close:
            self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self._r is not None
        parts = []
        for _ in range(1_000_000):
            size = int((await self._r.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await self._r.readuntil(b"\r\n")
                break
            parts.append(await self._r.readexactly(size))
            await self._r.readexactly(2)
        return b"".join(parts)


@dataclass
class Outcome:
    """Latencies (seconds) of the 2xx answers, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # first few non-2xx bodies
    samples: list[tuple[bytes, bytes]] = field(default_factory=list)  # (request, 2xx answer)
    send_lag: list[float] = field(default_factory=list)  # open loop: actual - scheduled send
    errors: int = 0  # connection errors, timeouts
    elapsed: float = 0.0

    def record(self, status: int, request: bytes, answer: bytes, keep_samples: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not 200 <= status < 300:
            if len(self.problems) < 5:
                self.problems.append(f"{status} {answer[:600].decode('utf-8', 'replace')}")
        elif len(self.samples) < keep_samples:
            self.samples.append((request, answer))

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + self.errors


async def sequential(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    keep_samples: int = 0,
    timeout: float = 10.0,
    request_ids: str | None = None,
) -> Outcome:
    """Send each body in turn on one connection; latency = answer read - request written.

    ``request_ids``: a prefix; request i then carries ``X-Request-Id: <prefix><i>``, so the
    server's log lines of exactly these requests can be found afterwards.
    """
    out = Outcome()
    conn = await HttpConn(host, port).open()
    clock = time.perf_counter
    start = clock()
    try:
        for i, body in enumerate(bodies):
            rid = None if request_ids is None else f"{request_ids}{i}"
            request = conn.build(path, body, content_type, rid)
            t0 = clock()
            try:
                status, answer = await asyncio.wait_for(conn.send(request), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                out.errors += 1
                conn.close()
                conn = await HttpConn(host, port).open()
                continue
            t1 = clock()
            out.record(status, body, answer, keep_samples)
            if 200 <= status < 300:
                out.latencies.append(t1 - t0)
    finally:
        out.elapsed = clock() - start
        conn.close()
    return out


async def open_loop(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    rate: float,
    connections: int = 32,
    timeout: float = 10.0,
) -> Outcome:
    """Send len(bodies) requests at ``rate``/s from a pool of keep-alive connections.

    Latency = answer read - *scheduled* send time. A request waits for a free connection when
    all are busy; that wait counts too. Bounded: at most len(bodies) requests, each with a timeout.
    """
    out = Outcome()
    clock = time.perf_counter
    idle: asyncio.Queue[HttpConn] = asyncio.Queue()
    opened = await asyncio.gather(*(HttpConn(host, port).open() for _ in range(connections)))
    for c in opened:
        idle.put_nowait(c)

    async def one(body: bytes, scheduled: float) -> None:
        conn = await idle.get()
        try:
            request = conn.build(path, body, content_type)
            out.send_lag.append(clock() - scheduled)
            status, answer = await asyncio.wait_for(conn.send(request), timeout)
            done = clock()
            out.record(status, body, answer, 0)
            if 200 <= status < 300:
                out.latencies.append(done - scheduled)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            out.errors += 1
            conn.close()
            conn = HttpConn(host, port)  # reopened lazily by send()
        finally:
            idle.put_nowait(conn)

    interval = 1.0 / rate
    tasks: list[asyncio.Task[None]] = []
    t0 = clock() + 0.05
    try:
        for i, body in enumerate(bodies):
            scheduled = t0 + i * interval
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, scheduled)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout + 5)
    finally:
        for t in tasks:
            t.cancel()
        out.elapsed = clock() - t0
        while not idle.empty():
            idle.get_nowait().close()
        for c in opened:
            c.close()
    return out
