"""Signing keys, JWK thumbprints, JWKs and the keyring (gateway.crypto.keys).

Known answers: RFC 7638 section 3.1 (RSA thumbprint) and RFC 8037 appendix A (Ed25519 key,
thumbprint and signature). Independent cross-check: jwcrypto computes the same thumbprints.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwcrypto import jwk as jwcrypto_jwk

from gateway.crypto import devpki
from gateway.crypto.keys import (
    KeyInvalid,
    Keyring,
    SigningKey,
    jwk_thumbprint,
    load_certificates,
    load_private_key,
    public_jwk,
)

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def _b64u_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _b64u(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# RFC 7638 section 3.1, the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvz"
    "qY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6We"
    "Zu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 appendix A.1 (key), A.3 (thumbprint), A.4 (signature over "Example of Ed25519 signing").
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_SIGNING_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = (
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def test_rfc7638_thumbprint_known_answer() -> None:
    key = rsa.RSAPublicNumbers(e=_b64u_int("AQAB"), n=_b64u_int(RFC7638_N)).public_key()
    assert jwk_thumbprint(key) == RFC7638_THUMBPRINT


def test_rfc8037_ed25519_thumbprint_and_signature() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(_b64u(RFC8037_D))
    signer = SigningKey(private)
    assert signer.public_jwk()["x"] == RFC8037_X
    assert signer.kid == RFC8037_THUMBPRINT
    assert signer.alg == "EdDSA"
    assert signer.sign(RFC8037_SIGNING_INPUT) == _b64u(RFC8037_SIGNATURE)


@pytest.mark.parametrize(
    "private",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ec", "ed25519", "rsa"],
)
def test_thumbprint_agrees_with_jwcrypto(private: object) -> None:
    public = private.public_key()  # type: ignore[attr-defined]
    assert jwk_thumbprint(public) == jwcrypto_jwk.JWK.from_pyca(public).thumbprint()


def test_key_types_get_their_algorithms() -> None:
    assert SigningKey(ec.generate_private_key(ec.SECP256R1())).alg == "ES256"
    assert SigningKey(ed25519.Ed25519PrivateKey.generate()).alg == "EdDSA"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert SigningKey(rsa_key).alg == "PS256"
    assert SigningKey(rsa_key, alg="RS256").alg == "RS256"


def test_es256_signature_is_raw_r_s_not_der() -> None:
    signer = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    assert len(signer.sign(b"data")) == 64


@pytest.mark.parametrize(
    ("private", "alg", "reason"),
    [
        (ec.generate_private_key(ec.SECP384R1()), None, "P-256"),
        (ec.generate_private_key(ec.SECP256R1()), "EdDSA", "Ed25519"),
        (ed25519.Ed25519PrivateKey.generate(), "ES256", "P-256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "ES256", "P-256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), None, "2048"),
        (ed448.Ed448PrivateKey.generate(), None, "unsupported"),
        (ec.generate_private_key(ec.SECP256R1()), "HS256", "not supported"),
    ],
    ids=["p384", "ec-eddsa", "ed-es256", "rsa-es256", "rsa1024", "ed448", "hs256"],
)
def test_unfit_keys_are_refused(private: object, alg: str | None, reason: str) -> None:
    with pytest.raises(KeyInvalid, match=reason):
        SigningKey(private, alg=alg)  # type: ignore[arg-type]


def test_repr_never_shows_key_material() -> None:
    signer = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    assert repr(signer) == f"SigningKey(alg='ES256', kid={signer.kid!r})"


def test_load_private_key_plain_and_encrypted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kid = jwk_thumbprint(key.public_key())
    assert load_private_key(devpki.pem_private_key(key)).kid == kid
    assert load_private_key(devpki.pem_private_key(key, b"pw"), b"pw").kid == kid
    with pytest.raises(KeyInvalid, match="cannot load"):
        load_private_key(devpki.pem_private_key(key, b"pw"), b"wrong")
    with pytest.raises(KeyInvalid, match="cannot load"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_load_private_key_refuses_weak_rsa() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = weak.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyInvalid, match="1024 bits"):
        load_private_key(pem)


def test_load_certificates_keeps_order_and_refuses_garbage() -> None:
    ca_key, ca = devpki.make_ca("t", now=NOW)
    _, leaf = devpki.issue(ca_key, ca, "hcm.quan-1", now=NOW)
    bundle = devpki.pem_certificate(leaf) + devpki.pem_certificate(ca)
    assert load_certificates(bundle) == [leaf, ca]
    with pytest.raises(KeyInvalid, match="no usable PEM certificate"):
        load_certificates(b"not a certificate")


def test_public_jwk_members_and_x5c() -> None:
    ca_key, ca = devpki.make_ca("t", now=NOW)
    key, leaf = devpki.issue(ca_key, ca, "hcm.quan-1", now=NOW)
    jwk = public_jwk(key.public_key(), x5c=[leaf, ca])  # type: ignore[arg-type]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert jwk["kid"] == jwk_thumbprint(key.public_key())
    # x5c is standard base64 (RFC 7517 section 4.7), not base64url, of the DER certificates.
    assert [x509.load_der_x509_certificate(base64.b64decode(c)) for c in jwk["x5c"]] == [leaf, ca]
    assert "d" not in jwk
    imported = jwcrypto_jwk.JWK(**jwk)
    assert imported.thumbprint() == jwk["kid"]


def test_public_jwk_refuses_someone_elses_chain() -> None:
    ca_key, ca = devpki.make_ca("t", now=NOW)
    _, leaf = devpki.issue(ca_key, ca, "hcm.quan-1", now=NOW)
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(KeyInvalid, match="different key"):
        public_jwk(stranger, x5c=[leaf])


def test_rsa_jwk_uses_minimal_octets() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = SigningKey(key).public_jwk()
    assert jwk["e"] == "AQAB"
    assert len(_b64u(jwk["n"])) == 256
    assert jwk["alg"] == "PS256"


def _signer_with_chain(
    name: str, key_type: str = "ec"
) -> tuple[SigningKey, list[x509.Certificate]]:
    ca_key, ca = devpki.make_ca("t", now=NOW)
    key, leaf = devpki.issue(ca_key, ca, name, now=NOW, key_type=key_type)  # type: ignore[arg-type]
    return SigningKey(key), [leaf, ca]


def test_keyring_publishes_current_and_retired_keys() -> None:
    old, old_chain = _signer_with_chain("hcm.ttcds")
    new, new_chain = _signer_with_chain("hcm.ttcds", "ed25519")
    ring = Keyring(old, old_chain).rotate(new, new_chain)
    assert ring.current is new
    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [new.kid, old.kid]
    assert [k["alg"] for k in jwks["keys"]] == ["EdDSA", "ES256"]
    assert all(k["x5c"] for k in jwks["keys"])
    assert ring.find(new.kid) == tuple(new_chain)
    assert ring.find(old.kid) == tuple(old_chain)
    assert ring.find("unknown") is None
    json.dumps(jwks)  # serializable as is
    jwks["keys"][0]["x5c"].clear()  # callers get copies, not the keyring's state
    assert ring.jwks()["keys"][0]["x5c"]


def test_keyring_rotation_keeps_every_retired_key_once() -> None:
    a, a_chain = _signer_with_chain("hcm.ttcds")
    b, b_chain = _signer_with_chain("hcm.ttcds")
    ring = Keyring(a, a_chain).rotate(b, b_chain).rotate(a, a_chain)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [a.kid, b.kid]


def test_keyring_refuses_a_chain_for_another_key() -> None:
    signer, _ = _signer_with_chain("hcm.ttcds")
    _, other_chain = _signer_with_chain("hcm.ttcds")
    with pytest.raises(KeyInvalid, match="does not hold the signing key"):
        Keyring(signer, other_chain)
    with pytest.raises(KeyInvalid, match="certificate chain"):
        Keyring(signer, [])


def test_a_retired_rsa_key_is_published_with_the_alg_it_signed_with() -> None:
    """An RSA key that signed RS256 must not reappear in the JWKS as PS256 once retired: a
    verifier that takes the JWK's alg (RFC 7517 4.4) would refuse every signature it made."""
    from jwcrypto import jws as jwcrypto_jws

    from gateway.crypto.jws import serialize, sign_bytes

    ca_key, ca = devpki.make_ca("t", now=NOW)
    key, leaf = devpki.issue(ca_key, ca, "hcm.ttcds", now=NOW, key_type="rsa")
    old = SigningKey(key, alg="RS256")
    old_receipt = serialize(sign_bytes(b'{"a":1}', old, [leaf, ca], typ="receipt+jws"))
    new, new_chain = _signer_with_chain("hcm.ttcds", "rsa")
    ring = Keyring(old, [leaf, ca]).rotate(new, new_chain).rotate(*_signer_with_chain("hcm.ttcds"))
    published = {k["kid"]: k for k in ring.jwks()["keys"]}
    assert published[old.kid]["alg"] == "RS256"
    assert published[new.kid]["alg"] == "PS256"
    entry = published[old.kid]
    verifier = jwcrypto_jws.JWS()
    verifier.deserialize(old_receipt.decode())
    verifier.verify(jwcrypto_jwk.JWK(**entry), alg=entry["alg"])
    # A chain from gateway.retired_certificates: the algorithm the gateway signs that key with.
    assert Keyring(new, new_chain, retired=[[leaf, ca]]).jwks()["keys"][1]["alg"] == "PS256"
