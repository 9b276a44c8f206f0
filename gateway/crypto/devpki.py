"""A development PKI: a CA, participant and server certificates, as objects and PEM bytes.

Why here and pure: ``gateway init`` and the tests need real certificates (mTLS on 127.0.0.1, signed
requests, receipts) that pass the same validation as production ones, without a CA service.
Nothing is written and no clock is read: the caller passes ``now`` and stores the PEM bytes.
Every CA name says DEVELOPMENT, so these certificates are recognisable wherever they end up.

Certificates follow RFC 5280 and the web PKI profile that ``pki`` applies (AKI/SKI, critical
basicConstraints and keyUsage, positive random serials), so ``openssl verify -x509_strict``
accepts them too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.crypto.keys import PrivateKey
from gateway.crypto.pki import PARTICIPANT_ID_RE, PARTICIPANT_URI_PREFIX, Purpose
from gateway.crypto.revocation import CrlInvalid, check_direct, crl_number, parse_crl, signed_by

__all__ = [
    "CRL_DAYS",
    "CRL_REASONS",
    "KeyType",
    "generate_key",
    "issue",
    "make_ca",
    "make_crl",
    "pem_certificate",
    "pem_private_key",
    "revoke_in_crl",
]

KeyType: TypeAlias = Literal["ec", "ed25519", "rsa"]
#: Certificates start this long before ``now`` so a peer with a slightly slow clock accepts them.
BACKDATE: Final = timedelta(minutes=5)
_PURPOSES: Final = frozenset({"signing", "client_auth", "server_auth"})


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh key: ECDSA P-256 (the gateway default), Ed25519, or RSA-2048."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (ec, ed25519, rsa)")


def _hash_for(signer: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def _aki(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer_cert.public_key()
        if not isinstance(
            public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise ValueError("the issuing CA holds an unsupported key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def make_ca(
    name: str,
    *,
    now: datetime,
    days: int = 3650,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
    path_length: int | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A development CA (ECDSA P-256): self-signed root, or an intermediate under ``issuer``.

    CN is ``"<name> DEVELOPMENT CA (not for production)"``; critical basicConstraints CA=true
    (with ``path_length`` when given), critical keyUsage keyCertSign + cRLSign, SKI, and AKI for
    an intermediate.
    """
    _require_aware(now)
    if not name or not name.isprintable():
        raise ValueError("the CA name must be a non-empty printable string")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{name} DEVELOPMENT CA (not for production)")]
    )
    signer_key, signer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    not_after = now + timedelta(days=days)
    if issuer is not None:
        not_after = min(not_after, issuer[1].not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki(issuer[1]), critical=False)
    return key, builder.sign(signer_key, _hash_for(signer_key))


def _sans(
    participant: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(PARTICIPANT_URI_PREFIX + participant)
    ]
    names += [x509.DNSName(dns) for dns in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return names


def _usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ekus(purposes: Collection[str]) -> list[x509.ObjectIdentifier]:
    wanted = (
        ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH),
        ("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
    )
    return [oid for purpose, oid in wanted if purpose in purposes]


def issue(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    participant_id: str,
    *,
    now: datetime,
    days: int = 825,
    key_type: KeyType = "ec",
    purposes: Sequence[Purpose] = ("signing", "client_auth"),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> tuple[PrivateKey, x509.Certificate]:
    """A participant (or gateway server) key and certificate issued by the given CA.

    CN = ``participant_id``; SAN = ``urn:gateway:participant:<id>`` plus the DNS names and IP
    addresses (a TLS server on 127.0.0.1 needs ``ip_addresses=("127.0.0.1",)`` and
    ``dns_names=("localhost",)``); critical keyUsage digitalSignature; EKU clientAuth/serverAuth
    as ``purposes`` asks (none for signing alone); SKI and AKI. Never outlives the CA.
    """
    _require_aware(now)
    if not PARTICIPANT_ID_RE.fullmatch(participant_id):
        raise ValueError(f"{participant_id!r} is not a participant id (lowercase dotted labels)")
    unknown = set(purposes) - _PURPOSES
    if not purposes or unknown:
        raise ValueError(f"purposes must be a non-empty subset of {sorted(_PURPOSES)}")
    key = generate_key(key_type)
    # RSA TLS servers may still be asked for RSA key exchange (TLS 1.2): allow keyEncipherment.
    encipher = isinstance(key, rsa.RSAPrivateKey) and "server_auth" in purposes
    ekus = _ekus(purposes)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, participant_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True, key_encipherment=encipher), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(_sans(participant_id, dns_names, ip_addresses)),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return key, builder.sign(ca_key, _hash_for(ca_key))


def pem_private_key(key: PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when ``password`` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def pem_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_private_key_raw(pem: bytes) -> PrivateKey:
    """A PEM private key as a cryptography object (a CA key for issuing, a key for a CSR)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError(f"unsupported CA key type {type(key).__name__}")
    return key


def csr_pem(key: PrivateKey, participant_id: str) -> bytes:
    """PKCS#10 request: CN and SAN URI name the gateway; key usage digitalSignature."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    usage = _usage(digital_signature=True)
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(PARTICIPANT_URI_PREFIX + participant_id)]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, participant_id)]))
        .add_extension(san, critical=False)
        .add_extension(usage, critical=True)
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


#: How long a development CRL is valid: long enough for development, short enough that a
#: forgotten one is noticed (start-up refuses a CRL past its nextUpdate).
CRL_DAYS: Final = 30
#: The RFC 5280 reason codes ``gateway keys revoke --reason`` accepts (removeFromCRL is for delta
#: CRLs only, and unspecified should be left out rather than written).
CRL_REASONS: Final = tuple(
    r.value
    for r in x509.ReasonFlags
    if r not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)
)


def make_crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: datetime,
    number: int = 1,
    days: int = CRL_DAYS,
    revoked: Sequence[x509.RevokedCertificate] = (),
) -> bytes:
    """A CRL (PEM) of ``ca_cert``, signed with ``ca_key``: thisUpdate ``now``, nextUpdate
    ``now + days``, CRL number ``number``, AKI, and the ``revoked`` entries."""
    _require_aware(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, _hash_for(ca_key))
    return crl.public_bytes(serialization.Encoding.PEM)


def revoke_in_crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    crl_data: bytes,
    serial: int | None,
    *,
    now: datetime,
    reason: str | None = None,
    days: int = CRL_DAYS,
) -> tuple[bytes, int, bool]:
    """``crl_data`` (PEM or DER, issued by ``ca_cert``) re-signed with ``serial`` added
    (``None``: renewed only, with the same entries).

    Returns (new CRL PEM, its CRL number, whether the serial was listed already). The entries
    already listed are kept as they were; the number is one more than the old one. ValueError
    when the old CRL does not parse, is not this CA's, or is not a complete, direct CRL the
    gateway would use (revocation.check_direct: a delta, indirect or partitioned CRL).
    """
    _require_aware(now)
    if reason is not None and reason not in CRL_REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}; one of {', '.join(CRL_REASONS)}")
    try:
        old = parse_crl(crl_data)
    except CrlInvalid as e:
        raise ValueError(e.reason) from None
    if not signed_by(old, ca_cert):
        raise ValueError("the CRL is not signed by this CA")
    try:  # the rules the gateway reads a CRL by: re-signing must not make a usable CRL of it
        if check_direct(old) is not None:
            raise ValueError(
                "the CRL covers part of the CA's certificates only (Issuing Distribution Point): "
                "re-signed without it, it would claim to be complete"
            )
    except CrlInvalid as e:
        raise ValueError(e.reason) from None
    entries = list(old)
    listed = any(e.serial_number == serial for e in entries)
    if serial is not None and not listed:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
        entries.append(entry.build())
    number = (crl_number(old) or 0) + 1
    pem = make_crl(ca_key, ca_cert, now=now, number=number, days=days, revoked=entries)
    return pem, number, listed
