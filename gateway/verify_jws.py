"""Checks of the JWS artifacts: receipts, envelopes and signed requests.

Apart from :mod:`gateway.verify` (which reads the input, tells the kinds apart and owns the
report) because these checks are their own family: a signature whose X.509 chain must end at the
trust anchors, then the facts the signed body states (payload digests, the sender's request
inside an envelope, which of the gateway's keys signed). :mod:`gateway.verify_log` reuses
:func:`check_jws` for the receipt an inclusion proof bundle carries.

Revocation (the deployment's CRLs, ``Trust.revocations``): a signer certificate, or an
intermediate of its path, on a configured CRL fails the artifact when its revocation date is at
or before the time the artifact states it was signed (``completed_at`` for a receipt,
``received_at`` for an envelope, ``created`` for a signed request: the first of those present,
as for expired certificates), or when the artifact states no such time. A revocation dated after
that time leaves the artifact valid with the note "certificate revoked on DATE, after this was
signed". Why: a revocation (a key compromise, a unit that left) says nothing about what the key
signed before it. The stated time is the signer's own word, covered by its signature: a thief
of the key can backdate, which is why a receipt is also bound to the audit log (its inclusion
proof and signed checkpoint are evidence of when the gateway recorded it).

Pure: no I/O, no clock (``now`` is a parameter). Each function writes what holds and what does
not into the :class:`gateway.verify.Report` it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from gateway.crypto import jws, pki
from gateway.crypto.canonical import MAX_DEPTH, canonicalize
from gateway.crypto.jws import CryptoError
from gateway.strictjson import JsonError, loads

if TYPE_CHECKING:
    from gateway.verify import Report, Trust

KNOWN_TYPES: Final = ("receipt+jws", "envelope+jws", "request+jws")
_KINDS: Final = {"receipt+jws": "receipt", "envelope+jws": "envelope", "request+jws": "request"}
_GATEWAY_SIGNED: Final = ("receipt", "envelope")


def kind_of(doc: Mapping[str, Any]) -> str:
    """The report's kind, from the ``typ`` the JWS claims: receipt, envelope, request or jws."""
    return _KINDS.get(_peek_typ(doc) or "", "jws")


def _peek(doc: Mapping[str, Any], member: str) -> Any:
    """A JWS member's decoded JSON, UNVERIFIED (to name the kind or the signing time); or None."""
    text = doc.get(member)
    if not isinstance(text, str):
        return None
    try:
        # As deep as any gateway canonicalizes: an envelope holds its payload one level down.
        return loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), max_depth=MAX_DEPTH)
    except (binascii.Error, ValueError):
        return None


def _peek_typ(doc: Mapping[str, Any]) -> str | None:
    """The claimed ``typ`` before verification, only to name the kind in the report."""
    header = _peek(doc, "protected")
    typ = header.get("typ") if isinstance(header, dict) else None
    return typ if isinstance(typ, str) else None


def check_artifact(
    doc: Mapping[str, Any],
    trust: Trust,
    now: datetime,
    payloads: Mapping[str, bytes],
    report: Report,
) -> None:
    """A receipt, envelope or signed request, into ``report`` (its kind from :func:`kind_of`)."""
    body = check_jws(doc, trust, now, report, "")
    if body is None:
        return
    if report.kind == "receipt":
        describe_receipt(body, report, "")
        check_payloads(body, payloads, report)
    elif report.kind == "envelope":
        _check_envelope(body, trust, now, payloads, report)
    elif report.kind == "request":
        report.info(
            f"request {body.get('id')} from {body.get('sender')} to {body.get('service')}, "
            f"created {body.get('created')}"
        )
        try:
            carried = {"request_sha256": _digest_of(body.get("payload"))}
        except (TypeError, ValueError) as e:
            report.fail(f"signed request payload cannot be canonicalized: {e}")
        else:
            check_payloads(carried, {k: v for k, v in payloads.items() if k == "request"}, report)


def check_jws(
    doc: Mapping[str, Any],
    trust: Trust,
    now: datetime,
    report: Report,
    prefix: str,
    expected: tuple[str, ...] = KNOWN_TYPES,
) -> dict[str, Any] | None:
    """Verify one JWS into ``report``; return its payload object, or None if it failed."""
    try:
        verified, validity = _verify_signature(doc, trust, now, expected)
        body = jws.decode_payload_json(verified)
    except CryptoError as e:
        report.fail(f"{prefix}signature: {e.reason}")
        return None
    try:
        signer = pki.participant_id(verified.leaf) or "(no participant id)"
    except CryptoError as e:
        report.fail(f"{prefix}signer certificate: {e.reason}")
        return None
    typ = verified.header.get("typ")
    kind = _KINDS.get(str(typ), "jws")
    report.ok(f"{prefix}signature {verified.alg} by {signer} (kid {verified.kid})")
    report.ok(f"{prefix}certificate chain ends at a trust anchor and {validity}")
    report.ok(f"{prefix}artifact type {typ}")
    _check_revocation(doc, verified, trust, report, prefix)
    if not isinstance(body, dict):
        report.fail(f"{prefix}signed payload is not a JSON object")
        return None
    if kind in _GATEWAY_SIGNED and trust.gateway_id is not None:
        if signer == trust.gateway_id:
            report.ok(f"{prefix}signed by the gateway {trust.gateway_id}")
        else:
            report.fail(f"{prefix}signed by {signer}, not by the gateway {trust.gateway_id}")
    if kind == "request":
        if body.get("sender") == signer:
            report.ok(f"{prefix}signer certificate is bound to the sender {signer}")
        else:
            report.fail(f"{prefix}signed by {signer} but names sender {body.get('sender')!r}")
    status = trust.gateway_kids.get(verified.kid)
    if status == "current":
        report.info(f"{prefix}key {verified.kid} is the gateway's current signing key")
    elif status == "retired":
        report.info(f"{prefix}key {verified.kid} is a retired gateway key, still published")
    elif kind in _GATEWAY_SIGNED and trust.gateway_kids:
        report.info(f"{prefix}key {verified.kid} is not among this gateway's configured keys")
    return body


def _verify_signature(
    doc: Mapping[str, Any], trust: Trust, now: datetime, expected: tuple[str, ...]
) -> tuple[jws.Verified, str]:
    """Verify at ``now``; failing that, at the time the artifact says it was signed.

    Why the second try: receipts outlive certificates. A receipt signed while its certificate
    was valid must keep verifying after the certificate expires (the contract's "old
    signatures keep verifying"), and the signed time is inside the signed payload, so once the
    signature verifies that time is the signer's own statement. The report says which held.
    Raises the error of the check at ``now`` when neither holds.
    """
    try:
        return jws.verify(doc, trust.anchors, now=now, expected_typ=expected), "is valid now"
    except CryptoError as at_now:
        signed_at = _claimed_time(doc)
        if signed_at is None or signed_at >= now:
            raise
        try:
            verified = jws.verify(doc, trust.anchors, now=signed_at, expected_typ=expected)
        except CryptoError:
            raise at_now from None
        return verified, (
            f"was valid when signed ({signed_at.isoformat()}, as the artifact states); "
            f"not now: {at_now.reason}"
        )


_TIME_CLAIMS: Final = ("completed_at", "received_at", "created")


def _check_revocation(
    doc: Mapping[str, Any], verified: jws.Verified, trust: Trust, report: Report, prefix: str
) -> None:
    """Weigh each revoked certificate of the signer's path against the stated signing time."""
    found = trust.revocations.find(verified.path)
    if not found:
        return
    signed_at = _claimed_time(doc)
    for r in found:
        when = r.revoked_at.isoformat()
        if signed_at is None:
            report.fail(
                f"{prefix}{r.describe()}; the artifact states no signing time, so it cannot be "
                "shown to predate the revocation"
            )
        elif r.revoked_at <= signed_at:
            report.fail(
                f"{prefix}{r.describe()}: at or before this was signed "
                f"({signed_at.isoformat()}, as the artifact states)"
            )
        else:
            report.info(
                f"{prefix}certificate revoked on {when}, after this was signed "
                f"({signed_at.isoformat()}, as the artifact states): {r.describe()}"
            )


def _claimed_time(doc: Mapping[str, Any]) -> datetime | None:
    """The signing time an artifact claims (unverified here: verification comes after)."""
    body = _peek(doc, "payload")
    try:
        value = body.get(next(k for k in _TIME_CLAIMS if k in body))
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError, StopIteration, TypeError):
        return None
    return when if when.tzinfo is not None else None


def describe_receipt(body: Mapping[str, Any], report: Report, prefix: str) -> None:
    report.info(
        f"{prefix}exchange {body.get('exchange_id')} {body.get('sender')} -> "
        f"{body.get('service')} ({body.get('provider')}), status {body.get('status')}"
    )
    audit = body.get("audit")
    audit = audit if isinstance(audit, dict) else {}
    report.info(f"{prefix}audit index {audit.get('index')} leaf {audit.get('leaf_hash')}")


def _digest_of(value: Any) -> str:
    return hashlib.sha256(canonicalize(value)).hexdigest()


def _digest(value: bytes) -> str:
    """Digest of a payload file; as deep as any gateway canonicalizes, not the default 64 (a
    deployment may admit deeper payloads, and their receipts must still verify offline)."""
    return _digest_of(loads(value, max_depth=MAX_DEPTH))


def check_payloads(body: Mapping[str, Any], payloads: Mapping[str, bytes], report: Report) -> None:
    """Compare each payload file with the ``<name>_sha256`` the signed ``body`` states."""
    for name, value in payloads.items():
        report.compared.add(name)
        try:
            digest = _digest(value)
        except (JsonError, ValueError, TypeError) as e:
            report.fail(f"{name} payload is not JSON: {e}")
            continue
        if digest == body.get(f"{name}_sha256"):
            report.ok(f"{name} payload matches {name}_sha256")
        else:
            report.fail(f"{name} payload does not match {name}_sha256")


def _check_envelope(
    body: Mapping[str, Any],
    trust: Trust,
    now: datetime,
    payloads: Mapping[str, bytes],
    report: Report,
) -> None:
    report.info(
        f"exchange {body.get('exchange_id')} {body.get('sender')} -> {body.get('service')} "
        f"({body.get('provider')}), purpose {body.get('purpose')!r}, "
        f"legal basis {body.get('legal_basis')!r}"
    )
    try:
        carried = hashlib.sha256(canonicalize(body.get("payload"))).hexdigest()
    except (TypeError, ValueError) as e:
        report.fail(f"envelope payload cannot be canonicalized: {e}")
    else:
        if carried == body.get("request_sha256"):
            report.ok("envelope payload matches its request_sha256")
        else:
            report.fail("envelope payload does not match its request_sha256")
    check_payloads(body, {k: v for k, v in payloads.items() if k == "request"}, report)
    inner = body.get("sender_signature")
    if inner is None:
        report.info("no sender signature (the sender authenticated by mTLS or token)")
        return
    if not isinstance(inner, dict):
        report.fail("sender_signature is not a JWS object")
        return
    req = check_jws(inner, trust, now, report, "sender's ", ("request+jws",))
    if req is None:
        return
    if req.get("sender") != body.get("sender") or req.get("service") != body.get("service"):
        report.fail("sender's signed request names another sender or service than the envelope")
        return
    try:
        same = hashlib.sha256(canonicalize(req.get("payload"))).hexdigest()
    except (TypeError, ValueError):
        same = ""
    if same == body.get("request_sha256"):
        report.ok("sender's signed request carries the same payload as the envelope")
    else:
        report.fail("sender's signed request carries another payload than the envelope")
