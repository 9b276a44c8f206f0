"""Certificate revocation from CRLs (RFC 5280 section 5): load, check, and look up.

Why CRLs, and only those: government PKIs publish CRLs, and a gateway must not fetch anything
while it decides (nothing is ever fetched from a URL in a certificate or a header), so the
operator configures the CRL files and they are read once at start-up. OCSP would need the
network on the hot path.

What a configured CRL must be, or start-up stops (:class:`CrlInvalid`, the caller names the
file): PEM or DER that parses; signed by one of the given issuers (the trust anchors and the
configured intermediates), checked with that issuer's public key and with the CRL's issuer name
equal to the issuer's subject; that issuer, when it has keyUsage, allows cRLSign; a
nextUpdate that is present and not yet past at ``now``; and a *direct, base* CRL this module
understands (:func:`check_direct`): no unrecognised critical extension, on the CRL or on an entry
(RFC 5280 section 5: such a CRL must not be used), no Delta CRL Indicator (a delta CRL lists only
the changes since its base CRL), not indirect (an Issuing Distribution Point with indirectCRL, or
a Certificate Issuer entry extension: entries may then be another issuer's certificates), and
not limited to attribute certificates. Each of those, read as the issuer's complete CRL of its
own certificates, would miss revocations or revoke the wrong certificate.

A CRL whose Issuing Distribution Point limits its scope (onlyContainsUserCerts,
onlyContainsCACerts, onlySomeReasons, or a distribution point name: one partition of the
issuer's revocations) is used, but never as the issuer's complete CRL: of two CRLs of the same
issuer (same name and key) *and the same scope*, the newer one is kept (higher CRL number, then
later thisUpdate), as RFC 5280 says a newer CRL supersedes an older one; CRLs of different scopes
(an authority revocation list beside the end-entity CRL, say) are all kept, and a certificate
listed on any of them is revoked (a serial number names one certificate of its issuer). A copy of
last week's CRL lying beside this week's is a common operator mistake that should not stop
start-up nor resurrect a revocation.

What "revoked" means here. :meth:`Revocations.find` lists the certificates of a validated path,
below the anchor (leaf and intermediates), whose serial number is on a CRL of the certificate
that issued them (the next one in the path). Certificates whose issuer has no CRL are not
checked (no CRL configured is the gateway's behaviour without revocation). Online,
:meth:`Revocations.check` refuses a listed certificate whatever its revocation date says (fail
closed: a date after ``now`` only appears when this host's clock is behind the CA's). Offline
verification compares the revocation date with the time an artifact says it was signed
(:mod:`gateway.verify_jws`). A CRL past its nextUpdate while the gateway runs still applies:
its revocations stand; :meth:`Revocations.stale` tells the caller which ones to warn about.

Pure: no I/O, no clock (``now`` is a parameter), no logging.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.crypto.keys import CryptoError
from gateway.crypto.pki_rules import ChainInvalid, extension, name_of, require_aware

__all__ = [
    "CertificateRevoked",
    "Crl",
    "CrlInvalid",
    "Revocations",
    "Revoked",
    "check_direct",
    "crl_number",
    "is_crl_of",
    "issued_by",
    "load_crl",
    "parse_crl",
    "signed_by",
]


#: The CRL extensions (RFC 5280 5.2) a CRL may carry, critical or not, and still be used: read
#: (number, scope) or without effect on what it revokes (key id, issuer's other names, where to
#: find the issuer's certificate or its delta CRLs). The Delta CRL Indicator is known and refused.
_CRL_EXTENSIONS: Final = (
    x509.CRLNumber,
    x509.IssuingDistributionPoint,
    x509.AuthorityKeyIdentifier,
    x509.IssuerAlternativeName,
    x509.AuthorityInformationAccess,
    x509.FreshestCRL,
)
#: The CRL entry extensions (RFC 5280 5.3) an entry may carry: why, and since when. The
#: Certificate Issuer extension (indirect CRLs) is known and refused.
_ENTRY_EXTENSIONS: Final = (x509.CRLReason, x509.InvalidityDate)


class CrlInvalid(CryptoError):
    """A configured CRL cannot be used (does not parse, wrong signer, expired, a delta or an
    indirect CRL, an unrecognised critical extension); ``reason`` says."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """One certificate of a path found on its issuer's CRL."""

    subject: str
    serial: int
    revoked_at: datetime
    crl_issuer: str

    def describe(self) -> str:
        return (
            f"certificate {self.subject} (serial {self.serial:#x}) was revoked on "
            f"{self.revoked_at.isoformat()} by {self.crl_issuer}"
        )


class CertificateRevoked(ChainInvalid):
    """A certificate of the chain is on its issuer's CRL; ``revoked`` says which and when."""

    def __init__(self, revoked: Revoked) -> None:
        super().__init__(revoked.describe())
        self.revoked = revoked

    @property
    def audit_reason(self) -> str:
        """Fixed wording for the audit record: serial and date only, no names."""
        return (
            f"certificate revoked: serial {self.revoked.serial:#x}, revoked on "
            f"{self.revoked.revoked_at.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class Crl:
    """A CRL whose signature was checked: its issuer, freshness, scope and revoked serials.

    ``scope``: its Issuing Distribution Point when it covers part of the issuer's certificates
    only (see the module doc), None for the issuer's complete CRL.
    """

    issuer_key: tuple[bytes, bytes]  # (issuer subject DER, SHA-256 of its SubjectPublicKeyInfo)
    issuer_name: str
    number: int | None
    this_update: datetime
    next_update: datetime
    revoked: dict[int, datetime]
    scope: x509.IssuingDistributionPoint | None = None


def _issuer_key(cert: x509.Certificate) -> tuple[bytes, bytes]:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert.subject.public_bytes(), hashlib.sha256(spki).digest()


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER bytes; CrlInvalid if it is neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlInvalid(f"not a PEM or DER X.509 CRL: {exc}") from None


def signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether ``cert`` issued ``crl``: the CRL's issuer is its subject and its key signed it."""
    if crl.issuer != cert.subject:
        return False
    key = cert.public_key()
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | dsa.DSAPublicKey,
    ):
        return False
    try:
        return crl.is_signature_valid(key)
    except (ValueError, TypeError):  # an algorithm that does not fit the key
        return False


def is_crl_of(data: bytes, ca: x509.Certificate) -> bool:
    """Whether ``data`` is a CRL (PEM or DER) issued and signed by ``ca``."""
    try:
        return signed_by(parse_crl(data), ca)
    except CrlInvalid:
        return False


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (names chain and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_direct(crl: x509.CertificateRevocationList) -> x509.IssuingDistributionPoint | None:
    """CrlInvalid unless ``crl`` is a direct base CRL this module understands (module doc);
    else its scope: the Issuing Distribution Point of a partition, None for a complete CRL.

    ValueError for extensions that do not parse (cryptography reads them lazily).
    """
    issuer = crl.issuer.rfc4514_string() or "(empty issuer)"
    scope = None
    for ext in crl.extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator):
            raise CrlInvalid(
                f"the CRL of {issuer} is a delta CRL (Delta CRL Indicator, base CRL number "
                f"{ext.value.crl_number}): it lists only the changes since its base CRL; "
                "configure the issuer's complete CRL"
            )
        if ext.critical and not isinstance(ext.value, _CRL_EXTENSIONS):
            raise CrlInvalid(
                f"the CRL of {issuer} has an unrecognised critical extension "
                f"{ext.oid.dotted_string}: RFC 5280 section 5 forbids using such a CRL"
            )
        if isinstance(ext.value, x509.IssuingDistributionPoint):
            scope = ext.value
    if scope is not None and scope.indirect_crl:
        raise CrlInvalid(
            f"the CRL of {issuer} is an indirect CRL (Issuing Distribution Point indirectCRL): "
            "it may list other issuers' certificates, which the gateway cannot tell apart; "
            "configure each issuer's own CRL"
        )
    if scope is not None and scope.only_contains_attribute_certs:
        raise CrlInvalid(
            f"the CRL of {issuer} lists attribute certificates only (Issuing Distribution Point "
            "onlyContainsAttributeCerts): it revokes no certificate the gateway checks"
        )
    for entry in crl:
        for ext in entry.extensions:
            if isinstance(ext.value, x509.CertificateIssuer):
                raise CrlInvalid(
                    f"the CRL of {issuer} is an indirect CRL (a Certificate Issuer entry "
                    f"extension, at serial {entry.serial_number:#x}): its entries may be other "
                    "issuers' certificates; configure each issuer's own CRL"
                )
            if ext.critical and not isinstance(ext.value, _ENTRY_EXTENSIONS):
                raise CrlInvalid(
                    f"the CRL of {issuer} has an unrecognised critical extension "
                    f"{ext.oid.dotted_string} in its entry for serial {entry.serial_number:#x}: "
                    "RFC 5280 section 5 forbids using such a CRL"
                )
    return scope


def load_crl(
    data: bytes, issuers: Sequence[x509.Certificate], *, now: datetime, allow_stale: bool = False
) -> Crl:
    """Parse ``data`` (PEM or DER) and check it against ``issuers`` at ``now``; or CrlInvalid.

    ``allow_stale``: accept a CRL past its nextUpdate (offline verification, re-signing it);
    start-up does not, so an operator learns at once that the CRL needs publishing again.
    """
    require_aware(now)
    crl = parse_crl(data)
    try:
        issuer_name = crl.issuer.rfc4514_string() or "(empty issuer)"
        signer = next((c for c in issuers if signed_by(crl, c)), None)
        if signer is None:
            raise CrlInvalid(
                f"the CRL of {issuer_name} is not signed by any trust anchor or configured "
                "intermediate (issuer name and signature checked)"
            )
        usage = extension(signer, x509.KeyUsage)
        if usage is not None and not usage.crl_sign:
            raise CrlInvalid(f"the CRL issuer {name_of(signer)} has no cRLSign key usage")
        next_update = crl.next_update_utc
        if next_update is None:
            raise CrlInvalid(f"the CRL of {issuer_name} has no nextUpdate")
        if next_update <= now and not allow_stale:
            raise CrlInvalid(
                f"the CRL of {issuer_name} expired: its nextUpdate {next_update.isoformat()} is "
                "past; publish a fresh CRL"
            )
        scope = check_direct(crl)
        number = crl_number(crl)
        revoked = {entry.serial_number: entry.revocation_date_utc for entry in crl}
    except ValueError as exc:  # parsed lazily: names, extensions, entries
        raise CrlInvalid(f"the CRL is malformed: {exc}") from None
    return Crl(
        issuer_key=_issuer_key(signer),
        issuer_name=name_of(signer),
        number=number,
        this_update=crl.last_update_utc,
        next_update=next_update,
        revoked=revoked,
        scope=scope,
    )


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL number (RFC 5280 5.2.3), or None when the CRL has none."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _newer(a: Crl, b: Crl) -> bool:
    """Whether ``a`` supersedes ``b`` (same issuer and scope): higher CRL number, then later
    thisUpdate."""
    rank = (-1 if a.number is None else a.number, a.this_update)
    return rank > (-1 if b.number is None else b.number, b.this_update)


class Revocations:
    """The revoked serials of the configured CRLs, by issuer (name and key). Immutable.

    Why immutable: the set is fixed for the process lifetime (CRLs are read at start-up), so a
    chain-validation verdict cached by the :class:`gateway.crypto.pki.TrustAnchors` that holds
    this object can never predate a revocation it knows of.

    Per issuer and scope the newest CRL is kept; an issuer may so have several CRLs (a complete
    one and partitions, or several partitions), all of which apply (module doc).
    """

    def __init__(self, crls: Iterable[Crl] = ()) -> None:
        newest: dict[tuple[tuple[bytes, bytes], x509.IssuingDistributionPoint | None], Crl] = {}
        for crl in crls:
            kept = newest.get((crl.issuer_key, crl.scope))
            if kept is None or _newer(crl, kept):
                newest[crl.issuer_key, crl.scope] = crl
        by_issuer: dict[tuple[bytes, bytes], list[Crl]] = {}
        for crl in newest.values():
            by_issuer.setdefault(crl.issuer_key, []).append(crl)
        self._by_issuer = by_issuer
        self._crls = tuple(newest.values())

    def __bool__(self) -> bool:
        return bool(self._crls)

    @property
    def crls(self) -> tuple[Crl, ...]:
        return self._crls

    def find(self, path: Sequence[x509.Certificate]) -> tuple[Revoked, ...]:
        """The certificates of ``path`` (leaf first, anchor last) that their issuer revoked,
        each with its earliest revocation date among the issuer's CRLs."""
        if not self._by_issuer:
            return ()
        found = []
        for cert, issuer in itertools.pairwise(path):
            listed = [
                (crl.revoked[cert.serial_number], crl.issuer_name)
                for crl in self._by_issuer.get(_issuer_key(issuer), ())
                if cert.serial_number in crl.revoked
            ]
            if listed:
                when, crl_issuer = min(listed)
                found.append(Revoked(name_of(cert), cert.serial_number, when, crl_issuer))
        return tuple(found)

    def check(self, path: Sequence[x509.Certificate]) -> None:
        """Raise CertificateRevoked for the first listed certificate of ``path`` (leaf first)."""
        found = self.find(path)
        if found:
            raise CertificateRevoked(found[0])

    def stale(self, now: datetime) -> tuple[Crl, ...]:
        """The CRLs whose nextUpdate is past at ``now`` (still applied: their revocations stand)."""
        require_aware(now)
        return tuple(crl for crl in self._crls if crl.next_update <= now)
