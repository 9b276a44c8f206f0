"""The explicit certificate rules behind :mod:`gateway.crypto.pki`: the extension policies
handed to the path validator, and the prechecks that name the failing certificate.

Apart from ``pki`` (which owns trust anchors, path validation and its cache) because these are
the rules a reviewer checks against RFC 5280 and the profile in ``pki``'s docstring, one screen
each. Pure: no I/O, no clock (``now`` is a parameter), no logging.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal, TypeAlias, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, Policy

from gateway.crypto.keys import MIN_RSA_BITS, CryptoError, PublicKey, describe_key

Purpose: TypeAlias = Literal["signing", "client_auth", "server_auth"]
#: Certificates in one presented chain (leaf, intermediates, optionally the root).
MAX_CHAIN_LENGTH: Final = 8
_EKU: Final[dict[str, tuple[x509.ObjectIdentifier, str]]] = {
    "client_auth": (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    "server_auth": (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
}
_T = TypeVar("_T", bound=x509.ExtensionType)
#: Signature hashes refused wherever they appear in a chain (collisions are practical).
_WEAK_HASHES: Final = {"md5": "MD5", "sha1": "SHA-1"}


class ChainInvalid(CryptoError):
    """A chain does not lead to a trust anchor for the asked purpose; ``reason`` says why."""


def name_of(cert: x509.Certificate) -> str:
    """The subject for a reason text, cut short: certificates come from untrusted senders."""
    try:
        text = cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:  # parsed lazily: a subject that does not decode
        return "(malformed subject)"
    return text if len(text) <= 120 else text[:117] + "..."


def require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def _eku_rule(
    purpose: Purpose, who: str
) -> Callable[[Policy, x509.Certificate, x509.ExtendedKeyUsage | None], None]:
    wanted = _EKU.get(purpose)

    def check(_policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
        if wanted is None or eku is None or wanted[0] in eku:
            return
        if who == "issuer" and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
            return
        raise ValueError(f"{who} extendedKeyUsage does not allow {wanted[1]}")

    return check


def _ku_rule(_policy: Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    if ku is not None and (not ku.digital_signature or ku.key_cert_sign):
        raise ValueError("leaf keyUsage must include digitalSignature and not keyCertSign")


def policies(purpose: Purpose) -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy) for a purpose; see the module docstring for why."""
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_rule(purpose, "issuer")
    )
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_rule(purpose, "leaf"))
    )
    if purpose == "signing":
        ee = ee.require_present(x509.KeyUsage, Criticality.AGNOSTIC, _ku_rule)
    else:
        ee = ee.may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ku_rule)
    return ca, ee


def check_window(cert: x509.Certificate, position: int, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise ChainInvalid(
            f"certificate {position} ({name_of(cert)}) is not yet valid: notBefore "
            f"{cert.not_valid_before_utc.isoformat()} is after {now.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise ChainInvalid(
            f"certificate {position} ({name_of(cert)}) has expired: notAfter "
            f"{cert.not_valid_after_utc.isoformat()} is before {now.isoformat()}"
        )


def check_strength(cert: x509.Certificate, position: int) -> None:
    """A SHA-1 (or MD5) signature or an RSA key under MIN_RSA_BITS, anywhere in the chain.

    The library refuses both too, but its reasons name neither the certificate nor, for the
    signature, the algorithm in words ("Forbidden signature algorithm: AlgorithmIdentifier {...}").
    """
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:  # an OID it does not know: path validation refuses it
        algorithm = None
    if algorithm is not None and algorithm.name in _WEAK_HASHES:
        raise ChainInvalid(
            f"certificate {position} ({name_of(cert)}) is signed with "
            f"{_WEAK_HASHES[algorithm.name]} ({cert.signature_algorithm_oid.dotted_string}): "
            "signatures need SHA-256 or stronger"
        )
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ChainInvalid(
            f"certificate {position} ({name_of(cert)}) holds an RSA key of {key.key_size} bits: "
            f"at least {MIN_RSA_BITS} bits required"
        )


def extension(cert: x509.Certificate, kind: type[_T]) -> _T | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # malformed or duplicated extensions
        raise ChainInvalid(f"certificate {name_of(cert)} has malformed extensions: {exc}") from exc


def check_leaf_key(leaf: x509.Certificate) -> PublicKey:
    """The leaf's key, if of a type the gateway verifies (its size: check_strength)."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise ChainInvalid(f"leaf {name_of(leaf)} holds an unsupported {describe_key(key)} key")
    return key


def check_leaf(leaf: x509.Certificate, purpose: Purpose) -> None:
    bc = extension(leaf, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise ChainInvalid(
            f"certificate 0 ({name_of(leaf)}) is a CA certificate (basicConstraints CA=true) "
            "and cannot be used as a leaf"
        )
    ku = extension(leaf, x509.KeyUsage)
    if ku is None and purpose == "signing":
        raise ChainInvalid(f"leaf {name_of(leaf)} has no keyUsage: signing needs digitalSignature")
    if ku is not None and not ku.digital_signature:
        raise ChainInvalid(f"leaf {name_of(leaf)} keyUsage does not include digitalSignature")
    wanted = _EKU.get(purpose)
    eku = extension(leaf, x509.ExtendedKeyUsage)
    if wanted is not None and eku is not None and wanted[0] not in eku:
        raise ChainInvalid(f"leaf {name_of(leaf)} extendedKeyUsage does not include {wanted[1]}")


def precheck(
    chain: tuple[x509.Certificate, ...],
    now: datetime,
    purpose: Purpose,
    anchor_subjects: frozenset[x509.Name],
    anchors: tuple[x509.Certificate, ...],
) -> None:
    """Explicit checks that name the failing certificate before the library runs."""
    if not chain:
        raise ChainInvalid("the certificate chain is empty")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise ChainInvalid(f"the chain has {len(chain)} certificates; at most {MAX_CHAIN_LENGTH}")
    for position, cert in enumerate(chain):
        check_window(cert, position, now)
        check_strength(cert, position)
    for position in range(len(chain) - 1):
        if chain[position].issuer != chain[position + 1].subject:
            raise ChainInvalid(
                f"the chain is out of order: certificate {position + 1} "
                f"({name_of(chain[position + 1])}) is not the issuer of certificate {position} "
                f"(issued by {chain[position].issuer.rfc4514_string()})"
            )
    check_leaf(chain[0], purpose)
    if not any(cert in anchors or cert.issuer in anchor_subjects for cert in chain):
        last = chain[-1]
        raise ChainInvalid(
            f"the chain ends at {name_of(last)}, issued by {last.issuer.rfc4514_string()}, "
            "which is not one of the trust anchors"
        )
