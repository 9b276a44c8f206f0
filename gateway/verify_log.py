"""Checks of the audit log's artifacts: checkpoints (signed notes) and inclusion proof bundles.

Apart from :mod:`gateway.verify` (which reads the input, tells the kinds apart and owns the
report) because these are checked against the log, not against X.509 chains: the checkpoint key's
note signature, the log's origin, an RFC 9162 inclusion proof against the checkpoint root, and
the record a bundle carries. The receipt in a bundle goes to :func:`gateway.verify_jws.check_jws`.

Pure: no I/O, no clock (``now`` is a parameter). Each function writes what holds and what does
not into the :class:`gateway.verify.Report` it is given.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from gateway.audit import checkpoint as cp
from gateway.audit import merkle
from gateway.audit.signed_note import NoteSignature
from gateway.crypto.canonical import canonicalize
from gateway.verify_jws import check_jws, check_payloads, describe_receipt

if TYPE_CHECKING:
    from gateway.verify import Report, Trust

_MAX_PROOF: Final = 64  # A proof in a tree of 2**63 leaves has at most 63 hashes.
_COSIGNATURE_CLOCK_SLACK: Final = 300
"""Seconds a cosignature's time may lie ahead of the verifier's clock (clocks drift), and no
more: a cosignature says "as of this time the largest tree I saw is this one", and a witness
cannot vouch as of a time that has not come yet (a wrong clock, or a time made up)."""


def check_note(
    note: bytes, trust: Trust, now: datetime, report: Report, prefix: str = ""
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
            _report_signers(verified.signers, now, report, prefix)
    report.info(
        f"{prefix}origin {parsed.origin}, tree size {parsed.size}, root {parsed.root.hex()}"
    )
    if trust.origin is not None:
        if parsed.origin == trust.origin:
            report.ok(f"{prefix}origin is this gateway's log {trust.origin}")
        else:
            report.fail(f"{prefix}origin {parsed.origin!r} is not this log ({trust.origin!r})")
    return parsed


def _report_signers(
    signers: Sequence[NoteSignature], now: datetime, report: Report, prefix: str
) -> None:
    """The log's note signatures, then each witness's cosignature with its time: a cosignature
    is a witness's statement about the checkpoint, not the log's, and reads as one."""
    names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in signers if s.timestamp is None)
    report.ok(f"{prefix}checkpoint signature by {names} (Ed25519 note signature)")
    for s in signers:
        if s.timestamp is None:
            continue
        who = f"{prefix}cosignature by {s.name}+{s.key_id:08x} at {_utc(s.timestamp)}"
        if s.timestamp > now.timestamp() + _COSIGNATURE_CLOCK_SLACK:
            report.fail(
                f"{who} is dated after now ({now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}) by more "
                f"than {_COSIGNATURE_CLOCK_SLACK} s: a witness cannot vouch for a time to come "
                "(its clock is wrong, or the time is made up)"
            )
        else:
            report.ok(f"{who} (tlog-cosignature/v1)")


def _utc(timestamp: int) -> str:
    """RFC 3339 UTC, or the plain Unix seconds when beyond what a datetime can hold."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"Unix time {timestamp}"


def check_checkpoint_json(
    doc: Mapping[str, Any], trust: Trust, now: datetime, report: Report
) -> None:
    """``GET /v1/audit/checkpoint`` as JSON: the note, plus origin/size/root that must agree."""
    parsed = check_note(str(doc["note"]).encode("utf-8"), trust, now, report)
    if parsed is None:
        return
    plain = {
        "origin": parsed.origin,
        "size": parsed.size,
        "root": base64.b64encode(parsed.root).decode("ascii"),
    }
    for name, value in plain.items():
        if name in doc and doc[name] != value:
            report.fail(f"the JSON {name} {doc[name]!r} is not the signed note's {value!r}")


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


def check_bundle(
    doc: Mapping[str, Any],
    trust: Trust,
    now: datetime,
    payloads: Mapping[str, bytes],
    report: Report,
) -> None:
    """An inclusion proof bundle into ``report``: the checkpoint, the proof against its root, and
    the record and receipt the bundle may carry (the receipt bound to ``payloads``)."""
    if doc.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
        report.fail(f"bundle format {doc.get('format')!r} is not {BUNDLE_FORMAT!r}")
        return
    try:
        index, leaf, size, proof, note = _bundle_fields(doc)
    except ValueError as e:
        report.fail(f"bundle: {e}")
        return
    checkpoint = check_note(note, trust, now, report, "")
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
        _check_bundled_receipt(
            receipt, doc.get("exchange_id"), (index, leaf), trust, now, payloads, report
        )


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
    at: tuple[int, bytes],
    trust: Trust,
    now: datetime,
    payloads: Mapping[str, bytes],
    report: Report,
) -> None:
    index, leaf = at
    if not isinstance(receipt, dict):
        report.fail("receipt is not a JWS object")
        return
    body = check_jws(receipt, trust, now, report, "receipt: ", ("receipt+jws",))
    if body is None:
        return
    describe_receipt(body, report, "receipt: ")
    check_payloads(body, payloads, report)
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
