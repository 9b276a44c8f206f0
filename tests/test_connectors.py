"""Built-in connectors: ``http`` against a real aiohttp provider on 127.0.0.1, and ``demo``.

The provider below is a real server on a loopback port, so sockets, keep-alive, TLS, timeouts and
refused connections behave as in production. Time for the circuit breaker is injected through the
connector's ``clock`` keyword; nothing here patches the connectors' modules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import itertools
import json
import logging
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors._http11 import Http11Pool, HttpClientError, ProtocolError, _Parser
from connectors.demo import DemoConnector
from connectors.http import HttpConnector
from gateway.connector import (
    Connector,
    ConnectorContext,
    DeliveryFailed,
    DeliveryTimeout,
    OutboundMessage,
    SettingsError,
)
from gateway.crypto import devpki
from gateway.validation import CompiledSchema, compile_schema

ROOT = Path(__file__).resolve().parent.parent
CITIZEN_ID = "079203001234"
SECRET = "079203001234 Nguyễn Văn An"  # what a provider might put in an error body


def uuid7(ms: int, tail: int = 0x123456789ABC) -> str:
    """A UUIDv7 with a chosen millisecond timestamp (Python 3.11 has no uuid.uuid7)."""
    value = (ms << 80) | (0x7 << 76) | (0xABC << 64) | (0b10 << 62) | tail
    return str(uuid.UUID(int=value))


EXCHANGE_ID = uuid7(1_795_856_400_000)  # 2026-11-28T09:00:00Z


def message(
    payload: Any = None,
    *,
    service: str = "citizen-lookup.v1",
    exchange_id: str = EXCHANGE_ID,
    idempotency_key: str | None = None,
    timeout: float = 10.0,
) -> OutboundMessage:
    payload = (
        {"citizen_id": CITIZEN_ID, "purpose": "social-welfare"} if payload is None else payload
    )
    envelope = {"payload": "eyJ4IjoxfQ", "signatures": [{"protected": "e30", "signature": "AA"}]}
    return OutboundMessage(
        exchange_id=exchange_id,
        service=service,
        sender="hcm.quan-1",
        provider="central.dan-cu",
        payload=payload,
        envelope=envelope,
        envelope_bytes=json.dumps(envelope, separators=(",", ":")).encode(),
        idempotency_key=idempotency_key,
        timeout=timeout,
    )


def context(
    service: str = "citizen-lookup.v1", config_dir: str = "/nonexistent"
) -> ConnectorContext:
    return ConnectorContext(service=service, provider="central.dan-cu", config_dir=config_dir)


# --- the provider -------------------------------------------------------------------------------


class Provider:
    """A scriptable provider: records what it received, answers what the test asks."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/echo", self.echo)
        self.app.router.add_post("/status", self.by_status)
        self.app.router.add_post("/text", self.text)
        self.app.router.add_post("/raw/{kind}", self.raw)
        self.app.router.add_post("/big", self.big)
        self.app.router.add_post("/stream", self.stream)
        self.app.router.add_post("/slow", self.slow)
        self.app.router.add_post("/redirect", self.redirect)

    async def record(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = {
            "headers": dict(request.headers),
            "body": body,
            "peer_port": peer[1] if peer else None,
            "client_cert": bool(request.transport and request.transport.get_extra_info("peercert")),
        }
        self.requests.append(seen)
        return seen

    async def echo(self, request: web.Request) -> web.Response:
        seen = await self.record(request)
        return web.json_response(
            {
                "content_type": seen["headers"].get("Content-Type"),
                "exchange_id": seen["headers"].get("X-Exchange-Id"),
                "idempotency_key": seen["headers"].get("Idempotency-Key"),
                "custom": seen["headers"].get("X-Unit-Code"),
                "body_sha256": hashlib.sha256(seen["body"]).hexdigest(),
                "client_cert": seen["client_cert"],
            }
        )

    async def by_status(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.json_response({"error": SECRET}, status=self.status)

    async def text(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(text=SECRET)

    async def raw(self, request: web.Request) -> web.Response:
        await self.record(request)
        bodies = {
            "duplicate": b'{"status":"found","status":"not-found"}',
            "nan": b'{"value":NaN}',
            "broken": b'{"status":',
            "latin1": '{"name":"Nguyễn"}'.encode("utf-16"),
            "ok": b'{"status":"found"}',
            "deep": b'{"a":' * 150 + b"1" + b"}" * 150,
            "too-deep": b'{"a":' * 200 + b"1" + b"}" * 200,
        }
        return web.Response(
            body=bodies[request.match_info["kind"]], content_type="application/json"
        )

    async def big(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.json_response({"blob": "x" * 4000})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """No Content-Length: the connector must count bytes as they arrive."""
        await self.record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"blob":"')
        for _ in range(8):
            await response.write(b"x" * 1000)
        await response.write(b'"}')
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await self.record(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 5)
        return web.json_response({"late": True})

    async def redirect(self, request: web.Request) -> web.Response:
        await self.record(request)
        raise web.HTTPTemporaryRedirect("/echo")


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, TestServer]]:
    backend = Provider()
    server = TestServer(backend.app, host="127.0.0.1")
    await server.start_server()
    yield backend, server
    backend.release.set()
    await server.close()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """Build, start and (always) close HttpConnectors."""
    opened: list[HttpConnector] = []

    async def build(settings: dict[str, Any], **kwargs: Any) -> HttpConnector:
        connector = HttpConnector(settings, kwargs.pop("ctx", context()), **kwargs)
        await connector.start()
        opened.append(connector)
        return connector

    yield build
    for connector in opened:
        await connector.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- http: happy paths --------------------------------------------------------------------------


async def test_envelope_mode_posts_the_envelope_bytes_as_jose_json(provider, connect):
    _, server = provider
    connector = await connect(
        {"url": str(server.make_url("/echo")), "headers": {"X-Unit-Code": "H29"}}
    )
    sent = message(idempotency_key="key-1")
    result = await connector.deliver(sent)
    assert result.status == 200
    assert result.attempts == 1
    assert result.response == {
        "content_type": "application/jose+json",
        "exchange_id": EXCHANGE_ID,
        "idempotency_key": "key-1",
        "custom": "H29",
        "body_sha256": hashlib.sha256(sent.envelope_bytes).hexdigest(),
        "client_cert": False,
    }
    assert result.metadata["http_status"] == "200"


async def test_payload_mode_posts_the_payload_as_json(provider, connect):
    backend, server = provider
    connector = await connect({"url": str(server.make_url("/echo")), "send": "payload"})
    payload = {"citizen_id": CITIZEN_ID, "purpose": "social-welfare", "note": "Quận 1"}
    result = await connector.deliver(message(payload))
    assert result.response["content_type"] == "application/json"
    assert result.response["idempotency_key"] is None
    assert json.loads(backend.requests[0]["body"]) == payload


async def test_one_pooled_session_reuses_keep_alive_connections(provider, connect):
    backend, server = provider
    connector = await connect({"url": str(server.make_url("/echo"))})
    for _ in range(3):
        await connector.deliver(message())
    assert len({seen["peer_port"] for seen in backend.requests}) == 1


async def test_ready_follows_the_session_lifecycle(provider):
    _, server = provider
    connector = HttpConnector({"url": str(server.make_url("/echo"))}, context())
    assert isinstance(connector, Connector)
    assert not await connector.ready()
    await connector.start()
    assert await connector.ready()
    await connector.close()
    assert not await connector.ready()
    with pytest.raises(DeliveryFailed, match="not started"):
        await connector.deliver(message())


# --- http: failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 422, 500, 502, 503])
async def test_non_2xx_is_delivery_failed_with_the_status_and_no_body(provider, connect, status):
    backend, server = provider
    backend.status = status
    connector = await connect({"url": str(server.make_url("/status"))})
    with pytest.raises(DeliveryFailed) as caught:
        await connector.deliver(message())
    assert str(status) in str(caught.value)
    assert "079203" not in str(caught.value) and "Nguyễn" not in str(caught.value)


async def test_redirects_are_not_followed(provider, connect):
    backend, server = provider
    connector = await connect({"url": str(server.make_url("/redirect"))})
    with pytest.raises(DeliveryFailed, match="307"):
        await connector.deliver(message())
    assert len(backend.requests) == 1


async def test_non_json_content_type_is_refused(provider, connect):
    _, server = provider
    connector = await connect({"url": str(server.make_url("/text"))})
    with pytest.raises(DeliveryFailed, match="application/json") as caught:
        await connector.deliver(message())
    assert "079203" not in str(caught.value)


@pytest.mark.parametrize("kind", ["duplicate", "nan", "broken", "latin1"])
async def test_json_is_parsed_strictly(provider, connect, kind):
    """Duplicate keys (which value wins?), NaN, truncation and non-UTF-8 are all refused."""
    _, server = provider
    connector = await connect({"url": str(server.make_url(f"/raw/{kind}"))})
    with pytest.raises(DeliveryFailed, match="not valid JSON"):
        await connector.deliver(message())


async def test_an_answer_may_nest_as_deep_as_the_gateway_can_sign_and_no_deeper(provider, connect):
    """Answers were read with the senders' default depth (64): a provider's deeper answer was
    "not valid JSON", an error that sent operators looking for a broken provider. Now the
    limit is what canonicalization (and so the receipt) can take, and the message names it."""
    from gateway.connector import ANSWER_MAX_DEPTH
    from gateway.crypto.canonical import MAX_DEPTH

    assert ANSWER_MAX_DEPTH == MAX_DEPTH - 1
    _, server = provider
    connector = await connect({"url": str(server.make_url("/raw/deep"))})
    answer = (await connector.deliver(message())).response
    for _ in range(150):
        answer = answer["a"]
    assert answer == 1
    connector = await connect({"url": str(server.make_url("/raw/too-deep"))})
    with pytest.raises(DeliveryFailed, match=f"nested at most {ANSWER_MAX_DEPTH} deep"):
        await connector.deliver(message())


async def test_strict_parse_accepts_plain_json(provider, connect):
    _, server = provider
    connector = await connect({"url": str(server.make_url("/raw/ok"))})
    assert (await connector.deliver(message())).response == {"status": "found"}


@pytest.mark.parametrize("path", ["/big", "/stream"])
async def test_oversized_answers_are_refused(provider, connect, path):
    """Declared (Content-Length) or streamed (chunked): the cap holds either way."""
    _, server = provider
    connector = await connect({"url": str(server.make_url(path)), "max_response_bytes": 2000})
    with pytest.raises(DeliveryFailed, match="exceeds 2000 bytes"):
        await connector.deliver(message())


async def test_answers_under_the_cap_pass(provider, connect):
    _, server = provider
    connector = await connect({"url": str(server.make_url("/stream")), "max_response_bytes": 9000})
    assert len((await connector.deliver(message())).response["blob"]) == 8000


async def test_slow_provider_times_out_after_timeout_seconds(provider, connect):
    _, server = provider
    connector = await connect({"url": str(server.make_url("/slow")), "timeout_seconds": 0.3})
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout):
        await connector.deliver(message())
    assert 0.25 < time.monotonic() - started < 2


async def test_the_exchange_timeout_caps_the_connector_timeout(provider, connect):
    _, server = provider
    connector = await connect({"url": str(server.make_url("/slow")), "timeout_seconds": 10})
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout):
        await connector.deliver(message(timeout=0.2))
    assert time.monotonic() - started < 2


async def test_connect_refused_is_delivery_failed_without_retry_by_default(connect):
    connector = await connect({"url": f"http://127.0.0.1:{free_port()}/x", "retries": 3})
    with pytest.raises(DeliveryFailed, match=r"after 1 attempt\(s\)"):
        await connector.deliver(message())  # no idempotency key: never retried


async def test_connect_refused_is_retried_only_with_an_idempotency_key(connect):
    connector = await connect({"url": f"http://127.0.0.1:{free_port()}/x", "retries": 2})
    with pytest.raises(DeliveryFailed, match=r"after 3 attempt\(s\)"):
        await connector.deliver(message(idempotency_key="k"))


async def test_a_refusing_provider_is_a_failure_not_a_timeout_when_retries_outlast_the_budget(
    connect,
):
    """More back-off than budget: the refused connections are reported (502), not a 504.

    Back-off for 10 retries is far over 0.3 s; sleeping into the deadline and then calling it
    "did not answer in time" would blame a slow provider for one that is down.
    """
    url = f"http://127.0.0.1:{free_port()}/x"
    connector = await connect({"url": url, "retries": 10, "timeout_seconds": 0.3})
    with pytest.raises(DeliveryFailed, match="cannot connect to the provider"):
        await connector.deliver(message(idempotency_key="k"))


async def test_retry_reaches_a_provider_that_comes_up(connect):
    """First connect refused; the provider starts during the back-off; a retry gets through."""
    port = free_port()
    backend = Provider()
    server = TestServer(backend.app, host="127.0.0.1", port=port)
    connector = await connect({"url": f"http://127.0.0.1:{port}/echo", "retries": 4})

    async def start_later() -> None:
        await asyncio.sleep(0.02)
        await server.start_server()

    starter = asyncio.create_task(start_later())
    try:
        result = await connector.deliver(message(idempotency_key="k"))
        assert result.attempts >= 2
        assert result.response["idempotency_key"] == "k"
    finally:
        await starter
        await server.close()


# --- http: circuit breaker ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_after_n_failures_and_half_opens_after_the_open_period(
    provider, connect
):
    backend, server = provider
    backend.status = 503
    clock = FakeClock()
    connector = await connect(
        {
            "url": str(server.make_url("/status")),
            "circuit_breaker": {"failure_threshold": 3, "open_seconds": 30},
        },
        clock=clock,
    )
    for _ in range(3):
        with pytest.raises(DeliveryFailed, match="503"):
            await connector.deliver(message())
    with pytest.raises(DeliveryFailed, match="circuit breaker is open"):
        await connector.deliver(message())
    clock.now += 29.9
    with pytest.raises(DeliveryFailed, match="circuit breaker is open"):
        await connector.deliver(message())
    assert len(backend.requests) == 3  # open: the provider is left alone

    clock.now += 0.2  # half-open: one trial goes out; it fails, so the breaker opens again
    with pytest.raises(DeliveryFailed, match="503"):
        await connector.deliver(message())
    with pytest.raises(DeliveryFailed, match="circuit breaker is open"):
        await connector.deliver(message())
    assert len(backend.requests) == 4

    clock.now += 30.1  # half-open again; the provider has recovered: the trial closes it
    backend.status = 200
    assert (await connector.deliver(message())).status == 200
    assert (await connector.deliver(message())).status == 200
    assert len(backend.requests) == 6


async def test_breaker_counts_only_consecutive_failures(provider, connect):
    backend, server = provider
    connector = await connect(
        {"url": str(server.make_url("/status")), "circuit_breaker": {"failure_threshold": 2}},
        clock=FakeClock(),
    )
    for status in (500, 200, 500, 200, 500):
        backend.status = status
        try:
            await connector.deliver(message())
        except DeliveryFailed as exc:
            assert "circuit breaker" not in str(exc)


async def test_4xx_answers_do_not_open_the_breaker(provider, connect):
    """A provider refusing one request is up; only it failing should trip the breaker."""
    backend, server = provider
    backend.status = 404
    connector = await connect(
        {"url": str(server.make_url("/status")), "circuit_breaker": {"failure_threshold": 2}},
        clock=FakeClock(),
    )
    for _ in range(5):
        with pytest.raises(DeliveryFailed, match="404"):
            await connector.deliver(message())
    assert len(backend.requests) == 5


async def test_timeouts_count_as_breaker_failures(provider, connect):
    _, server = provider
    connector = await connect(
        {
            "url": str(server.make_url("/slow")),
            "timeout_seconds": 0.1,
            "circuit_breaker": {"failure_threshold": 1},
        },
        clock=FakeClock(),
    )
    with pytest.raises(DeliveryTimeout):
        await connector.deliver(message())
    with pytest.raises(DeliveryFailed, match="circuit breaker is open"):
        await connector.deliver(message())


# --- http: settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"url": "http://127.0.0.1/x", "timeout": 5}, "'timeout'"),
        ({"url": "http://127.0.0.1/x", "retry": 1}, "'retry'"),
        ({}, "'url'"),
        ({"url": "ftp://127.0.0.1/x"}, "'url'"),
        ({"url": "http:///x"}, "'url'"),
        ({"url": "http://127.0.0.1/x", "send": "body"}, "'send'"),
        ({"url": "http://127.0.0.1/x", "timeout_seconds": 0}, "'timeout_seconds'"),
        ({"url": "http://127.0.0.1/x", "timeout_seconds": True}, "'timeout_seconds'"),
        ({"url": "http://127.0.0.1/x", "connect_timeout_seconds": -1}, "'connect_timeout_seconds'"),
        ({"url": "http://127.0.0.1/x", "max_response_bytes": 1.5}, "'max_response_bytes'"),
        ({"url": "http://127.0.0.1/x", "retries": -1}, "'retries'"),
        ({"url": "http://127.0.0.1/x", "headers": {"Idempotency-Key": "x"}}, "'Idempotency-Key'"),
        ({"url": "http://127.0.0.1/x", "headers": {"X-A": "a\r\nX-B: b"}}, "'headers'"),
        ({"url": "http://127.0.0.1/x", "ca_file": "ca.pem"}, "https"),
        ({"url": "https://127.0.0.1/x", "client_cert": "c.pem"}, "'client_key'"),
        ({"url": "http://127.0.0.1/x", "circuit_breaker": {"failures": 3}}, "'circuit_breaker'"),
        (
            {"url": "http://127.0.0.1/x", "circuit_breaker": {"open_seconds": 0}},
            "'open_seconds'",
        ),
    ],
)
def test_bad_settings_are_refused_at_construction_naming_the_key(settings, named):
    with pytest.raises(SettingsError) as caught:
        HttpConnector(settings, context())
    assert named in str(caught.value)


# --- http: TLS ----------------------------------------------------------------------------------


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Test CA (development only)", ca_key, None, ca=True)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"{name}.test", key, (ca.subject, ca_key), server=server)
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return tmp_path


@pytest.fixture
async def tls_provider(pki: Path) -> AsyncIterator[tuple[Provider, TestServer]]:
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server_ssl.load_cert_chain(pki / "server.pem", pki / "server.key")
    server_ssl.verify_mode = ssl.CERT_REQUIRED
    backend = Provider()
    server = TestServer(backend.app, host="127.0.0.1", scheme="https")
    await server.start_server(ssl=server_ssl)
    yield backend, server
    await server.close()


async def test_mutual_tls_with_paths_relative_to_the_config_dir(tls_provider, pki, connect):
    _, server = tls_provider
    settings = {
        "url": str(server.make_url("/echo")),
        "ca_file": "ca.pem",
        "client_cert": "client.pem",
        "client_key": "client.key",
    }
    connector = await connect(settings, ctx=context(config_dir=str(pki)))
    result = await connector.deliver(message())
    assert result.response["client_cert"] is True


async def test_tls_without_the_client_certificate_fails(tls_provider, pki, connect):
    _, server = tls_provider
    settings = {"url": str(server.make_url("/echo")), "ca_file": "ca.pem"}
    connector = await connect(settings, ctx=context(config_dir=str(pki)))
    with pytest.raises(DeliveryFailed):
        await connector.deliver(message())


async def test_tls_with_an_unknown_server_ca_fails(tls_provider, pki, connect):
    _, server = tls_provider
    settings = {
        "url": str(server.make_url("/echo")),
        "client_cert": "client.pem",
        "client_key": "client.key",
    }
    connector = await connect(settings, ctx=context(config_dir=str(pki)))
    with pytest.raises(DeliveryFailed, match="TLS"):
        await connector.deliver(message())


def test_missing_tls_files_are_a_settings_error_when_the_connector_is_built(pki):
    """Built, not started: the start-up check of `gateway serve` builds connectors only."""
    with pytest.raises(SettingsError, match="TLS files"):
        HttpConnector(
            {"url": "https://127.0.0.1/x", "ca_file": "missing.pem"}, context(config_dir=str(pki))
        )


# --- demo ---------------------------------------------------------------------------------------

SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")
_SCHEMAS: dict[str, CompiledSchema] = {}


def response_schema(service: str) -> CompiledSchema:
    if service not in _SCHEMAS:
        path = ROOT / "schemas" / f"{service}.response.json"
        _SCHEMAS[service] = compile_schema(json.loads(path.read_text("utf-8")), source=str(path))
    return _SCHEMAS[service]


def example(service: str) -> Any:
    return json.loads((ROOT / "schemas" / "examples" / f"{service}.json").read_text("utf-8"))


async def demo_answer(service: str, payload: Any, **kwargs: Any) -> Any:
    connector = DemoConnector({}, context(service))
    await connector.start()
    try:
        result = await connector.deliver(message(payload, service=service, **kwargs))
    finally:
        await connector.close()
    return result.response


@pytest.mark.parametrize("service", SERVICES)
async def test_demo_answers_the_examples_with_schema_valid_responses(service):
    answer = await demo_answer(service, example(service))
    response_schema(service).validate(answer)


@pytest.mark.parametrize("service", SERVICES)
async def test_demo_is_deterministic_for_the_same_exchange(service):
    first = await demo_answer(service, example(service))
    assert await demo_answer(service, example(service)) == first


async def test_demo_takes_its_time_from_the_uuid7_exchange_id():
    answer = await demo_answer("pilot-progress-report.v1", example("pilot-progress-report.v1"))
    assert answer["received_at"] == "2026-11-28T09:00:00Z"


async def test_demo_falls_back_to_its_clock_for_other_exchange_ids():
    fixed = dt.datetime(2026, 11, 28, 16, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    connector = DemoConnector({"service": "budget-proposal"}, context(), clock=lambda: fixed)
    await connector.start()
    sent = message(example("budget-proposal.v1"), exchange_id="not-a-uuid")
    result = await connector.deliver(sent)
    assert result.response["received_at"] == "2026-11-28T09:30:00Z"


async def test_demo_ids_derive_from_the_exchange_id():
    payload = example("budget-proposal.v1")
    one = await demo_answer("budget-proposal.v1", payload, exchange_id=uuid7(1, 1))
    two = await demo_answer("budget-proposal.v1", payload, exchange_id=uuid7(1, 2))
    assert one["proposal_id"] != two["proposal_id"]
    assert one["proposal_id"].startswith("DT2027-")


async def test_demo_citizen_record_agrees_with_the_id_structure():
    answer = await demo_answer("citizen-lookup.v1", {"citizen_id": CITIZEN_ID, "purpose": "x"})
    assert answer["status"] == "found"
    assert answer["gender"] == "male"  # century digit 2: male, born 2000-2099
    assert answer["date_of_birth"].startswith("2003-")
    assert answer["permanent_address"]["province"] == "Thành phố Hồ Chí Minh"
    female = await demo_answer("citizen-lookup.v1", {"citizen_id": "079185004321", "purpose": "x"})
    assert female["gender"] == "female"
    assert female["date_of_birth"].startswith("1985-")


async def test_demo_returns_only_the_requested_fields_and_always_the_name():
    payload = {"citizen_id": CITIZEN_ID, "purpose": "x", "requested_fields": ["date_of_birth"]}
    answer = await demo_answer("citizen-lookup.v1", payload)
    assert set(answer) == {"citizen_id", "status", "checked_at", "full_name", "date_of_birth"}
    response_schema("citizen-lookup.v1").validate(answer)


@pytest.mark.parametrize("citizen_id", ["079203000000", "079503001234", "079019001234"])
async def test_demo_not_found_ids_return_no_personal_fields(citizen_id):
    answer = await demo_answer("citizen-lookup.v1", {"citizen_id": citizen_id, "purpose": "x"})
    assert answer == {
        "citizen_id": citizen_id,
        "status": "not-found",
        "checked_at": "2026-11-28T09:00:00Z",
    }
    response_schema("citizen-lookup.v1").validate(answer)


@settings(max_examples=200, deadline=None)
@given(
    citizen_id=st.from_regex(r"\A[0-9]{12}\Z"),
    fields=st.none() | st.lists(st.sampled_from(["gender", "current_address"]), unique=True),
)
async def test_demo_citizen_answers_always_validate(citizen_id, fields):
    payload: dict[str, Any] = {"citizen_id": citizen_id, "purpose": "social-welfare"}
    if fields:
        payload["requested_fields"] = fields
    answer = await demo_answer("citizen-lookup.v1", payload)
    response_schema("citizen-lookup.v1").validate(answer)
    assert answer == await demo_answer("citizen-lookup.v1", payload)


async def test_demo_budget_with_a_wrong_total_is_returned_with_a_reason():
    payload = example("budget-proposal.v1")
    payload["total_vnd"] += 1
    answer = await demo_answer("budget-proposal.v1", payload)
    assert answer["status"] == "returned"
    assert answer["reasons"]
    response_schema("budget-proposal.v1").validate(answer)


def test_demo_service_setting_overrides_the_context():
    connector = DemoConnector({"service": "citizen-lookup"}, context("something-else.v1"))
    assert isinstance(connector, Connector)


@pytest.mark.parametrize(
    ("settings", "service"),
    [
        ({"service": "tax-lookup"}, "citizen-lookup.v1"),
        ({}, "tax-lookup.v1"),
        ({"latency": 1}, "x"),
    ],
)
def test_demo_refuses_unknown_services_and_settings(settings, service):
    with pytest.raises(SettingsError):
        DemoConnector(settings, context(service))


async def test_demo_malformed_request_fails_without_echoing_it():
    with pytest.raises(DeliveryFailed) as caught:
        await demo_answer("budget-proposal.v1", {"citizen_id": CITIZEN_ID})
    assert CITIZEN_ID not in str(caught.value)


# --- http: the HTTP/1.1 client under the connector (connectors/_http11.py) -----------------------
#
# A raw provider on 127.0.0.1 answers byte for byte what each test scripts, so keep-alive, framing,
# malformed answers and connections dropped at awkward moments can be produced exactly.

JSON_OK = b'{"status":"found"}'
_CT = "Content-Type: application/json\r\n"
_CHUNKED = f"HTTP/1.1 200 OK\r\n{_CT}Transfer-Encoding: chunked\r\n\r\n"


def answer(
    body: bytes = JSON_OK, *, status: str = "200 OK", version: str = "HTTP/1.1", extra: str = ""
) -> bytes:
    head = (
        f"{version} {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class RawProvider:
    """Counts connections and requests; ``script(provider, reader, writer, index)`` answers.

    The script returns whether to keep reading requests on that connection.
    """

    def __init__(self, script: Callable[..., Any]) -> None:
        self.script = script
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawProvider:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests.append(head + body)
                if not await self.script(self, reader, writer, len(self.requests)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # still in a script when the test ended
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def replying(*chunks: bytes, keep: bool = True, pause: float = 0.0) -> Callable[..., Any]:
    """A script writing ``chunks`` (flushed one by one, ``pause`` apart) for every request."""

    async def script(
        _provider: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _index: int
    ) -> bool:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return keep

    return script


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Any]]:
    started: list[RawProvider] = []

    async def build(script: Callable[..., Any]) -> RawProvider:
        provider = await RawProvider(script).start()
        started.append(provider)
        return provider

    yield build
    for provider in started:
        await provider.close()


@pytest.fixture
def loop_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """What asyncio logged at ERROR (exceptions in callbacks, futures never retrieved...)."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_keep_alive_one_connection_serves_sequential_requests(raw, connect, loop_errors):
    provider = await raw(replying(answer()))
    connector = await connect({"url": provider.url()})
    for _ in range(20):
        assert (await connector.deliver(message())).response == {"status": "found"}
    assert (provider.connections, len(provider.requests)) == (1, 20)
    assert not loop_errors()


async def test_the_request_carries_the_managed_headers(raw, connect):
    provider = await raw(replying(answer()))
    connector = await connect(
        {"url": provider.url("/api/v1/lookup?x=1"), "headers": {"X-Unit-Code": "H29"}}
    )
    await connector.deliver(message(idempotency_key="key-1"))
    head, _, body = provider.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v1/lookup?x=1 HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Host"] == f"127.0.0.1:{provider.port}"
    assert fields["Content-Type"] == "application/jose+json"
    assert fields["Content-Length"] == str(len(body)) == str(len(message().envelope_bytes))
    assert fields["X-Exchange-Id"] == EXCHANGE_ID
    assert fields["Idempotency-Key"] == "key-1"
    assert fields["X-Unit-Code"] == "H29"
    assert fields["Accept-Encoding"] == "identity"  # no compressed answers to inflate
    assert "Connection" not in fields and "Transfer-Encoding" not in fields


async def test_configured_headers_replace_the_default_ones(raw, connect):
    provider = await raw(replying(answer()))
    connector = await connect({"url": provider.url(), "headers": {"user-agent": "unit-h29"}})
    await connector.deliver(message())
    head = provider.requests[0].partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"\r\nuser-agent: ") == 1
    assert b"\r\nuser-agent: unit-h29\r\n" in head


async def test_credentials_in_the_url_are_sent_as_basic_auth(provider, connect):
    backend, server = provider
    url = str(server.make_url("/echo")).replace("http://", "http://unit%40hcm:s%3Acret@")
    connector = await connect({"url": url})
    await connector.deliver(message())
    expected = "Basic " + base64.b64encode(b"unit@hcm:s:cret").decode()
    assert backend.requests[0]["headers"]["Authorization"] == expected


@pytest.mark.parametrize(
    ("version", "extra", "connections"),
    [
        ("HTTP/1.1", "Connection: close\r\n", 3),
        ("HTTP/1.1", "Connection: Keep-Alive, CLOSE\r\n", 3),
        ("HTTP/1.0", "", 3),  # HTTP/1.0 closes unless it says keep-alive
        ("HTTP/1.0", "Connection: keep-alive\r\n", 1),
        ("HTTP/1.1", "Connection: keep-alive\r\n", 1),
    ],
)
async def test_connections_are_reused_only_when_the_answer_allows_it(
    raw, connect, version, extra, connections
):
    reusable = connections == 1

    async def script(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> bool:
        writer.write(answer(version=version, extra=extra))
        await writer.drain()
        return reusable  # a provider that says close, closes

    provider = await raw(script)
    connector = await connect({"url": provider.url()})
    for _ in range(3):
        assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == connections


async def test_chunked_answers_are_reassembled_across_reads(raw, connect, loop_errors):
    head = _CHUNKED.encode()
    provider = await raw(
        replying(
            head,
            b"5;name=value\r\n" + b'{"sta',
            b"\r\nD\r",
            b'\ntus":"found"}\r\n',
            b"0\r\nX-Checksum: abc\r\n",
            b"\r\n",
            pause=0.005,
        )
    )
    connector = await connect({"url": provider.url()})
    for _ in range(2):
        assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == 1  # trailers read to the end: the connection stays usable
    assert not loop_errors()


async def test_a_chunk_declared_over_the_cap_is_refused_before_it_is_read(raw, connect):
    head = _CHUNKED.encode()
    provider = await raw(replying(head + b"100000\r\n" + b"x" * 100))
    connector = await connect({"url": provider.url(), "max_response_bytes": 4096})
    for _ in range(2):
        with pytest.raises(DeliveryFailed, match="exceeds 4096 bytes"):
            await connector.deliver(message())
    assert provider.connections == 2  # an unread body: that connection is never reused


async def test_the_cap_is_checked_after_the_status_and_the_media_type(raw, connect):
    big = b"x" * 5000
    provider = await raw(replying(answer(big, status="503 Service Unavailable")))
    connector = await connect({"url": provider.url(), "max_response_bytes": 1000})
    with pytest.raises(DeliveryFailed, match="503"):
        await connector.deliver(message())


async def test_a_provider_closing_an_idle_connection_costs_nothing(raw, connect, loop_errors):
    async def script(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> bool:
        writer.write(answer())
        await writer.drain()
        await asyncio.sleep(0.01)
        return False  # its keep-alive timeout: it closes once the answer is out

    provider = await raw(script)
    connector = await connect({"url": provider.url()})
    for _ in range(3):
        assert (await connector.deliver(message())).response == {"status": "found"}
        await asyncio.sleep(0.05)
    assert (provider.connections, len(provider.requests)) == (3, 3)  # each sent exactly once
    assert not loop_errors()


async def test_a_reset_idle_connection_is_skipped(raw, connect, loop_errors):
    async def script(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> bool:
        writer.write(answer())
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST
        return False

    provider = await raw(script)
    connector = await connect({"url": provider.url()})
    await connector.deliver(message())
    await asyncio.sleep(0.05)
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert (provider.connections, len(provider.requests)) == (2, 2)
    assert not loop_errors()


class ResettingProvider:
    """A provider in its own thread: answers one request per connection, then resets it (RST).

    In another thread, the reset reaches the client's socket while the client's event loop is
    held (``time.sleep``), so the client cannot have seen it before it writes the next request.
    With ``rst=False`` it closes normally instead (FIN).
    """

    def __init__(self, *, rst: bool = True) -> None:
        self.rst = rst
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.reset = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(message().envelope_bytes):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                conn.sendall(answer())
                time.sleep(0.02)  # the client has read the answer
                if self.rst:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.reset.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


async def test_a_write_that_fails_on_a_reset_idle_connection_goes_out_once_on_a_new_one(
    connect, loop_errors
):
    """The reset is not seen yet when the request is written: the write fails, nothing was sent."""
    provider = ResettingProvider()
    try:
        connector = await connect({"url": f"http://127.0.0.1:{provider.port}/x"})
        await connector.deliver(message())
        assert provider.reset.wait(2)  # the event loop is held from here to the next write
        assert (await connector.deliver(message())).response == {"status": "found"}
        assert (provider.connections, provider.requests) == (2, 2)
        assert not loop_errors()
    finally:
        provider.close()


async def test_a_connection_idle_for_a_while_is_checked_before_it_is_used(connect, loop_errors):
    """A close that came in while the loop was busy is noticed before the next request goes out.

    Without the check the request would be written into a connection the provider has closed, and
    fail (it cannot be retried: the provider might have read it).
    """
    provider = ResettingProvider(rst=False)
    try:
        connector = await connect({"url": f"http://127.0.0.1:{provider.port}/x"})
        await connector.deliver(message())
        assert provider.reset.wait(2)
        time.sleep(1.1)  # the loop is held; the connection has been idle over a second
        assert (await connector.deliver(message())).response == {"status": "found"}
        assert (provider.connections, provider.requests) == (2, 2)
        assert not loop_errors()
    finally:
        provider.close()


async def test_a_request_cancelled_while_waiting_for_a_connection_frees_its_turn(raw, loop_errors):
    async def slow(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _i: int
    ) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer())
        await writer.drain()
        return True

    provider = await raw(slow)
    pool = Http11Pool(provider.url(""), ssl_context=None, limit=1, connect_timeout=1)

    def request() -> Any:
        return pool.request("POST", "/x", [], b"{}", max_response_bytes=100)

    try:
        first = asyncio.create_task(request())
        waiting = [asyncio.create_task(request()) for _ in range(3)]
        await asyncio.sleep(0.01)
        waiting[0].cancel()
        waiting[1].cancel()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "Response", "CancelledError", "CancelledError", "Response"
        ]  # fmt: skip
        assert (await request()).status == 200
        assert provider.connections == 1
    finally:
        await pool.close()
    assert not loop_errors()


async def test_a_request_that_may_have_been_read_is_never_sent_twice(raw, connect, loop_errors):
    """The provider reads the second request and drops the connection without an answer."""

    async def script(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> bool:
        if index == 2:
            return False
        writer.write(answer())
        await writer.drain()
        return True

    provider = await raw(script)
    connector = await connect({"url": provider.url(), "retries": 3})
    await connector.deliver(message(idempotency_key="k"))
    with pytest.raises(DeliveryFailed, match="connection failed") as caught:
        await connector.deliver(message(idempotency_key="k"))
    assert "before answering" in str(caught.value)
    assert len(provider.requests) == 2
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == 2
    assert not loop_errors()


async def test_a_provider_closing_mid_response_fails_the_delivery(raw, connect, loop_errors):
    async def script(
        _p: RawProvider, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> bool:
        if index == 1:
            writer.write(answer(b'{"status":"found", "padding": "........."}')[:-20])
            await writer.drain()
            return False
        writer.write(answer())
        await writer.drain()
        return True

    provider = await raw(script)
    connector = await connect({"url": provider.url()})
    with pytest.raises(DeliveryFailed, match="mid-response"):
        await connector.deliver(message())
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == 2
    assert not loop_errors()


MALFORMED = {
    "te-and-cl": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"
    "\r\n2\r\n{}\r\n0\r\n\r\n",
    "conflicting-cl": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}",
    "cl-list": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length: 2, 3\r\n\r\n{{}}",
    "signed-cl": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length: +2\r\n\r\n{{}}",
    "space-before-colon": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length : 2\r\n\r\n{{}}",
    "obs-fold": f"HTTP/1.1 200 OK\r\n{_CT}X-Note: one\r\n two\r\nContent-Length: 2\r\n\r\n{{}}",
    "nul-in-value": f"HTTP/1.1 200 OK\r\n{_CT}X-Note: a\x00b\r\nContent-Length: 2\r\n\r\n{{}}",
    "bare-cr": f"HTTP/1.1 200 OK\r\n{_CT}X-Note: a\rb\r\nContent-Length: 2\r\n\r\n{{}}",
    "bare-lf": "HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 2\n\n{}",
    "no-colon": f"HTTP/1.1 200 OK\r\n{_CT}Content-Length 2\r\n\r\n{{}}",
    "http2-status": f"HTTP/2.0 200 OK\r\n{_CT}Content-Length: 2\r\n\r\n{{}}",
    "http09": "{}",
    "four-digit-status": f"HTTP/1.1 2000 OK\r\n{_CT}Content-Length: 2\r\n\r\n{{}}",
    "status-out-of-range": f"HTTP/1.1 099 Odd\r\n{_CT}Content-Length: 2\r\n\r\n{{}}",
    "bad-chunk-size": _CHUNKED + "zz\r\n{}\r\n",
    "hex-prefix-chunk": _CHUNKED + "0x2\r\n{}\r\n",
    "chunk-without-crlf": _CHUNKED + "2\r\n{}XX",
    "chunk-space-no-ext": _CHUNKED + "2 \r\n{}\r\n",
    "gzip-coding": f"HTTP/1.1 200 OK\r\n{_CT}Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{{}}\r\n",
    "te-in-http10": f"HTTP/1.0 200 OK\r\n{_CT}Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n",
    "switching": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "huge-head": f"HTTP/1.1 200 OK\r\n{_CT}X-Pad: {'a' * 70000}\r\nContent-Length: 2\r\n\r\n{{}}",
    "many-fields": "HTTP/1.1 200 OK\r\n" + "X-A: b\r\n" * 200 + "Content-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_malformed_answers_are_refused_cleanly(raw, connect, loop_errors, kind):
    """Refused with a reason (never the answer's bytes), and that connection is dropped."""
    provider = await raw(replying((MALFORMED[kind] + SECRET).encode()))
    connector = await connect({"url": provider.url(), "timeout_seconds": 2})
    for _ in range(2):
        with pytest.raises(DeliveryFailed) as caught:
            await connector.deliver(message())
        assert "079203" not in str(caught.value) and "Nguyễn" not in str(caught.value)
    assert provider.connections == 2
    assert not loop_errors()


@pytest.mark.parametrize(
    "raw_answer",
    [
        answer(extra="Content-Length: 18\r\n"),  # the same length twice is one length
        b"HTTP/1.1 100 Continue\r\n\r\n" + answer(),  # interim answers are skipped
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(),
        answer(extra="X-Empty:\r\nX-Spaces:   padded \t\r\n"),
        b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\nContent-Length: 18"
        b"\r\n\r\n" + JSON_OK,
        b"HTTP/1.1 200\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n" + JSON_OK,
    ],
)
async def test_unusual_but_valid_answers_are_accepted(raw, connect, raw_answer):
    provider = await raw(replying(raw_answer))
    connector = await connect({"url": provider.url()})
    for _ in range(2):
        assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == 1


async def test_an_answer_delimited_by_the_close_is_read_to_the_end(raw, connect):
    body = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + JSON_OK
    provider = await raw(replying(body, keep=False))
    connector = await connect({"url": provider.url()})
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert provider.connections == 2


async def test_a_compressed_answer_is_refused(raw, connect):
    provider = await raw(replying(answer(extra="Content-Encoding: gzip\r\n")))
    connector = await connect({"url": provider.url()})
    with pytest.raises(DeliveryFailed, match="content-coding"):
        await connector.deliver(message())


async def test_a_timed_out_connection_is_closed_not_reused(provider, connect, loop_errors):
    backend, server = provider
    connector = await connect({"url": str(server.make_url("/slow")), "timeout_seconds": 0.2})
    with pytest.raises(DeliveryTimeout):
        await connector.deliver(message())
    backend.release.set()
    result = await connector.deliver(message())
    assert result.response == {"late": True}
    assert len({seen["peer_port"] for seen in backend.requests}) == 2
    assert not loop_errors()


async def test_a_cancelled_delivery_closes_its_connection(raw, connect, loop_errors):
    async def script(
        _p: RawProvider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> bool:
        if index == 1:  # no answer: wait for the client to give up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), 5)
            return False
        writer.write(answer())
        await writer.drain()
        return True

    provider = await raw(script)
    connector = await connect({"url": provider.url()})
    task = asyncio.create_task(connector.deliver(message()))
    while not provider.requests:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if not provider.open_now:
            break
        await asyncio.sleep(0.01)
    assert provider.open_now == 0  # the provider saw the connection go
    assert (await connector.deliver(message())).response == {"status": "found"}
    assert not loop_errors()


async def test_max_connections_bounds_the_pool(raw, connect):
    provider = await raw(replying(answer(), pause=0.01))
    connector = await connect({"url": provider.url(), "max_connections": 2})
    results = await asyncio.gather(*(connector.deliver(message()) for _ in range(8)))
    assert all(r.response == {"status": "found"} for r in results)
    assert provider.most_open == 2 and provider.connections == 2


def _sockets_held_to(port: int) -> int:
    """Established TCP sockets to 127.0.0.1:``port`` that this process still holds by a descriptor.

    From /proc/self/net/tcp: a socket the process closed but the kernel still flushes has no inode.
    """
    held = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rpartition(":")[2], 16) == port and fields[3] == "01" and fields[9] != "0":
            held += 1
    return held


async def _until_no_socket_held_to(port: int) -> None:
    """Give the loop half a second (50 short turns) to drop them; then none may be held."""
    for _ in range(50):
        if not _sockets_held_to(port):
            break
        await asyncio.sleep(0.01)
    assert _sockets_held_to(port) == 0


async def test_a_request_the_provider_never_reads_is_dropped_not_flushed_forever(loop_errors):
    """The provider answers after the request head and never reads the (large) body.

    The answer is complete, but most of the request still sits in the client's write buffer:
    closing that connection gracefully would wait for a peer that never reads, holding a socket
    and the buffer outside ``max_connections``, one more per exchange.
    """
    held: list[asyncio.StreamWriter] = []

    async def answer_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never read again
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer())
            await writer.drain()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small receive window
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = await asyncio.start_server(answer_at_once, sock=listener)
    port = listener.getsockname()[1]
    big = dataclasses.replace(message(), envelope_bytes=b'{"p":"' + b"x" * (16 << 20) + b'"}')
    settings = {"url": f"http://127.0.0.1:{port}/x", "max_connections": 1}
    connector = HttpConnector(settings, context())
    await connector.start()
    try:
        for _ in range(3):
            assert (await connector.deliver(big)).response == {"status": "found"}
        await _until_no_socket_held_to(port)
    finally:
        await connector.close()
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
    assert not loop_errors()


async def test_closing_the_connector_closes_its_connections(raw, loop_errors):
    provider = await raw(replying(answer()))
    connector = HttpConnector({"url": provider.url()}, context())
    await connector.start()
    await connector.deliver(message())
    await connector.close()
    for _ in range(50):
        if not provider.open_now:
            break
        await asyncio.sleep(0.01)
    assert provider.open_now == 0
    assert not await connector.ready()
    assert not loop_errors()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "a\r\nX-Injected: b"),
        ("X-A", "a\nb"),
        ("X-A", "a\x00b"),
        ("X A", "b"),
        ("X-A:", "b"),
        ("", "b"),
        ("Host", "elsewhere"),
        ("transfer-encoding", "chunked"),
    ],
)
async def test_the_client_refuses_header_injection(name, value):
    pool = Http11Pool("http://127.0.0.1:9", ssl_context=None, limit=1, connect_timeout=1)
    with pytest.raises(ValueError):
        await pool.request("POST", "/x", {name: value}, b"{}", max_response_bytes=100)
    with pytest.raises(ValueError):
        await pool.request("POST", "/x y", {}, b"{}", max_response_bytes=100)
    await pool.close()


async def test_a_head_answer_has_no_body_whatever_it_declares(raw):
    provider = await raw(replying(answer(b"")[:-2] + b"Content-Length: 18\r\n\r\n"))
    pool = Http11Pool(provider.url(""), ssl_context=None, limit=1, connect_timeout=1)
    try:
        response = await pool.request("HEAD", "/x", [], b"", max_response_bytes=100)
        assert (response.status, response.body) == (200, b"")
        assert b"Content-Length" not in provider.requests[0]
    finally:
        await pool.close()


def test_protocol_errors_are_http_client_errors():
    assert issubclass(ProtocolError, HttpClientError)


# --- http: TLS with the development PKI ---------------------------------------------------------


@pytest.fixture
def dev_pki(tmp_path: Path) -> Path:
    """gateway.crypto.devpki: a development CA, a server certificate for 127.0.0.1, a client."""
    now = dt.datetime.now(dt.UTC)
    ca_key, ca = devpki.make_ca("Test", now=now)
    server_key, server = devpki.issue(
        ca_key, ca, "provider.test", now=now, purposes=("server_auth",), ip_addresses=("127.0.0.1",)
    )
    client_key, client = devpki.issue(ca_key, ca, "hcm.gateway", now=now, purposes=("client_auth",))
    for name, key, cert in (("server", server_key, server), ("client", client_key, client)):
        (tmp_path / f"{name}.pem").write_bytes(devpki.pem_certificate(cert))
        (tmp_path / f"{name}.key").write_bytes(devpki.pem_private_key(key))
    (tmp_path / "ca.pem").write_bytes(devpki.pem_certificate(ca))
    return tmp_path


@pytest.fixture
async def dev_tls_provider(dev_pki: Path) -> AsyncIterator[tuple[Provider, TestServer]]:
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=dev_pki / "ca.pem")
    server_ssl.load_cert_chain(dev_pki / "server.pem", dev_pki / "server.key")
    server_ssl.verify_mode = ssl.CERT_REQUIRED
    backend = Provider()
    server = TestServer(backend.app, host="127.0.0.1", scheme="https")
    await server.start_server(ssl=server_ssl)
    yield backend, server
    await server.close()


def _mtls(url: str) -> dict[str, Any]:
    client = {"client_cert": "client.pem", "client_key": "client.key"}
    return {"url": url, "ca_file": "ca.pem", **client}


async def test_mutual_tls_with_devpki_reuses_one_tls_connection(
    dev_tls_provider, dev_pki, connect, loop_errors
):
    backend, server = dev_tls_provider
    url = str(server.make_url("/echo"))
    connector = await connect(_mtls(url), ctx=context(config_dir=str(dev_pki)))
    for _ in range(5):
        assert (await connector.deliver(message())).response["client_cert"] is True
    assert len({seen["peer_port"] for seen in backend.requests}) == 1
    await connector.close()
    assert not loop_errors()


async def test_tls_checks_the_provider_name(dev_tls_provider, dev_pki, connect):
    """The certificate names 127.0.0.1 only: the same server reached as localhost is refused."""
    _, server = dev_tls_provider
    url = f"https://localhost:{server.port}/echo"
    connector = await connect(_mtls(url), ctx=context(config_dir=str(dev_pki)))
    with pytest.raises(DeliveryFailed, match="TLS"):
        await connector.deliver(message())


async def test_tls_with_chunked_answers_and_timeouts(dev_tls_provider, dev_pki, connect):
    backend, server = dev_tls_provider
    settings = _mtls(str(server.make_url("/stream"))) | {"max_response_bytes": 9000}
    connector = await connect(settings, ctx=context(config_dir=str(dev_pki)))
    assert len((await connector.deliver(message())).response["blob"]) == 8000
    slow = _mtls(str(server.make_url("/slow"))) | {"timeout_seconds": 0.2}
    slow_connector = await connect(slow, ctx=context(config_dir=str(dev_pki)))
    with pytest.raises(DeliveryTimeout):
        await slow_connector.deliver(message())
    backend.release.set()


async def test_a_tls_connection_not_kept_alive_is_dropped_at_once(dev_pki, connect, loop_errors):
    """The provider says ``Connection: close``, then neither closes nor answers close_notify.

    Nothing more is owed to it once the answer is in; waiting for its close_notify (asyncio
    waits up to 30 s) would hold one more socket per exchange, outside ``max_connections``.
    """
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(dev_pki / "server.pem", dev_pki / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                raw_conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(raw_conn)  # never read again, never closed while the test runs
            with contextlib.suppress(OSError):
                raw_conn.settimeout(5)
                conn = server_ssl.wrap_socket(raw_conn, server_side=True)
                held.append(conn)
                data = b""
                while not data.endswith(message().envelope_bytes):
                    data += conn.recv(65536)
                conn.sendall(answer(extra="Connection: close\r\n"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        settings = {"url": f"https://127.0.0.1:{port}/x", "ca_file": "ca.pem", "max_connections": 1}
        connector = await connect(settings, ctx=context(config_dir=str(dev_pki)))
        for _ in range(3):
            assert (await connector.deliver(message())).response == {"status": "found"}
        await _until_no_socket_held_to(port)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()
    assert not loop_errors()


# --- http: the same client on uvloop (what production runs) ------------------------------------


def test_the_client_behaves_the_same_on_uvloop(loop_errors):
    """Keep-alive, a close mid-response, cancellation and a failed write, on uvloop."""

    async def scenario() -> None:
        async def script(
            _p: RawProvider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
        ) -> bool:
            if index == 4:  # close mid-response
                writer.write(answer()[:-5])
                await writer.drain()
                return False
            if index == 6:  # no answer: wait for the client to give up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), 5)
                return False
            writer.write(answer())
            await writer.drain()
            return True

        provider = await RawProvider(script).start()
        connector = HttpConnector({"url": provider.url()}, context())
        await connector.start()
        resetting = ResettingProvider()
        resets = HttpConnector({"url": f"http://127.0.0.1:{resetting.port}/x"}, context())
        await resets.start()
        try:
            for _ in range(3):
                await connector.deliver(message())
            assert provider.connections == 1
            with pytest.raises(DeliveryFailed, match="mid-response"):
                await connector.deliver(message())  # 4
            await connector.deliver(message())  # 5
            with pytest.raises(DeliveryTimeout):
                await connector.deliver(message(timeout=0.1))  # 6
            await connector.deliver(message())  # 7
            assert (provider.connections, len(provider.requests)) == (3, 7)

            await resets.deliver(message())
            assert resetting.reset.wait(2)  # the loop is held: the write finds the reset
            await resets.deliver(message())
            assert (resetting.connections, resetting.requests) == (2, 2)
        finally:
            await connector.close()
            await resets.close()
            resetting.close()
            await provider.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
    assert not loop_errors()


# --- http: the response parser, property-based ----------------------------------------------------

_VALID_ANSWERS = [
    answer(),
    answer(b"", status="204 No Content"),
    _CHUNKED.encode() + b'3;x=1\r\n{"s\r\nF\r\ntatus":"found"}\r\n0\r\nTrailer-A: b\r\n\r\n',
    b"HTTP/1.1 100 Continue\r\n\r\n" + answer(extra="X-Dup: a\r\nX-Dup: b\r\n"),
]


def _parse_in_pieces(raw: bytes, cuts: list[int]) -> tuple[int, dict[str, str], bytes, bool]:
    parser = _Parser(1 << 20, head_only=False)
    done = False
    edges = [0, *sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]
    for start, end in itertools.pairwise(edges):
        if end > start:
            assert not done  # complete only once the last byte is in
            done = parser.feed(raw[start:end])
    assert done
    response = parser.response()
    return response.status, response.headers, response.body, parser.keep_alive


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(_VALID_ANSWERS) - 1), cuts=st.lists(st.integers(0, 400)))
def test_an_answer_parses_the_same_however_it_is_split(which, cuts):
    raw_answer = _VALID_ANSWERS[which]
    assert _parse_in_pieces(raw_answer, cuts) == _parse_in_pieces(raw_answer, [])


@settings(max_examples=500, deadline=None)
@given(
    which=st.integers(0, len(_VALID_ANSWERS) - 1),
    at=st.integers(0, 400),
    junk=st.binary(min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_a_damaged_answer_fails_only_with_the_clients_own_errors(which, at, junk, cuts):
    """Bytes replaced anywhere: a complete answer, more to read, or an HttpClientError."""
    raw_answer = bytearray(_VALID_ANSWERS[which])
    at %= len(raw_answer)
    raw_answer[at : at + len(junk)] = junk
    parser = _Parser(1 << 20, head_only=False)
    edges = [0, *sorted({c % (len(raw_answer) + 1) for c in cuts}), len(raw_answer)]
    try:
        for start, end in itertools.pairwise(edges):
            if parser.feed(bytes(raw_answer[start:end])):
                break
        parser.feed_eof()
    except HttpClientError:
        pass
