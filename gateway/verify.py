"""Offline verification of anything the gateway signs, for security staff.

``gateway verify FILE`` and ``POST /v1/verify`` both end here. The input may be a receipt, an
envelope or a signed request (JWS JSON; its ``typ`` tells which), a checkpoint (a C2SP signed
note, plain text) or an inclusion proof bundle (JSON: ``index``, ``leaf_hash``, ``tree_size``,
``proof``, ``checkpoint``, optionally ``receipt`` and ``record``). The answer says exactly what
holds and what does not, one :class:`Check` per line ("OK ..." / "FAIL ..."), so a report can
quote it and a refusal names its cause.

Why one module for every kind: the person holding a file should not have to know what it is, and
every kind ends in the same two questions (is the signature by a key chaining to our trust
anchors, or by the checkpoint key; do the facts inside agree with each other).

Pure: no I/O, no clock. The caller reads the files, passes the trust anchors, the checkpoint
verifier keys and the time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from gateway.audit import checkpoint as cp
from gateway.audit import merkle
from gateway.crypto import jws, pki
from gateway.crypto.canonical import canonicalize
from gateway.crypto.jws import CryptoError
from gateway.crypto.keys import load_certificates, load_private_key
from gateway.strictjson import JsonError, loads

__all__ = [
    "KNOWN_TYPES",
    "Check",
    "Report",
    "Trust",
    "Unreadable",
    "checkpoint_verifiers",
    "describe_verification",
    "verify_artifact",
]

KNOWN_TYPES: Final = ("receipt+jws", "envelope+jws", "request+jws")
_KINDS: Final = {"receipt+jws": "receipt", "envelope+jws": "envelope", "request+jws": "request"}
_GATEWAY_SIGNED: Final = ("receipt", "envelope")
_MAX_PROOF: Final = 64  # A proof in a tree of 2**63 leaves has at most 63 hashes.


class Unreadable(ValueError):
    """The input is no artifact at all: not a JWS, not a proof bundle, not a signed note.

    Only this is a client error (HTTP 400); every artifact that parses gets a report, however
    broken, because "what does not hold" is the answer security staff asked for.
    """


@dataclass(frozen=True, slots=True)
class Check:
    """One line of a report: ``ok`` True/False for a check, None for plain information."""

    ok: bool | None
    what: str

    def line(self) -> str:
        prefix = {True: "OK    ", False: "FAIL  ", None: "      "}[self.ok]
        return prefix + self.what


@dataclass(slots=True)
class Report:
    """What was checked about one artifact. Valid when something held and nothing failed."""

    kind: str
    checks: list[Check] = field(default_factory=list)

    def ok(self, what: str) -> None:
        self.checks.append(Check(True, what))

    def fail(self, what: str) -> None:
        self.checks.append(Check(False, what))

    def info(self, what: str) -> None:
        self.checks.append(Check(None, what))

    @property
    def valid(self) -> bool:
        return any(c.ok for c in self.checks) and all(c.ok is not False for c in self.checks)

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]

    def as_json(self) -> dict[str, Any]:
        """The ``POST /v1/verify`` answer: checks with their outcome, information apart."""
        return {
            "valid": self.valid,
            "kind": self.kind,
            "checks": [{"ok": c.ok, "what": c.what} for c in self.checks if c.ok is not None],
            "details": [c.what for c in self.checks if c.ok is None],
        }


@dataclass(frozen=True, slots=True)
class Trust:
    """What an artifact is checked against.

    ``anchors``: the deployment's trust anchors (JWS chains end there). ``note_verifiers``: the
    checkpoint key(s) (:class:`gateway.audit.checkpoint.NoteVerifier`). ``gateway_id``: receipts
    and envelopes must be signed by this participant. ``gateway_kids``: thumbprint -> "current"
    or "retired", to say which of the gateway's published keys signed. ``origin``: the log's
    checkpoint origin line.
    """

    anchors: pki.TrustAnchors
    note_verifiers: tuple[cp.NoteVerifier, ...] = ()
    gateway_id: str | None = None
    gateway_kids: Mapping[str, str] = field(default_factory=dict)
    origin: str | None = None

    @classmethod
    def from_pems(cls, anchor_pems: Sequence[bytes], **kwargs: Any) -> Trust:
        anchors = pki.TrustAnchors([c for pem in anchor_pems for c in load_certificates(pem)])
        return cls(anchors, **kwargs)


def checkpoint_verifiers(
    origin: str | None, key_pem: bytes | None, vkeys: Sequence[str] = ()
) -> tuple[cp.NoteVerifier, ...]:
    """Note verifiers from the config's checkpoint key (named by the origin) and extra vkeys.

    The log signs its checkpoints under its origin as the note key name (the C2SP convention),
    so the verifier key follows from the private key and the origin. Raises ``NoteError`` or
    ``CryptoError`` for an unusable key.
    """
    out = [cp.NoteVerifier.from_vkey(v) for v in vkeys]
    if origin is not None and key_pem is not None:
        signer = cp.NoteSigner(origin, load_private_key(key_pem))
        out.append(cp.NoteVerifier.for_signer(signer))
    return tuple(dict.fromkeys(out))


def verify_artifact(
    raw: bytes, trust: Trust, *, now: datetime, payloads: Mapping[str, bytes] | None = None
) -> Report:
    """Check ``raw`` whatever it is; raise :class:`Unreadable` only if it is no artifact.

    ``payloads`` maps "request"/"response" to payload files a receipt (or envelope) must bind.
    """
    text = raw.lstrip()
    if text.startswith(b"{"):
        try:
            doc = loads(raw)
        except JsonError as e:
            raise Unreadable(f"not JSON: {e}") from None
        if isinstance(doc, dict) and {"protected", "payload", "signature"} <= doc.keys():
            return _verify_jws(doc, trust, now, payloads or {})
        if isinstance(doc, dict) and "proof" in doc and "checkpoint" in doc:
            return _verify_bundle(doc, trust, now)
        if isinstance(doc, dict) and isinstance(doc.get("note"), str):
            return _verify_checkpoint_json(doc, trust)
        raise Unreadable(
            "a JSON object that is neither a JWS, an inclusion proof bundle nor a checkpoint"
        )
    try:
        note = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable("neither JSON nor a UTF-8 signed note") from None
    if "\n\n" not in note or not note.endswith("\n"):
        raise Unreadable("neither JSON nor a signed note (body, blank line, signature lines)")
    report = Report("checkpoint")
    _check_note(raw, trust, report)
    return report


def describe_verification(
    raw: bytes,
    anchor_pems: Sequence[bytes],
    *,
    now: datetime,
    payloads: Mapping[str, bytes] | None = None,
    note_verifiers: Sequence[cp.NoteVerifier] = (),
    gateway_id: str | None = None,
    gateway_kids: Mapping[str, str] | None = None,
    origin: str | None = None,
) -> tuple[bool, list[str]]:
    """Return (all checks hold, human-readable lines): ``gateway verify`` prints these."""
    trust = Trust.from_pems(
        anchor_pems,
        note_verifiers=tuple(note_verifiers),
        gateway_id=gateway_id,
        gateway_kids=dict(gateway_kids or {}),
        origin=origin,
    )
    try:
        report = verify_artifact(raw, trust, now=now, payloads=payloads)
    except Unreadable as e:
        return False, [f"FAIL  not an artifact the gateway signs: {e}"]
    return report.valid, report.lines()


# ---------------------------------------------------------------- JWS (receipt, envelope, request)
def _peek_typ(doc: Mapping[str, Any]) -> str | None:
    """The claimed ``typ`` before verification, only to name the kind in the report."""
    protected = doc.get("protected")
    if not isinstance(protected, str):
        return None
    try:
        header = loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    except (binascii.Error, ValueError):
        return None
    typ = header.get("typ") if isinstance(header, dict) else None
    return typ if isinstance(typ, str) else None


def _verify_jws(
    doc: Mapping[str, Any], trust: Trust, now: datetime, payloads: Mapping[str, bytes]
) -> Report:
    report = Report(_KINDS.get(_peek_typ(doc) or "", "jws"))
    body = _check_jws(doc, trust, now, report, "")
    if body is None:
        return report
    if report.kind == "receipt":
        _describe_receipt(body, report, "")
        _check_payloads(body, payloads, report)
    elif report.kind == "envelope":
        _check_envelope(body, trust, now, payloads, report)
    elif report.kind == "request":
        report.info(
            f"request {body.get('id')} from {body.get('sender')} to {body.get('service')}, "
            f"created {body.get('created')}"
        )
    return report


def _check_jws(
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


def _claimed_time(doc: Mapping[str, Any]) -> datetime | None:
    """The signing time an artifact claims (unverified here: verification comes after)."""
    payload = doc.get("payload")
    if not isinstance(payload, str):
        return None
    try:
        body = loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        value = body.get(next(k for k in _TIME_CLAIMS if k in body))
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (binascii.Error, ValueError, AttributeError, StopIteration, TypeError):
        return None
    return when if when.tzinfo is not None else None


def _describe_receipt(body: Mapping[str, Any], report: Report, prefix: str) -> None:
    report.info(
        f"{prefix}exchange {body.get('exchange_id')} {body.get('sender')} -> "
        f"{body.get('service')} ({body.get('provider')}), status {body.get('status')}"
    )
    audit = body.get("audit")
    audit = audit if isinstance(audit, dict) else {}
    report.info(f"{prefix}audit index {audit.get('index')} leaf {audit.get('leaf_hash')}")


def _digest(value: bytes) -> str:
    return hashlib.sha256(canonicalize(loads(value))).hexdigest()


def _check_payloads(body: Mapping[str, Any], payloads: Mapping[str, bytes], report: Report) -> None:
    for name, value in payloads.items():
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
    _check_payloads(body, {k: v for k, v in payloads.items() if k == "request"}, report)
    inner = body.get("sender_signature")
    if inner is None:
        report.info("no sender signature (the sender authenticated by mTLS or token)")
        return
    if not isinstance(inner, dict):
        report.fail("sender_signature is not a JWS object")
        return
    req = _check_jws(inner, trust, now, report, "sender's ", ("request+jws",))
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


# ---------------------------------------------------------------- checkpoints and proof bundles
def _check_note(
    note: bytes, trust: Trust, report: Report, prefix: str = ""
) -> cp.Checkpoint | None:
    """Verify a checkpoint note into ``report``; return the Checkpoint (even if unsigned)."""
    try:
        parsed = cp.parse_checkpoint(cp.parse_note(note)[0])
    except cp.NoteError as e:
        report.fail(f"{prefix}checkpoint note: {e.reason}")
        return None
    if not trust.note_verifiers:
        report.fail(
            f"{prefix}no checkpoint verifier key to check the signature with "
            "(give --vkey, or a config with audit.checkpoint_key)"
        )
    else:
        try:
            verified = cp.verify_note(note, trust.note_verifiers)
        except cp.NoteError as e:
            report.fail(f"{prefix}checkpoint signature: {e.reason}")
        else:
            names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in verified.signers)
            report.ok(f"{prefix}checkpoint signature by {names} (Ed25519 note signature)")
    report.info(
        f"{prefix}origin {parsed.origin}, tree size {parsed.size}, root {parsed.root.hex()}"
    )
    if trust.origin is not None:
        if parsed.origin == trust.origin:
            report.ok(f"{prefix}origin is this gateway's log {trust.origin}")
        else:
            report.fail(f"{prefix}origin {parsed.origin!r} is not this log ({trust.origin!r})")
    return parsed


def _verify_checkpoint_json(doc: Mapping[str, Any], trust: Trust) -> Report:
    """``GET /v1/audit/checkpoint`` as JSON: the note, plus origin/size/root that must agree."""
    report = Report("checkpoint")
    parsed = _check_note(str(doc["note"]).encode("utf-8"), trust, report)
    if parsed is None:
        return report
    plain = {
        "origin": parsed.origin,
        "size": parsed.size,
        "root": base64.b64encode(parsed.root).decode("ascii"),
    }
    for name, value in plain.items():
        if name in doc and doc[name] != value:
            report.fail(f"the JSON {name} {doc[name]!r} is not the signed note's {value!r}")
    return report


def _hex32(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * merkle.HASH_SIZE:
        raise ValueError(f"{what} must be {2 * merkle.HASH_SIZE} hex digits")
    return bytes.fromhex(value)


def _bundle_fields(doc: Mapping[str, Any]) -> tuple[int, bytes, int, list[bytes], bytes]:
    index, size = doc.get("index"), doc.get("tree_size")
    proof, note = doc["proof"], doc["checkpoint"]
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError("index must be a non-negative integer")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError("tree_size must be a positive integer")
    if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
        raise ValueError(f"proof must be a list of at most {_MAX_PROOF} hashes")
    if not isinstance(note, str):
        raise ValueError("checkpoint must be the signed note text")
    leaf = _hex32(doc.get("leaf_hash"), "leaf_hash")
    hashes = [_hex32(p, f"proof[{i}]") for i, p in enumerate(proof)]
    return index, leaf, size, hashes, note.encode("utf-8")


BUNDLE_FORMAT: Final = "dtc-gateway/inclusion-proof/v1"


def _verify_bundle(doc: Mapping[str, Any], trust: Trust, now: datetime) -> Report:
    report = Report("inclusion-proof")
    if doc.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
        report.fail(f"bundle format {doc.get('format')!r} is not {BUNDLE_FORMAT!r}")
        return report
    try:
        index, leaf, size, proof, note = _bundle_fields(doc)
    except ValueError as e:
        report.fail(f"bundle: {e}")
        return report
    checkpoint = _check_note(note, trust, report, "")
    if checkpoint is not None:
        if "root" in doc and doc["root"] != checkpoint.root.hex():
            report.fail("bundle root is not the checkpoint's root")
        if checkpoint.size != size:
            report.fail(f"bundle tree_size {size} is not the checkpoint's size {checkpoint.size}")
        else:
            try:
                merkle.verify_inclusion(leaf, index, size, proof, checkpoint.root)
            except merkle.ProofError as e:
                report.fail(f"inclusion proof of record {index}: {e}")
            else:
                report.ok(
                    f"record {index} (leaf {leaf.hex()}) is in the log of size {size} "
                    "(RFC 9162 inclusion proof against the checkpoint root)"
                )
    if "record" in doc:
        _check_bundled_record(doc["record"], doc.get("exchange_id"), leaf, report)
    receipt = doc.get("receipt")
    if receipt is not None:
        _check_bundled_receipt(receipt, doc.get("exchange_id"), index, leaf, trust, now, report)
    return report


def _check_bundled_record(record: object, xid: object, leaf: bytes, report: Report) -> None:
    try:
        computed = merkle.leaf_hash(canonicalize(record))
    except (TypeError, ValueError) as e:
        report.fail(f"record cannot be canonicalized: {e}")
        return
    if computed == leaf:
        report.ok("the record's canonical JSON hashes to leaf_hash")
    else:
        report.fail("the record's canonical JSON does not hash to leaf_hash")
    if isinstance(record, dict):
        report.info(
            f"record: {record.get('event')} {record.get('sender')} -> {record.get('service')} "
            f"at {record.get('at')}"
        )
        if xid is not None and record.get("exchange_id") != xid:
            report.fail(f"the record is about exchange {record.get('exchange_id')}, not {xid}")


def _check_bundled_receipt(
    receipt: object,
    xid: object,
    index: int,
    leaf: bytes,
    trust: Trust,
    now: datetime,
    report: Report,
) -> None:
    if not isinstance(receipt, dict):
        report.fail("receipt is not a JWS object")
        return
    body = _check_jws(receipt, trust, now, report, "receipt: ", ("receipt+jws",))
    if body is None:
        return
    _describe_receipt(body, report, "receipt: ")
    audit = body.get("audit")
    audit = audit if isinstance(audit, dict) else {}
    if xid is not None and body.get("exchange_id") != xid:
        report.fail(f"receipt is for exchange {body.get('exchange_id')}, not {xid}")
    if audit.get("index") == index and audit.get("leaf_hash") == leaf.hex():
        report.ok(f"receipt names audit index {index} and this leaf hash")
    else:
        report.fail(
            f"receipt names audit index {audit.get('index')} leaf {audit.get('leaf_hash')}, "
            f"not index {index} leaf {leaf.hex()}"
        )
