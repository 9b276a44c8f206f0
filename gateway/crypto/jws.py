"""JWS (RFC 7515) flattened JSON serialization: the one signature format of the gateway.

Why hand-written on ``cryptography`` instead of a JOSE library: verification sits on the hot path
(every signed request) and the accepted subset is deliberately tiny, so every rule is visible in
one place: a protected header only (no unprotected ``header``), ``alg`` in ES256/EdDSA/PS256/RS256
and matched to the key type, no ``crit``, ``jku``, ``x5u``, ``jwk`` or ``b64``, a mandatory ``x5c``
chain to the trust anchors, a mandatory ``kid`` equal to the RFC 7638 thumbprint of the leaf key
(CONTRACT.md lists it in every protected header; a kid-less JWS is not in the format), and ``typ``
equal to what the caller expects so one kind of artifact never passes as another. Nothing is ever
fetched. Interoperability is pinned by tests that verify our output with jwcrypto and accept
jwcrypto's.

Pure: no I/O, no clock (``now`` is a parameter), no logging.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, TypeAlias

import orjson
from cryptography import x509

from gateway.crypto.canonical import canonicalize, canonicalize_trusted
from gateway.crypto.jws_rules import (
    REFUSED_HEADERS,
    RESERVED,
    PayloadInvalid,
    SignatureInvalid,
    b64u,
    b64u_decode,
    check_header,
    check_key_binding,
    check_signature,
    members,
    parse_header,
    strict_json_loads,
)
from gateway.crypto.keys import (
    ALGORITHMS,
    CryptoError,
    KeyInvalid,
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


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid JWS proves: ``payload`` was signed by ``leaf``'s key under ``header``."""

    payload: bytes
    header: dict[str, Any]
    chain: tuple[x509.Certificate, ...]
    leaf: x509.Certificate
    kid: str
    alg: str
    #: The validated path, anchor last (``chain`` is what the signer presented).
    path: tuple[x509.Certificate, ...] = ()


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
        clash = (RESERVED | REFUSED_HEADERS.keys()) & extra_header.keys()
        if clash:
            raise ValueError(f"extra_header may not set {sorted(clash)}")
        header.update(extra_header)
    protected = b64u(orjson.dumps(header))
    encoded = b64u(payload)
    signature = key.sign(f"{protected}.{encoded}".encode("ascii"))
    return {"payload": encoded, "protected": protected, "signature": b64u(signature)}


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
            protected = self._headers[typ] = b64u(orjson.dumps(header))
        return protected

    def sign(self, obj: Any, *, typ: str, trusted: bool = False) -> JwsJson:
        """Sign the RFC 8785 canonical JSON of ``obj``.

        ``trusted``: ``obj`` meets the precondition of ``canonicalize_trusted`` (built by the
        gateway from strings, small integers and Canonical members).
        """
        protected = self._protected(typ)
        encoded = b64u(canonicalize_trusted(obj) if trusted else canonicalize(obj))
        signature = self._key.sign(f"{protected}.{encoded}".encode("ascii"))
        return {"payload": encoded, "protected": protected, "signature": b64u(signature)}


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
    protected_b64, payload_b64, signature_b64 = members(jws)
    header = parse_header(protected_b64)
    alg = check_header(header, allowed_algs, typs)
    payload = b64u_decode(payload_b64, "payload")
    signature = b64u_decode(signature_b64, "signature")
    try:
        chain = anchors.validate_x5c(header["x5c"], now=now, purpose="signing")
    except ChainInvalid as exc:
        raise SignatureInvalid(f"the signer's certificate chain is refused: {exc.reason}") from exc
    try:
        require_key_for_alg(chain.leaf_key, alg)
    except KeyInvalid as exc:
        raise SignatureInvalid(f"alg/key mismatch: {exc.reason}") from exc
    check_key_binding(header, chain.kid, chain.leaf)
    check_signature(
        chain.leaf_key, alg, signature, f"{protected_b64}.{payload_b64}".encode("ascii")
    )
    return Verified(payload, header, chain.chain, chain.leaf, chain.kid, alg, chain.path)


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
