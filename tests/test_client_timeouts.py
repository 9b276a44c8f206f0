"""Slow or silent clients cannot hold a connection or a handler without end.

A real ``gateway serve`` with ``idle_timeout_seconds`` and ``body_timeout_seconds`` of one
second, and raw sockets that stop half way: in the headers, or in the body. A body that does
not arrive in time is a 408 problem (an exchange attempt is audited like every rejection) and
its connection is closed, so the body's late rest can never be read as a next request.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import (
    Provider,
    ServerProcess,
    audit_records,
    make_deployment,
    running_provider,
)

SERVICE = "citizen-lookup.v1"
# Generous bound for "the server acted"; the limits under test are 1 s (never asserted on).
PATIENCE = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    cfg = make_deployment(tmp_path / "dep")
    text = cfg.read_text()
    for limit in ("idle_timeout_seconds", "body_timeout_seconds"):
        assert f"{limit} = 60\n" in text  # gateway init writes the defaults
        text = text.replace(f"{limit} = 60\n", f"{limit} = 1\n", 1)
    cfg.write_text(text)
    proc = ServerProcess(cfg, stdout_to_file=True)
    yield proc
    log = proc.stop()
    assert "Traceback" not in log, log[-3000:]


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by PATIENCE)."""
    got = b""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    else:
        pytest.fail(f"the server kept the connection open; it sent {got[:300]!r}")
    return got


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


def _token(server: ServerProcess, participant: str = "hcm.quan-1") -> str:
    dep = Path(server.stderr_path).parent
    return (dep / "participants" / participant / "token").read_text().strip()


def test_a_connection_that_never_finishes_its_headers_is_closed(server: ServerProcess) -> None:
    with _connect(server) as s:
        s.sendall(b"POST /v1/exchange/citizen-lookup.v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _read_until_closed(s) == b""
    with _connect(server) as s:  # a connection that sends nothing at all
        assert _read_until_closed(s) == b""


def test_an_idle_kept_alive_connection_is_closed_after_its_last_response(
    server: ServerProcess,
) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = _split(_read_until_closed(s))
    assert status == 200
    assert headers.get("connection", "").lower() != "close"


async def test_a_body_that_does_not_arrive_in_time_is_an_audited_408_and_the_connection_closes(
    tmp_path: Path,
) -> None:
    async with running_provider(Provider()) as provider:
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
        text = cfg.read_text().replace("body_timeout_seconds = 60\n", "body_timeout_seconds = 1\n")
        cfg.write_text(text)
        server = ServerProcess(cfg, stdout_to_file=True)
        head = (
            f"POST /v1/exchange/{SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {_token(server)}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
        ).encode()

        def slow_client() -> bytes:
            with _connect(server) as s:
                s.sendall(head + b'{"citizen_id": ')  # and then nothing more
                return _read_until_closed(s)

        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, slow_client)
        finally:
            log = server.stop()
        assert provider.received == []
    assert "Traceback" not in log, log[-3000:]
    status, headers, body = _split(answer)
    assert status == 408, answer[:500]
    assert headers["content-type"].startswith("application/problem+json")
    assert headers.get("connection", "").lower() == "close"
    problem = orjson.loads(body)
    assert problem["type"] == "urn:gateway:problem:request-timeout"
    assert "1 s" in problem["detail"]
    xid = problem["exchange_id"]
    records = [r for r in audit_records(cfg.parent) if r["exchange_id"] == xid]
    assert [(r["event"], r["cause"], r["status"]) for r in records] == [
        ("exchange.rejected", "request-timeout", 408)
    ]


@pytest.mark.parametrize("path", ["/v1/verify", "/v1/witness/add-checkpoint"])
def test_a_slow_body_to_another_post_route_is_a_408_problem(
    server: ServerProcess, path: str
) -> None:
    with _connect(server) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 50\r\n\r\n{".encode()
        )
        status, headers, body = _split(_read_until_closed(s))
    assert status == 408
    assert headers.get("connection", "").lower() == "close"
    assert orjson.loads(body)["type"] == "urn:gateway:problem:request-timeout"


def test_a_complete_request_on_a_reused_connection_is_still_served(server: ServerProcess) -> None:
    """The limits bound waiting, not work: two quick requests on one connection both pass."""
    with _connect(server) as s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            assert _split(got)[0] == 200
