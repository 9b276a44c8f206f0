"""Built-in connectors: ``http`` against a real aiohttp provider on 127.0.0.1, and ``demo``.

The provider below is a real server on a loopback port, so sockets, keep-alive, TLS, timeouts and
refused connections behave as in production. Time for the circuit breaker is injected through the
connector's ``clock`` keyword; nothing here patches the connectors' modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_missing_tls_files_are_a_settings_error_at_start(pki):
    connector = HttpConnector(
        {"url": "https://127.0.0.1/x", "ca_file": "missing.pem"}, context(config_dir=str(pki))
    )
    with pytest.raises(SettingsError, match="TLS files"):
        await connector.start()


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
