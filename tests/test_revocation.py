"""CRL loading and the revocation check (gateway.crypto.revocation), pure, at fixed times.

Known answers: a root -> intermediate -> leaf PKI from devpki with CRLs made by devpki, whose
output ``openssl crl -CAfile`` accepts (checked in tests/test_revocation_e2e.py).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtensionOID, NameOID

from gateway.crypto import devpki
from gateway.crypto.keys import encode_x5c
from gateway.crypto.pki import ChainInvalid, TrustAnchors
from gateway.crypto.revocation import (
    CertificateRevoked,
    Crl,
    CrlInvalid,
    Revocations,
    is_crl_of,
    issued_by,
    load_crl,
    signed_by,
)
from tests.support import crl_with

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki() -> SimpleNamespace:
    root_key, root = devpki.make_ca("hcm", now=NOW)
    inter_key, inter = devpki.make_ca("hcm issuing", now=NOW, issuer=(root_key, root))
    leaf_key, leaf = devpki.issue(inter_key, inter, "hcm.quan-1", now=NOW)
    _, sibling = devpki.issue(inter_key, inter, "hcm.thu-duc", now=NOW)
    _, direct = devpki.issue(root_key, root, "hcm.so-tc", now=NOW)
    other_key, other = devpki.make_ca("elsewhere", now=NOW)
    no_crl_sign_key, no_crl_sign = _ca_without_crl_sign()
    return SimpleNamespace(**locals())


def _ca_without_crl_sign(*, key_usage: bool = True) -> tuple[Any, x509.Certificate]:
    """A self-signed CA whose keyUsage allows keyCertSign but not cRLSign (or has no keyUsage)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no crl sign")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, False, False, False),
            critical=True,
        )
    return key, builder.sign(key, hashes.SHA256())


def _crl(key: Any, ca: x509.Certificate, *serials: int, at: datetime = NOW) -> bytes:
    """A CRL of ``ca`` listing ``serials``, revoked at ``at`` (devpki.revoke_in_crl, one by one)."""
    pem = devpki.make_crl(key, ca, now=at - timedelta(hours=1))
    for serial in serials:
        pem, _, _ = devpki.revoke_in_crl(key, ca, pem, serial, now=at)
    return pem


def _revocations(p: SimpleNamespace, *crls: bytes) -> Revocations:
    issuers = [p.root, p.inter, p.other]
    return Revocations(load_crl(c, issuers, now=NOW) for c in crls)


def _anchors(p: SimpleNamespace, *crls: bytes) -> TrustAnchors:
    return TrustAnchors([p.root], intermediates=[p.inter], revocations=_revocations(p, *crls))


def test_a_listed_leaf_serial_is_refused_naming_the_certificate_serial_and_date(
    pki: SimpleNamespace,
) -> None:
    anchors = _anchors(pki, _crl(pki.inter_key, pki.inter, pki.leaf.serial_number))
    with pytest.raises(CertificateRevoked) as e:
        anchors.validate([pki.leaf, pki.inter], now=NOW, purpose="signing")
    assert isinstance(e.value, ChainInvalid)
    assert "CN=hcm.quan-1" in e.value.reason
    assert f"{pki.leaf.serial_number:#x}" in e.value.reason
    assert "revoked on 2026-11-28T09:00:00+00:00" in e.value.reason
    assert e.value.audit_reason.startswith("certificate revoked: serial 0x")


def test_another_serial_on_the_same_crl_leaves_the_certificate_valid(pki: SimpleNamespace) -> None:
    anchors = _anchors(pki, _crl(pki.inter_key, pki.inter, pki.sibling.serial_number))
    assert anchors.validate([pki.leaf, pki.inter], now=NOW, purpose="signing").leaf == pki.leaf


def test_the_same_serial_on_another_issuers_crl_does_not_revoke(pki: SimpleNamespace) -> None:
    """A CRL applies to its own issuer's certificates only (name and key), not to a serial."""
    anchors = _anchors(
        pki,
        _crl(pki.other_key, pki.other, pki.leaf.serial_number),
        _crl(pki.root_key, pki.root, pki.leaf.serial_number),  # root did not issue the leaf
    )
    assert anchors.validate([pki.leaf, pki.inter], now=NOW, purpose="signing").leaf == pki.leaf


def test_an_intermediate_on_its_roots_crl_refuses_its_whole_subtree(pki: SimpleNamespace) -> None:
    anchors = _anchors(pki, _crl(pki.root_key, pki.root, pki.inter.serial_number))
    for leaf in (pki.leaf, pki.sibling):
        with pytest.raises(CertificateRevoked, match="CN=hcm issuing DEVELOPMENT CA"):
            anchors.validate([leaf, pki.inter], now=NOW, purpose="signing")
    # A lone TLS client certificate, its path completed from the intermediates, too.
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateRevoked):
        anchors.validate_leaf_der(der, now=NOW, purpose="client_auth")
    # A certificate the root issued directly is not below the revoked intermediate.
    assert anchors.validate([pki.direct], now=NOW, purpose="signing").leaf == pki.direct


def test_a_revoked_chain_is_refused_on_every_use_not_cached(pki: SimpleNamespace) -> None:
    anchors = _anchors(pki, _crl(pki.inter_key, pki.inter, pki.leaf.serial_number))
    x5c = list(encode_x5c([pki.leaf, pki.inter]))
    for _ in range(2):
        with pytest.raises(CertificateRevoked):
            anchors.validate_x5c(x5c, now=NOW, purpose="signing")
    assert anchors.cache_info().currsize == 0


def test_no_crl_means_no_revocation_check(pki: SimpleNamespace) -> None:
    anchors = TrustAnchors([pki.root], intermediates=[pki.inter])
    assert anchors.validate([pki.leaf, pki.inter], now=NOW, purpose="signing").leaf == pki.leaf


def test_find_lists_each_revoked_certificate_of_a_path_with_its_date(pki: SimpleNamespace) -> None:
    later = NOW + timedelta(days=1)
    revocations = Revocations(
        [
            load_crl(_crl(pki.inter_key, pki.inter, pki.leaf.serial_number), [pki.inter], now=NOW),
            load_crl(
                _crl(pki.root_key, pki.root, pki.inter.serial_number, at=later),
                [pki.root],
                now=later,
            ),
        ]
    )
    found = revocations.find([pki.leaf, pki.inter, pki.root])
    assert [(r.serial, r.revoked_at) for r in found] == [
        (pki.leaf.serial_number, NOW),
        (pki.inter.serial_number, later),
    ]


def test_of_two_crls_from_one_issuer_the_higher_crl_number_is_kept(pki: SimpleNamespace) -> None:
    older = _crl(pki.inter_key, pki.inter)  # number 1, lists nothing
    newer = _crl(pki.inter_key, pki.inter, pki.leaf.serial_number)  # number 2
    for order in ((older, newer), (newer, older)):
        with pytest.raises(CertificateRevoked):
            _anchors(pki, *order).validate([pki.leaf, pki.inter], now=NOW, purpose="signing")


def test_of_two_crls_without_crl_number_the_later_this_update_is_kept(
    pki: SimpleNamespace,
) -> None:
    """RFC 5280 5.2.3 makes the CRL number mandatory, but a CRL without one is still read:
    ranked below any numbered CRL, and by thisUpdate among unnumbered ones."""
    serial = pki.leaf.serial_number
    older = _unnumbered_crl(pki, NOW - timedelta(hours=2))  # lists nothing
    newer = _unnumbered_crl(pki, NOW - timedelta(hours=1), serial)
    numbered = load_crl(
        _signed_crl(pki.inter_key, pki.inter.subject, x509.CRLNumber(0)), [pki.inter], now=NOW
    )
    for order in ((older, newer), (newer, older)):
        (kept,) = Revocations(order).crls
        assert kept is newer
    for order in ((numbered, newer), (newer, numbered)):
        (kept,) = Revocations(order).crls
        assert kept is numbered  # CRL number 0 still outranks none


def _unnumbered_crl(pki: SimpleNamespace, this_update: datetime, *serials: int) -> Crl:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.inter.subject)
        .last_update(this_update)
        .next_update(NOW + timedelta(days=1))
    )
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update)
        builder = builder.add_revoked_certificate(entry.build())
    data = builder.sign(pki.inter_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    crl = load_crl(data, [pki.inter], now=NOW)
    assert crl.number is None
    return crl


def test_find_without_any_crl_is_an_empty_tuple(pki: SimpleNamespace) -> None:
    assert Revocations().find([pki.leaf, pki.inter, pki.root]) == ()


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("malformed", "not a PEM or DER X.509 CRL"),
        ("stranger", "not signed by any trust anchor or configured intermediate"),
        ("forged-name", "not signed by any trust anchor or configured intermediate"),
        ("expired", "nextUpdate 2026-11-28T08:30:00+00:00 is past"),
        # The CA's key, another issuer name: a CRL names its issuer, and that name must match.
        ("renamed", "not signed by any trust anchor or configured intermediate"),
        ("no-crl-sign", "the CRL issuer CN=no crl sign has no cRLSign key usage"),
        ("malformed-extension", "the CRL is malformed"),
        ("empty-issuer", "the CRL of (empty issuer) is not signed by any trust anchor"),
    ],
)
def test_a_crl_that_is_malformed_foreign_or_expired_is_refused(
    pki: SimpleNamespace, case: str, problem: str
) -> None:
    data = {
        "malformed": b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        "stranger": _crl(pki.other_key, pki.other),
        # The root's name, the stranger's key: the name alone proves nothing.
        "forged-name": devpki.make_crl(pki.other_key, pki.root, now=NOW - timedelta(hours=1)),
        "expired": devpki.make_crl(
            pki.root_key, pki.root, now=NOW - timedelta(days=30, minutes=30)
        ),
        "renamed": _signed_crl(pki.inter_key, pki.other.subject),
        "empty-issuer": _signed_crl(pki.other_key, x509.Name([])),
        "no-crl-sign": _signed_crl(pki.no_crl_sign_key, pki.no_crl_sign.subject),
        "malformed-extension": _signed_crl(
            pki.inter_key,
            pki.inter.subject,
            # A CRL Number that is NULL instead of an INTEGER: parsed lazily, on first use.
            x509.UnrecognizedExtension(ExtensionOID.CRL_NUMBER, b"\x05\x00"),
        ),
    }[case]
    with pytest.raises(CrlInvalid, match=re.escape(problem)):
        load_crl(data, [pki.root, pki.inter, pki.no_crl_sign], now=NOW)


def _signed_crl(key: Any, issuer: x509.Name, *extensions: x509.ExtensionType) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _der_items(der: bytes) -> list[bytes]:
    """The TLV elements (whole, header included) inside the DER SEQUENCE ``der``."""

    def header(i: int) -> tuple[int, int]:  # (header length, value length) of the TLV at i
        first = der[i + 1]
        if first < 0x80:
            return 2, first
        n = first & 0x7F
        return 2 + n, int.from_bytes(der[i + 2 : i + 2 + n], "big")

    skip, _ = header(0)
    items, i = [], skip
    while i < len(der):
        head, size = header(i)
        items.append(der[i : i + head + size])
        i += head + size
    return items


def _der_sequence(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + size + content


def test_a_crl_without_next_update_is_refused(pki: SimpleNamespace) -> None:
    """nextUpdate is optional in X.509 but a CRL without one could never be found stale: a
    revocation list frozen for ever. cryptography cannot build one, so it is re-signed by hand
    from a normal CRL with its nextUpdate removed from the TBSCertList."""
    der = x509.load_pem_x509_crl(_crl(pki.inter_key, pki.inter)).public_bytes(
        serialization.Encoding.DER
    )
    tbs, algorithm, _ = _der_items(der)
    fields = _der_items(tbs)  # version, signature, issuer, thisUpdate, nextUpdate, extensions
    assert fields[3][0] == fields[4][0] == 0x17  # UTCTime, UTCTime
    unsigned = _der_sequence(0x30, b"".join(fields[:4] + fields[5:]))
    signature = pki.inter_key.sign(unsigned, ec.ECDSA(hashes.SHA256()))
    data = _der_sequence(0x30, unsigned + algorithm + _der_sequence(0x03, b"\x00" + signature))
    crl = x509.load_der_x509_crl(data)
    assert crl.next_update_utc is None and crl.is_signature_valid(pki.inter.public_key())
    with pytest.raises(
        CrlInvalid, match=r"the CRL of CN=hcm issuing DEVELOPMENT CA.* has no nextUpdate"
    ):
        load_crl(data, [pki.inter], now=NOW, allow_stale=True)


def test_a_crl_issuer_without_key_usage_may_sign_crls(pki: SimpleNamespace) -> None:
    """keyUsage limits a key only when present (RFC 5280 4.2.1.3): cRLSign is required of an
    issuer that has keyUsage, not of one without."""
    key, ca = _ca_without_crl_sign(key_usage=False)
    crl = load_crl(_signed_crl(key, ca.subject), [ca], now=NOW)
    assert crl.issuer_name == "CN=no crl sign" and crl.revoked == {}


def test_an_expired_crl_loads_when_stale_crls_are_allowed(pki: SimpleNamespace) -> None:
    """Offline verification re-checks old artifacts: there a past nextUpdate is no refusal."""
    data = _crl(pki.root_key, pki.root, pki.inter.serial_number, at=NOW - timedelta(days=40))
    with pytest.raises(CrlInvalid, match="is past"):
        load_crl(data, [pki.root], now=NOW)
    crl = load_crl(data, [pki.root], now=NOW, allow_stale=True)
    assert crl.revoked == {pki.inter.serial_number: NOW - timedelta(days=40)}


def test_a_crl_is_expired_and_stale_from_the_exact_instant_of_its_next_update(
    pki: SimpleNamespace,
) -> None:
    """nextUpdate is when the next CRL is due: from that instant on, this one is out of date."""
    data = _crl(pki.inter_key, pki.inter)
    crl = load_crl(data, [pki.inter], now=NOW)
    before = crl.next_update - timedelta(microseconds=1)
    assert load_crl(data, [pki.inter], now=before) == crl
    assert Revocations([crl]).stale(before) == ()
    with pytest.raises(CrlInvalid, match="is past"):
        load_crl(data, [pki.inter], now=crl.next_update)
    assert Revocations([crl]).stale(crl.next_update) == (crl,)


def test_a_naive_now_is_a_programming_error_for_loading_and_staleness(pki: SimpleNamespace) -> None:
    data = _crl(pki.inter_key, pki.inter)
    with pytest.raises(ValueError, match="timezone-aware"):
        load_crl(data, [pki.inter], now=NOW.replace(tzinfo=None))
    revocations = Revocations([load_crl(data, [pki.inter], now=NOW)])
    with pytest.raises(ValueError, match="timezone-aware"):
        revocations.stale(NOW.replace(tzinfo=None))


def test_a_loaded_crl_and_a_revocation_found_are_immutable(pki: SimpleNamespace) -> None:
    """Revocations is fixed for the process lifetime: what it holds cannot be edited either."""
    crl = load_crl(_crl(pki.inter_key, pki.inter, pki.leaf.serial_number), [pki.inter], now=NOW)
    (found,) = Revocations([crl]).find([pki.leaf, pki.inter])
    with pytest.raises(dataclasses.FrozenInstanceError):
        crl.next_update = NOW + timedelta(days=3650)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.serial = 0  # type: ignore[misc]


def test_is_crl_of_recognises_a_cas_own_crl_in_pem_or_der_and_nothing_else(
    pki: SimpleNamespace,
) -> None:
    pem = _crl(pki.inter_key, pki.inter)
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert is_crl_of(pem, pki.inter) is True and is_crl_of(der, pki.inter) is True
    assert is_crl_of(pem, pki.root) is False  # another CA
    assert is_crl_of(_signed_crl(pki.inter_key, pki.other.subject), pki.inter) is False  # renamed
    assert is_crl_of(b"not a CRL", pki.inter) is False


def test_issued_by_is_true_only_for_the_ca_whose_key_signed_the_certificate(
    pki: SimpleNamespace,
) -> None:
    assert issued_by(pki.leaf, pki.inter) is True
    assert issued_by(pki.inter, pki.root) is True
    assert issued_by(pki.leaf, pki.root) is False  # names do not chain
    _, forged = devpki.make_ca("hcm issuing", now=NOW, issuer=(pki.root_key, pki.root))
    assert forged.subject == pki.inter.subject
    assert issued_by(pki.leaf, forged) is False  # the name chains, the key did not sign


def test_a_certificate_whose_key_cannot_sign_never_signed_a_crl(pki: SimpleNamespace) -> None:
    """An X25519 key (key agreement only) under the CRL's issuer name: not its signer."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x25519 holder")])
    holder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(pki.root.subject)
        .public_key(x25519.X25519PrivateKey.generate().public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(pki.root_key, hashes.SHA256())
    )
    crl = x509.load_der_x509_crl(_signed_crl(pki.other_key, name))
    assert signed_by(crl, holder) is False


def test_a_crl_signature_check_that_raises_means_not_signed(pki: SimpleNamespace) -> None:
    """cryptography raises (instead of answering False) for a signature algorithm that does not
    fit the key: that must never count as a valid signature (fail closed)."""

    class Unfitting:
        issuer = pki.inter.subject

        def is_signature_valid(self, key: object) -> bool:
            raise TypeError("signature algorithm does not fit the key")

    assert signed_by(Unfitting(), pki.inter) is False  # type: ignore[arg-type]


def test_a_stale_crl_still_revokes_and_is_reported_stale(pki: SimpleNamespace) -> None:
    crl = load_crl(_crl(pki.inter_key, pki.inter, pki.leaf.serial_number), [pki.inter], now=NOW)
    revocations = Revocations([crl])
    assert revocations.stale(NOW) == ()
    later = NOW + timedelta(days=31)
    assert revocations.stale(later) == (crl,)
    anchors = TrustAnchors([pki.root], revocations=revocations)
    with pytest.raises(CertificateRevoked):
        anchors.validate([pki.leaf, pki.inter], now=NOW + timedelta(days=31), purpose="signing")


def test_a_der_crl_loads_like_a_pem_one(pki: SimpleNamespace) -> None:
    pem = _crl(pki.inter_key, pki.inter, pki.leaf.serial_number)
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert load_crl(der, [pki.inter], now=NOW).revoked == {pki.leaf.serial_number: NOW}


# -- RFC 5280 section 5: CRLs that are not complete, direct CRLs of their issuer ------------------

UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")


def _idp(**flags: Any) -> x509.IssuingDistributionPoint:
    """An Issuing Distribution Point with ``flags`` set, the others absent or false."""
    values: dict[str, Any] = {
        "full_name": None,
        "relative_name": None,
        "only_contains_user_certs": False,
        "only_contains_ca_certs": False,
        "only_some_reasons": None,
        "indirect_crl": False,
        "only_contains_attribute_certs": False,
    }
    return x509.IssuingDistributionPoint(**{**values, **flags})


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("critical-extension", "unrecognised critical extension 1.3.6.1.4.1.99999.1"),
        ("critical-entry-extension", "unrecognised critical extension 1.3.6.1.4.1.99999.1 in"),
        ("delta", "is a delta CRL (Delta CRL Indicator, base CRL number 4)"),
        ("indirect", "is an indirect CRL (Issuing Distribution Point indirectCRL)"),
        ("certificate-issuer", "is an indirect CRL (a Certificate Issuer entry extension"),
        ("attribute-certificates", "lists attribute certificates only"),
    ],
)
def test_a_crl_that_is_not_a_direct_crl_the_gateway_understands_is_refused(
    pki: SimpleNamespace, case: str, problem: str
) -> None:
    """RFC 5280 5: a CRL with an unrecognised critical extension must not be used; a delta or
    an indirect CRL read as the issuer's complete, direct CRL would miss revocations."""
    serial = pki.leaf.serial_number
    issuer = x509.CertificateIssuer([x509.DirectoryName(pki.other.subject)])
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = {
        "critical-extension": ((UNKNOWN, True),),
        "critical-entry-extension": (),
        "delta": ((x509.DeltaCRLIndicator(4), True),),
        "indirect": ((_idp(indirect_crl=True), True),),
        "certificate-issuer": (),  # even without the indirectCRL flag that should go with it
        "attribute-certificates": ((_idp(only_contains_attribute_certs=True), True),),
    }[case]
    entry: tuple[tuple[x509.ExtensionType, bool], ...] = {
        "critical-entry-extension": ((UNKNOWN, True),),
        "certificate-issuer": ((issuer, True),),
    }.get(case, ())
    data = crl_with(
        pki.inter_key, pki.inter, now=NOW, extensions=extensions, entries=((serial, entry),)
    )
    with pytest.raises(CrlInvalid, match=re.escape(problem)) as e:
        load_crl(data, [pki.root, pki.inter], now=NOW)
    assert "CN=hcm issuing DEVELOPMENT CA" in e.value.reason


def test_unrecognised_non_critical_extensions_are_ignored(pki: SimpleNamespace) -> None:
    serial = pki.leaf.serial_number
    reason = x509.CRLReason(x509.ReasonFlags.key_compromise)
    data = crl_with(
        pki.inter_key,
        pki.inter,
        now=NOW,
        extensions=((UNKNOWN, False),),
        entries=((serial, ((UNKNOWN, False), (reason, False))),),
    )
    assert load_crl(data, [pki.inter], now=NOW).revoked == {serial: NOW}


def test_recognised_entry_extensions_are_accepted_even_when_critical(pki: SimpleNamespace) -> None:
    """A reason code and an invalidity date change nothing about whether a serial is revoked:
    RFC 5280 5.3 lets an issuer mark them critical, and the CRL is still used."""
    serial = pki.leaf.serial_number
    reason = x509.CRLReason(x509.ReasonFlags.key_compromise)
    invalid = x509.InvalidityDate(NOW - timedelta(days=2))
    data = crl_with(
        pki.inter_key, pki.inter, now=NOW, entries=((serial, ((reason, True), (invalid, True))),)
    )
    assert load_crl(data, [pki.inter], now=NOW).revoked == {serial: NOW}


@pytest.mark.parametrize(
    "scope",
    [
        _idp(only_contains_user_certs=True),
        _idp(only_contains_ca_certs=True),
        _idp(only_some_reasons=frozenset({x509.ReasonFlags.key_compromise})),
        _idp(full_name=[x509.UniformResourceIdentifier("http://crl.example/part-2.crl")]),
    ],
)
def test_a_partitioned_crl_never_supersedes_nor_is_superseded_by_another_partition(
    pki: SimpleNamespace, scope: x509.IssuingDistributionPoint
) -> None:
    """A CRL that covers part of its issuer's certificates (users, CAs, some reasons, one
    distribution point) is not the issuer's complete CRL: a newer one of another scope does not
    replace it, and it does not replace the complete one. Every listing stands."""
    revoked = pki.inter.serial_number
    whole = crl_with(pki.root_key, pki.root, now=NOW, entries=((revoked, ()),), number=1)
    part = crl_with(pki.root_key, pki.root, now=NOW, extensions=((scope, True),), number=9)
    both = [load_crl(c, [pki.root], now=NOW) for c in (whole, part)]
    for order in (both, both[::-1]):
        anchors = TrustAnchors([pki.root], revocations=Revocations(order))
        with pytest.raises(CertificateRevoked):
            anchors.validate([pki.leaf, pki.inter], now=NOW, purpose="signing")
        assert len(anchors.revocations.crls) == 2
    # Listed in the partition, not in a newer complete CRL: still revoked.
    whole = crl_with(pki.root_key, pki.root, now=NOW, number=9)
    part = crl_with(
        pki.root_key, pki.root, now=NOW, extensions=((scope, True),), entries=((revoked, ()),)
    )
    revocations = Revocations(load_crl(c, [pki.root], now=NOW) for c in (part, whole))
    assert [r.serial for r in revocations.find([pki.inter, pki.root])] == [revoked]
    # Within one scope the newer CRL still supersedes the older.
    newer = crl_with(pki.root_key, pki.root, now=NOW, extensions=((scope, True),), number=10)
    revocations = Revocations(load_crl(c, [pki.root], now=NOW) for c in (part, newer))
    assert revocations.find([pki.inter, pki.root]) == ()
