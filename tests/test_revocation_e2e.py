"""Revocation end to end: `gateway keys revoke`, start-up checks, refused senders, offline verify.

Real gateways on 127.0.0.1 (in-process, and one real `gateway serve` for the restart), a real
provider that counts what reaches it, the audit log read from its SQLite file, and `openssl crl`
as the independent check of the CRL the command writes.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509

from gateway import cli
from gateway.config import load
from gateway.crypto import devpki
from gateway.crypto.keys import load_certificates
from gateway.errors import ConfigError
from gateway.http.app import create_app
from tests.support import (
    Gateway,
    Provider,
    ServerProcess,
    crl_with,
    example,
    make_deployment,
    running_gateway,
    signed_request,
)

CITIZEN = "citizen-lookup.v1"
REPORT = "pilot-progress-report.v1"
JOSE = {"Content-Type": "application/jose+json"}


def revoke(cfg: Path, *args: str) -> int:
    return cli.main(["keys", "revoke", *args, "--config", str(cfg)])


def serial_of(dep: Path, participant: str) -> int:
    pem = (dep / "participants" / participant / "cert.pem").read_bytes()
    return int(load_certificates(pem)[0].serial_number)


async def post(url: str, service: str, body: bytes, headers: dict[str, str], **kw: Any) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/v1/exchange/{service}", data=body, headers=headers, **kw) as r,
    ):
        return r.status, orjson.loads(await r.read())


def assert_revoked_refusal(gw: Gateway, provider: Provider, status: int, doc: Any) -> None:
    """The usual 401 (no oracle), nothing delivered, audited with the revocation as reason."""
    assert status == 401, doc
    assert doc["type"].endswith(":unauthenticated") and "revoked" not in doc["detail"]
    assert provider.received == []
    rec = gw.records()[-1]
    assert (rec["event"], rec["cause"], rec["status"]) == (
        "exchange.rejected",
        "unauthenticated",
        401,
    )
    assert re.fullmatch(r"certificate revoked: serial 0x[0-9a-f]+, revoked on \S+", rec["reason"])


async def test_a_revoked_participants_signed_request_is_an_audited_401_while_others_get_200(
    tmp_path: Path, provider: Provider
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    assert revoke(cfg, "hcm.quan-1", "--reason", "keyCompromise") == 0
    async with running_gateway(cfg) as gw:
        body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
        status, doc = await post(gw.url, CITIZEN, body, JOSE)
        assert_revoked_refusal(gw, provider, status, doc)
        assert f"{serial_of(gw.dir, 'hcm.quan-1'):#x}" in gw.records()[-1]["reason"]
        body = signed_request(gw.dir, "hcm.thu-duc", CITIZEN, example(CITIZEN))
        status, doc = await post(gw.url, CITIZEN, body, JOSE)
        assert status == 200, doc


async def test_a_revoked_participants_mtls_request_is_an_audited_401_while_others_get_200(
    tmp_path: Path, provider: Provider
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, tls="optional")
    assert revoke(cfg, "hcm.thu-duc") == 0
    json = {"Content-Type": "application/json"}
    body = orjson.dumps(example(REPORT))
    async with running_gateway(cfg) as gw:
        status, doc = await post(gw.url, REPORT, body, json, ssl=gw.client_ssl("hcm.thu-duc"))
        assert_revoked_refusal(gw, provider, status, doc)
        status, doc = await post(gw.url, REPORT, body, json, ssl=gw.client_ssl("hcm.quan-1"))
        assert status == 200, doc


async def test_an_intermediate_on_the_roots_crl_refuses_every_sender_below_it(
    tmp_path: Path, provider: Provider
) -> None:
    """thu-duc's certificate comes from an issuing CA that the root's CRL lists: refused over
    mTLS (path completed from gateway.intermediates) and in a signed request (x5c)."""
    from tests.support import reissue_under_an_intermediate

    extra = 'intermediates = ["pki/issuing.crt"]\n'
    cfg = make_deployment(
        tmp_path / "dep", provider_port=provider.port, tls="optional", extra_gateway=extra
    )
    dep = cfg.parent
    inter = load_certificates(reissue_under_an_intermediate(dep, "hcm.thu-duc").read_bytes())[0]
    ca_key = devpki.load_private_key_raw((dep / "pki/ca.key").read_bytes())
    ca = load_certificates((dep / "pki/ca.crt").read_bytes())[0]
    crl, _, _ = devpki.revoke_in_crl(
        ca_key, ca, (dep / "pki/ca.crl").read_bytes(), inter.serial_number, now=datetime.now(UTC)
    )
    (dep / "pki/ca.crl").write_bytes(crl)
    async with running_gateway(cfg) as gw:
        body = orjson.dumps(example(REPORT))
        headers = {"Content-Type": "application/json"}
        status, doc = await post(gw.url, REPORT, body, headers, ssl=gw.client_ssl("hcm.thu-duc"))
        assert_revoked_refusal(gw, provider, status, doc)
        body = signed_request(dep, "hcm.thu-duc", REPORT, example(REPORT))
        status, doc = await post(gw.url, REPORT, body, JOSE, ssl=gw.client_ssl(None))
        assert_revoked_refusal(gw, provider, status, doc)
        assert f"{inter.serial_number:#x}" in gw.records()[-1]["reason"]


def _write_bad_crl(dep: Path, case: str) -> None:
    now = datetime.now(UTC)
    ca_key = devpki.load_private_key_raw((dep / "pki/ca.key").read_bytes())
    ca = load_certificates((dep / "pki/ca.crt").read_bytes())[0]
    stranger_key, stranger = devpki.make_ca("stranger", now=now)
    idp = x509.IssuingDistributionPoint(None, None, False, False, None, True, False)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"")
    data = {
        "malformed": b"this is not a CRL",
        "stranger": devpki.make_crl(stranger_key, stranger, now=now),
        "expired": devpki.make_crl(ca_key, ca, now=now - timedelta(days=31)),
        "delta": crl_with(ca_key, ca, now=now, extensions=((x509.DeltaCRLIndicator(1), True),)),
        "indirect": crl_with(ca_key, ca, now=now, extensions=((idp, True),)),
        "critical": crl_with(ca_key, ca, now=now, extensions=((unknown, True),)),
    }[case]
    (dep / "pki/ca.crl").write_bytes(data)


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("malformed", "not a PEM or DER X.509 CRL"),
        ("stranger", "not signed by any trust anchor or configured intermediate"),
        ("expired", "is past; publish a fresh CRL"),
        ("delta", "is a delta CRL"),
        ("indirect", "is an indirect CRL"),
        ("critical", "unrecognised critical extension 1.3.6.1.4.1.99999.1"),
    ],
)
def test_start_up_refuses_a_crl_that_is_malformed_foreign_or_expired_naming_the_field(
    tmp_path: Path, case: str, problem: str
) -> None:
    cfg = make_deployment(tmp_path / "dep")
    _write_bad_crl(cfg.parent, case)
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.field == "gateway.crls[0]"
    assert str(cfg.parent / "pki/ca.crl") in e.value.problem and problem in e.value.problem


@pytest.mark.parametrize(("case", "problem"), [("expired", "is past"), ("delta", "is a delta CRL")])
def test_gateway_serve_exits_2_naming_the_crl_field_when_the_crl_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, problem: str
) -> None:
    cfg = make_deployment(tmp_path / "dep")
    _write_bad_crl(cfg.parent, case)
    assert cli.main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "gateway.crls[0]" in err and problem in err


def test_gateway_verify_and_keys_revoke_refuse_a_delta_crl_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every path that reads a configured CRL applies the same rules as start-up."""
    cfg = make_deployment(tmp_path / "dep")
    _write_bad_crl(cfg.parent, "delta")
    before = (cfg.parent / "pki/ca.crl").read_bytes()
    receipt = tmp_path / "receipt.json"
    receipt.write_text("{}")
    assert cli.main(["verify", str(receipt), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "gateway.crls[0]" in err and "is a delta CRL" in err
    assert revoke(cfg, "hcm.quan-1") == 1
    assert "is a delta CRL" in capsys.readouterr().err
    assert (cfg.parent / "pki/ca.crl").read_bytes() == before


def _openssl_crl(dep: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "crl", "-in", "pki/ca.crl", "-CAfile", "pki/ca.crt", "-noout", *extra],
        cwd=dep,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


async def test_keys_revoke_then_restart_refuses_the_participant_and_openssl_reads_the_crl(
    tmp_path: Path, provider: Provider, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    dep = cfg.parent
    assert _openssl_crl(dep).returncode == 0  # gateway init's empty CRL
    server = ServerProcess(cfg)
    try:
        body = signed_request(dep, "hcm.quan-1", CITIZEN, example(CITIZEN))
        assert (await post(server.url, CITIZEN, body, JOSE))[0] == 200
        assert revoke(cfg, "hcm.quan-1", "--reason", "keyCompromise") == 0
        assert "restart" in capsys.readouterr().out.lower()
        # The running gateway keeps the CRL it read at start-up, as documented.
        body = signed_request(dep, "hcm.quan-1", CITIZEN, example(CITIZEN))
        assert (await post(server.url, CITIZEN, body, JOSE))[0] == 200
    finally:
        server.stop()
    checked = _openssl_crl(dep, "-text")
    assert checked.returncode == 0 and "verify OK" in checked.stderr, checked.stderr
    listed = [int(h, 16) for h in re.findall(r"Serial Number: ([0-9A-F]+)", checked.stdout)]
    assert listed == [serial_of(dep, "hcm.quan-1")]
    assert "Key Compromise" in checked.stdout
    assert re.search(r"CRL Number:\s*\n\s*2\n", checked.stdout), checked.stdout
    assert (dep / "pki/ca.crl").stat().st_mode & 0o777 == 0o644
    server = ServerProcess(cfg, port=server.port)
    try:
        body = signed_request(dep, "hcm.quan-1", CITIZEN, example(CITIZEN))
        status, doc = await post(server.url, CITIZEN, body, JOSE)
        assert status == 401 and doc["type"].endswith(":unauthenticated")
        body = signed_request(dep, "hcm.thu-duc", CITIZEN, example(CITIZEN))
        assert (await post(server.url, CITIZEN, body, JOSE))[0] == 200
    finally:
        log = server.stop()
    assert "revoked" in log


def test_keys_revoke_refuses_an_unknown_participant_and_a_deployment_without_the_ca_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_deployment(tmp_path / "dep")
    before = (cfg.parent / "pki/ca.crl").read_bytes()
    assert revoke(cfg, "hcm.nobody") == 2
    assert "not a registered participant" in capsys.readouterr().err
    (cfg.parent / "pki/ca.key").rename(cfg.parent / "ca.key.elsewhere")
    assert revoke(cfg, "hcm.quan-1") == 2
    assert "no development CA key" in capsys.readouterr().err
    assert (cfg.parent / "pki/ca.crl").read_bytes() == before


def test_keys_revoke_without_a_participant_renews_an_expired_crl(tmp_path: Path) -> None:
    cfg = make_deployment(tmp_path / "dep")
    _write_bad_crl(cfg.parent, "expired")
    assert revoke(cfg) == 0
    create_app(load(cfg))  # starts again


async def test_a_crl_that_expires_while_running_still_applies_and_is_warned_about_once(
    tmp_path: Path, provider: Provider, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    assert revoke(cfg, "hcm.quan-1") == 0
    later = datetime.now(UTC) + timedelta(days=31)
    clock = [datetime.now(UTC)]
    async with running_gateway(cfg, clock=lambda: clock[0]) as gw:
        clock[0] = later
        for _ in range(2):
            body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN), created=later)
            status, doc = await post(gw.url, CITIZEN, body, JOSE)
            assert_revoked_refusal(gw, provider, status, doc)
    out = capsys.readouterr()
    assert (out.out + out.err).count("crl.stale") == 1


# -- offline verification: revoked after signing, or before --------------------------------------


def test_offline_verify_weighs_the_revocation_date_against_the_stated_signing_time() -> None:
    """Signed before the revocation: valid, with a note. At or after it, or no time: fails."""
    from gateway.crypto import jws
    from gateway.crypto.keys import load_private_key
    from gateway.crypto.revocation import Revocations, load_crl
    from gateway.models import rfc3339
    from gateway.verify import describe_verification

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ca_key, ca = devpki.make_ca("Verify", now=t0)
    key, cert = devpki.issue(ca_key, ca, "hcm.ttcds.gw", now=t0, purposes=("signing",))
    signing = load_private_key(devpki.pem_private_key(key))
    revoked_at = t0 + timedelta(days=10)
    crl = devpki.make_crl(ca_key, ca, now=t0)
    crl, _, _ = devpki.revoke_in_crl(ca_key, ca, crl, cert.serial_number, now=revoked_at)
    revocations = Revocations([load_crl(crl, [ca], now=revoked_at)])
    now = t0 + timedelta(days=20)  # a ManualClock's reading: the verifier takes the time as given

    def verify(body: dict[str, Any], typ: str = "receipt+jws") -> tuple[bool, list[str]]:
        artifact = jws.serialize(jws.sign(body, signing, [cert], typ=typ))
        anchors = [devpki.pem_certificate(ca)]
        return describe_verification(artifact, anchors, now=now, revocations=revocations)

    ok, lines = verify({"exchange_id": "x", "completed_at": rfc3339(revoked_at - timedelta(1))})
    assert ok, lines
    assert any(
        line.strip().startswith(f"certificate revoked on {revoked_at.isoformat()}, after this")
        for line in lines
    ), lines
    for signed in (revoked_at, revoked_at + timedelta(seconds=1)):
        ok, lines = verify({"exchange_id": "x", "completed_at": rfc3339(signed)})
        assert not ok and any("FAIL" in ln and "at or before this was signed" in ln for ln in lines)
    ok, lines = verify({"exchange_id": "x"})
    assert not ok and any("states no signing time" in line for line in lines), lines
    # A signed request's time is its `created`.
    request = {"id": "1", "sender": "hcm.ttcds.gw", "service": "s.v1", "payload": {}}
    ok, lines = verify({**request, "created": rfc3339(revoked_at - timedelta(1))}, "request+jws")
    assert ok, lines
    ok, lines = verify({**request, "created": rfc3339(revoked_at)}, "request+jws")
    assert not ok, lines


async def test_gateway_verify_and_post_verify_accept_a_request_signed_before_its_revocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_deployment(tmp_path / "dep")
    dep = cfg.parent
    before = signed_request(
        dep, "hcm.quan-1", CITIZEN, example(CITIZEN), created=datetime.now(UTC) - timedelta(hours=1)
    )
    assert revoke(cfg, "hcm.quan-1") == 0
    after = signed_request(
        dep, "hcm.quan-1", CITIZEN, example(CITIZEN), created=datetime.now(UTC) + timedelta(hours=1)
    )
    capsys.readouterr()
    (tmp_path / "before.json").write_bytes(before)
    (tmp_path / "after.json").write_bytes(after)
    assert cli.main(["verify", str(tmp_path / "before.json"), "--config", str(cfg)]) == 0
    assert "after this was signed" in capsys.readouterr().out
    assert cli.main(["verify", str(tmp_path / "after.json"), "--config", str(cfg)]) == 1
    assert "at or before this was signed" in capsys.readouterr().out
    auditor = (dep / "roles/dtc-auditor.token").read_text().strip()
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
        reports = {}
        for name, body in (("before", before), ("after", after)):
            async with http.post(
                f"{gw.url}/v1/verify", data=body, headers={"Authorization": f"Bearer {auditor}"}
            ) as r:
                assert r.status == 200
                reports[name] = await r.json()
    assert reports["before"]["valid"] is True, reports["before"]
    assert any("after this was signed" in d for d in reports["before"]["details"])
    assert reports["after"]["valid"] is False, reports["after"]
