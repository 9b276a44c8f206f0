"""Chain validation, participant binding and the development PKI (gateway.crypto.pki, devpki).

Independent checks: ``openssl verify -x509_strict`` must accept the dev PKI and refuse a foreign
CA; ``openssl x509 -fingerprint`` must agree with ``fingerprint_sha256``; Python's ssl module must
complete an mTLS handshake on 127.0.0.1 with the dev certificates.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from gateway.crypto import devpki
from gateway.crypto.keys import KeyInvalid, encode_x5c, load_certificates
from gateway.crypto.pki import (
    ChainInvalid,
    TrustAnchors,
    decode_x5c,
    fingerprint_sha256,
    participant_id,
    verify_chain,
)
from gateway.crypto.pki_rules import extension as extension_of

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki() -> SimpleNamespace:
    root_key, root = devpki.make_ca("hcm", now=NOW)
    inter_key, inter = devpki.make_ca(
        "hcm issuing", now=NOW, issuer=(root_key, root), path_length=0
    )
    leaf_key, leaf = devpki.issue(inter_key, inter, "hcm.quan-1", now=NOW)
    other_key, other = devpki.make_ca("elsewhere", now=NOW)
    return SimpleNamespace(
        root=root,
        root_key=root_key,
        inter=inter,
        inter_key=inter_key,
        leaf=leaf,
        leaf_key=leaf_key,
        other=other,
        other_key=other_key,
    )


def _custom_leaf(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    *,
    key: object | None = None,
    key_usage: x509.KeyUsage | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    cn: str = "hcm.quan-1",
    san_uris: tuple[str, ...] = (),
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """A leaf built by hand: what devpki refuses to make (no digitalSignature, RSA-1024...)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            subject
            if subject is not None
            else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        )
        .issuer_name(issuer.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san_uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in san_uris]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _ku(*, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=not digital_signature,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(devpki.pem_certificate(c) for c in certs))
    return path


def _openssl_verify(
    tmp_path: Path,
    ca: x509.Certificate,
    inter: x509.Certificate,
    leaf: x509.Certificate,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-attime",
            str(int(NOW.timestamp())),
            *extra,
            "-CAfile",
            str(_write(tmp_path / "ca.pem", ca)),
            "-untrusted",
            str(_write(tmp_path / "inter.pem", inter)),
            str(_write(tmp_path / "leaf.pem", leaf)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


# --- development PKI, checked by openssl -------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec", "ed25519", "rsa"])
def test_openssl_verifies_devpki_chain(tmp_path: Path, pki: SimpleNamespace, key_type: str) -> None:
    """root -> intermediate -> leaf from devpki passes `openssl verify -x509_strict`."""
    _, leaf = devpki.issue(pki.inter_key, pki.inter, "hcm.quan-1", now=NOW, key_type=key_type)  # type: ignore[arg-type]
    result = _openssl_verify(tmp_path, pki.root, pki.inter, leaf, "-purpose", "sslclient")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "leaf.pem: OK" in result.stdout


def test_openssl_verifies_devpki_server_cert(tmp_path: Path, pki: SimpleNamespace) -> None:
    _, leaf = devpki.issue(
        pki.inter_key,
        pki.inter,
        "hcm.ttcds",
        now=NOW,
        purposes=("server_auth",),
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    result = _openssl_verify(
        tmp_path, pki.root, pki.inter, leaf, "-purpose", "sslserver", "-verify_ip", "127.0.0.1"
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_openssl_refuses_cert_from_another_ca(tmp_path: Path, pki: SimpleNamespace) -> None:
    _, foreign = devpki.issue(pki.other_key, pki.other, "hcm.quan-1", now=NOW)
    result = _openssl_verify(tmp_path, pki.root, pki.inter, foreign)
    assert result.returncode != 0


def test_fingerprint_matches_openssl(tmp_path: Path, pki: SimpleNamespace) -> None:
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            str(_write(tmp_path / "l.pem", pki.leaf)),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.strip().split("=", 1)[1].replace(":", "").lower() == fingerprint_sha256(pki.leaf)


def test_dev_ca_is_marked_and_constrained(pki: SimpleNamespace) -> None:
    cn = pki.root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "hcm DEVELOPMENT CA (not for production)"
    bc = pki.root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = pki.root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(pki.root.public_key(), ec.EllipticCurvePublicKey)
    inter_aki = pki.inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = pki.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert inter_aki.key_identifier == root_ski.digest


def test_issued_cert_carries_identity_and_usages(pki: SimpleNamespace) -> None:
    _, cert = devpki.issue(
        pki.inter_key,
        pki.inter,
        "hcm.ttcds",
        now=NOW,
        purposes=("signing", "server_auth"),
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
        days=100_000,
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:gateway:participant:hcm.ttcds"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc <= pki.inter.not_valid_after_utc  # never outlives its CA
    assert participant_id(cert) == "hcm.ttcds"


def test_signing_only_cert_has_no_eku(pki: SimpleNamespace) -> None:
    _, cert = devpki.issue(pki.inter_key, pki.inter, "hcm.so-tc", now=NOW, purposes=("signing",))
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_devpki_refuses_bad_inputs(pki: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="participant id"):
        devpki.issue(pki.inter_key, pki.inter, "HCM Quan 1", now=NOW)
    with pytest.raises(ValueError, match="purposes"):
        devpki.issue(pki.inter_key, pki.inter, "hcm.quan-1", now=NOW, purposes=())
    with pytest.raises(ValueError, match="timezone"):
        devpki.make_ca("x", now=NOW.replace(tzinfo=None))


def test_pem_round_trip_with_password(pki: SimpleNamespace) -> None:
    pem = devpki.pem_private_key(pki.leaf_key, b"secret")
    assert b"ENCRYPTED" in pem
    loaded = serialization.load_pem_private_key(pem, password=b"secret")
    assert loaded.public_key() == pki.leaf_key.public_key()


# --- verify_chain ------------------------------------------------------------------------------


def test_chain_with_intermediate_is_valid_for_signing_and_client_auth(pki: SimpleNamespace) -> None:
    anchors = TrustAnchors([pki.root])
    for purpose in ("signing", "client_auth"):
        assert verify_chain([pki.leaf, pki.inter], anchors, now=NOW, purpose=purpose) == pki.leaf  # type: ignore[arg-type]


def test_chain_may_include_the_root(pki: SimpleNamespace) -> None:
    result = TrustAnchors([pki.root]).validate(
        [pki.leaf, pki.inter, pki.root], now=NOW, purpose="signing"
    )
    assert result.path[-1] == pki.root


def test_server_cert_valid_for_server_auth_only(pki: SimpleNamespace) -> None:
    _, server = devpki.issue(
        pki.inter_key,
        pki.inter,
        "hcm.ttcds",
        now=NOW,
        purposes=("server_auth",),
        ip_addresses=("127.0.0.1",),
    )
    anchors = TrustAnchors([pki.root])
    verify_chain([server, pki.inter], anchors, now=NOW, purpose="server_auth")
    with pytest.raises(ChainInvalid, match="extendedKeyUsage does not include clientAuth"):
        verify_chain([server, pki.inter], anchors, now=NOW, purpose="client_auth")


def test_client_cert_refused_for_server_auth(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid) as e:
        verify_chain(
            [pki.leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="server_auth"
        )
    assert e.value.reason == "leaf CN=hcm.quan-1 extendedKeyUsage does not include serverAuth"


def test_expired_leaf_is_refused(pki: SimpleNamespace) -> None:
    later = pki.leaf.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(ChainInvalid, match=r"certificate 0 .*has expired"):
        verify_chain([pki.leaf, pki.inter], TrustAnchors([pki.root]), now=later, purpose="signing")


def test_not_yet_valid_leaf_is_refused(pki: SimpleNamespace) -> None:
    earlier = pki.leaf.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(ChainInvalid, match="not yet valid"):
        verify_chain(
            [pki.leaf, pki.inter], TrustAnchors([pki.root]), now=earlier, purpose="signing"
        )


def test_a_certificate_is_valid_at_the_exact_instants_of_its_not_before_and_not_after(
    pki: SimpleNamespace,
) -> None:
    """RFC 5280 4.1.2.5: the validity period includes both of its ends."""
    anchors = TrustAnchors([pki.root])
    for now in (pki.leaf.not_valid_before_utc, pki.leaf.not_valid_after_utc):
        assert verify_chain([pki.leaf, pki.inter], anchors, now=now, purpose="signing") == pki.leaf


def test_expired_intermediate_is_refused(pki: SimpleNamespace) -> None:
    _, short_inter = devpki.make_ca("short", now=NOW, days=2, issuer=(pki.root_key, pki.root))
    later = NOW + timedelta(days=3)
    with pytest.raises(ChainInvalid, match=r"certificate 1 .*has expired"):
        verify_chain(
            [pki.leaf, short_inter], TrustAnchors([pki.root]), now=later, purpose="signing"
        )


def test_chain_to_another_anchor_is_refused_naming_where_it_ends(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid) as e:
        verify_chain([pki.leaf, pki.inter], TrustAnchors([pki.other]), now=NOW, purpose="signing")
    assert e.value.reason == (
        f"the chain ends at {pki.inter.subject.rfc4514_string()}, issued by "
        f"{pki.root.subject.rfc4514_string()}, which is not one of the trust anchors"
    )


def test_missing_intermediate_is_refused(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid, match="trust anchors"):
        verify_chain([pki.leaf], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_impostor_ca_with_the_anchor_name_is_refused(pki: SimpleNamespace) -> None:
    """Same subject name as the anchor, different key: only the path validator can tell."""
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _custom_leaf(impostor_key, pki.inter, key_usage=_ku(digital_signature=True))
    with pytest.raises(ChainInvalid, match="path validation against the trust anchors"):
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_out_of_order_chain_is_refused(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid, match="out of order"):
        verify_chain(
            [pki.leaf, pki.root, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing"
        )


def test_a_chain_whose_last_link_does_not_chain_is_refused_as_out_of_order(
    pki: SimpleNamespace,
) -> None:
    """Every link is checked, the last one too: a stray certificate appended after the
    intermediate is named, not silently ignored."""
    with pytest.raises(ChainInvalid) as e:
        verify_chain(
            [pki.leaf, pki.inter, pki.other], TrustAnchors([pki.root]), now=NOW, purpose="signing"
        )
    assert e.value.reason.startswith(
        f"the chain is out of order: certificate 2 ({pki.other.subject.rfc4514_string()}) is not "
        "the issuer of certificate 1"
    )


def test_empty_chain_is_refused(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid, match="empty"):
        verify_chain([], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_leaf_without_digital_signature_is_refused_naming_it(pki: SimpleNamespace) -> None:
    """Refused before the library runs, with a reason naming the leaf (the library's own text
    names neither the certificate nor the usage in words)."""
    leaf = _custom_leaf(pki.inter_key, pki.inter, key_usage=_ku(digital_signature=False))
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="client_auth")
    assert e.value.reason == "leaf CN=hcm.quan-1 keyUsage does not include digitalSignature"


def test_signing_leaf_without_key_usage_is_refused(pki: SimpleNamespace) -> None:
    leaf = _custom_leaf(pki.inter_key, pki.inter, key_usage=None)
    with pytest.raises(ChainInvalid, match="no keyUsage"):
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_ca_certificate_as_leaf_is_refused(pki: SimpleNamespace) -> None:
    with pytest.raises(ChainInvalid, match="is a CA certificate"):
        verify_chain([pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_rsa_1024_leaf_is_refused(pki: SimpleNamespace) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = _custom_leaf(pki.inter_key, pki.inter, key=weak, key_usage=_ku(digital_signature=True))
    with pytest.raises(ChainInvalid, match=r"1024 bits.*2048"):
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")


def test_an_rsa_2048_leaf_is_accepted(pki: SimpleNamespace) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _custom_leaf(pki.inter_key, pki.inter, key=key, key_usage=_ku(digital_signature=True))
    assert (
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
        == leaf
    )


def test_a_leaf_without_basic_constraints_is_accepted(pki: SimpleNamespace) -> None:
    """RFC 5280 4.2.1.9: an absent basicConstraints means not a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcm.quan-1")]))
        .issuer_name(pki.inter.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(_ku(digital_signature=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.inter_key.public_key()),
            critical=False,
        )
        .sign(pki.inter_key, hashes.SHA256())
    )
    assert (
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
        == leaf
    )


def test_a_chain_with_an_ed25519_signed_certificate_is_refused_not_a_crash() -> None:
    """An Ed25519 signature has no separate hash (signature_hash_algorithm is None): the
    weak-hash check must let it through to path validation, which refuses Ed25519 issuers."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed25519 root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, None)
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcm.quan-1")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_ku(digital_signature=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, None)
    )
    assert leaf.signature_hash_algorithm is None
    with pytest.raises(ChainInvalid, match="path validation"):
        verify_chain([leaf, root], TrustAnchors([root]), now=NOW, purpose="signing")


def test_a_leaf_whose_key_usage_does_not_parse_is_refused_naming_it(pki: SimpleNamespace) -> None:
    """cryptography parses extensions lazily: a keyUsage that is not a BIT STRING must be a
    refused chain, never read as an absent extension."""
    garbage = x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00")
    leaf = _custom_leaf(pki.inter_key, pki.inter, key_usage=garbage)  # type: ignore[arg-type]
    with pytest.raises(ChainInvalid, match=r"certificate CN=hcm\.quan-1 has malformed extensions"):
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="client_auth")


def test_a_leaf_whose_key_usage_includes_key_cert_sign_is_refused(pki: SimpleNamespace) -> None:
    """A leaf that may sign certificates is a CA in disguise, whatever its basicConstraints say:
    refused for every purpose."""
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    leaf = _custom_leaf(
        pki.inter_key, pki.inter, key_usage=usage, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    for purpose in ("signing", "client_auth"):
        with pytest.raises(
            ChainInvalid, match="leaf keyUsage must include digitalSignature and not keyCertSign"
        ):
            verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose=purpose)


@pytest.mark.parametrize(
    ("make_key", "name"),
    [
        (ed448.Ed448PrivateKey.generate, "Ed448PublicKey"),
        (lambda: dsa.generate_private_key(2048), "DSAPublicKey"),
    ],
)
def test_a_leaf_with_a_key_type_the_gateway_does_not_verify_is_refused_naming_it(
    pki: SimpleNamespace, make_key: Callable[[], Any], name: str
) -> None:
    leaf = _custom_leaf(
        pki.inter_key, pki.inter, key=make_key(), key_usage=_ku(digital_signature=True)
    )
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    assert e.value.reason == f"leaf CN=hcm.quan-1 holds an unsupported {name} key"


def test_naive_now_is_a_programming_error(pki: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(
            [pki.leaf, pki.inter],
            TrustAnchors([pki.root]),
            now=NOW.replace(tzinfo=None),
            purpose="signing",
        )


class _NoOffset(tzinfo):
    """A tzinfo that knows no UTC offset: a datetime carrying it is aware in name only."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def test_a_now_whose_tzinfo_has_no_utc_offset_is_a_programming_error(pki: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(
            [pki.leaf, pki.inter],
            TrustAnchors([pki.root]),
            now=NOW.replace(tzinfo=_NoOffset()),
            purpose="signing",
        )


def test_a_long_subject_is_cut_to_120_characters_in_reasons(pki: SimpleNamespace) -> None:
    """Certificates come from untrusted senders and reasons end up in logs."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" * 57)] * 2)
    leaf = _custom_leaf(pki.inter_key, pki.inter, subject=subject, key_usage=None)
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    text = subject.rfc4514_string()
    assert len(text) == 121
    cut = text[:117] + "..."
    assert e.value.reason == f"leaf {cut} has no keyUsage: signing needs digitalSignature"
    exact = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "z" * 57),
            x509.NameAttribute(NameOID.COMMON_NAME, "z" * 56),
        ]
    )
    assert len(exact.rfc4514_string()) == 120  # not cut: at most 120 is kept whole
    leaf = _custom_leaf(pki.inter_key, pki.inter, subject=exact, key_usage=None)
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    assert (
        e.value.reason
        == f"leaf {exact.rfc4514_string()} has no keyUsage: signing needs digitalSignature"
    )


def test_a_leaf_with_an_empty_subject_is_named_as_such_in_reasons(pki: SimpleNamespace) -> None:
    leaf = _custom_leaf(
        pki.inter_key, pki.inter, subject=x509.Name([]), san_uris=("urn:x",), key_usage=None
    )
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    assert e.value.reason == "leaf (empty subject) has no keyUsage: signing needs digitalSignature"


def test_trust_anchors_must_be_ca_certificates(pki: SimpleNamespace) -> None:
    with pytest.raises(KeyInvalid, match="not a CA"):
        TrustAnchors([pki.leaf])
    with pytest.raises(KeyInvalid, match="at least one"):
        TrustAnchors([])


def test_pinned_intermediate_can_be_the_anchor(pki: SimpleNamespace) -> None:
    assert (
        verify_chain([pki.leaf], TrustAnchors([pki.inter]), now=NOW, purpose="signing") == pki.leaf
    )


# --- x5c decoding and the cache -----------------------------------------------------------------


def test_decode_x5c_round_trip_and_errors(pki: SimpleNamespace) -> None:
    assert decode_x5c(encode_x5c([pki.leaf, pki.inter])) == (pki.leaf, pki.inter)
    with pytest.raises(ChainInvalid, match="non-empty list"):
        decode_x5c("abc")
    with pytest.raises(ChainInvalid, match=r"x5c\[0\] is not standard base64"):
        decode_x5c(["-_-_"])
    with pytest.raises(ChainInvalid, match=r"x5c\[1\] is not a DER"):
        decode_x5c([encode_x5c([pki.leaf])[0], base64.b64encode(b"junk").decode()])


def test_cache_hits_and_is_bounded(pki: SimpleNamespace) -> None:
    anchors = TrustAnchors([pki.root], cache_size=2)
    x5c = encode_x5c([pki.leaf, pki.inter])
    first = anchors.validate_x5c(x5c, now=NOW, purpose="signing")
    assert anchors.validate_x5c(x5c, now=NOW, purpose="signing") is first
    assert anchors.cache_info()[:3] == (1, 1, 1)
    for name in ("hcm.quan-2", "hcm.quan-3"):
        _, other = devpki.issue(pki.inter_key, pki.inter, name, now=NOW)
        anchors.validate_x5c(encode_x5c([other, pki.inter]), now=NOW, purpose="signing")
    assert anchors.cache_info().currsize == 2


def test_cached_chain_is_refused_after_it_expires(pki: SimpleNamespace) -> None:
    anchors = TrustAnchors([pki.root])
    x5c = encode_x5c([pki.leaf, pki.inter])
    anchors.validate_x5c(x5c, now=NOW, purpose="signing")
    later = pki.leaf.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(ChainInvalid, match="has expired"):
        anchors.validate_x5c(x5c, now=later, purpose="signing")
    # The cached success still serves a time inside the window (old receipts verify).
    anchors.validate_x5c(x5c, now=NOW, purpose="signing")
    assert anchors.cache_info().hits == 1


def test_cache_is_per_purpose(pki: SimpleNamespace) -> None:
    anchors = TrustAnchors([pki.root])
    x5c = encode_x5c([pki.leaf, pki.inter])
    anchors.validate_x5c(x5c, now=NOW, purpose="signing")
    with pytest.raises(ChainInvalid, match="serverAuth"):
        anchors.validate_x5c(x5c, now=NOW, purpose="server_auth")


# --- participant binding ------------------------------------------------------------------------


def test_participant_id_from_cn_and_san(pki: SimpleNamespace) -> None:
    assert participant_id(pki.leaf) == "hcm.quan-1"
    cn_only = _custom_leaf(pki.inter_key, pki.inter, cn="central.dan-cu")
    assert participant_id(cn_only) == "central.dan-cu"


def test_participant_id_none_for_a_ca(pki: SimpleNamespace) -> None:
    assert participant_id(pki.root) is None


def test_participant_id_refuses_disagreeing_san(pki: SimpleNamespace) -> None:
    cert = _custom_leaf(
        pki.inter_key, pki.inter, cn="hcm.quan-1", san_uris=("urn:gateway:participant:hcm.quan-2",)
    )
    with pytest.raises(ChainInvalid, match="disagrees"):
        participant_id(cert)


def test_participant_id_refuses_two_san_participants(pki: SimpleNamespace) -> None:
    cert = _custom_leaf(
        pki.inter_key,
        pki.inter,
        san_uris=("urn:gateway:participant:hcm.quan-1", "urn:gateway:participant:hcm.quan-2"),
    )
    with pytest.raises(ChainInvalid, match="several participants"):
        participant_id(cert)


def test_participant_id_is_not_case_folded(pki: SimpleNamespace) -> None:
    assert participant_id(_custom_leaf(pki.inter_key, pki.inter, cn="HCM.QUAN-1")) is None


def _der_length(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(size)]) + size


def _resigned(cert: x509.Certificate, tbs: bytes, issuer_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER of ``cert`` with its TBS replaced by ``tbs`` and signed again (ES256 issuer)."""
    signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    bits = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + ecdsa_with_sha256 + bits
    return b"\x30" + _der_length(len(body)) + body


def test_participant_id_refuses_a_subject_that_does_not_decode_instead_of_crashing(
    pki: SimpleNamespace,
) -> None:
    """Path validation does not decode names, so a CA-signed leaf whose CN is not UTF-8 passes
    it; naming its participant must then be a refusal (401 / a failed check), not a 500."""
    cert = _custom_leaf(pki.inter_key, pki.inter, key_usage=_ku(digital_signature=True))
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(b"hcm.quan-1") == 1
    leaf = x509.load_der_x509_certificate(
        _resigned(cert, tbs.replace(b"hcm.quan-1", b"hcm.qua\xff-1"), pki.inter_key)
    )
    verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    with pytest.raises(ChainInvalid, match="malformed"):
        participant_id(leaf)


# --- mTLS on loopback with the dev certificates -------------------------------------------------


def test_devpki_certificates_complete_an_mtls_handshake(tmp_path: Path) -> None:
    """Python's ssl accepts the dev server cert for 127.0.0.1 and localhost, and the client cert."""
    now = datetime.now(UTC)  # the TLS stack checks validity against the real clock
    ca_key, ca = devpki.make_ca("mtls", now=now)
    server_key, server = devpki.issue(
        ca_key,
        ca,
        "hcm.ttcds",
        now=now,
        purposes=("server_auth",),
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    client_key, client = devpki.issue(ca_key, ca, "hcm.quan-1", now=now)
    _write(tmp_path / "ca.pem", ca)
    for name, key, cert in (("server", server_key, server), ("client", client_key, client)):
        _write(tmp_path / f"{name}.pem", cert)
        (tmp_path / f"{name}.key").write_bytes(devpki.pem_private_key(key))

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(tmp_path / "ca.pem")
    client_ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")

    seen: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _addr = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen.append(tls.getpeercert(binary_form=True) or b"")
                    tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for host in ("127.0.0.1", "localhost"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=host) as tls,
            ):
                assert tls.recv(2) == b"ok"
        thread.join(timeout=10)

    peer = x509.load_der_x509_certificate(seen[0])
    assert participant_id(peer) == "hcm.quan-1"
    verify_chain([peer], TrustAnchors([ca]), now=now, purpose="client_auth")


def _ca_with_eku(
    pki: SimpleNamespace, eku: list[x509.ObjectIdentifier]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TLS servers CA")]))
        .issuer_name(pki.root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.root_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .sign(pki.root_key, hashes.SHA256())
    )
    return key, cert


def test_issuer_eku_constrains_the_purpose(pki: SimpleNamespace) -> None:
    """A serverAuth-only intermediate is fine for server_auth, refused for client_auth."""
    ca_key, ca = _ca_with_eku(pki, [ExtendedKeyUsageOID.SERVER_AUTH])
    _, both = devpki.issue(
        ca_key, ca, "hcm.ttcds", now=NOW, purposes=("client_auth", "server_auth")
    )
    anchors = TrustAnchors([pki.root])
    assert verify_chain([both, ca], anchors, now=NOW, purpose="server_auth") == both
    with pytest.raises(ChainInvalid, match="issuer extendedKeyUsage does not allow clientAuth"):
        verify_chain([both, ca], anchors, now=NOW, purpose="client_auth")


def test_an_issuer_with_any_extended_key_usage_may_issue_for_every_purpose(
    pki: SimpleNamespace,
) -> None:
    """anyExtendedKeyUsage on an intermediate (RFC 5280 4.2.1.12) restricts nothing: its
    client and server certificates validate for their purposes."""
    ca_key, ca = _ca_with_eku(pki, [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    _, both = devpki.issue(
        ca_key, ca, "hcm.ttcds", now=NOW, purposes=("client_auth", "server_auth")
    )
    anchors = TrustAnchors([pki.root])
    assert verify_chain([both, ca], anchors, now=NOW, purpose="client_auth") == both
    assert verify_chain([both, ca], anchors, now=NOW, purpose="server_auth") == both


def test_a_tls_client_certificate_without_key_usage_is_accepted_for_client_auth(
    pki: SimpleNamespace,
) -> None:
    """keyUsage is required for signing only; for TLS it is checked when present (pki doc)."""
    leaf = _custom_leaf(pki.inter_key, pki.inter, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    anchors = TrustAnchors([pki.root])
    assert verify_chain([leaf, pki.inter], anchors, now=NOW, purpose="client_auth") == leaf
    with pytest.raises(ChainInvalid, match="no keyUsage"):
        verify_chain([leaf, pki.inter], anchors, now=NOW, purpose="signing")


def test_a_certificate_without_extended_key_usage_is_accepted_for_every_purpose(
    pki: SimpleNamespace,
) -> None:
    """extendedKeyUsage is checked when present (pki doc): a leaf without one is not limited."""
    _, leaf = devpki.issue(pki.inter_key, pki.inter, "hcm.quan-1", now=NOW, purposes=("signing",))
    assert extension_of(leaf, x509.ExtendedKeyUsage) is None
    anchors = TrustAnchors([pki.root])
    for purpose in ("signing", "client_auth", "server_auth"):
        assert verify_chain([leaf, pki.inter], anchors, now=NOW, purpose=purpose) == leaf


def _ca_ladder(pki: SimpleNamespace, depth: int) -> tuple[Any, list[x509.Certificate]]:
    """``depth`` intermediates below the root, each issued by the previous: (last key, certs
    lowest first)."""
    issuer = (pki.root_key, pki.root)
    certs: list[x509.Certificate] = []
    for level in range(depth):
        issuer = devpki.make_ca(f"level {level}", now=NOW, issuer=issuer)
        certs.insert(0, issuer[1])
    return issuer[0], certs


def test_a_chain_of_8_certificates_validates_and_one_of_9_is_refused_for_its_length(
    pki: SimpleNamespace,
) -> None:
    """MAX_CHAIN_LENGTH is 8 certificates presented (leaf, intermediates, root): the bound on
    path building work an unauthenticated sender can ask for."""
    anchors = TrustAnchors([pki.root])
    key, ladder = _ca_ladder(pki, 6)
    _, leaf = devpki.issue(key, ladder[0], "hcm.quan-1", now=NOW)
    assert verify_chain([leaf, *ladder, pki.root], anchors, now=NOW, purpose="signing") == leaf
    key, ladder = _ca_ladder(pki, 7)
    _, leaf = devpki.issue(key, ladder[0], "hcm.quan-1", now=NOW)
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, *ladder, pki.root], anchors, now=NOW, purpose="signing")
    assert e.value.reason == "the chain has 9 certificates; at most 8"


# --- a lone TLS client certificate: the path is completed from configured intermediates ---------
def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_lone_leaf_under_an_intermediate_needs_the_intermediate_configured(
    pki: SimpleNamespace,
) -> None:
    with pytest.raises(ChainInvalid, match="trust anchors"):
        TrustAnchors([pki.root]).validate_leaf_der(_der(pki.leaf), now=NOW, purpose="client_auth")
    anchors = TrustAnchors([pki.root], intermediates=[pki.other, pki.inter])
    result = anchors.validate_leaf_der(_der(pki.leaf), now=NOW, purpose="client_auth")
    assert result.leaf == pki.leaf and result.path == (pki.leaf, pki.inter, pki.root)
    # Cached by the DER: the second call is a hit, and still checked against `now`.
    anchors.validate_leaf_der(_der(pki.leaf), now=NOW, purpose="client_auth")
    assert anchors.cache_info().hits == 1
    with pytest.raises(ChainInvalid):
        anchors.validate_leaf_der(
            _der(pki.leaf), now=NOW + timedelta(days=5000), purpose="client_auth"
        )


def test_an_intermediate_with_the_right_name_but_another_key_is_not_used(
    pki: SimpleNamespace,
) -> None:
    """A renewed (or forged) CA of the same name: only the one that signed the leaf is a link."""
    _, forged = devpki.make_ca(
        "hcm issuing", now=NOW, issuer=(pki.root_key, pki.root), path_length=0
    )
    assert forged.subject == pki.inter.subject
    anchors = TrustAnchors([pki.root], intermediates=[forged, pki.inter])
    result = anchors.validate_leaf_der(_der(pki.leaf), now=NOW, purpose="client_auth")
    assert result.path == (pki.leaf, pki.inter, pki.root)
    with pytest.raises(ChainInvalid):
        TrustAnchors([pki.root], intermediates=[forged]).validate_leaf_der(
            _der(pki.leaf), now=NOW, purpose="client_auth"
        )


def test_an_intermediate_from_another_root_does_not_make_a_leaf_valid(
    pki: SimpleNamespace,
) -> None:
    """Intermediates are untrusted: the path must still end at an anchor."""
    anchors = TrustAnchors([pki.other], intermediates=[pki.inter])
    with pytest.raises(ChainInvalid):
        anchors.validate_leaf_der(_der(pki.leaf), now=NOW, purpose="client_auth")


def test_intermediates_must_be_ca_certificates_and_the_der_must_parse(
    pki: SimpleNamespace,
) -> None:
    with pytest.raises(KeyInvalid, match=r"intermediate .* is not a CA"):
        TrustAnchors([pki.root], intermediates=[pki.leaf])
    with pytest.raises(ChainInvalid, match="not a DER"):
        TrustAnchors([pki.root]).validate_leaf_der(b"\x30\x03junk", now=NOW, purpose="client_auth")


_P256_OID = bytes.fromhex("06082a8648ce3d030107")  # namedCurve prime256v1 in the leaf's SPKI
_EC_POINT = bytes.fromhex("03420004")  # BIT STRING of 66 bytes: 0, then 04 || X || Y


def _unknown_curve(der: bytes) -> bytes:
    return der.replace(_P256_OID, _P256_OID[:-1] + b"\x08")  # 1.2.840.10045.3.1.8


def _point_off_the_curve(der: bytes) -> bytes:
    x = der.index(_EC_POINT) + len(_EC_POINT)  # first byte of X: one bit flipped
    return der[:x] + bytes([der[x] ^ 1]) + der[x + 1 :]


@pytest.mark.parametrize("damage", [_unknown_curve, _point_off_the_curve])
def test_a_leaf_whose_key_does_not_parse_is_a_refused_chain_not_a_crash(
    pki: SimpleNamespace, damage: Callable[[bytes], bytes]
) -> None:
    """cryptography parses a certificate's key lazily: a DER that loads can still hold a key that
    does not (found by tests/test_fuzz.py: a 500 for an x5c altered in transit)."""
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    damaged = damage(der)
    assert damaged != der and len(damaged) == len(der)
    leaf = x509.load_der_x509_certificate(damaged)
    with pytest.raises(ChainInvalid, match="malformed"):
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")


# --- weak algorithms anywhere in the chain ------------------------------------------------------


def test_a_sha1_signed_certificate_is_refused_naming_it_and_the_algorithm(
    tmp_path: Path, pki: SimpleNamespace
) -> None:
    """SHA-1 signatures are forgeable by chosen-prefix collision: refused, and the reason says
    which certificate and why (the library's own text is a Rust debug dump of the OID)."""
    (tmp_path / "inter.key").write_bytes(devpki.pem_private_key(pki.inter_key))
    _write(tmp_path / "inter.crt", pki.inter)
    (tmp_path / "leaf.key").write_bytes(devpki.pem_private_key(devpki.generate_key("ec")))
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    )
    subprocess.run(
        "openssl req -new -key leaf.key -subj /CN=hcm.quan-1 -out leaf.csr && openssl x509 -req "
        "-in leaf.csr -CA inter.crt -CAkey inter.key -sha1 -days 10 -extfile ext.cnf "
        "-set_serial 7 -out leaf.crt",
        shell=True,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=30,
    )
    leaf = load_certificates((tmp_path / "leaf.crt").read_bytes())[0]
    now = leaf.not_valid_before_utc + timedelta(minutes=1)
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, pki.inter], TrustAnchors([pki.root]), now=now, purpose="signing")
    assert e.value.reason == (
        "certificate 0 (CN=hcm.quan-1) is signed with SHA-1 (1.2.840.10045.4.1): "
        "signatures need SHA-256 or stronger"
    )


def test_an_md5_signed_certificate_is_refused_naming_it_and_the_algorithm(tmp_path: Path) -> None:
    """MD5 (RFC 6151: collisions in seconds) is refused like SHA-1, with its name in words."""
    subprocess.run(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -subj /CN=md5-ca -days 10 "
        "-sha256 -addext basicConstraints=critical,CA:TRUE "
        "-addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt && "
        "openssl req -new -newkey rsa:2048 -nodes -keyout leaf.key -subj /CN=hcm.quan-1 "
        "-out leaf.csr && openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -md5 -days 10 "
        "-set_serial 7 -out leaf.crt",
        shell=True,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    ca = load_certificates((tmp_path / "ca.crt").read_bytes())[0]
    leaf = load_certificates((tmp_path / "leaf.crt").read_bytes())[0]
    now = leaf.not_valid_before_utc + timedelta(minutes=1)
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, ca], TrustAnchors([ca]), now=now, purpose="signing")
    assert e.value.reason == (
        "certificate 0 (CN=hcm.quan-1) is signed with MD5 (1.2.840.113549.1.1.4): "
        "signatures need SHA-256 or stronger"
    )


def test_an_rsa_1024_intermediate_is_refused_naming_it(pki: SimpleNamespace) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak issuing")]))
        .issuer_name(pki.root.subject)
        .public_key(weak.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(pki.root_key, hashes.SHA256())
    )
    leaf = _custom_leaf(weak, inter, key_usage=_ku(digital_signature=True))  # type: ignore[arg-type]
    with pytest.raises(ChainInvalid) as e:
        verify_chain([leaf, inter], TrustAnchors([pki.root]), now=NOW, purpose="signing")
    assert e.value.reason == (
        "certificate 1 (CN=weak issuing) holds an RSA key of 1024 bits: at least 2048 bits required"
    )
