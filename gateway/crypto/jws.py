"""JWS (RFC 7515) flattened JSON serialization: the one signature format of the gateway.

Why hand-written on ``cryptography`` instead of a JOSE library: verification sits on the hot path
(every signed request) and the accepted subset is deliberately tiny, so every rule is visible in
one place: a protected header only (no unprotected ``header``), ``alg`` in ES256/EdDSA/PS256/RS256
and matched to the key type, no ``crit``, ``jku``, ``x5u``, ``jwk`` or ``b64``, a mandatory ``x5c``
chain to the trust anchors, ``kid`` equal to the RFC 7638 thumbprint of the leaf key, and ``typ``
equal to what the caller expects so one kind of artifact never passes as another. Nothing is ever
fetched. Interoperability is pinned by tests that verify our output with jwcrypto and accept
jwcrypto's.

Pure: no I/O, no clock (``now`` is a parameter), no logging.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NoReturn, TypeAlias

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.crypto.canonical import canonicalize, canonicalize_trusted
from gateway.crypto.keys import (
    ALGORITHMS,
    PSS_SHA256,
    CryptoError,
    KeyInvalid,
    PublicKey,
    SigningKey,
    encode_x5c,
    jwk_thumbprint,
    require_key_for_alg,
)
from gateway.crypto.pki import ChainInvalid, TrustAnchors

__all__ = [
    "DEFAULT_ALGS",
    "CryptoError",  # re-exported: callers of verify catch one base from one module
    "JwsJson",
    "PayloadInvalid",
    "SignatureInvalid",
    "Signer",
    "Verified",
    "decode_payload_json",
    "parse",
    "serialize",
    "sign",
    "sign_bytes",
    "strict_json_loads",
    "verify",
]

JwsJson: TypeAlias = dict[str, str]
DEFAULT_ALGS: Final[frozenset[str]] = ALGORITHMS
#: Bound on the base64url protected header (it carries x5c: a few certificates, never megabytes).
MAX_PROTECTED_CHARS: Final = 65536
_MEMBERS: Final = ("payload", "protected", "signature")
_RESERVED: Final = frozenset({"alg", "kid", "typ", "x5c"})
_REFUSED_HEADERS: Final = {
    "crit": "crit lists extensions that must be understood, and this verifier understands none",
    "jku": "jku points at a key set URL, and keys are never fetched",
    "x5u": "x5u points at a certificate URL, and certificates are never fetched",
    "jwk": "jwk embeds a key, and only keys certified by x5c are trusted",
    "b64": "b64 (RFC 7797 unencoded payload) is not supported",
}
_TRAILING_BITS: Final = {2: 0x0F, 3: 0x03}
_B64U_VALUES: Final = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}


class SignatureInvalid(CryptoError):
    """A JWS was refused; ``reason`` names the exact rule it broke."""


class PayloadInvalid(CryptoError):
    """A correctly signed payload is not the strict (canonical) JSON it must be."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid JWS proves: ``payload`` was signed by ``leaf``'s key under ``header``."""

    payload: bytes
    header: dict[str, Any]
    chain: tuple[x509.Certificate, ...]
    leaf: x509.Certificate
    kid: str
    alg: str


def _show(value: object, limit: int = 80) -> str:
    """repr of an untrusted value for a reason text, cut short: reasons end up in logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(value: object, what: str) -> bytes:
    """Strict RFC 7515 base64url: alphabet ``A-Za-z0-9-_``, no padding, canonical last character."""
    if not isinstance(value, str):
        raise SignatureInvalid(f"{what} must be a base64url string, not {type(value).__name__}")
    # b64decode(altchars=...) would translate and then accept '+' and '/': refuse them first.
    if "+" in value or "/" in value or "=" in value:
        raise SignatureInvalid(f"{what} is not base64url: it contains '+', '/' or '=' padding")
    rest = len(value) % 4
    if rest == 1:
        raise SignatureInvalid(f"{what} is not base64url: impossible length {len(value)}")
    try:
        data = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid(f"{what} is not base64url: {exc}") from exc
    if rest and _B64U_VALUES[value[-1]] & _TRAILING_BITS[rest]:
        raise SignatureInvalid(f"{what} is not canonical base64url: non-zero trailing bits")
    return data


class _Duplicate(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Duplicate(f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def strict_json_loads(data: bytes) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, NaN/Infinity and other encodings (ValueError).

    Why: with duplicate keys two parsers can see two different objects in the same signed bytes.
    """
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


@lru_cache(maxsize=64)
def _x5c_for(kid: str, chain: tuple[x509.Certificate, ...]) -> tuple[str, ...]:
    """x5c strings of a signing chain, after checking that its leaf holds the signing key."""
    if not chain:
        raise KeyInvalid("signing needs the certificate chain of the key (x5c), leaf first")
    if jwk_thumbprint(chain[0].public_key()) != kid:
        raise KeyInvalid("the first certificate of the chain does not hold the signing key")
    return tuple(encode_x5c(chain))


def sign_bytes(
    payload: bytes,
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    *,
    typ: str,
    extra_header: Mapping[str, Any] | None = None,
) -> JwsJson:
    """Sign raw payload bytes; protected header ``{alg, kid, typ, x5c}`` plus ``extra_header``."""
    if not isinstance(typ, str) or not typ:
        raise ValueError("typ must be a non-empty string naming the kind of artifact")
    header: dict[str, Any] = {
        "alg": key.alg,
        "kid": key.kid,
        "typ": typ,
        "x5c": list(_x5c_for(key.kid, tuple(chain))),
    }
    if extra_header:
        clash = (_RESERVED | _REFUSED_HEADERS.keys()) & extra_header.keys()
        if clash:
            raise ValueError(f"extra_header may not set {sorted(clash)}")
        header.update(extra_header)
    protected = _b64u(orjson.dumps(header))
    encoded = _b64u(payload)
    signature = key.sign(f"{protected}.{encoded}".encode("ascii"))
    return {"payload": encoded, "protected": protected, "signature": _b64u(signature)}


def sign(
    obj: Any,
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    *,
    typ: str,
    extra_header: Mapping[str, Any] | None = None,
) -> JwsJson:
    """Sign the RFC 8785 canonical JSON of ``obj`` (so any verifier re-derives the same bytes)."""
    return sign_bytes(canonicalize(obj), key, chain, typ=typ, extra_header=extra_header)


class Signer:
    """Signs many artifacts with one key and chain: the protected header per ``typ`` is built once.

    Why: the header carries the x5c chain (a kilobyte of base64) and the thumbprint check; both
    are the same for every receipt and envelope, and rebuilding them per exchange costs more than
    the ECDSA signature itself. Output is byte-identical to ``sign``.
    """

    def __init__(self, key: SigningKey, chain: Sequence[x509.Certificate]) -> None:
        self._key = key
        self._x5c = list(_x5c_for(key.kid, tuple(chain)))
        self._headers: dict[str, str] = {}

    @property
    def key(self) -> SigningKey:
        return self._key

    def _protected(self, typ: str) -> str:
        protected = self._headers.get(typ)
        if protected is None:
            if not isinstance(typ, str) or not typ:
                raise ValueError("typ must be a non-empty string naming the kind of artifact")
            header = {"alg": self._key.alg, "kid": self._key.kid, "typ": typ, "x5c": self._x5c}
            protected = self._headers[typ] = _b64u(orjson.dumps(header))
        return protected

    def sign(self, obj: Any, *, typ: str, trusted: bool = False) -> JwsJson:
        """Sign the RFC 8785 canonical JSON of ``obj``.

        ``trusted``: ``obj`` meets the precondition of ``canonicalize_trusted`` (built by the
        gateway from strings, small integers and Canonical members).
        """
        protected = self._protected(typ)
        encoded = _b64u(canonicalize_trusted(obj) if trusted else canonicalize(obj))
        signature = self._key.sign(f"{protected}.{encoded}".encode("ascii"))
        return {"payload": encoded, "protected": protected, "signature": _b64u(signature)}


def serialize(jws: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes of a JWS (member order kept: payload, protected, signature)."""
    return orjson.dumps(dict(jws))


def parse(data: bytes) -> dict[str, Any]:
    """Strictly parse JWS JSON bytes (e.g. a saved receipt) into the object ``verify`` takes."""
    try:
        value = strict_json_loads(data)
    except ValueError as exc:
        raise SignatureInvalid(f"the JWS is not strict JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SignatureInvalid("the JWS must be a JSON object (flattened JSON serialization)")
    return value


def _members(jws: Mapping[str, Any]) -> tuple[str, str, str]:
    if not isinstance(jws, Mapping):
        raise SignatureInvalid("the JWS must be a JSON object (flattened JSON serialization)")
    if "header" in jws:
        raise SignatureInvalid(
            "an unprotected 'header' member is not accepted: sign every parameter"
        )
    if "signatures" in jws:
        raise SignatureInvalid(
            "general serialization ('signatures') is not accepted: use flattened"
        )
    extra = sorted(map(str, set(jws) - set(_MEMBERS)))
    if extra:
        raise SignatureInvalid(
            f"unexpected JWS member(s) {_show(extra)}: only payload, protected, signature"
        )
    missing = [name for name in _MEMBERS if name not in jws]
    if missing:
        raise SignatureInvalid(f"the JWS lacks member(s) {missing}")
    return jws["protected"], jws["payload"], jws["signature"]


#: Parsed protected headers by their base64url text. A sender signs every request under the
#: same header (alg, kid, typ, x5c), so decoding and strictly parsing its kilobyte of x5c again
#: per request is wasted work. Only successful parses are kept; the dicts are shared, so callers
#: must treat ``Verified.header`` as read-only. Bounded: cleared when full.
_ES256: Final = ec.ECDSA(hashes.SHA256())  # stateless: built once, not per verification
_HEADER_CACHE: dict[str, dict[str, Any]] = {}
_HEADER_CACHE_MAX: Final = 1024


def _parse_header(protected_b64: str) -> dict[str, Any]:
    cached = _HEADER_CACHE.get(protected_b64) if isinstance(protected_b64, str) else None
    if cached is not None:
        return cached
    header = _parse_header_uncached(protected_b64)
    if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[protected_b64] = header
    return header


def _parse_header_uncached(protected_b64: str) -> dict[str, Any]:
    if isinstance(protected_b64, str) and len(protected_b64) > MAX_PROTECTED_CHARS:
        raise SignatureInvalid(f"the protected header exceeds {MAX_PROTECTED_CHARS} characters")
    raw = _b64u_decode(protected_b64, "protected")
    try:
        header = strict_json_loads(raw)
    except _Duplicate as exc:
        raise SignatureInvalid(f"the protected header has a {exc}") from exc
    except ValueError as exc:
        raise SignatureInvalid(f"the protected header is not strict JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SignatureInvalid("the protected header is not a JSON object")
    return header


def _check_header(
    header: dict[str, Any], allowed_algs: Collection[str], typs: tuple[str, ...]
) -> str:
    """Header rules that need no key; returns the alg."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise SignatureInvalid("the protected header has no alg string")
    if alg.lower() == "none":
        raise SignatureInvalid("alg 'none' (an unsigned JWS) is never accepted")
    if alg.startswith("HS"):
        raise SignatureInvalid(
            f"alg {_show(alg)} is a shared-secret MAC, not a signature: not accepted"
        )
    if alg not in ALGORITHMS:
        raise SignatureInvalid(
            f"alg {_show(alg)} is unknown (supported: {', '.join(sorted(ALGORITHMS))})"
        )
    if alg not in allowed_algs:
        raise SignatureInvalid(
            f"alg {alg} is not allowed here (allowed: {', '.join(sorted(allowed_algs))})"
        )
    for name, why in _REFUSED_HEADERS.items():
        if name in header:
            raise SignatureInvalid(f"header parameter '{name}' is refused: {why}")
    typ = header.get("typ")
    if typ not in typs or not isinstance(typ, str):
        raise SignatureInvalid(
            f"typ {_show(typ)} is not the expected {' or '.join(map(repr, typs))}"
        )
    if "x5c" not in header:
        raise SignatureInvalid("the protected header has no x5c: the signer's chain is required")
    return alg


def _check_key_binding(header: Mapping[str, Any], kid: str, leaf: x509.Certificate) -> None:
    if "kid" in header and header["kid"] != kid:
        raise SignatureInvalid(
            f"kid {_show(header['kid'])} is not the RFC 7638 thumbprint {kid!r} of the x5c leaf key"
        )
    if "x5t#S256" in header:
        expected = _b64u(leaf.fingerprint(hashes.SHA256()))
        if header["x5t#S256"] != expected:
            raise SignatureInvalid("x5t#S256 does not match the x5c leaf certificate")


def _check_signature(key: PublicKey, alg: str, signature: bytes, data: bytes) -> None:
    try:
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                raise SignatureInvalid(
                    f"an ES256 signature is 64 bytes (R || S), this one is {len(signature)}"
                )
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, _ES256)
        elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif alg == "PS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, PSS_SHA256, hashes.SHA256())
        elif alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:  # unreachable after require_key_for_alg; kept so no path skips verification
            raise SignatureInvalid(f"alg {alg} does not fit the leaf key")
    except InvalidSignature:
        raise SignatureInvalid(
            f"the {alg} signature does not verify with the x5c leaf key: the payload or the "
            "protected header was altered, or another key signed"
        ) from None


def verify(
    jws: Mapping[str, Any],
    anchors: TrustAnchors,
    *,
    now: datetime,
    expected_typ: str | Collection[str],
    allowed_algs: Collection[str] = DEFAULT_ALGS,
) -> Verified:
    """Verify a flattened JWS JSON object at ``now``: return what it proves, or raise.

    Every refusal is a ``SignatureInvalid`` whose ``reason`` names the rule.

    Order: shape and header rules (cheap, no key), then the x5c chain (cached per anchors), then
    alg against the leaf key and ``kid``, then the signature itself.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")
    typs = (expected_typ,) if isinstance(expected_typ, str) else tuple(expected_typ)
    protected_b64, payload_b64, signature_b64 = _members(jws)
    header = _parse_header(protected_b64)
    alg = _check_header(header, allowed_algs, typs)
    payload = _b64u_decode(payload_b64, "payload")
    signature = _b64u_decode(signature_b64, "signature")
    try:
        chain = anchors.validate_x5c(header["x5c"], now=now, purpose="signing")
    except ChainInvalid as exc:
        raise SignatureInvalid(f"the signer's certificate chain is refused: {exc.reason}") from exc
    try:
        require_key_for_alg(chain.leaf_key, alg)
    except KeyInvalid as exc:
        raise SignatureInvalid(f"alg/key mismatch: {exc.reason}") from exc
    _check_key_binding(header, chain.kid, chain.leaf)
    _check_signature(
        chain.leaf_key, alg, signature, f"{protected_b64}.{payload_b64}".encode("ascii")
    )
    return Verified(payload, header, chain.chain, chain.leaf, chain.kid, alg)


def decode_payload_json(verified: Verified, *, require_canonical: bool = True) -> Any:
    """Strictly parse a verified payload; by default also require it to be RFC 8785 canonical.

    Why canonical: the contract signs the JCS form, and digests (``request_sha256``, audit leaf
    hashes) are only comparable when one object has exactly one byte form.
    """
    try:
        value = strict_json_loads(verified.payload)
    except ValueError as exc:
        raise PayloadInvalid(f"the signed payload is not strict JSON: {exc}") from exc
    if require_canonical:
        try:
            canonical = canonicalize(value)
        except (TypeError, ValueError) as exc:  # e.g. integers beyond 2**53 - 1
            raise PayloadInvalid(f"the signed payload cannot be canonicalized: {exc}") from exc
        if canonical != verified.payload:
            raise PayloadInvalid("the signed payload is not RFC 8785 canonical JSON")
    return value
