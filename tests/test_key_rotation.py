"""`gateway keys rotate`: a new signing key and certificate; nothing signed before breaks.

The deployment is the one `gateway init` writes (development CA next to the config). After a
rotation and a restart the JWKS lists the retired key with its x5c, new receipts carry the new
kid, and a receipt from before still verifies offline and through POST /v1/verify. Without the
development CA the command writes a key and a CSR, and a second step installs what the CA issued.
"""

from __future__ import annotations

import asyncio
import base64
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway import cli
from gateway.config import load
from gateway.crypto import devpki
from gateway.crypto.keys import jwk_thumbprint, load_certificates
from gateway.http.app import create_app
from gateway.keyrotation import RotationError, edit_gateway_section, rotate
from tests.support import example, make_deployment, running_gateway, signed_request

SID = "citizen-lookup.v1"


@asynccontextmanager
async def serve(config: Path) -> AsyncIterator[str]:
    """A (re)started gateway, built from the config on disk as at start-up."""
    async with running_gateway(config) as gw:
        yield gw.url


async def exchange(url: str, d: Path) -> dict[str, Any]:
    body = signed_request(d, "hcm.quan-1", SID, example(SID))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/exchange/{SID}",
            data=body,
            headers={"Content-Type": "application/jose+json"},
        ) as r,
    ):
        assert r.status == 200
        return dict(await r.json())


def kid_of(receipt: dict[str, Any]) -> str:
    raw = receipt["protected"]
    return str(orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["kid"])


def cert_kid(path: Path) -> str:
    return jwk_thumbprint(load_certificates(path.read_bytes())[0].public_key())


def rotate_cli(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, str]:
    code = cli.main(["keys", "rotate", "--config", str(config), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def verify_cli(capsys: pytest.CaptureFixture[str], config: Path, f: Path) -> tuple[int, str]:
    code = cli.main(["verify", str(f), "--config", str(config)])
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_rotate_restart_old_receipts_still_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dep"
    config = make_deployment(d)
    old_kid = cert_kid(d / "pki/gateway.crt")
    async with serve(config) as url:
        old_receipt = (await exchange(url, d))["receipt"]
    assert kid_of(old_receipt) == old_kid
    saved = tmp_path / "old-receipt.json"
    saved.write_bytes(orjson.dumps(old_receipt))

    code, out = rotate_cli(capsys, config)
    assert code == 0, out
    text = config.read_text()
    cfg = tomllib.loads(text)["gateway"]
    assert cfg["retired_certificates"] == ["pki/gateway.crt"]
    assert cfg["key"].startswith("pki/gateway-") and cfg["certificate"].endswith(".crt")
    assert "# Do not use these keys or tokens anywhere else." in text  # comments kept
    assert "# For mTLS, uncomment" in text
    new_kid = cert_kid(d / cfg["certificate"])
    assert new_kid != old_kid and new_kid in out and old_kid in out
    assert (d / cfg["key"]).stat().st_mode & 0o077 == 0
    assert list(d.glob("gateway.toml.bak-*"))

    async with serve(config) as url:  # the restart
        async with aiohttp.ClientSession() as http, http.get(f"{url}/.well-known/jwks.json") as r:
            jwks = await r.json()
        new_receipt = (await exchange(url, d))["receipt"]
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/verify", data=saved.read_bytes()) as r,
        ):
            assert r.status == 200
            report = await r.json()
    # The signing keys, current first; then the checkpoint key, which rotation leaves alone.
    assert [k["kid"] for k in jwks["keys"] if "x5c" in k] == [new_kid, old_kid]
    assert [k["kid"] for k in jwks["keys"]][:2] == [new_kid, old_kid]
    old_jwk = jwks["keys"][1]
    old_der = x509.load_pem_x509_certificate((d / "pki/gateway.crt").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert base64.b64decode(old_jwk["x5c"][0]) == old_der
    assert kid_of(new_receipt) == new_kid
    assert report["valid"] is True and report["kind"] == "receipt"
    assert any("retired gateway key" in line for line in report["details"])
    code, out = verify_cli(capsys, config, saved)
    assert code == 0, out
    assert f"key {old_kid} is a retired gateway key" in out

    # A second rotation retires the second key too; both stay published.
    await asyncio.sleep(1.1)  # New files are named by the second.
    code, out = rotate_cli(capsys, config)
    assert code == 0, out
    assert tomllib.loads(config.read_text())["gateway"]["retired_certificates"] == [
        "pki/gateway.crt",
        cfg["certificate"],
    ]


def test_without_the_development_ca_a_csr_is_written_and_installed_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dep"
    config = make_deployment(d)
    # The CA's key goes where a production CA key lives: elsewhere.
    ca_key_pem = (d / "pki/ca.key").read_bytes()
    (d / "pki/ca.key").unlink()
    before = config.read_text()
    code, out = rotate_cli(capsys, config)
    assert code == 0, out
    assert config.read_text() == before
    assert "-----BEGIN CERTIFICATE REQUEST-----" in out
    key_path = next((d / "pki").glob("gateway-*.key"))
    csr = x509.load_pem_x509_csr(key_path.with_suffix(".csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=hcm.ttcds.gw"

    # The CA issues a certificate from the request ...
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate((d / "pki/ca.crt").read_bytes())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(csr.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
        .add_extension(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    issued = tmp_path / "issued.pem"
    issued.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    # ... a certificate for another key is refused, this one is installed.
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes((d / "participants/hcm.quan-1/cert.pem").read_bytes())
    code, out = rotate_cli(capsys, config, "--key", str(key_path), "--certificate", str(wrong))
    assert code == 1 and "does not hold the key" in out
    code, out = rotate_cli(capsys, config, "--key", str(key_path), "--certificate", str(issued))
    assert code == 0, out
    g = tomllib.loads(config.read_text())["gateway"]
    assert g["retired_certificates"] == ["pki/gateway.crt"]
    assert Path(g["certificate"]) == issued.resolve()
    dep = load(config)
    assert jwk_thumbprint(load_certificates(dep.certificate_pem)[0].public_key()) == cert_kid(
        issued
    )


def test_a_certificate_for_another_participant_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    config = make_deployment(d)
    ca_key = serialization.load_pem_private_key((d / "pki/ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((d / "pki/ca.crt").read_bytes())
    key, cert = devpki.issue(ca_key, ca_cert, "hcm.quan-1", now=datetime.now(UTC))  # type: ignore[arg-type]
    (tmp_path / "k.pem").write_bytes(devpki.pem_private_key(key))
    (tmp_path / "c.pem").write_bytes(devpki.pem_certificate(cert))
    before = config.read_text()
    with pytest.raises(RotationError, match=r"names 'hcm\.quan-1', not the gateway"):
        rotate(
            config, now=datetime.now(UTC), key=tmp_path / "k.pem", certificate=tmp_path / "c.pem"
        )
    assert config.read_text() == before


def test_a_config_saved_with_a_byte_order_mark_is_rotated(tmp_path: Path) -> None:
    """The gateway loads such a file, so rotation must edit it too (it refused it as not TOML)."""
    config = make_deployment(tmp_path / "dep")
    old_key = load(config).config.gateway.key
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    rotate(config, now=datetime.now(UTC))
    assert load(config).config.gateway.key != old_key


def test_a_revoked_certificate_is_refused_before_the_config_points_at_it(tmp_path: Path) -> None:
    """The install step checks the new certificate as start-up will (trust.build_anchors: the
    configured CRLs too): installing one start-up then refuses leaves a gateway that does not
    restart, with its old key already moved to retired_certificates."""
    d = tmp_path / "dep"
    config = make_deployment(d)
    ca_key = serialization.load_pem_private_key((d / "pki/ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((d / "pki/ca.crt").read_bytes())
    now = datetime.now(UTC)
    key, cert = devpki.issue(ca_key, ca_cert, "hcm.ttcds.gw", now=now, purposes=("signing",))  # type: ignore[arg-type]
    (tmp_path / "k.pem").write_bytes(devpki.pem_private_key(key))
    (tmp_path / "c.pem").write_bytes(devpki.pem_certificate(cert))
    crl = (d / "pki/ca.crl").read_bytes()
    crl, _, _ = devpki.revoke_in_crl(ca_key, ca_cert, crl, cert.serial_number, now=now)  # type: ignore[arg-type]
    (d / "pki/ca.crl").write_bytes(crl)
    (d / "pki/ca.key").unlink()  # a production CA: the certificate came from elsewhere
    before = config.read_text()
    with pytest.raises(RotationError, match="was revoked on"):
        rotate(config, now=now, key=tmp_path / "k.pem", certificate=tmp_path / "c.pem")
    assert config.read_text() == before
    create_app(load(config))  # the deployment still starts, with its current key


def test_keys_commands_on_one_deployment_do_not_run_at_once(tmp_path: Path) -> None:
    """keys rotate and keys revoke read a file, edit it and write it back: two at once (two
    operators, a cron job) each wrote over the other's edit, losing a revocation from the CRL
    or a retired key from the config. While one holds the deployment, the other is refused
    and changes nothing; once it is done, the other runs."""
    from gateway.files import exclusive
    from gateway.keyrevocation import RevocationError, revoke

    config = make_deployment(tmp_path / "dep")
    before, crl = config.read_text(), (config.parent / "pki/ca.crl").read_bytes()
    now = datetime.now(UTC)
    with exclusive(config.parent):
        with pytest.raises(RotationError, match="another `gateway keys` command"):
            rotate(config, now=now)
        with pytest.raises(RevocationError, match="another `gateway keys` command"):
            revoke(config, "hcm.quan-1", now=now)
    assert config.read_text() == before
    assert (config.parent / "pki/ca.crl").read_bytes() == crl
    rotate(config, now=now)
    assert revoke(config, "hcm.quan-1", now=now).serial is not None


# -- the config edit ---------------------------------------------------------------------------


BASE = """# top comment
[gateway]
id = "hcm.ttcds.gw"   # the gateway
key = "pki/gateway.key"  # signing key
certificate = 'pki/gateway.crt'
trust_anchors = ["pki/ca.crt"]

[[participants]]
id = "hcm.quan-1"
key = "not-this-one"
"""


def test_the_edit_changes_only_those_lines_and_keeps_comments() -> None:
    out = edit_gateway_section(BASE, key="k2", certificate="c2", retired=["pki/gateway.crt"])
    assert out.splitlines() == [
        "# top comment",
        "[gateway]",
        'id = "hcm.ttcds.gw"   # the gateway',
        'key = "k2"  # signing key',
        'certificate = "c2"',
        'retired_certificates = ["pki/gateway.crt"]',
        'trust_anchors = ["pki/ca.crt"]',
        "",
        "[[participants]]",
        'id = "hcm.quan-1"',
        'key = "not-this-one"',
    ]
    again = edit_gateway_section(out, key="k3", certificate="c3", retired=["pki/gateway.crt", "c2"])
    assert 'retired_certificates = ["pki/gateway.crt", "c2"]' in again


@pytest.mark.parametrize(
    "text",
    [
        'gateway = { id = "x", key = "k", certificate = "c" }\n',
        '[gateway]\nid = "x"\nkey = """k"""\ncertificate = "c"\n',
        '[gateway]\nkey = "k"\ncertificate = "c"\nretired_certificates = [\n  "a",\n]\n',
    ],
    ids=["inline-table", "multiline-string", "multiline-array"],
)
def test_the_edit_refuses_what_it_cannot_change_safely(text: str) -> None:
    with pytest.raises(RotationError):
        edit_gateway_section(text, key="k2", certificate="c2", retired=["c"])


def test_the_new_key_and_certificate_are_durable_before_the_config_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash right after the config swap must not leave gateway.toml naming key files whose
    directory entries never reached the disk: pki/ is fsynced before gateway.toml is replaced."""
    import os

    config = make_deployment(tmp_path / "dep")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace {dst}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rotate(config, now=datetime.now(UTC))
    swap = events.index(f"replace {config}")
    pki_dir = str((tmp_path / "dep/pki").resolve())
    assert f"fsync {pki_dir}" in events[:swap], events
