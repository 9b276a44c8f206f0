"""Offline verification of anything the gateway signs, for security staff.

``gateway verify FILE`` and ``POST /v1/verify`` both end here. The input may be a receipt, an
envelope or a signed request (JWS JSON; its ``typ`` tells which), a checkpoint (a C2SP signed
note, plain text) or an inclusion proof bundle (JSON: ``index``, ``leaf_hash``, ``tree_size``,
``proof``, ``checkpoint``, optionally ``receipt`` and ``record``). The answer says exactly what
holds and what does not, one :class:`Check` per line ("OK ..." / "FAIL ..."), so a report can
quote it and a refusal names its cause.

Why one entry point for every kind: the person holding a file should not have to know what it is,
and every kind ends in the same two questions (is the signature by a key chaining to our trust
anchors, or by the checkpoint key; do the facts inside agree with each other). This module reads
the input, tells the kinds apart and owns what they share (:class:`Report`, :class:`Trust`); the
checks live per kind in :mod:`gateway.verify_jws` (receipts, envelopes, signed requests) and
:mod:`gateway.verify_log` (checkpoints, inclusion proof bundles). A signer on a configured CRL
fails only an artifact it signed at or after its revocation date (the rule and why are in
:mod:`gateway.verify_jws`); one signed before it verifies, with a note saying so.

Pure: no I/O, no clock. The caller reads the files, passes the trust anchors, the checkpoint
verifier keys and the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway import verify_jws, verify_log
from gateway.audit import checkpoint as cp
from gateway.crypto import pki
from gateway.crypto.keys import load_certificates, load_private_key
from gateway.crypto.revocation import Revocations
from gateway.strictjson import JsonError, loads
from gateway.verify_jws import KNOWN_TYPES

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
    #: The payloads ("request", "response") compared with a digest the artifact signs.
    compared: set[str] = field(default_factory=set)

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
    checkpoint origin line. ``revocations``: the configured CRLs; ``anchors`` should carry none
    (:meth:`gateway.crypto.pki.TrustAnchors.without_revocations`), because a revoked
    certificate is weighed against the artifact's signing time here, not refused outright.
    """

    anchors: pki.TrustAnchors
    note_verifiers: tuple[cp.NoteVerifier, ...] = ()
    gateway_id: str | None = None
    gateway_kids: Mapping[str, str] = field(default_factory=dict)
    origin: str | None = None
    revocations: Revocations = field(default_factory=Revocations)

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
            report = Report(verify_jws.kind_of(doc))
            verify_jws.check_artifact(doc, trust, now, payloads or {}, report)
        elif isinstance(doc, dict) and "proof" in doc and "checkpoint" in doc:
            report = Report("inclusion-proof")
            verify_log.check_bundle(doc, trust, now, payloads or {}, report)
        elif isinstance(doc, dict) and isinstance(doc.get("note"), str):
            report = Report("checkpoint")
            verify_log.check_checkpoint_json(doc, trust, now, report)
        else:
            raise Unreadable(
                "a JSON object that is neither a JWS, an inclusion proof bundle nor a checkpoint"
            )
        _require_compared(report, payloads or {})
        return report
    try:
        note = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable("neither JSON nor a UTF-8 signed note") from None
    if "\n\n" not in note or not note.endswith("\n"):
        raise Unreadable("neither JSON nor a signed note (body, blank line, signature lines)")
    report = Report("checkpoint")
    verify_log.check_note(raw, trust, now, report)
    _require_compared(report, payloads or {})
    return report


def _require_compared(report: Report, payloads: Mapping[str, bytes]) -> None:
    """A payload given to bind that the artifact could not be compared with is a failure.

    Why: "does this receipt bind my request?" must never be answered by silence. A checkpoint
    binds no payload, an envelope no response, and an artifact whose signature failed has no
    digest worth comparing; saying OK to the rest would read as "the payload is bound".
    """
    for name in payloads:
        if name not in report.compared:
            report.fail(
                f"the {name} payload was not checked: this {report.kind} has no verified "
                f"{name}_sha256 to compare it with"
            )


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
    revocations: Revocations | None = None,
) -> tuple[bool, list[str]]:
    """Return (all checks hold, human-readable lines): ``gateway verify`` prints these."""
    trust = Trust.from_pems(
        anchor_pems,
        note_verifiers=tuple(note_verifiers),
        gateway_id=gateway_id,
        gateway_kids=dict(gateway_kids or {}),
        origin=origin,
        revocations=revocations or Revocations(),
    )
    try:
        report = verify_artifact(raw, trust, now=now, payloads=payloads)
    except Unreadable as e:
        return False, [f"FAIL  not an artifact the gateway signs: {e}"]
    return report.valid, report.lines()
