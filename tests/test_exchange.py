"""The exchange pipeline end to end, on real sockets: one test per outcome and rejection cause.

Each rejection test checks three things: the RFC 9457 problem (status and stable type), that
nothing reached the provider, and that the rejection is in the audit log with its cause.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509
from jwcrypto import jwk
from jwcrypto import jws as jwcrypto_jws

from gateway import cli
from gateway.config import Limits, load
from gateway.crypto import jws
from gateway.verify import Trust, verify_artifact
from tests.support import (
    Gateway,
    Provider,
    example,
    make_deployment,
    reissue_under_an_intermediate,
    running_gateway,
    running_provider,
    signed_request,
)

CITIZEN = "citizen-lookup.v1"
JOSE = {"Content-Type": "application/jose+json"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=1)
    async with running_gateway(cfg) as g:
        yield g


async def post(
    gw: Gateway, service: str, body: Any, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/v1/exchange/{service}", data=body, headers=headers or {}, **kw) as r,
    ):
        raw = await r.read()
        return r.status, dict(r.headers), orjson.loads(raw) if raw else None


def verify_with_jwcrypto(token: dict[str, Any], anchor: Path) -> dict[str, Any]:
    """Verify a gateway JWS with an independent JOSE library and return its payload."""
    header = json.loads(base64.urlsafe_b64decode(token["protected"] + "=="))
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    key = jwk.JWK.from_pyca(leaf.public_key())
    obj = jwcrypto_jws.JWS()
    obj.deserialize(json.dumps(token))
    obj.verify(key)
    return json.loads(obj.payload)


def assert_rejected(
    gw: Gateway, provider: Provider, status: int, doc: Any, slug: str, code: int
) -> dict[str, Any]:
    assert status == code, doc
    assert doc["type"].endswith(":" + slug), doc
    assert doc["status"] == code and doc["title"] and doc["detail"]
    assert provider.received == [], "a rejected request reached the provider"
    rec = gw.records()[-1]
    assert rec["event"] == "exchange.rejected" and rec["cause"] == slug and rec["status"] == code
    assert rec["exchange_id"] == doc["exchange_id"]
    return rec


# ------------------------------------------------------------------ accepted exchanges
async def test_signed_request_is_delivered_with_a_receipt_verifiable_by_another_jose_library(
    gw: Gateway, provider: Provider
) -> None:
    payload = example(CITIZEN)
    status, headers, doc = await post(
        gw, CITIZEN, signed_request(gw.dir, "hcm.quan-1", CITIZEN, payload), JOSE
    )
    assert status == 200, doc
    assert doc["status"] == "delivered" and doc["response"]["citizen_id"] == payload["citizen_id"]
    receipt = verify_with_jwcrypto(doc["receipt"], gw.dir / "pki/ca.crt")
    assert receipt["exchange_id"] == doc["exchange_id"] == headers["X-Exchange-Id"]
    assert receipt["sender"] == "hcm.quan-1" and receipt["provider"] == "central.dan-cu"
    assert (
        receipt["schemas"]["request"]["id"] and len(receipt["schemas"]["response"]["sha256"]) == 64
    )
    records = gw.records()
    assert [r["event"] for r in records] == ["exchange.accepted", "exchange.delivered"]
    assert receipt["audit"]["index"] == 0
    # The provider got one envelope signed by the gateway, carrying the sender's signature.
    assert len(provider.received) == 1
    envelope = verify_with_jwcrypto(provider.received[0]["envelope"], gw.dir / "pki/ca.crt")
    assert envelope["payload"] == payload and envelope["sender"] == "hcm.quan-1"
    assert envelope["sender_signature"]["signature"]
    assert envelope["purpose"] and envelope["legal_basis"]


async def test_bearer_token_is_accepted_in_development(gw: Gateway, provider: Provider) -> None:
    status, _, doc = await post(
        gw,
        "budget-proposal.v1",
        orjson.dumps(example("budget-proposal.v1")),
        {"Authorization": f"Bearer {gw.token('hcm.thu-duc')}", "Content-Type": "application/json"},
    )
    assert status == 200, doc
    assert verify_with_jwcrypto(doc["receipt"], gw.dir / "pki/ca.crt")["sender"] == "hcm.thu-duc"


async def _post_report_over_mtls(gw: Gateway, participant: str | None) -> Any:
    """A pilot-progress report over TLS, with that participant's client certificate (or none)."""
    return await post(
        gw,
        "pilot-progress-report.v1",
        orjson.dumps(example("pilot-progress-report.v1")),
        {"Content-Type": "application/json"},
        ssl=gw.client_ssl(participant),
    )


async def test_mtls_client_certificate_authenticates(tmp_path: Path, provider: Provider) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, tls="optional")
    async with running_gateway(cfg) as gw:
        status, _, doc = await _post_report_over_mtls(gw, "hcm.thu-duc")
        assert status == 200, doc
        assert (
            verify_with_jwcrypto(doc["receipt"], gw.dir / "pki/ca.crt")["sender"] == "hcm.thu-duc"
        )
        # Same listener, no client certificate, no other credential: 401.
        status, _, doc = await _post_report_over_mtls(gw, None)
        assert status == 401


@pytest.mark.parametrize("configured", [True, False])
async def test_mtls_client_certificate_issued_by_an_intermediate_ca(
    tmp_path: Path, provider: Provider, configured: bool
) -> None:
    """TLS hands the gateway only the leaf: the path is completed from gateway.intermediates.

    Without the intermediate configured, the sender is refused (fail closed), not let through.
    """
    extra = 'intermediates = ["pki/issuing.crt"]\n' if configured else ""
    cfg = make_deployment(
        tmp_path / "dep", provider_port=provider.port, tls="optional", extra_gateway=extra
    )
    reissue_under_an_intermediate(cfg.parent, "hcm.thu-duc")
    async with running_gateway(cfg) as gw:
        status, _, doc = await _post_report_over_mtls(gw, "hcm.thu-duc")
        if configured:
            assert status == 200, doc
            receipt = verify_with_jwcrypto(doc["receipt"], gw.dir / "pki/ca.crt")
            assert receipt["sender"] == "hcm.thu-duc"
        else:
            assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


# ------------------------------------------------------------------ (0) parse
async def test_body_over_the_size_cap_is_413(gw: Gateway, provider: Provider) -> None:
    body = b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    status, _, doc = await post(gw, CITIZEN, io.BytesIO(body), {"Content-Type": "application/json"})
    assert_rejected(gw, provider, status, doc, "payload-too-large", 413)


async def test_unsupported_media_type_is_415(gw: Gateway, provider: Provider) -> None:
    status, _, doc = await post(gw, CITIZEN, b"<x/>", {"Content-Type": "application/xml"})
    assert_rejected(gw, provider, status, doc, "unsupported-media-type", 415)


@pytest.mark.parametrize("charset", ["windows-1258", "utf-16", "iso-8859-1"])
async def test_a_declared_charset_other_than_utf8_is_415_not_read_as_utf8(
    gw: Gateway, provider: Provider, charset: str
) -> None:
    """JSON between systems is UTF-8 (RFC 8259 section 8.1). A body its sender says is in
    another charset (Windows-1258 is still common in Vietnamese systems) was read as UTF-8
    whenever its bytes happened to be valid UTF-8: bytes C3 A9, "Ă©" in Windows-1258, became
    "é", and the gateway signed and forwarded text the sender never wrote. Now refused."""
    body = orjson.dumps(example(CITIZEN))  # ASCII: valid in every charset named above
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": f"application/json; charset={charset}",
    }
    status, _, doc = await post(gw, CITIZEN, body, headers)
    assert_rejected(gw, provider, status, doc, "unsupported-media-type", 415)
    assert "UTF-8" in doc["detail"]


@pytest.mark.parametrize("coding", ["x-foo", "gzip, gzip", "compress", "identity, gzip"])
async def test_a_content_encoding_the_gateway_cannot_decode_is_an_audited_415(
    gw: Gateway, provider: Provider, coding: str
) -> None:
    """The HTTP layer decodes gzip and deflate only; any other Content-Encoding left the body as
    it came, and a body that happened to parse as JSON was signed and forwarded as something
    its sender never meant. RFC 9110 8.4.1: 415. (br and zstd, which aiohttp would decode with
    packages not installed here, are refused by its parser before routing: a 400 problem.)"""
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Content-Encoding": coding,
    }
    status, _, doc = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
    assert_rejected(gw, provider, status, doc, "unsupported-media-type", 415)
    assert "Content-Encoding" in doc["detail"]


async def test_a_gzip_body_and_an_identity_coding_are_accepted(
    gw: Gateway, provider: Provider
) -> None:
    import gzip

    body = orjson.dumps(example(CITIZEN))
    token = f"Bearer {gw.token('hcm.quan-1')}"
    for coding, data in (("gzip", gzip.compress(body)), ("identity", body)):
        headers = {
            "Authorization": token,
            "Content-Type": "application/json",
            "Content-Encoding": coding,
        }
        status, _, doc = await post(gw, CITIZEN, data, headers)
        assert status == 200, (coding, doc)


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8"])
async def test_a_utf8_charset_parameter_is_accepted(
    gw: Gateway, provider: Provider, charset: str
) -> None:
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": f"application/json; charset={charset}",
    }
    status, _, doc = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
    assert status == 200, doc


@pytest.mark.parametrize(
    "body",
    [
        b'{"citizen_id": "079203001234", "citizen_id": "079203001235"}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[" * 65 + b"]" * 65,
        b'{"a": "\xff\xfe"}',
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": 1',
        b"",
    ],
    ids=[
        "duplicate-key",
        "nan",
        "infinity",
        "depth-65",
        "invalid-utf8",
        "bom",
        "truncated",
        "empty",
    ],
)
async def test_malformed_json_is_400(gw: Gateway, provider: Provider, body: bytes) -> None:
    status, _, doc = await post(
        gw,
        CITIZEN,
        body,
        {"Authorization": f"Bearer {gw.token('hcm.quan-1')}", "Content-Type": "application/json"},
    )
    assert_rejected(gw, provider, status, doc, "malformed-json", 400)


def accept_any_json(cfg: Path) -> None:
    """Make both schemas of citizen-lookup.v1 in a deployment accept any JSON value."""
    for kind in ("request", "response"):
        path = cfg.parent / "schemas" / f"{CITIZEN}.{kind}.json"
        schema = orjson.loads(path.read_bytes())
        path.write_bytes(orjson.dumps({k: schema[k] for k in ("$schema", "$id")}))


@pytest.mark.parametrize(("depth", "status"), [(64, 200), (65, 400)])
async def test_the_depth_limit_is_the_payloads_whether_sent_plain_or_signed(
    tmp_path: Path, depth: int, status: int
) -> None:
    """limits.max_json_depth (64 here) bounds the payload the same way for every sender: a
    signed request wraps the payload in {id, sender, service, created, payload}, one level
    more, which once made a depth-64 payload a 400 when signed and a 200 when sent by token."""
    provider = Provider(mode="bad")  # answers {"unexpected": true}
    async with running_provider(provider):
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
        accept_any_json(cfg)
        payload: Any = []
        for _ in range(depth - 1):
            payload = {"k": payload}
        async with running_gateway(cfg) as gw:
            token = {"Authorization": f"Bearer {gw.token('hcm.quan-1')}"}
            plain = await post(gw, CITIZEN, orjson.dumps(payload), token | JSON)
            signed = await post(
                gw, CITIZEN, signed_request(gw.dir, "hcm.quan-1", CITIZEN, payload), JOSE
            )
    assert (plain[0], signed[0]) == (status, status), (plain[2], signed[2])
    if status == 400:
        assert "deeper than 64" in signed[2]["detail"], signed[2]


async def test_an_envelope_at_the_depth_limit_verifies_after_the_gateway_certificate_expired(
    tmp_path: Path,
) -> None:
    """Security staff check old envelopes offline: once the gateway's certificate has expired,
    an envelope is "valid when signed" at the time it states. The verifier read that time with
    the default depth 64, and the envelope holds the payload one level down, so the envelope of
    any payload at the default limit was reported invalid instead."""
    provider = Provider(mode="bad")
    async with running_provider(provider):
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
        accept_any_json(cfg)
        payload: Any = []
        for _ in range(63):
            payload = {"k": payload}
        async with running_gateway(cfg) as gw:
            token = {"Authorization": f"Bearer {gw.token('hcm.quan-1')}"}
            status, _, doc = await post(gw, CITIZEN, orjson.dumps(payload), token | JSON)
            assert status == 200, doc
    envelope = provider.received[0]["envelope"]
    header = json.loads(base64.urlsafe_b64decode(envelope["protected"] + "=="))
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    dep = load(cfg)
    trust = Trust.from_pems(
        dep.trust_anchor_pems, gateway_id=dep.config.gateway.id, origin=dep.config.audit.origin
    )
    later = leaf.not_valid_after_utc + timedelta(days=1)
    report = verify_artifact(orjson.dumps(envelope), trust, now=later)
    assert report.valid, report.lines()
    assert any("valid when signed" in line for line in report.lines()), report.lines()


async def test_the_deepest_payload_the_config_admits_is_exchanged_and_verifiable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every limits.max_json_depth the config accepts is one the whole chain supports: a payload
    of exactly that depth is parsed, canonicalized (RFC 8785), signed into an envelope one level
    deeper, answered with a receipt, and `gateway verify --request` binds it. (The config once
    took up to 512 while canonicalization stopped at 200: such payloads got a 400 that blamed
    big integers, and the offline verifier stopped at depth 64.)"""
    limit = next(m.le for m in Limits.model_fields["max_json_depth"].metadata if hasattr(m, "le"))
    provider = Provider(mode="bad")  # answers {"unexpected": true}
    async with running_provider(provider):
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
        cfg.write_text(cfg.read_text().replace("max_json_depth = 64", f"max_json_depth = {limit}"))
        accept_any_json(cfg)  # so depth is the only limit
        body = b'{"k":' * (limit - 1) + b"[]" + b"}" * (limit - 1)
        async with running_gateway(cfg) as gw:
            headers = {
                "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
                "Content-Type": "application/json",
            }
            status, _, doc = await post(gw, CITIZEN, body, headers)
            assert status == 200, doc
            assert provider.received, "the deep payload never reached the provider"
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(orjson.dumps(doc["receipt"]))
    envelope = tmp_path / "envelope.json"
    envelope.write_bytes(orjson.dumps(provider.received[0]["envelope"]))
    request = tmp_path / "request.json"
    request.write_bytes(body)
    for artifact in (receipt, envelope):
        code = cli.main(["verify", str(artifact), "--config", str(cfg), "--request", str(request)])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err


# ------------------------------------------------------------------ (1) authenticate
async def test_no_credentials_is_401(gw: Gateway, provider: Provider) -> None:
    status, headers, doc = await post(
        gw, CITIZEN, orjson.dumps(example(CITIZEN)), {"Content-Type": "application/json"}
    )
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)
    assert "WWW-Authenticate" in headers


async def test_unknown_bearer_token_is_401(gw: Gateway, provider: Provider) -> None:
    status, _, doc = await post(
        gw,
        CITIZEN,
        orjson.dumps(example(CITIZEN)),
        {"Authorization": "Bearer dev-not-a-token", "Content-Type": "application/json"},
    )
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def _post_raw_header(gw: Gateway, path: str, header: bytes) -> tuple[int, Any]:
    """POST with one raw header line, its bytes exactly as given (no client re-encodes them)."""
    import asyncio

    host, port = gw.url.removeprefix("http://").split(":")
    body = orjson.dumps(example(CITIZEN))
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + header
            + b"\r\n\r\n"
            + body
        )
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(payload)


async def test_a_bearer_token_that_is_not_utf8_is_an_audited_401_not_a_500(
    gw: Gateway, provider: Provider
) -> None:
    status, doc = await _post_raw_header(
        gw, f"/v1/exchange/{CITIZEN}", b"Authorization: Bearer \xff\xfe"
    )
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def test_tampered_signed_request_is_401(gw: Gateway, provider: Provider) -> None:
    token = orjson.loads(signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN)))
    other = orjson.loads(
        signed_request(
            gw.dir, "hcm.quan-1", CITIZEN, {**example(CITIZEN), "citizen_id": "079203009999"}
        )
    )
    token["payload"] = other["payload"]
    status, _, doc = await post(gw, CITIZEN, orjson.dumps(token), JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def test_stale_signed_request_is_401(gw: Gateway, provider: Provider) -> None:
    old = datetime.now(UTC) - timedelta(minutes=30)
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN), created=old)
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def test_signature_by_another_participant_than_the_sender_is_401(
    gw: Gateway, provider: Provider
) -> None:
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN), key_owner="hcm.thu-duc")
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def test_signer_outside_the_trust_anchors_is_401(
    tmp_path: Path, gw: Gateway, provider: Provider
) -> None:
    from gateway.devinit import init_deployment

    init_deployment(tmp_path / "foreign")  # same participant ids, another development CA
    body = signed_request(tmp_path / "foreign", "hcm.quan-1", CITIZEN, example(CITIZEN))
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


async def test_wrong_artifact_type_is_401(gw: Gateway, provider: Provider) -> None:
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN), typ="receipt+jws")
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)


def _signed_with_kid(gw: Gateway, kid: str | None) -> bytes:
    """hcm.quan-1's signed request as the contract has it, but with ``kid`` (None: none)."""
    from gateway.crypto.jws_rules import b64u
    from gateway.crypto.keys import load_private_key

    token = orjson.loads(signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN)))
    header = orjson.loads(base64.urlsafe_b64decode(token["protected"] + "=="))
    header.pop("kid")
    if kid is not None:
        header["kid"] = kid
    key = load_private_key((gw.dir / "participants/hcm.quan-1/key.pem").read_bytes())
    protected = b64u(orjson.dumps(header))
    signature = key.sign(f"{protected}.{token['payload']}".encode())
    return orjson.dumps(
        {"payload": token["payload"], "protected": protected, "signature": b64u(signature)}
    )


@pytest.mark.parametrize(
    ("kid", "cause"),
    [
        (None, "the protected header has no kid"),
        ("c29tZS1vdGhlci1rZXk", "kid 'c29tZS1vdGhlci1rZXk' is not the RFC 7638 thumbprint"),
    ],
)
async def test_a_signed_request_without_the_leaf_keys_kid_is_an_audited_401(
    gw: Gateway, provider: Provider, kid: str | None, cause: str
) -> None:
    """CONTRACT.md: the protected header carries kid, the RFC 7638 thumbprint of the x5c leaf
    key. Missing or another key's: refused like any bad signature, the cause in the log."""
    import structlog

    with structlog.testing.capture_logs() as logs:
        status, _, doc = await post(gw, CITIZEN, _signed_with_kid(gw, kid), JOSE)
    assert_rejected(gw, provider, status, doc, "unauthenticated", 401)
    assert "signed request" in doc["detail"]
    (line,) = [e for e in logs if e["event"] == "exchange.rejected"]
    assert cause in line["reason"], line


async def test_replayed_signed_request_is_409_even_after_a_restart(
    tmp_path: Path, provider: Provider
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    body = signed_request(cfg.parent, "hcm.quan-1", CITIZEN, example(CITIZEN))
    async with running_gateway(cfg) as gw:
        status, _, doc = await post(gw, CITIZEN, body, JOSE)
        assert status == 200
        status, _, doc = await post(gw, CITIZEN, body, JOSE)
        assert status == 409 and doc["type"].endswith(":replay")
    async with running_gateway(cfg) as gw:
        status, _, doc = await post(gw, CITIZEN, body, JOSE)
        assert status == 409 and doc["type"].endswith(":replay")
        assert len(provider.received) == 1
        assert gw.records()[-1]["cause"] == "replay"


async def test_request_signed_for_another_service_is_400(gw: Gateway, provider: Provider) -> None:
    body = signed_request(gw.dir, "hcm.quan-1", "budget-proposal.v1", example(CITIZEN))
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "bad-request", 400)


async def test_a_signed_request_whose_payload_is_not_canonical_json_is_a_400_not_forwarded(
    gw: Gateway, provider: Provider
) -> None:
    """The contract signs the RFC 8785 form, and `gateway verify` refuses any other: a request
    the gateway forwarded anyway would make the envelope fail its own verifier downstream."""
    from gateway.crypto.keys import load_certificates, load_private_key
    from gateway.models import rfc3339

    d = gw.dir / "participants" / "hcm.quan-1"
    req = {
        "id": "0193a5c2-0000-7000-8000-00000000c0de",
        "sender": "hcm.quan-1",
        "service": CITIZEN,
        "created": rfc3339(datetime.now(UTC)),
        "payload": example(CITIZEN),
    }
    body = jws.serialize(
        jws.sign_bytes(
            json.dumps(req, indent=1).encode(),  # valid JSON, members unsorted, whitespace
            load_private_key((d / "key.pem").read_bytes()),
            load_certificates((d / "cert.pem").read_bytes()),
            typ="request+jws",
        )
    )
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert_rejected(gw, provider, status, doc, "bad-request", 400)
    assert "RFC 8785" in doc["detail"]


# ------------------------------------------------------------------ (2) authorize
async def test_unknown_service_is_404(gw: Gateway, provider: Provider) -> None:
    body = signed_request(gw.dir, "hcm.quan-1", "no-such-service.v1", {})
    status, _, doc = await post(gw, "no-such-service.v1", body, JOSE)
    assert_rejected(gw, provider, status, doc, "unknown-service", 404)


async def test_participant_without_grant_is_403(gw: Gateway, provider: Provider) -> None:
    body = signed_request(
        gw.dir, "central.dan-cu", "budget-proposal.v1", example("budget-proposal.v1")
    )
    status, _, doc = await post(gw, "budget-proposal.v1", body, JOSE)
    rec = assert_rejected(gw, provider, status, doc, "forbidden", 403)
    assert rec["sender"] == "central.dan-cu"


# ------------------------------------------------------------------ (3) validate
async def test_payload_outside_the_schema_is_422_with_json_pointers(
    gw: Gateway, provider: Provider
) -> None:
    bad = {**example(CITIZEN), "citizen_id": "07920300123"}
    status, _, doc = await post(
        gw, CITIZEN, signed_request(gw.dir, "hcm.quan-1", CITIZEN, bad), JOSE
    )
    assert_rejected(gw, provider, status, doc, "schema-invalid", 422)
    assert {"pointer": "/citizen_id"}.items() <= doc["errors"][0].items()
    assert "07920300123" not in json.dumps(doc)


# ------------------------------------------------------------------ idempotency
async def test_same_idempotency_key_and_body_returns_the_stored_result_without_redelivery(
    gw: Gateway, provider: Provider
) -> None:
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Idempotency-Key": "k-1",
    }
    body = orjson.dumps(example(CITIZEN))
    s1, _, d1 = await post(gw, CITIZEN, body, headers)
    s2, h2, d2 = await post(gw, CITIZEN, body, headers)
    assert s1 == s2 == 200
    assert d1 == d2 and h2.get("Idempotent-Replayed") == "true"
    assert len(provider.received) == 1
    assert provider.received[0]["headers"]["Idempotency-Key"]


async def test_a_key_is_claimed_for_the_delivery_lease_and_its_answer_kept_for_the_ttl(
    gw: Gateway, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline claims a key for pending_lease(delivery timeout), so a key left pending by
    a process that died is free again in minutes, and keeps the answer for the whole TTL."""
    from gateway import idempotency

    seen: dict[str, float] = {}
    begin, finish = idempotency.begin, idempotency.finish

    async def spy_begin(*args: Any) -> Any:
        seen["lease"] = args[-1]
        return await begin(*args)

    async def spy_finish(*args: Any, **kw: Any) -> bool:
        seen["ttl"] = kw["ttl"]
        return await finish(*args, **kw)

    monkeypatch.setattr(idempotency, "begin", spy_begin)
    monkeypatch.setattr(idempotency, "finish", spy_finish)
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Idempotency-Key": "k-lease",
    }
    status, _, _ = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
    assert status == 200
    limits = load(gw.config).config.limits
    assert seen == {
        "lease": 2 * limits.delivery_timeout_seconds + 60,
        "ttl": limits.idempotency_ttl_seconds,
    }


async def test_the_key_a_provider_gets_is_scoped_to_the_sender_and_kept_across_retries(
    gw: Gateway, provider: Provider
) -> None:
    """The provider sees one client, the gateway: forwarded verbatim, two senders' equal keys
    were one key to it (a provider that deduplicates would answer one sender with the other's
    stored answer, or refuse it). A retry after a 502 must still carry the same key."""
    body = orjson.dumps(example(CITIZEN))

    def headers(sender: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {gw.token(sender)}",
            "Content-Type": "application/json",
            "Idempotency-Key": "shared-key",
        }

    provider.mode = "fail"
    assert (await post(gw, CITIZEN, body, headers("hcm.quan-1")))[0] == 502
    provider.mode = "ok"
    assert (await post(gw, CITIZEN, body, headers("hcm.quan-1")))[0] == 200
    assert (await post(gw, CITIZEN, body, headers("hcm.thu-duc")))[0] == 200
    first, retry, other = (r["headers"]["Idempotency-Key"] for r in provider.received)
    assert first == retry
    assert other != first
    assert "shared-key" not in (first, other)


async def test_an_idempotent_replay_is_audited_under_the_exchange_it_answers_again(
    gw: Gateway, provider: Provider
) -> None:
    """Every attempt gets an audit record (CONTRACT.md), and a replay hands the provider's
    answer out once more: it was given with no record at all."""
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Idempotency-Key": "k-audited",
    }
    body = orjson.dumps(example(CITIZEN))
    _, _, first = await post(gw, CITIZEN, body, headers)
    status, h2, _ = await post(gw, CITIZEN, body, headers)
    assert status == 200 and h2.get("Idempotent-Replayed") == "true"
    records = gw.records()
    assert [r["event"] for r in records] == [
        "exchange.accepted",
        "exchange.delivered",
        "exchange.replayed",
    ]
    replayed = records[-1]
    assert replayed["exchange_id"] == first["exchange_id"] == h2["X-Exchange-Id"]
    assert (replayed["sender"], replayed["service"], replayed["status"]) == (
        "hcm.quan-1",
        CITIZEN,
        200,
    )
    assert replayed["request_sha256"] == records[0]["request_sha256"]
    assert replayed["idempotency_key_sha256"] == records[0]["idempotency_key_sha256"]
    assert example(CITIZEN)["citizen_id"] not in json.dumps(replayed)
    # Operators find replays by outcome, like every other outcome.
    token = (gw.dir / "roles" / "dtc-operator.token").read_text().strip()
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{gw.url}/v1/audit/records",
            params={"outcome": "replayed"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        found = (await r.json())["records"]
    assert [item["record"]["event"] for item in found] == ["exchange.replayed"]


async def test_same_idempotency_key_with_another_body_is_409(
    gw: Gateway, provider: Provider
) -> None:
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Idempotency-Key": "k-2",
    }
    s1, _, _ = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
    other = orjson.dumps({**example(CITIZEN), "citizen_id": "079203009999"})
    s2, _, d2 = await post(gw, CITIZEN, other, headers)
    assert s1 == 200 and s2 == 409 and d2["type"].endswith(":idempotency-conflict")
    assert len(provider.received) == 1
    assert gw.records()[-1]["cause"] == "idempotency-conflict"


async def test_a_refusal_under_an_idempotency_key_is_refused_again_as_a_problem_and_audited(
    gw: Gateway, provider: Provider
) -> None:
    """Only an answered exchange is kept for its key. A replayed signed request sent under a
    fresh key got a 409 that was stored, then given again as plain application/json and with
    no audit record of the attempt."""
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    status, _, _ = await post(gw, CITIZEN, body, {**JOSE, "Idempotency-Key": "k-first"})
    assert status == 200
    for _ in range(2):
        headers = {**JOSE, "Idempotency-Key": "k-replayed"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gw.url}/v1/exchange/{CITIZEN}", data=body, headers=headers) as r,
        ):
            doc = orjson.loads(await r.read())
            assert r.status == 409 and r.content_type == "application/problem+json"
        assert doc["type"].endswith(":replay")
        assert gw.records()[-1]["exchange_id"] == doc["exchange_id"]
        assert gw.records()[-1]["cause"] == "replay"
    assert len(provider.received) == 1


@pytest.mark.parametrize("key", ["khóa-1", "two words", "k" * 256, ""])
async def test_an_idempotency_key_that_is_not_1_to_255_visible_ascii_is_a_400(
    gw: Gateway, provider: Provider, key: str
) -> None:
    """The key is stored and compared byte for byte; a byte above 0x7f in it used to reach the
    state store as a lone surrogate and fail there as a 503 (tests/test_fuzz.py)."""
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    status, _, doc = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
    assert_rejected(gw, provider, status, doc, "bad-request", 400)
    assert "Idempotency-Key" in doc["detail"]


async def test_a_service_name_outside_the_default_route_pattern_is_an_audited_404(
    gw: Gateway, provider: Provider
) -> None:
    """aiohttp's default {service} pattern leaves out braces: such a name got the router's 404,
    which no exchange handler saw and nothing audited."""
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
    }
    status, _, doc = await post(gw, "%7Bx%7D", orjson.dumps(example(CITIZEN)), headers)
    assert_rejected(gw, provider, status, doc, "unknown-service", 404)


@pytest.mark.parametrize(
    "service", [f"{CITIZEN}/", "", "a/b", f"{CITIZEN}/..", "%2F", "%0A", "a%0A"]
)
async def test_any_post_under_the_exchange_prefix_is_an_audited_exchange_attempt(
    gw: Gateway, provider: Provider, service: str
) -> None:
    """A trailing slash, an empty name or one with a "/" in it got the router's 404: a POST
    that is plainly an exchange attempt, neither seen by the pipeline nor audited."""
    headers = {
        "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
        "Content-Type": "application/json",
    }
    status, _, doc = await post(gw, service, orjson.dumps(example(CITIZEN)), headers)
    rec = assert_rejected(gw, provider, status, doc, "unknown-service", 404)
    assert rec["service"] is None


# ------------------------------------------------------------------ (6)/(7) provider failures
@pytest.mark.parametrize(
    ("mode", "slug", "code"),
    [
        ("fail", "provider-failed", 502),
        ("notjson", "provider-failed", 502),
        ("bad", "provider-contract-broken", 502),
        ("slow", "provider-timeout", 504),
    ],
)
async def test_provider_failures_are_5xx_and_audited(
    gw: Gateway, provider: Provider, mode: str, slug: str, code: int
) -> None:
    provider.mode = mode
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert status == code and doc["type"].endswith(":" + slug), doc
    events = [(r["event"], r.get("cause")) for r in gw.records()]
    assert events == [("exchange.accepted", None), ("exchange.failed", slug)]


async def test_a_connector_that_crashes_leaves_an_outcome_record_and_an_exchange_id(
    tmp_path: Path,
) -> None:
    """A connector plugin raising something other than its errors (a bug: KeyError, a
    driver's own exception) escaped the pipeline: a 500 without ``exchange_id``, and an
    exchange whose audit trail stopped at "accepted", forever in flight for auditors and for
    GET /v1/exchanges/{id}. Now its outcome is audited (``exchange.failed``, 502
    ``provider-failed``, as any failure to deliver) and the problem names the exchange."""
    from gateway.testing import FakeConnector
    from tests.support import exchange_through

    class Crashing(FakeConnector):
        async def deliver(self, message: Any) -> Any:
            raise KeyError("a bug in the plugin")

    status, doc, records, logs = await exchange_through(tmp_path, Crashing())
    assert status == 502 and doc["type"].endswith(":provider-failed"), doc
    assert "KeyError" not in doc["detail"]
    assert [(r["event"], r.get("cause")) for r in records] == [
        ("exchange.accepted", None),
        ("exchange.failed", "provider-failed"),
    ]
    crashed = [e for e in logs if e["event"] == "exchange.connector_crashed"]
    assert crashed and crashed[0]["exc_info"], logs


async def test_an_answer_outside_the_response_schema_reaches_the_sender_in_no_form(
    gw: Gateway, provider: Provider
) -> None:
    """The response schema is the contract's limit on what a sender may learn (data
    minimisation). An answer that breaks it is withheld, and so must be its shape: the 502 once
    listed JSON Pointers into it, naming the members the sender may not see (a member named by
    a citizen id would be that id). The sender gets the count; the log gets value-free causes."""
    provider.mode = "bad"  # answers {"unexpected": true}, outside the response schema
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    status, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert status == 502 and doc["type"].endswith(":provider-contract-broken"), doc
    assert "unexpected" not in orjson.dumps(doc).decode(), doc
    assert "errors" not in doc and "error(s)" in doc["detail"]


async def test_no_route_and_wrong_method_are_problems_not_500(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/v1/exchange/{CITIZEN}") as r:
            assert r.status == 405 and r.content_type == "application/problem+json"
        async with s.get(f"{gw.url}/nope") as r:
            assert r.status == 404 and r.content_type == "application/problem+json"


async def test_jwks_lists_the_signing_key_with_its_chain(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/.well-known/jwks.json") as r:
        doc = await r.json()
    key = doc["keys"][0]
    assert key["kid"] and key["x5c"] and key["alg"] == "ES256"


async def test_jwks_publishes_the_checkpoint_key_that_verifies_the_checkpoints(
    gw: Gateway,
) -> None:
    """CONTRACT.md: the checkpoint key "is published in the JWKS like the others". Its JWK
    carries the C2SP verifier key too; both name the key that signs GET /v1/audit/checkpoint,
    and an independent JOSE library reads the whole set."""
    from gateway.audit.checkpoint import verify_note
    from gateway.audit.signed_note import NoteVerifier

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/.well-known/jwks.json") as r:
            doc = await r.json()
        for _ in range(100):  # the publisher signs the first checkpoint just after start-up
            async with s.get(f"{gw.url}/v1/audit/checkpoint") as r:
                if r.status == 200:
                    note = await r.read()
                    break
            await asyncio.sleep(0.05)
    [note_key] = [k for k in doc["keys"] if k["kty"] == "OKP" and "vkey" in k]
    assert doc["keys"][-1] == note_key and "x5c" not in note_key
    assert (note_key["crv"], note_key["alg"], note_key["use"]) == ("Ed25519", "EdDSA", "sig")
    verifier = NoteVerifier.from_vkey(note_key["vkey"])
    vkey_public = base64.b64decode(note_key["vkey"].split("+", 2)[2])[1:]  # name+id+key
    assert base64.urlsafe_b64decode(note_key["x"] + "=") == vkey_public
    verify_note(note, [verifier])
    assert len(jwk.JWKSet.from_json(json.dumps(doc))["keys"]) == len(doc["keys"])


async def test_a_request_refused_for_its_payload_does_not_spend_its_id(
    gw: Gateway, provider: Provider
) -> None:
    """Ids are spent with the accepted record: a corrected request may reuse the id."""
    rid = "5f0b8a0e-3c1d-4e7a-9b6f-000000000001"
    bad = {**example(CITIZEN), "citizen_id": "123"}
    status, _, _ = await post(
        gw, CITIZEN, signed_request(gw.dir, "hcm.quan-1", CITIZEN, bad, request_id=rid), JOSE
    )
    assert status == 422
    good = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN), request_id=rid)
    status, _, doc = await post(gw, CITIZEN, good, JOSE)
    assert status == 200, doc
    status, _, doc = await post(gw, CITIZEN, good, JOSE)
    assert status == 409 and doc["type"].endswith(":replay")
    assert len(provider.received) == 1


async def test_the_same_id_from_two_senders_is_not_a_replay(
    gw: Gateway, provider: Provider
) -> None:
    rid = "5f0b8a0e-3c1d-4e7a-9b6f-000000000002"
    for sender in ("hcm.quan-1", "hcm.thu-duc"):
        body = signed_request(gw.dir, sender, CITIZEN, example(CITIZEN), request_id=rid)
        status, _, doc = await post(gw, CITIZEN, body, JOSE)
        assert status == 200, doc


async def test_a_sender_over_its_rate_gets_429_with_retry_after(
    tmp_path: Path, provider: Provider
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    text = cfg.read_text().replace(
        "max_json_depth = 64\n", "max_json_depth = 64\nrate_per_second = 0.5\nrate_burst = 2\n"
    )
    cfg.write_text(text)
    async with running_gateway(cfg) as gw:
        headers = {
            "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
            "Content-Type": "application/json",
        }
        statuses = []
        for _ in range(3):
            status, h, doc = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), headers)
            statuses.append(status)
        assert statuses == [200, 200, 429]
        assert doc["type"].endswith(":rate-limited") and int(h["Retry-After"]) >= 1
        assert gw.records()[-1]["cause"] == "rate-limited"
        assert len(provider.received) == 2
        # Another sender is not affected.
        other = {**headers, "Authorization": f"Bearer {gw.token('hcm.thu-duc')}"}
        status, _, _ = await post(gw, CITIZEN, orjson.dumps(example(CITIZEN)), other)
        assert status == 200


async def test_a_worker_at_its_concurrency_limit_refuses_with_503_before_reading_the_body(
    tmp_path: Path,
) -> None:
    """limits.max_concurrent_exchanges bounds what one worker holds at once (bodies of up to
    max_body_bytes each, for as long as clients and providers take): beyond it, a 503 with
    Retry-After, audited, nothing delivered, and the connection closed (its body unread)."""
    slow = Provider(mode="slow", delay=1.5)
    async with running_provider(slow):
        cfg = make_deployment(tmp_path / "dep", provider_port=slow.port, timeout=5)
        cfg.write_text(
            cfg.read_text().replace(
                "max_concurrent_exchanges = 512", "max_concurrent_exchanges = 2"
            )
        )
        async with running_gateway(cfg) as gw:
            headers = {
                "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
                "Content-Type": "application/json",
            }
            body = orjson.dumps(example(CITIZEN))
            held = [asyncio.create_task(post(gw, CITIZEN, body, headers)) for _ in range(2)]
            for _ in range(200):  # until both wait at the provider
                if len(slow.received) == 2:
                    break
                await asyncio.sleep(0.02)
            assert len(slow.received) == 2
            status, h, doc = await post(gw, CITIZEN, body, headers)
            assert status == 503 and doc["type"].endswith(":gateway-busy"), doc
            assert h["Retry-After"] == "1" and h.get("Connection") == "close"
            assert doc["exchange_id"] == h["X-Exchange-Id"]
            refused = [r for r in gw.records() if r.get("cause") == "gateway-busy"]
            assert [r["exchange_id"] for r in refused] == [doc["exchange_id"]]
            assert refused[0]["event"] == "exchange.rejected" and refused[0]["status"] == 503
            assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
            assert len(slow.received) == 2  # the refused one never reached the provider
            slow.mode = "ok"  # places are free again
            status, _, doc = await post(gw, CITIZEN, body, headers)
            assert status == 200, doc


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_that_leaves_mid_body_leaves_an_audited_rejection(
    gw: Gateway, provider: Provider, how: str
) -> None:
    """An exchange whose client declares a body, sends half and goes (FIN or RST) was only a
    ``http.client_disconnected`` log line: an exchange attempt with no audit record, against
    CONTRACT.md. It is now an ``exchange.rejected`` record (400 ``incomplete-body``, the
    declared size), like a body that arrives too late."""
    import socket
    import struct

    host, port = gw.url.removeprefix("http://").split(":")
    before = len(gw.records())
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /v1/exchange/{CITIZEN} HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {gw.token('hcm.quan-1')}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"citizen_id": "0792'
    )
    await writer.drain()
    await asyncio.sleep(0.05)  # the handler is now waiting for the rest of the body
    if how == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()
    async with asyncio.timeout(10):
        while len(gw.records()) == before:
            await asyncio.sleep(0.05)
    [rec] = gw.records()[before:]
    assert rec["event"] == "exchange.rejected"
    assert (rec["cause"], rec["status"], rec["body_size"]) == ("incomplete-body", 400, 1000)
    assert rec["service"] == CITIZEN
    assert provider.received == []


async def _first_answer(gw: Gateway, head: str, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) on a raw connection; what the server sends until it closes
    or goes quiet for a second (bounded)."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    got = b""
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        for _ in range(100):
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 1)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


async def test_expect_100_continue_is_not_sent_for_a_body_the_gateway_will_not_read(
    gw: Gateway, provider: Provider
) -> None:
    """aiohttp answered every ``Expect: 100-continue`` with 100 Continue before any handler
    ran, so a client declaring a body over the limit was told to send all of it, only to get
    a 413 that never read it. Now the 413 (audited) comes instead of 100, and the connection
    closes."""
    head = (
        f"POST /v1/exchange/{CITIZEN} HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {gw.token('hcm.quan-1')}\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    answer = await _first_answer(gw, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    doc = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    rec = assert_rejected(gw, provider, 413, doc, "payload-too-large", 413)
    assert rec["body_size"] == 50_000_000


async def test_expect_100_continue_still_solicits_a_body_within_the_limit(
    gw: Gateway, provider: Provider
) -> None:
    body = orjson.dumps(example(CITIZEN))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.url}/v1/exchange/{CITIZEN}",
            data=body,
            headers={
                "Authorization": f"Bearer {gw.token('hcm.quan-1')}",
                "Content-Type": "application/json",
            },
            expect100=True,
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def test_an_unknown_expectation_is_an_audited_exchange_not_a_plain_text_417(
    gw: Gateway, provider: Provider
) -> None:
    """aiohttp answered any ``Expect`` other than 100-continue with its own text/plain 417,
    before the middlewares and the pipeline: no problem, no audit record. RFC 9110 10.1.1
    lets a server ignore an expectation; the exchange is processed (and audited) as sent."""
    body = orjson.dumps(example(CITIZEN))
    head = (
        f"POST /v1/exchange/{CITIZEN} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        f"Authorization: Bearer {gw.token('hcm.quan-1')}\r\n"
        "Content-Type: application/json\r\nExpect: x-unheard-of\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    answer = await _first_answer(gw, head, body)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    xid = orjson.loads(answer.partition(b"\r\n\r\n")[2])["exchange_id"]
    assert [r["event"] for r in gw.records() if r["exchange_id"] == xid] == [
        "exchange.accepted",
        "exchange.delivered",
    ]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_cannot_be_decoded_is_an_audited_400_not_an_internal_error(
    gw: Gateway, provider: Provider, coding: str
) -> None:
    """A body the HTTP layer cannot decode once the handler reads it (``Content-Encoding:
    gzip`` over plain bytes) made aiohttp raise RequestPayloadError from ``request.read()``:
    a 500 ``internal`` problem, an ``http.internal_error`` log line with a traceback, and no
    audit record. It is the client's fault: a 400 ``malformed-request`` problem, audited,
    the connection closed."""
    from structlog.testing import capture_logs

    body = orjson.dumps(example(CITIZEN))
    host, port = gw.url.removeprefix("http://").split(":")
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"POST /v1/exchange/{CITIZEN} HTTP/1.1\r\nHost: gw\r\n"
                f"Authorization: Bearer {gw.token('hcm.quan-1')}\r\n"
                f"Content-Type: application/json\r\nContent-Encoding: {coding}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closes
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert not [e for e in logs if e["event"] == "http.internal_error"], logs
    doc = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert_rejected(gw, provider, 400, doc, "malformed-request", 400)


async def test_a_body_that_cannot_be_decoded_on_another_post_route_is_a_400(gw: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.url}/v1/verify",
            data=b'{"not": "gzip"}',
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["type"] == "urn:gateway:problem:malformed-request"


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key"])
async def test_a_repeated_authorization_or_idempotency_key_is_an_audited_400(
    gw: Gateway, provider: Provider, header: str
) -> None:
    """Each names one value (RFC 9110 11.6.2; an Idempotency-Key is a structured Item).
    Given twice, the gateway silently used the first while a proxy in front may act on the
    last (or join them): two bearer tokens authenticated as the first, two keys deduplicated
    on the first. Which one the sender meant is unknowable: a 400 naming the header, audited."""
    token = f"Bearer {gw.token('hcm.quan-1')}"
    values = {"Authorization": (token, f"Bearer {gw.token('hcm.thu-duc')}")}
    first, second = values.get(header, ("key-one", "key-two"))
    extra = b"" if header == "Authorization" else f"Authorization: {token}\r\n".encode()
    status, doc = await _post_raw_header(
        gw,
        f"/v1/exchange/{CITIZEN}",
        extra + f"{header}: {first}\r\n{header}: {second}".encode(),
    )
    assert_rejected(gw, provider, status, doc, "bad-request", 400)
    assert header in doc["detail"]


def test_token_buckets_refill_over_time() -> None:
    from gateway.errors import RateLimited
    from gateway.ratelimit import TokenBuckets

    b = TokenBuckets(rate=2.0, burst=2)
    b.take("a", 0.0)
    b.take("a", 0.0)
    with pytest.raises(RateLimited) as e:
        b.take("a", 0.1)
    assert e.value.retry_after == 1
    b.take("a", 0.6)  # 0.5 s at 2/s refilled one token
    b.take("b", 0.6)


async def test_every_route_is_described_in_the_openapi_document(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v1/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    for route in gw.app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/v1/exchange/"):
            continue  # one concrete path per service, checked below
        assert route.method.lower() in doc["paths"].get(path, {}), (route.method, path)
    for sid in ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1"):
        assert "post" in doc["paths"][f"/v1/exchange/{sid}"]


async def test_an_integer_beyond_i_json_range_is_a_400_not_a_500(
    gw: Gateway, provider: Provider
) -> None:
    """Strict JSON keeps big integers exact, but RFC 8785 cannot sign them: a clear 400."""
    body = b'{"citizen_id": "079203001234", "purpose": "verification", "x": 9007199254740993}'
    status, _, doc = await post(
        gw,
        "pilot-progress-report.v1",
        body,
        {"Authorization": f"Bearer {gw.token('hcm.quan-1')}", "Content-Type": "application/json"},
    )
    assert status in (400, 422), doc  # schema may refuse first; never a 5xx
    big = {**example("budget-proposal.v1")}
    big["fiscal_year"] = 9007199254740993
    status, _, doc = await post(
        gw,
        "budget-proposal.v1",
        orjson.dumps(big, option=orjson.OPT_PASSTHROUGH_DATACLASS),
        {"Authorization": f"Bearer {gw.token('hcm.quan-1')}", "Content-Type": "application/json"},
    )
    assert status in (400, 422), doc
    assert provider.received == []


async def test_canonicalization_failure_is_reported_as_bad_request() -> None:
    """Unit-level: a schema that admits any integer still cannot get a big one signed."""
    from gateway.errors import BadRequest
    from gateway.pipeline import _canonical_payload

    with pytest.raises(BadRequest) as e:
        _canonical_payload({"n": 2**60})
    assert "2**53" in e.value.detail


def test_a_forked_worker_does_not_reuse_its_parents_random_bytes_for_exchange_ids() -> None:
    import os

    from gateway.models import uuid7

    uuid7()  # the parent fills its pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, uuid7().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    os.close(w)
    parent = uuid7()
    assert child[19:] != parent[19:]  # random parts differ


async def test_the_exchange_log_line_says_where_the_time_went(
    gw: Gateway, provider: Provider
) -> None:
    """audit_ms (durable appends) and upstream_ms (the provider) are parts of ms (the whole):
    an operator can tell a slow provider or disk from a slow gateway."""
    import structlog

    provider.mode, provider.delay = "slow", 0.2
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    with structlog.testing.capture_logs() as logs:
        got, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert got == 200, doc
    (line,) = [e for e in logs if e["event"] == "exchange.delivered"]
    assert line["upstream_ms"] >= 200
    assert line["audit_ms"] > 0  # two durable appends, each waited for
    assert line["upstream_ms"] + line["audit_ms"] <= line["ms"]


async def test_a_provider_timeout_is_logged_with_the_time_it_took(
    gw: Gateway, provider: Provider
) -> None:
    import structlog

    provider.mode, provider.delay = "slow", 5  # beyond the deployment's 1 s delivery timeout
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    with structlog.testing.capture_logs() as logs:
        got, _, doc = await post(gw, CITIZEN, body, JOSE)
    assert got == 504, doc
    (line,) = [e for e in logs if e["event"] == "exchange.failed"]
    assert 1000 <= line["upstream_ms"] <= line["ms"] and line["audit_ms"] > 0
