"""Offline verification of what the gateway signs, for security staff (``gateway verify``).

Says exactly what holds and what does not, line by line, so a report can quote it. Pure: the
caller reads the files and passes the trust anchors and the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gateway.crypto import jws, pki
from gateway.crypto.canonical import canonicalize
from gateway.crypto.jws import CryptoError
from gateway.crypto.keys import load_certificates
from gateway.strictjson import JsonError, loads

KNOWN_TYPES = ("receipt+jws", "envelope+jws", "request+jws")


def describe_verification(
    raw: bytes,
    anchor_pems: Sequence[bytes],
    *,
    now: datetime,
    payloads: Mapping[str, bytes] | None = None,
) -> tuple[bool, list[str]]:
    """Return (all checks hold, human-readable lines)."""
    lines: list[str] = []
    try:
        doc = loads(raw)
    except JsonError as e:
        return False, [f"FAIL  not JSON: {e}"]
    if not isinstance(doc, dict):
        return False, ["FAIL  not a JWS JSON object"]
    anchors = pki.TrustAnchors([c for pem in anchor_pems for c in load_certificates(pem)])
    try:
        verified = jws.verify(doc, anchors, now=now, expected_typ=KNOWN_TYPES)
    except CryptoError as e:
        return False, [f"FAIL  signature: {e}"]
    signer = pki.participant_id(verified.leaf) or "(no participant id)"
    typ = verified.header.get("typ")
    lines.append(f"OK    signature {verified.alg} by {signer} (kid {verified.kid})")
    lines.append("OK    certificate chain ends at a trust anchor and is valid now")
    lines.append(f"OK    artifact type {typ}")
    body: Any = jws.decode_payload_json(verified)
    ok = True
    if typ == "receipt+jws" and isinstance(body, dict):
        lines.append(
            f"      exchange {body.get('exchange_id')} {body.get('sender')} -> "
            f"{body.get('service')} ({body.get('provider')}), status {body.get('status')}"
        )
        audit = body.get("audit") or {}
        lines.append(f"      audit index {audit.get('index')} leaf {audit.get('leaf_hash')}")
        for name, value in (payloads or {}).items():
            try:
                digest = hashlib.sha256(canonicalize(loads(value))).hexdigest()
            except (JsonError, ValueError, TypeError) as e:
                lines.append(f"FAIL  {name} payload is not JSON: {e}")
                ok = False
                continue
            if digest == body.get(f"{name}_sha256"):
                lines.append(f"OK    {name} payload matches {name}_sha256")
            else:
                lines.append(f"FAIL  {name} payload does not match {name}_sha256")
                ok = False
    return ok, lines
