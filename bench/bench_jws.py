"""Sign and verify cost of gateway.crypto.jws per algorithm, against jwcrypto in the same process.

Why: verification runs on every signed request and signing twice per exchange, so a change
that slows either shows here. Loops are bounded; the whole run takes a few seconds.
"Verify warm" reuses the chain cache (the steady state), "verify cold" validates the chain each
time (first request of a signer). The jwcrypto column verifies the same token with a key from
the leaf certificate and no chain validation at all: a floor, printed as a ratio. "sign"
includes the RFC 8785 canonicalization of a receipt-sized object.

    .venv/bin/python bench/bench_jws.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from gateway.crypto import devpki
from gateway.crypto.jws import serialize, sign, verify
from gateway.crypto.keys import SigningKey
from gateway.crypto.pki import TrustAnchors

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
TYP = "receipt+jws"
# A receipt-sized object: the artifact the gateway signs on every exchange.
RECEIPT = {
    "exchange_id": "0193a5c2-7f1e-7cc0-9a3b-1f2e3d4c5b6a",
    "service": "citizen-lookup.v1",
    "sender": "hcm.quan-1",
    "provider": "central.dan-cu",
    "request_sha256": "a" * 64,
    "response_sha256": "b" * 64,
    "status": "delivered",
    "audit": {"index": 123456, "leaf_hash": "c" * 64},
}


def per_call_us(fn: Callable[[], object], loops: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(3):  # best of three bounded runs
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


def main() -> None:
    root_key, root = devpki.make_ca("bench", now=NOW)
    inter_key, inter = devpki.make_ca("bench issuing", now=NOW, issuer=(root_key, root))
    print(f"{'alg':6} {'sign µs':>9} {'verify warm µs':>15} {'verify cold µs':>15} "
          f"{'jwcrypto verify µs':>19} {'warm/jwcrypto':>14}")  # fmt: skip
    for key_type, alg in (
        ("ec", "ES256"),
        ("ed25519", "EdDSA"),
        ("rsa", "PS256"),
        ("rsa", "RS256"),
    ):
        key, leaf = devpki.issue(inter_key, inter, "hcm.ttcds", now=NOW, key_type=key_type)  # type: ignore[arg-type]
        signer = SigningKey(key, alg=alg)  # type: ignore[arg-type]
        chain = (leaf, inter)
        token = sign(RECEIPT, signer, chain, typ=TYP)
        anchors = TrustAnchors([root])
        sign_loops = 200 if key_type == "rsa" else 2000

        sign_us = per_call_us(lambda: sign(RECEIPT, signer, chain, typ=TYP), sign_loops)  # noqa: B023
        warm_us = per_call_us(lambda: verify(token, anchors, now=NOW, expected_typ=TYP), 2000)  # noqa: B023
        cold_us = per_call_us(
            lambda: verify(token, TrustAnchors([root]), now=NOW, expected_typ=TYP),  # noqa: B023
            500,
        )
        text = serialize(token).decode()
        public = jwcrypto_jwk.JWK.from_pyca(leaf.public_key())

        def jwcrypto_verify() -> None:
            other = jwcrypto_jws.JWS()
            other.deserialize(text)  # noqa: B023
            other.verify(public, alg=alg)  # noqa: B023

        base_us = per_call_us(jwcrypto_verify, 1000)
        print(f"{alg:6} {sign_us:9.1f} {warm_us:15.1f} {cold_us:15.1f} {base_us:19.1f} "
              f"{warm_us / base_us:14.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
