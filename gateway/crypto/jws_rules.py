"""The rules of the JWS subset the gateway accepts, and the strict codecs they need.

Apart from :mod:`gateway.crypto.jws` (which signs and orchestrates verification) so that every
refusal a verifier can answer with is reviewed in one place: the members of a flattened JWS,
strict base64url, strict JSON for headers and payloads, the protected header's rules (``alg``,
refused parameters, ``typ``, mandatory ``x5c`` and ``kid``), the binding of ``kid``/``x5t#S256``
to the leaf certificate, and the signature check per algorithm. As ``pki_rules`` is to ``pki``.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.crypto.keys import ALGORITHMS, PSS_SHA256, CryptoError, PublicKey

#: Bound on the base64url protected header (it carries x5c: a few certificates, never megabytes).
MAX_PROTECTED_CHARS: Final = 65536
MEMBERS: Final = ("payload", "protected", "signature")
RESERVED: Final = frozenset({"alg", "kid", "typ", "x5c"})
REFUSED_HEADERS: Final = {
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


def show(value: object, limit: int = 80) -> str:
    """repr of an untrusted value for a reason text, cut short: reasons end up in logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(value: object, what: str) -> bytes:
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
            raise _Duplicate(f"duplicate key {show(key)}")
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


def members(jws: Mapping[str, Any]) -> tuple[str, str, str]:
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
    extra = sorted(map(str, set(jws) - set(MEMBERS)))
    if extra:
        raise SignatureInvalid(
            f"unexpected JWS member(s) {show(extra)}: only payload, protected, signature"
        )
    missing = [name for name in MEMBERS if name not in jws]
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


def parse_header(protected_b64: str) -> dict[str, Any]:
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
    raw = b64u_decode(protected_b64, "protected")
    try:
        header = strict_json_loads(raw)
    except _Duplicate as exc:
        raise SignatureInvalid(f"the protected header has a {exc}") from exc
    except ValueError as exc:
        raise SignatureInvalid(f"the protected header is not strict JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SignatureInvalid("the protected header is not a JSON object")
    return header


def check_header(
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
            f"alg {show(alg)} is a shared-secret MAC, not a signature: not accepted"
        )
    if alg not in ALGORITHMS:
        raise SignatureInvalid(
            f"alg {show(alg)} is unknown (supported: {', '.join(sorted(ALGORITHMS))})"
        )
    if alg not in allowed_algs:
        raise SignatureInvalid(
            f"alg {alg} is not allowed here (allowed: {', '.join(sorted(allowed_algs))})"
        )
    for name, why in REFUSED_HEADERS.items():
        if name in header:
            raise SignatureInvalid(f"header parameter '{name}' is refused: {why}")
    typ = header.get("typ")
    if typ not in typs or not isinstance(typ, str):
        raise SignatureInvalid(
            f"typ {show(typ)} is not the expected {' or '.join(map(repr, typs))}"
        )
    if "x5c" not in header:
        raise SignatureInvalid("the protected header has no x5c: the signer's chain is required")
    if "kid" not in header:
        raise SignatureInvalid(
            "the protected header has no kid: the contract requires the RFC 7638 thumbprint of "
            "the x5c leaf key"
        )
    return alg


def check_key_binding(header: Mapping[str, Any], kid: str, leaf: x509.Certificate) -> None:
    if header["kid"] != kid:  # present: check_header required it
        raise SignatureInvalid(
            f"kid {show(header['kid'])} is not the RFC 7638 thumbprint {kid!r} of the x5c leaf key"
        )
    if "x5t#S256" in header:
        expected = b64u(leaf.fingerprint(hashes.SHA256()))
        if header["x5t#S256"] != expected:
            raise SignatureInvalid("x5t#S256 does not match the x5c leaf certificate")


def check_signature(key: PublicKey, alg: str, signature: bytes, data: bytes) -> None:
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
