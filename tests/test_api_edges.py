"""Edges of the operators' and auditors' HTTP surface on a real gateway on 127.0.0.1: wrong
methods, repeated parameters, a failing store, and the OpenAPI document against what is served.

Every answer to bad input is an RFC 9457 problem with a status the client can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import Gateway, Provider, make_deployment, running_gateway

PROBLEM = "application/problem+json"


@pytest.fixture
async def gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=2)
    async with running_gateway(cfg) as g:
        yield g


def role(gw: Gateway, rid: str) -> dict[str, str]:
    token = (gw.dir / "roles" / f"{rid}.token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def call(
    gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.url + path, headers=headers or {}) as r,
    ):
        raw = await r.read()
        ctype = r.headers.get("Content-Type", "")
        is_json = ctype.startswith(("application/json", PROBLEM))
        body: Any = orjson.loads(raw) if is_json and raw else raw
        return r.status, dict(r.headers), body


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/audit/records", {"GET", "HEAD"}),
        ("DELETE", "/v1/audit/checkpoint", {"GET", "HEAD", "POST"}),
        ("GET", "/v1/verify", {"POST"}),
        ("PATCH", "/metrics", {"GET", "HEAD"}),
        ("HEAD", "/v1/audit/stream", {"GET"}),
    ],
)
async def test_a_wrong_method_is_a_405_problem_naming_the_allowed_methods(
    gw: Gateway, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 15.5.6: a 405 must carry ``Allow``; clients and scanners read it."""
    status, headers, body = await call(gw, method, path, role(gw, "dtc-admin"))
    assert status == 405
    assert headers["Content-Type"].startswith(PROBLEM)
    assert {m.strip() for m in headers["Allow"].split(",")} == allowed
    if method != "HEAD":
        assert body["type"] == "urn:gateway:problem:method-not-allowed"
        assert body["instance"] == path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit/records?sender=hcm.quan-1&sender=hcm.so-tc",
        "/v1/audit/records?limit=1&limit=500",
        "/v1/audit/export?since=2026-01-01T00:00:00Z&since=2020-01-01T00:00:00Z",
        "/v1/audit/proof/consistency?first=0&first=1&second=1",
        "/v1/audit/proof/inclusion?index=0&index=1&tree_size=2",
    ],
)
async def test_a_parameter_given_twice_is_a_400_not_silently_the_first_value(
    gw: Gateway, path: str
) -> None:
    """``sender=a&sender=b`` must not answer for ``a`` alone as if ``b`` were not asked."""
    status, headers, body = await call(gw, "GET", path, role(gw, "dtc-admin"))
    assert status == 400, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert "more than once" in body["detail"]


def without_checkpoint_key(config: Path) -> Path:
    """No checkpoints: the checkpoint route, POST and default-size proofs answer 503."""
    text = config.read_text()
    config.write_text(text.replace('checkpoint_key = "pki/checkpoint.key"\n', ""))
    return config


@pytest.fixture
async def plain_gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=2)
    async with running_gateway(without_checkpoint_key(cfg)) as g:
        yield g


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The document's operation for a concrete path (templates matched segment by segment)."""
    want = path.split("?")[0].split("/")
    for template, ops in doc["paths"].items():
        parts = template.split("/")
        if len(parts) == len(want) and all(
            p == w or p.startswith("{") for p, w in zip(parts, want, strict=True)
        ):
            op: dict[str, Any] = ops[method.lower()]
            return op
    raise AssertionError(f"{path} is not in the document")


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [
        ("GET", "/v1/audit/checkpoint", None),
        ("POST", "/v1/audit/checkpoint", "dtc-admin"),
        ("GET", "/v1/audit/proof/consistency?first=0", "dtc-operator"),
        ("GET", "/v1/audit/export", "dtc-auditor"),
        ("GET", "/v1/audit/records", "dtc-operator"),
        ("GET", "/v1/audit/records/0", "dtc-operator"),
        ("POST", "/v1/witness/add-checkpoint", None),
    ],
)
async def test_each_answer_has_its_status_and_media_type_in_the_openapi_document(
    plain_gw: Gateway, method: str, path: str, who: str | None
) -> None:
    """A client generated from the document must know every answer the route really gives."""
    gw = plain_gw
    _, _, doc = await call(gw, "GET", "/v1/openapi.json")
    status, headers, body = await call(gw, method, path, role(gw, who) if who else None)
    responses = operation(doc, method, path)["responses"]
    assert str(status) in responses, (status, body)
    media = headers["Content-Type"].split(";")[0].strip()
    assert media in responses[str(status)].get("content", {}), (status, media)


def document_accepts(schema: dict[str, Any], value: str) -> bool:
    """Whether a parameter value (as sent, a string) satisfies the document's schema for it."""
    if schema.get("type") == "integer":
        try:
            number = int(value, 10)
        except ValueError:
            return False
        return bool(schema.get("minimum", number) <= number <= schema.get("maximum", number))
    if "enum" in schema:
        return value in schema["enum"]
    if "pattern" in schema:
        import re

        return re.search(schema["pattern"], value) is not None
    return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/v1/audit/records", "limit", "0"),
        ("/v1/audit/records", "limit", "501"),
        ("/v1/audit/records", "limit", "ten"),
        ("/v1/audit/records", "outcome", "succeeded"),
        ("/v1/audit/records", "exchange_id", "not-a-uuid"),
        ("/v1/audit/records/{index}", "index", "-1"),
        ("/v1/audit/proof/consistency", "first", "x"),
        ("/v1/audit/proof/inclusion", "tree_size", "-3"),
        ("/v1/audit/stream", "from", "-5"),
        ("/v1/exchanges/{exchange_id}", "exchange_id", "0"),
    ],
)
async def test_a_parameter_value_the_gateway_refuses_is_one_the_openapi_document_forbids(
    plain_gw: Gateway, path: str, name: str, value: str
) -> None:
    """The document types each parameter as the handlers read it: what the gateway answers with
    400 is outside the document's schema, so generated clients and fuzzers agree with it."""
    gw = plain_gw
    _, _, doc = await call(gw, "GET", "/v1/openapi.json")
    params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
    concrete = path.replace("{" + name + "}", value)
    if params[name]["in"] == "query":
        concrete += f"?{name}={value}"
    status, _, body = await call(gw, "GET", concrete, role(gw, "dtc-admin"))
    assert status == 400, body
    assert not document_accepts(params[name]["schema"], value), params[name]


async def test_readyz_names_a_failing_store_without_its_path_or_error_text(gw: Gateway) -> None:
    """/readyz is public: a failing state store shows as failed, but its file path (or a
    database's host and user, in the error text) stays in the log, as for the audit store."""
    state = gw.dir / "state.db"
    assert state.exists()
    state.rename(gw.dir / "state-moved.db")
    (gw.dir / "state.db").write_bytes((gw.dir / "state-moved.db").read_bytes())
    status, _, doc = await call(gw, "GET", "/readyz")
    assert status == 503
    assert doc["checks"]["state"].startswith("failed")
    assert str(gw.dir) not in orjson.dumps(doc).decode()
    assert "state.db" not in doc["checks"]["state"]


async def test_an_audit_read_that_fails_on_the_store_is_a_503_whose_cause_is_logged(
    gw: Gateway,
) -> None:
    """The client gets the fixed 503 (no file names or SQL); the operator must still find the
    store's error in the log, or nothing tells them why the audit API is refusing."""
    from structlog.testing import capture_logs

    db = gw.dir / "audit.db"
    db.rename(gw.dir / "audit-moved.db")
    db.write_bytes((gw.dir / "audit-moved.db").read_bytes())  # Another file at the path.
    with capture_logs() as logs:
        status, headers, body = await call(gw, "GET", "/v1/audit/records", role(gw, "dtc-operator"))
    assert status == 503, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert "audit.db" not in body["detail"]
    assert int(headers["Retry-After"]) >= 1
    assert "could not be recorded" not in body["detail"]  # A read records nothing.
    problem_lines = [e for e in logs if e.get("event") == "http.problem"]
    assert problem_lines, logs
    assert any("replaced while open" in str(e.get("reason", "")) for e in problem_lines), logs


def test_a_request_aiohttp_cannot_parse_leaves_no_token_or_path_in_the_log(
    tmp_path: Path,
) -> None:
    """A header with a control character is refused by aiohttp before any route runs; its
    error log quoted the raw header line, so a role's whole bearer token (or a citizen id in
    the path) reached the log in clear. Now: one JSON line naming the kind of error."""
    import socket

    from tests.support import ServerProcess

    cfg = make_deployment(tmp_path / "dep")
    token = (cfg.parent / "roles" / "dtc-auditor.token").read_text().strip()
    server = ServerProcess(cfg)
    try:
        for request in (
            b"GET /v1/audit/records HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + token.encode() + b"\x01\r\n\r\n",
            b"GET /v1/exchanges/079203001234\x01 HTTP/1.1\r\nHost: gw\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(request)
                assert s.recv(65536).startswith(b"HTTP/1.")  # 400 from aiohttp itself
    finally:
        output = server.stop()
    assert token not in output
    assert "079203001234" not in output
    assert "Traceback" not in output
    malformed = [line for line in output.splitlines() if '"event":"http.malformed_request"' in line]
    assert len(malformed) == 2, output[-3000:]


_MALFORMED = {
    "not HTTP at all (TLS to the plain port)": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "a bad request line": b"GARBAGE\r\n\r\n",
    "a control character in a header": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-A: a\x01b\r\n\r\n",
    "a header line over the limit": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-A: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a request line over the limit": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
    "bad chunked encoding": b"POST /v1/exchange/citizen-lookup.v1 HTTP/1.1\r\nHost: gw\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "an invalid Content-Length": b"POST /v1/exchange/citizen-lookup.v1 HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Length: abc\r\n\r\n",
    "two Content-Lengths": b"POST /v1/exchange/citizen-lookup.v1 HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "Content-Length with chunked": b"POST /v1/verify HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
}


def _raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as is; the answer's head and body, read until the server closes."""
    import socket

    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        for _ in range(1000):  # until the server closes the connection (bounded)
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body


def test_a_request_aiohttp_cannot_parse_is_answered_with_a_problem_and_closed(
    tmp_path: Path,
) -> None:
    """aiohttp's parser refuses these before any route or middleware runs, and answered each
    with its own text/plain 400 that quoted the offending raw line back (a bearer token, a
    citizen id in a path). Under `gateway serve` each is now an RFC 9457 problem with a stable
    type and a fixed, actionable detail, and the connection is closed (``recv`` sees its end).
    """
    from tests.support import ServerProcess

    cfg = make_deployment(tmp_path / "dep")
    server = ServerProcess(cfg)
    try:
        answers = {what: _raw_exchange(server.port, req) for what, req in _MALFORMED.items()}
    finally:
        output = server.stop()
    for what, (head, body) in answers.items():
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], (what, head)
        assert b"content-type: application/problem+json" in head.lower(), (what, head)
        doc = orjson.loads(body)
        assert doc["type"] == "urn:gateway:problem:malformed-request", (what, doc)
        assert doc["status"] == 400 and doc["detail"], (what, doc)
        assert b"aaaa" not in body and b"abc" not in body, (what, doc)  # nothing echoed back
    assert "Traceback" not in output
    malformed = [line for line in output.splitlines() if '"event":"http.malformed_request"' in line]
    assert len(malformed) == len(_MALFORMED), output[-3000:]


async def test_no_checkpoint_because_none_are_configured_says_so_instead_of_retry(
    plain_gw: Gateway,
) -> None:
    """Without a checkpoint key no checkpoint will ever come: 'retry in a few seconds' sent
    auditors (and their scripts) retrying forever. The detail names what to configure, and
    no Retry-After promises a checkpoint."""
    status, headers, body = await call(plain_gw, "GET", "/v1/audit/checkpoint")
    assert status == 503
    assert "retry" not in body["detail"]
    assert "audit.checkpoint_key" in body["detail"]
    assert "Retry-After" not in headers


async def test_the_openapi_document_says_which_operations_need_credentials(
    plain_gw: Gateway,
) -> None:
    """Each operation declares its security as gateway.authz enforces it: without
    credentials, exactly the operations that declare a requirement answer 401."""
    gw = plain_gw
    _, _, doc = await call(gw, "GET", "/v1/openapi.json")
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "mtls"}
    checked = 0
    for template, ops in doc["paths"].items():
        if template.startswith("/v1/exchange/"):
            continue  # The exchange authenticates itself (also by a signature in the body).
        path = template.replace("{index}", "0").replace(
            "{exchange_id}", "01a223c3-0a00-7582-88d8-e2fcdbea6655"
        )
        for method, op in ops.items():
            status, _, body = await call(gw, method.upper(), path)
            assert (status == 401) == bool(op["security"]), (method, template, status, body)
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize(
    ("path", "who", "ended"),
    [
        ("/v1/audit/stream", "dtc-operator", "audit.stream_ended"),
        ("/v1/audit/export", "dtc-auditor", "audit.export_aborted"),
    ],
)
async def test_a_client_gone_before_a_stream_starts_is_a_disconnect_not_an_internal_error(
    gw: Gateway, path: str, who: str, ended: str
) -> None:
    """An operator's page reconnecting its EventSource drops connections all the time; each
    one that left before the headers went out was logged as an error with a traceback
    (http.internal_error), which pages whoever watches the error rate."""
    import asyncio
    import socket
    import struct

    from structlog.testing import capture_logs

    port = int(gw.url.rsplit(":", 1)[1])
    token = role(gw, who)["Authorization"]
    with capture_logs() as logs:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\n\r\n".encode()
            )
            await writer.drain()
            writer.transport.abort()  # Reset: the client is gone.
        async with asyncio.timeout(10):
            while sum(e["event"] in (ended, "http.internal_error") for e in logs) < 5:
                await asyncio.sleep(0.05)
    assert not [e for e in logs if e["event"] == "http.internal_error"], logs


@pytest.mark.parametrize("path", ["/v1/verify", "/v1/witness/add-checkpoint"])
async def test_a_client_gone_while_sending_its_body_is_a_disconnect_not_an_internal_error(
    gw: Gateway, path: str
) -> None:
    """A POST whose client resets the connection halfway through its body: logged as a
    disconnect, not as http.internal_error with a traceback."""
    import asyncio
    import socket
    import struct

    from structlog.testing import capture_logs

    port = int(gw.url.rsplit(":", 1)[1])
    with capture_logs() as logs:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"payload": "'
            )
            await writer.drain()
            await asyncio.sleep(0.05)  # The handler is now waiting for the rest of the body.
            writer.transport.abort()
        async with asyncio.timeout(10):
            events = ("http.client_disconnected", "http.internal_error")
            while sum(e["event"] in events for e in logs) < 3:
                await asyncio.sleep(0.05)
    assert not [e for e in logs if e["event"] == "http.internal_error"], logs


@pytest.mark.parametrize(
    "path", ["/v1/verify", "/v1/witness/add-checkpoint", "/v1/audit/checkpoint"]
)
async def test_expectations_on_other_post_routes_get_problems_and_no_unwanted_100(
    gw: Gateway, path: str
) -> None:
    """aiohttp answers ``Expect`` before any middleware: 100 Continue for a declared body over
    the limit (sent only to be refused unread), and its own text/plain 417 for anything but
    100-continue. Neither: no 100 for a body that will not be read, an unknown expectation
    ignored (RFC 9110 10.1.1), and the answer is the route's own problem."""
    import asyncio

    port = int(gw.url.rsplit(":", 1)[1])
    for expect, length in (("100-continue", 50_000_000), ("x-unheard-of", 0)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nExpect: {expect}\r\n"
                f"Content-Length: {length}\r\n\r\n".encode()
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
        finally:
            writer.close()
        first = answer.split(b"\r\n", 1)[0]
        assert b" 100 " not in first and b" 417 " not in first, (expect, answer[:300])
        assert b"content-type: application/problem+json" in answer.lower(), (expect, answer)


async def test_a_readiness_check_that_hangs_is_reported_failed_not_waited_for(
    tmp_path: Path, provider: Provider
) -> None:
    """A connector plugin whose ready() never returns made /readyz hang (one more handler per
    probe) and named nothing; the check is given READY_CHECK_SECONDS and reported by name."""
    import asyncio

    from gateway.config import load
    from gateway.http import app as keys
    from gateway.http.app import create_app
    from gateway.testing import FakeConnector
    from tests.support import serving

    class Hanging(FakeConnector):
        async def ready(self) -> bool:
            await asyncio.sleep(3600)
            return True

    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    app = create_app(load(cfg))
    app[keys.CONNECTORS]["budget-proposal.v1"] = Hanging()  # the dict the pipeline uses too
    async with serving(app) as base:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{base}/readyz") as r:
            status, doc = r.status, await r.json()
    assert status == 503
    assert doc["checks"]["connector:budget-proposal.v1"].startswith("failed: no answer within")
    assert doc["checks"]["connector:citizen-lookup.v1"] == "ok"
    assert doc["checks"]["state"] == "ok" and doc["checks"]["audit"] == "ok"
