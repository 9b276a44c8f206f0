"""Signing keys, JWK thumbprints and the rotation keyring.

Why this module exists: every artifact the gateway signs names its key by an RFC 7638 thumbprint
(``kid``) and carries the certificate chain (``x5c``), and ``GET /.well-known/jwks.json`` must list
the current and the retired keys so old receipts stay verifiable after a rotation. Keeping the
key rules here (which key types, which ``alg`` per key, minimum RSA size) gives signing (here) and
verification (``jws``) one definition of what is acceptable.

Pure: no file, clock or log access; callers pass PEM bytes in and get objects back.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = [
    "ALGORITHMS",
    "MIN_RSA_BITS",
    "PSS_SHA256",
    "Alg",
    "CryptoError",
    "KeyInvalid",
    "Keyring",
    "PrivateKey",
    "PublicKey",
    "RetiredKey",
    "SigningKey",
    "default_alg",
    "describe_key",
    "encode_x5c",
    "jwk_thumbprint",
    "load_certificates",
    "load_private_key",
    "public_jwk",
    "require_key_for_alg",
]

Alg: TypeAlias = Literal["ES256", "EdDSA", "PS256", "RS256"]
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

#: The JWS algorithms of the contract ("Signatures"). Nothing else is ever produced or accepted.
ALGORITHMS: Final[frozenset[str]] = frozenset({"ES256", "EdDSA", "PS256", "RS256"})
#: Below this an RSA key is refused for signing and for verification (NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048

# RFC 7518 section 3.5: PS256 uses MGF1 with SHA-256 and a salt as long as the hash (32 bytes).
PSS_SHA256: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_EC_CURVES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class CryptoError(Exception):
    """Base of every failure in ``gateway.crypto``; ``reason`` says, for a person, what is wrong.

    Why one base: callers (authentication, ``POST /v1/verify``, ``gateway verify``) catch one type
    and show or log ``reason``; the subclasses only tell which step failed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyInvalid(CryptoError):
    """Key or certificate material is unusable: unparsable, unsupported, too weak, mismatched."""


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> bytes:
    """Big-endian bytes with no leading zero octet (RFC 7518 section 6.3.1: minimum octets)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def describe_key(key: object) -> str:
    """Name a key for error messages ("ECDSA P-256", "RSA-1024", "Ed25519") without its value."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ECDSA {_EC_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    return type(key).__name__


def require_key_for_alg(key: object, alg: str) -> None:
    """Raise ``KeyInvalid`` unless ``key`` (public or private) is the one key type ``alg`` allows.

    Why strict pairing: a JWS verifier that lets the header choose how a key is used is the root
    of algorithm-confusion attacks. ES256 needs P-256, EdDSA needs Ed25519, PS256/RS256 need RSA
    of at least ``MIN_RSA_BITS``.
    """
    if alg == "ES256":
        ok = isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and (
            key.curve.name == "secp256r1"
        )
        wanted = "an ECDSA P-256 key"
    elif alg == "EdDSA":
        ok = isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey)
        wanted = "an Ed25519 key"
    elif alg in ("PS256", "RS256"):
        if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            raise KeyInvalid(
                f"RSA key of {key.key_size} bits is refused: at least {MIN_RSA_BITS} bits required"
            )
        ok = isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey)
        wanted = f"an RSA key of at least {MIN_RSA_BITS} bits"
    else:
        raise KeyInvalid(
            f"alg {alg!r} is not supported (supported: {', '.join(sorted(ALGORITHMS))})"
        )
    if not ok:
        raise KeyInvalid(f"alg {alg} requires {wanted}, but the key is {describe_key(key)}")


def _jwk_members(public_key: object) -> dict[str, str]:
    """The RFC 7638 required members of the key's JWK (RFC 7518 section 6, RFC 8037 section 2)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = _EC_CURVES.get(public_key.curve.name)
        if crv is None:
            raise KeyInvalid(f"EC curve {public_key.curve.name} has no JWK name")
        size = (public_key.curve.key_size + 7) // 8
        numbers = public_key.public_numbers()
        return {
            "crv": crv,
            "kty": "EC",
            "x": _b64u(numbers.x.to_bytes(size, "big")),
            "y": _b64u(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64u(raw)}
    if isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        return {"e": _b64u(_uint(rsa_numbers.e)), "kty": "RSA", "n": _b64u(_uint(rsa_numbers.n))}
    raise KeyInvalid(f"unsupported key type {describe_key(public_key)}")


def jwk_thumbprint(public_key: object) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the ``kid`` of every key the gateway uses.

    Why a thumbprint and not a name: anyone holding the certificate recomputes it, so a ``kid``
    cannot point at a key other than the one in ``x5c``.
    """
    members = _jwk_members(public_key)
    # Required members only, sorted, no whitespace: all values are ASCII strings, so this is the
    # exact RFC 7638 section 3 serialization.
    text = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return _b64u(hashlib.sha256(text.encode("ascii")).digest())


def default_alg(key: object) -> Alg:
    """The algorithm the gateway uses for a key type (PS256 for RSA, as the contract prefers)."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "PS256"
    raise KeyInvalid(f"unsupported key type {describe_key(key)}")


def encode_x5c(chain: Iterable[x509.Certificate]) -> list[str]:
    """RFC 7515 section 4.1.6 ``x5c``: standard (not url-safe) base64 of each DER certificate."""
    return [
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        for cert in chain
    ]


def _same_key(a: object, b: object) -> bool:
    return jwk_thumbprint(a) == jwk_thumbprint(b)


def public_jwk(
    public_key: PublicKey,
    *,
    x5c: Sequence[x509.Certificate] | None = None,
    alg: Alg | None = None,
) -> dict[str, Any]:
    """The public JWK published in the JWKS: key members, ``kid``, ``alg``, ``use: sig``, ``x5c``.

    ``alg`` defaults to the gateway's algorithm for the key type. ``x5c`` (leaf first) must hold
    this key in its first certificate, so the JWKS can never pair a key with someone else's chain.
    """
    chosen: Alg = alg or default_alg(public_key)
    require_key_for_alg(public_key, chosen)
    members = _jwk_members(public_key)
    jwk: dict[str, Any] = {"kty": members.pop("kty"), **members}
    jwk.update(kid=jwk_thumbprint(public_key), alg=chosen, use="sig")
    if x5c is not None:
        if not x5c:
            raise KeyInvalid("x5c is empty: it needs at least the certificate of the key")
        if not _same_key(x5c[0].public_key(), public_key):
            raise KeyInvalid("the first x5c certificate holds a different key than the JWK")
        jwk["x5c"] = encode_x5c(x5c)
    return jwk


def note_key_jwk(public_raw: bytes, vkey: str) -> dict[str, Any]:
    """The JWK of an Ed25519 signed-note key (the audit log's checkpoint key), for the JWKS.

    No ``x5c``: the signed-note format names keys, it carries no certificates. ``vkey`` (a
    member JOSE libraries ignore, RFC 7517 section 4) is the C2SP verifier key string that
    transparency-log tools take, so the JWKS is one place to find every key of the gateway.
    """
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
    except ValueError:
        raise KeyInvalid("an Ed25519 public key is 32 bytes") from None
    return {**public_jwk(key, alg="EdDSA"), "vkey": vkey}


def _es256_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    algorithm = ec.ECDSA(hashes.SHA256())

    def sign(data: bytes) -> bytes:
        # JOSE (RFC 7518 section 3.4) wants raw R || S, each 32 bytes, not DER.
        r, s = decode_dss_signature(key.sign(data, algorithm))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def _signer(key: PrivateKey, alg: Alg) -> Callable[[bytes], bytes]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _es256_signer(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    if alg == "PS256":
        return lambda data: key.sign(data, PSS_SHA256, hashes.SHA256())
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class SigningKey:
    """A private key bound to the one JWS ``alg`` it signs with, and named by its thumbprint.

    Why a wrapper: the choice of ``alg`` and the key checks happen once, at load, so a weak or
    mismatched key stops the gateway from starting instead of producing unverifiable signatures.
    ECDSA P-256 signs ES256, Ed25519 signs EdDSA, RSA >= 2048 signs PS256 (default) or RS256.
    """

    __slots__ = ("_alg", "_key", "_kid", "_sign")

    def __init__(self, private_key: PrivateKey, *, alg: Alg | None = None) -> None:
        if not isinstance(
            private_key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise KeyInvalid(f"unsupported private key type {describe_key(private_key)}")
        chosen: Alg = alg or default_alg(private_key)
        require_key_for_alg(private_key, chosen)
        self._key = private_key
        self._alg: Alg = chosen
        self._kid = jwk_thumbprint(private_key.public_key())
        self._sign = _signer(private_key, chosen)

    @property
    def alg(self) -> Alg:
        return self._alg

    @property
    def kid(self) -> str:
        """RFC 7638 thumbprint of the public key (base64url)."""
        return self._kid

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (the JWS signing input); returns the JOSE signature encoding."""
        return self._sign(data)

    def public_jwk(self, *, x5c: Sequence[x509.Certificate] | None = None) -> dict[str, Any]:
        return public_jwk(self.public_key, x5c=x5c, alg=self._alg)

    def __repr__(self) -> str:
        # Never the key material: this object may end up in a traceback or a log line.
        return f"SigningKey(alg={self._alg!r}, kid={self._kid!r})"


def load_private_key(
    pem: bytes, password: bytes | None = None, *, alg: Alg | None = None
) -> SigningKey:
    """Load a PEM private key (PKCS#8 or traditional, optionally encrypted) as a ``SigningKey``."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyInvalid(f"cannot load the private key: {exc}") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise KeyInvalid(f"unsupported private key type {describe_key(key)}")
    return SigningKey(key, alg=alg)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in file order (a chain file is leaf first)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise KeyInvalid(f"no usable PEM certificate: {exc}") from exc


class RetiredKey(NamedTuple):
    """A key no longer signing: its certificate chain (leaf first) and the alg it signed with."""

    chain: tuple[x509.Certificate, ...]
    alg: Alg


class Keyring:
    """The gateway's current signing key and chain, plus the retired keys still published.

    Why keep retired keys: receipts and envelopes outlive keys; a security officer verifying a
    year-old receipt finds its ``kid`` in the JWKS with its ``x5c``. A retired key is only a
    certificate chain (leaf first) and the ``alg`` it signed with: the private key is gone.

    Why the ``alg`` is kept: a JOSE verifier may take the algorithm from the JWK (RFC 7517
    section 4.4), so an RSA key that signed RS256, published as PS256, would fail every old
    signature. :meth:`rotate` keeps the current key's ``alg``; a plain chain (the config's
    ``gateway.retired_certificates``) gets :func:`default_alg`, the algorithm this gateway signs
    every key of that type with.
    """

    def __init__(
        self,
        current: SigningKey,
        chain: Sequence[x509.Certificate],
        *,
        retired: Iterable[Sequence[x509.Certificate] | RetiredKey] = (),
    ) -> None:
        if not chain:
            raise KeyInvalid("the current signing key needs its certificate chain (x5c)")
        if jwk_thumbprint(chain[0].public_key()) != current.kid:
            raise KeyInvalid("the first certificate of the chain does not hold the signing key")
        self._current = current
        self._chain = tuple(chain)
        self._retired: dict[str, RetiredKey] = {}
        for entry in retired:
            old = entry.chain if isinstance(entry, RetiredKey) else tuple(entry)
            if not old:
                raise KeyInvalid("a retired key needs its certificate chain (x5c)")
            key = _public_key(old[0])
            kid = jwk_thumbprint(key)
            if kid != current.kid and kid not in self._retired:
                alg = entry.alg if isinstance(entry, RetiredKey) else default_alg(key)
                self._retired[kid] = RetiredKey(old, alg)
        self._jwks = [current.public_jwk(x5c=self._chain)] + [
            public_jwk(_public_key(r.chain[0]), x5c=r.chain, alg=r.alg)
            for r in self._retired.values()
        ]

    @property
    def current(self) -> SigningKey:
        return self._current

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    @property
    def retired(self) -> tuple[tuple[x509.Certificate, ...], ...]:
        return tuple(r.chain for r in self._retired.values())

    def rotate(self, new: SigningKey, chain: Sequence[x509.Certificate]) -> Keyring:
        """A keyring signing with ``new``; the current key (and its alg) joins the retired ones."""
        current = RetiredKey(self._chain, self._current.alg)
        return Keyring(new, chain, retired=[current, *self._retired.values()])

    def find(self, kid: str) -> tuple[x509.Certificate, ...] | None:
        """The chain of the current or a retired key with this thumbprint, or None."""
        if kid == self._current.kid:
            return self._chain
        found = self._retired.get(kid)
        return None if found is None else found.chain

    def jwks(self) -> dict[str, Any]:
        """The JWK Set for ``GET /.well-known/jwks.json``: current key first, then retired ones."""
        return {"keys": [dict(entry, x5c=list(entry["x5c"])) for entry in self._jwks]}


def _public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise KeyInvalid(
            f"unsupported key type {describe_key(key)} in {cert.subject.rfc4514_string()}"
        )
    return key


def ed25519_public_raw(public_key: object) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (signed notes carry keys in this form)."""
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise KeyInvalid(f"an Ed25519 key is needed, not {describe_key(public_key)}")
    return public_key.public_bytes_raw()


def ed25519_verify(public_raw: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature against a raw 32-byte public key; raise CryptoError if bad."""
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CryptoError("the Ed25519 signature does not verify") from None
