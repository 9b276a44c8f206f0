"""JWS JSON signing and verification (gateway.crypto.jws).

Independent checks: every algorithm's output verifies with jwcrypto (another JOSE library) and
a key built from the leaf certificate, and jwcrypto's signatures verify here. Each refusal rule
has a test asserting that the reason names its cause.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from gateway.crypto import devpki, jws_rules
from gateway.crypto.jws import (
    PayloadInvalid,
    SignatureInvalid,
    decode_payload_json,
    parse,
    serialize,
    sign,
    sign_bytes,
    verify,
)
from gateway.crypto.keys import KeyInvalid, SigningKey, encode_x5c, jwk_thumbprint
from gateway.crypto.pki import TrustAnchors

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
TYP = "request+jws"
PAYLOAD = rfc8785.dumps({"id": "0193a5c2-0000-7000-8000-000000000001", "service": "demo.v1"})
ALG_CASES = [
    ("ec", None, "ES256"),
    ("ed25519", None, "EdDSA"),
    ("rsa", None, "PS256"),
    ("rsa", "RS256", "RS256"),
]


@functools.cache
def _ca() -> tuple[Any, x509.Certificate, Any, x509.Certificate]:
    root_key, root = devpki.make_ca("test", now=NOW)
    inter_key, inter = devpki.make_ca("test issuing", now=NOW, issuer=(root_key, root))
    return root_key, root, inter_key, inter


@functools.cache
def _signer(
    key_type: str = "ec", alg: str | None = None
) -> tuple[SigningKey, tuple[x509.Certificate, ...], Any]:
    _, _, inter_key, inter = _ca()
    key, leaf = devpki.issue(inter_key, inter, "hcm.quan-1", now=NOW, key_type=key_type)  # type: ignore[arg-type]
    return SigningKey(key, alg=alg), (leaf, inter), key  # type: ignore[arg-type]


def _anchors() -> TrustAnchors:
    return TrustAnchors([_ca()[1]])


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(
    header: dict[str, Any] | bytes,
    payload: bytes = PAYLOAD,
    sign_with: Callable[[bytes], bytes] | None = None,
) -> dict[str, str]:
    """A JWS with any header: signed by ``sign_with`` (raw signing input -> signature) if given."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    protected, encoded = _b64u(raw), _b64u(payload)
    signature = sign_with(f"{protected}.{encoded}".encode()) if sign_with else b"\x01" * 64
    return {"payload": encoded, "protected": protected, "signature": _b64u(signature)}


def _header(**changes: Any) -> dict[str, Any]:
    """The header the ES256 test signer would produce, with ``changes`` (None deletes)."""
    signer, chain, _ = _signer()
    header = {"alg": signer.alg, "kid": signer.kid, "typ": TYP, "x5c": encode_x5c(chain)}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def _refused(
    jws: Any, match: str, *, now: datetime = NOW, anchors: TrustAnchors | None = None, **kw: Any
) -> str:
    with pytest.raises(SignatureInvalid) as info:
        verify(jws, anchors or _anchors(), now=now, expected_typ=kw.pop("expected_typ", TYP), **kw)
    assert match in info.value.reason, info.value.reason
    return info.value.reason


# --- round trips and interoperability -----------------------------------------------------------


@pytest.mark.parametrize(("key_type", "alg", "expected"), ALG_CASES)
def test_round_trip(key_type: str, alg: str | None, expected: str) -> None:
    signer, chain, _ = _signer(key_type, alg)
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    verified = verify(token, _anchors(), now=NOW, expected_typ=TYP)
    assert verified.payload == PAYLOAD
    assert verified.alg == expected
    assert verified.kid == signer.kid == verified.header["kid"]
    assert verified.leaf == chain[0] and verified.chain == chain
    assert verified.header["typ"] == TYP
    assert set(token) == {"payload", "protected", "signature"}


@pytest.mark.parametrize(("key_type", "alg", "expected"), ALG_CASES)
def test_jwcrypto_verifies_our_signatures(key_type: str, alg: str | None, expected: str) -> None:
    """Any JOSE library plus the certificate verifies what the gateway signs (the contract)."""
    signer, chain, _ = _signer(key_type, alg)
    token = serialize(sign_bytes(PAYLOAD, signer, chain, typ=TYP))
    other = jwcrypto_jws.JWS()
    other.deserialize(token.decode())
    other.verify(jwcrypto_jwk.JWK.from_pyca(chain[0].public_key()), alg=expected)
    assert other.payload == PAYLOAD
    assert other.jose_header["x5c"] == encode_x5c(chain)


@pytest.mark.parametrize(("key_type", "alg", "expected"), ALG_CASES)
def test_we_verify_jwcrypto_signatures(key_type: str, alg: str | None, expected: str) -> None:
    """A unit signing with a standard JOSE library is accepted (x5c, RFC 7638 kid)."""
    _, chain, private = _signer(key_type, alg)
    key = jwcrypto_jwk.JWK.from_pyca(private)
    other = jwcrypto_jws.JWS(PAYLOAD)
    protected = {"alg": expected, "typ": TYP, "kid": key.thumbprint(), "x5c": encode_x5c(chain)}
    other.add_signature(key, alg=expected, protected=json.dumps(protected))
    verified = verify(json.loads(other.serialize()), _anchors(), now=NOW, expected_typ=TYP)
    assert verified.payload == PAYLOAD and verified.alg == expected


def test_signature_header_carries_x5c_and_thumbprint() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP, extra_header={"iat": 1})
    header = json.loads(base64.urlsafe_b64decode(token["protected"] + "=="))
    assert header == {
        "alg": "ES256",
        "kid": signer.kid,
        "typ": TYP,
        "x5c": encode_x5c(chain),
        "iat": 1,
    }
    assert signer.kid == jwk_thumbprint(chain[0].public_key())


def test_serialize_is_compact_and_parses_back() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    data = serialize(token)
    assert b" " not in data and b"\n" not in data
    assert parse(data) == token


def test_sign_refuses_reserved_or_forbidden_extra_header() -> None:
    signer, chain, _ = _signer()
    for name in ("alg", "kid", "typ", "x5c", "crit", "jku", "b64"):
        with pytest.raises(ValueError, match=name):
            sign_bytes(PAYLOAD, signer, chain, typ=TYP, extra_header={name: "x"})
    with pytest.raises(ValueError, match="typ"):
        sign_bytes(PAYLOAD, signer, chain, typ="")


def test_sign_refuses_a_chain_for_another_key() -> None:
    signer, _, _ = _signer("ec")
    _, other_chain, _ = _signer("ed25519")
    with pytest.raises(KeyInvalid, match="does not hold the signing key"):
        sign_bytes(PAYLOAD, signer, other_chain, typ=TYP)


def test_sign_uses_jcs_payload() -> None:
    """``sign`` signs the RFC 8785 form, so verifiers re-derive identical bytes."""
    signer, chain, _ = _signer()
    obj = {"b": [1, 2.5, "x"], "a": {"é": None}}
    verified = verify(sign(obj, signer, chain, typ=TYP), _anchors(), now=NOW, expected_typ=TYP)
    assert verified.payload == rfc8785.dumps(obj)
    assert decode_payload_json(verified) == obj


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=300), position=st.integers(min_value=0))
def test_any_payload_round_trips_and_any_change_is_caught(payload: bytes, position: int) -> None:
    signer, chain, _ = _signer("ed25519")
    anchors = _anchors()
    token = sign_bytes(payload, signer, chain, typ=TYP)
    assert verify(token, anchors, now=NOW, expected_typ=TYP).payload == payload
    changed = bytearray(payload or b"\x00")
    changed[position % len(changed)] ^= 0x01
    with pytest.raises(SignatureInvalid):
        verify(dict(token, payload=_b64u(bytes(changed))), anchors, now=NOW, expected_typ=TYP)


# --- refusals: shape and encoding ---------------------------------------------------------------


def test_extra_member_is_refused() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    _refused(dict(token, foo="bar"), "unexpected JWS member(s) ['foo']")
    _refused(dict(token, header={"kid": "x"}), "unprotected 'header'")
    _refused(dict(token, signatures=[]), "general serialization")
    _refused({k: v for k, v in token.items() if k != "signature"}, "lacks member(s) ['signature']")
    _refused([token], "must be a JSON object")


@pytest.mark.parametrize(
    ("member", "bad", "reason"),
    [
        ("payload", "ab+c", "not base64url"),
        ("payload", "abc=", "not base64url"),
        ("signature", "ab/c", "not base64url"),
        ("protected", "e yJ", "not base64url"),
        ("payload", "abcde", "impossible length"),
        ("payload", "QR", "trailing bits"),
        ("payload", "QE", "trailing bits"),  # 'QQ' is canonical: 'E' sets bit 2 of the last 4
        ("payload", "QUJ", "trailing bits"),  # 'QUI' is canonical: 'J' sets the last bit
        ("payload", "QU!!!!JD", "not base64url"),  # not skipped: 'QUJD' is valid
        ("payload", 12, "must be a base64url string"),
        ("protected", ["eyJ9"], "must be a base64url string"),  # not a cache key: no crash
    ],
)
def test_non_base64url_is_refused(member: str, bad: Any, reason: str) -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    assert _refused(dict(token, **{member: bad}), reason).startswith(f"{member} ")


def test_protected_header_not_an_object_is_refused() -> None:
    _refused(_forge(b"[1, 2]"), "not a JSON object")


def test_protected_header_not_strict_json_is_refused() -> None:
    _refused(_forge(b'{"alg": NaN}'), "not strict JSON")
    _refused(_forge('{"alg":"ES256"}'.encode("utf-16")), "not strict JSON")


def test_a_protected_header_of_65536_characters_verifies_and_one_more_is_refused_for_size() -> None:
    """The bound on the protected header is exactly 65536 base64url characters: a correctly
    signed header of that length verifies, and a longer one is refused for its size before it is
    decoded (65537 characters is also an impossible base64url length: the size reason must win).
    """
    signer, _, _ = _signer()
    base = len(json.dumps(_header(pad="")).encode())
    header = _header(pad="x" * (65536 * 3 // 4 - base))
    token = _forge(header, sign_with=signer.sign)
    assert len(token["protected"]) == 65536
    verify(token, _anchors(), now=NOW, expected_typ=TYP)
    _refused(dict(token, protected="A" * 65537), "the protected header exceeds 65536 characters")


def test_duplicate_header_key_is_refused() -> None:
    raw = json.dumps(_header())[:-1] + ', "alg": "none"}'
    _refused(_forge(raw.encode()), "duplicate key 'alg'")


# --- refusals: header rules ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_case_is_refused_as_an_unsigned_jws(alg: str) -> None:
    _refused(
        _forge(_header(alg=alg), sign_with=lambda _: b""), "(an unsigned JWS) is never accepted"
    )


def test_alg_hs256_is_refused() -> None:
    _refused(_forge(_header(alg="HS256")), "alg 'HS256' is a shared-secret MAC")


def test_unknown_alg_is_refused() -> None:
    _refused(_forge(_header(alg="ES512")), "alg 'ES512' is unknown")


def test_alg_outside_allowed_algs_is_refused() -> None:
    signer, chain, _ = _signer()
    _refused(
        sign_bytes(PAYLOAD, signer, chain, typ=TYP), "not allowed here", allowed_algs={"EdDSA"}
    )


def test_missing_alg_is_refused() -> None:
    _refused(_forge(_header(alg=None)), "no alg")


def test_crit_is_refused() -> None:
    _refused(_forge(_header(crit=["exp"], exp=1)), "'crit' is refused")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.example/jwks"),
        ("x5u", "https://evil.example/c.pem"),
        ("jwk", {"kty": "EC"}),
    ],
)
def test_key_locating_headers_are_refused(name: str, value: Any) -> None:
    _refused(_forge(_header(**{name: value})), f"'{name}' is refused")


def test_unencoded_payload_b64_false_is_refused() -> None:
    _refused(_forge(_header(b64=False)), "'b64' is refused")


def test_missing_x5c_is_refused() -> None:
    _refused(_forge(_header(x5c=None)), "no x5c")


def test_typ_mismatch_is_refused() -> None:
    signer, chain, _ = _signer()
    receipt = sign_bytes(PAYLOAD, signer, chain, typ="receipt+jws")
    _refused(receipt, "typ 'receipt+jws' is not the expected 'request+jws'")
    _refused(_forge(_header(typ=None)), "typ None")
    verify(receipt, _anchors(), now=NOW, expected_typ={"receipt+jws", "envelope+jws"})


def test_kid_mismatch_is_refused() -> None:
    signer, _, _ = _signer()
    token = _forge(_header(kid="not-the-thumbprint"), sign_with=signer.sign)
    _refused(token, "kid 'not-the-thumbprint' is not the RFC 7638 thumbprint")


def test_a_missing_kid_is_refused() -> None:
    """The contract's protected header carries kid (the RFC 7638 thumbprint of the x5c leaf
    key): a JWS without one, even correctly signed by a trusted leaf, is not in the format."""
    signer, _, _ = _signer()
    _refused(_forge(_header(kid=None), sign_with=signer.sign), "the protected header has no kid")


def test_wrong_x5t_s256_is_refused() -> None:
    signer, _, _ = _signer()
    _refused(_forge(_header(**{"x5t#S256": "AAAA"}), sign_with=signer.sign), "x5t#S256")


def test_a_matching_x5t_s256_is_accepted() -> None:
    """x5t#S256 is optional (RFC 7515 4.1.8): the SHA-256 of the leaf's DER, base64url."""
    signer, chain, _ = _signer()
    thumbprint = _b64u(chain[0].fingerprint(hashes.SHA256()))
    token = _forge(_header(**{"x5t#S256": thumbprint}), sign_with=signer.sign)
    assert verify(token, _anchors(), now=NOW, expected_typ=TYP).payload == PAYLOAD


def test_a_protected_header_nested_too_deeply_for_the_parser_is_refused_not_a_crash() -> None:
    _refused(
        _forge(b"[" * 40_000), "the protected header is not strict JSON: JSON nested too deeply"
    )


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [("ed25519", "ES256"), ("rsa", "ES256"), ("ec", "EdDSA"), ("ec", "PS256"), ("ec", "RS256")],
)
def test_check_signature_refuses_an_alg_that_does_not_fit_the_key(key_type: str, alg: str) -> None:
    """The last line of defence if the alg/key pairing check upstream were skipped: no alg
    ever runs with another algorithm's key type, and no path returns without verifying."""
    signer, chain, _ = _signer(key_type)
    data = b"header.payload"
    with pytest.raises(SignatureInvalid, match=f"alg {alg} does not fit the leaf key"):
        jws_rules.check_signature(chain[0].public_key(), alg, signer.sign(data), data)  # type: ignore[arg-type]


# --- refusals: keys and signatures --------------------------------------------------------------


@pytest.mark.parametrize(("key_type", "alg", "expected"), ALG_CASES)
def test_a_signature_over_other_bytes_is_refused_for_every_algorithm(
    key_type: str, alg: str | None, expected: str
) -> None:
    """Each algorithm's verify call is what refuses: a valid signature of the signer over other
    bytes (the payload changed in transit) must fail under ES256, EdDSA, PS256 and RS256."""
    signer, chain, _ = _signer(key_type, alg)
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    other = sign_bytes(PAYLOAD.replace(b"demo.v1", b"demo.v2"), signer, chain, typ=TYP)
    assert token["protected"] == other["protected"]
    reason = _refused(dict(token, signature=other["signature"]), "signature does not verify")
    assert reason.startswith(f"the {expected} signature")


def test_tampered_payload_is_refused() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    forged = dict(token, payload=_b64u(PAYLOAD.replace(b"demo.v1", b"demo.v2")))
    _refused(forged, "signature does not verify")


def test_tampered_protected_header_is_refused() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    header = json.loads(base64.urlsafe_b64decode(token["protected"] + "=="))
    header["iat"] = 1
    _refused(dict(token, protected=_b64u(json.dumps(header).encode())), "signature does not verify")


def test_signature_by_another_key_is_refused() -> None:
    stranger = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    _refused(_forge(_header(), sign_with=stranger.sign), "signature does not verify")


def test_es256_signature_of_wrong_length_is_refused() -> None:
    signer, _, _ = _signer()
    _refused(_forge(_header(), sign_with=lambda data: signer.sign(data) + b"\x00"), "64 bytes")


@pytest.mark.parametrize(
    ("key_type", "alg", "reason"),
    [
        ("ed25519", "ES256", "alg ES256 requires an ECDSA P-256 key, but the key is Ed25519"),
        ("ec", "EdDSA", "alg EdDSA requires an Ed25519 key"),
        ("ec", "PS256", "alg PS256 requires an RSA key"),
        ("rsa", "ES256", "alg ES256 requires an ECDSA P-256 key, but the key is RSA-2048"),
    ],
)
def test_alg_not_matching_the_key_is_refused(key_type: str, alg: str, reason: str) -> None:
    signer, chain, _ = _signer(key_type)
    header = {"alg": alg, "kid": signer.kid, "typ": TYP, "x5c": encode_x5c(chain)}
    _refused(_forge(header, sign_with=signer.sign), reason)


def test_rsa_1024_signer_is_refused() -> None:
    _, _, inter_key, inter = _ca()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = _leaf(inter_key, inter, weak.public_key())
    kid = jwk_thumbprint(weak.public_key())
    header = {"alg": "PS256", "kid": kid, "typ": TYP, "x5c": encode_x5c([leaf, inter])}
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    reason = _refused(
        _forge(header, sign_with=lambda data: weak.sign(data, pss, hashes.SHA256())), "1024 bits"
    )
    assert "2048" in reason


# --- refusals: the certificate chain ------------------------------------------------------------


def _leaf(
    issuer_key: Any, issuer: x509.Certificate, public_key: Any, *, digital_signature: bool = True
) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature, not digital_signature, False, False, False, False, False, False, False
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcm.quan-1")]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def test_expired_leaf_is_refused() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    _refused(token, "has expired", now=chain[0].not_valid_after_utc + timedelta(seconds=1))


def test_not_yet_valid_leaf_is_refused() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    _refused(token, "not yet valid", now=chain[0].not_valid_before_utc - timedelta(seconds=1))


def test_wrong_trust_anchor_is_refused() -> None:
    signer, chain, _ = _signer()
    _, other_root = devpki.make_ca("other", now=NOW)
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    _refused(token, "not one of the trust anchors", anchors=TrustAnchors([other_root]))


def test_leaf_without_digital_signature_is_refused() -> None:
    _, _, inter_key, inter = _ca()
    private = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf(inter_key, inter, private.public_key(), digital_signature=False)
    signer = SigningKey(private)
    token = sign_bytes(PAYLOAD, signer, [leaf, inter], typ=TYP)
    _refused(token, "keyUsage does not include digitalSignature")


def test_ca_certificate_used_as_leaf_is_refused() -> None:
    _, _, inter_key, inter = _ca()
    token = sign_bytes(PAYLOAD, SigningKey(inter_key), [inter], typ=TYP)
    _refused(token, "is a CA certificate")


def test_malformed_x5c_is_refused() -> None:
    signer, _, _ = _signer()
    _refused(_forge(_header(x5c="MIIB"), sign_with=signer.sign), "x5c must be a list")
    _refused(_forge(_header(x5c=["@@@@"]), sign_with=signer.sign), "not standard base64")


def test_naive_now_is_a_programming_error() -> None:
    signer, chain, _ = _signer()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(token, _anchors(), now=NOW.replace(tzinfo=None), expected_typ=TYP)


# --- the chain cache ----------------------------------------------------------------------------


def test_chain_cache_hits_across_tokens_of_one_signer() -> None:
    signer, chain, _ = _signer()
    anchors = _anchors()
    for body in (b"{}", b"[]", b"1"):
        verify(sign_bytes(body, signer, chain, typ=TYP), anchors, now=NOW, expected_typ=TYP)
    assert anchors.cache_info()[:3] == (2, 1, 1)


def test_cached_chain_is_still_refused_after_not_after() -> None:
    signer, chain, _ = _signer()
    anchors = _anchors()
    token = sign_bytes(PAYLOAD, signer, chain, typ=TYP)
    verify(token, anchors, now=NOW, expected_typ=TYP)
    assert anchors.cache_info().currsize == 1
    later = chain[0].not_valid_after_utc + timedelta(seconds=1)
    _refused(token, "has expired", now=later, anchors=anchors)


# --- the payload --------------------------------------------------------------------------------


def _verified(payload: bytes) -> Any:
    signer, chain, _ = _signer()
    return verify(
        sign_bytes(payload, signer, chain, typ=TYP), _anchors(), now=NOW, expected_typ=TYP
    )


def test_payload_json_is_parsed_strictly() -> None:
    assert decode_payload_json(_verified(b'{"b":1, "a":[true]}'), require_canonical=False) == {
        "b": 1,
        "a": [True],
    }
    with pytest.raises(PayloadInvalid, match="duplicate key 'a'"):
        decode_payload_json(_verified(b'{"a":1,"a":2}'), require_canonical=False)
    with pytest.raises(PayloadInvalid, match="not strict JSON"):
        decode_payload_json(_verified(b'{"a":NaN}'), require_canonical=False)
    with pytest.raises(PayloadInvalid, match="not strict JSON"):
        decode_payload_json(_verified(b"\xff"), require_canonical=False)


def test_payload_must_be_canonical_by_default() -> None:
    assert decode_payload_json(_verified(b'{"a":[true],"b":1}')) == {"a": [True], "b": 1}
    with pytest.raises(PayloadInvalid, match="not RFC 8785 canonical"):
        decode_payload_json(_verified(b'{"b":1,"a":[true]}'))
    with pytest.raises(PayloadInvalid, match="not RFC 8785 canonical"):
        decode_payload_json(_verified(b'{"a": 1}'))
    with pytest.raises(PayloadInvalid, match="cannot be canonicalized"):
        decode_payload_json(_verified(b'{"a":9007199254740993}'))


def test_untrusted_values_are_cut_short_in_reasons() -> None:
    """Reasons go to logs: an attacker's 10 kB typ must not be copied there (80 characters of
    its repr at most, the last three an ellipsis)."""
    reason = _refused(_forge(_header(typ="x" * 10_000)), "is not the expected")
    assert reason == f"typ '{'x' * 76}... is not the expected 'request+jws'"
    reason = _refused(_forge(_header(typ="x" * 78)), "is not the expected")
    assert reason == f"typ '{'x' * 78}' is not the expected 'request+jws'"


def test_the_parsed_header_cache_holds_at_most_1024_headers() -> None:
    """Headers are parsed (and cached) before any signature check, so anyone can add entries:
    the cache is emptied when it reaches 1024, never grows past it."""
    jws_rules._HEADER_CACHE.clear()
    sizes = []
    for n in range(1030):
        jws_rules.parse_header(_b64u(json.dumps({"n": n}).encode()))
        sizes.append(len(jws_rules._HEADER_CACHE))
    assert max(sizes) == 1024 and sizes[1024] == 1


def test_signer_with_cached_headers_is_byte_identical_to_sign() -> None:
    """The hot-path Signer caches the protected header per typ; output must equal jws.sign."""
    from gateway.crypto import jws

    now = NOW
    ca_key, ca_cert = devpki.make_ca("T", now=now)
    key, cert = devpki.issue(ca_key, ca_cert, "hcm.ttcds.gw", now=now, purposes=("signing",))
    for kt in ("ec", "ed25519"):
        if kt == "ed25519":
            key, cert = devpki.issue(
                ca_key, ca_cert, "hcm.ttcds.gw", now=now, key_type="ed25519", purposes=("signing",)
            )
        sk = SigningKey(key)
        signer = jws.Signer(sk, [cert])
        obj = {"b": [1, 2, {"z": "ấ"}], "a": None}
        for typ in ("receipt+jws", "envelope+jws", "receipt+jws"):
            got = signer.sign(obj, typ=typ)
            want = sign(obj, sk, [cert], typ=typ)
            assert got["protected"] == want["protected"] and got["payload"] == want["payload"]
            if kt == "ed25519":  # deterministic signatures: the bytes must match too
                assert got["signature"] == want["signature"]
            anchors = TrustAnchors([ca_cert])
            verify(got, anchors, now=now, expected_typ=typ)
