"""Witnessing a peer gateway's audit log (c2sp.org/tlog-witness): the decisions, without I/O.

Why a witness: a gateway's signed checkpoints prove what its log holds only to someone who
can tell that everyone was shown the same log. A peer gateway (city, central, unit-run) that
cosigns a checkpoint only after checking it extends the last one it cosigned makes a split
view or a rewritten history visible: the misbehaving log would need the witness to cosign
two checkpoints that are not consistent, and the witness never does. So the city, central
and unit gateways witness one another.

This module is the protocol's ``add-checkpoint`` call as pure functions, checks in the order
the spec states them, each answer carrying the status the spec assigns:

====================================================================  =======================
request                                                               answer
====================================================================  =======================
body not ``old <size>``, <= 63 base64 hash lines, blank line, a note  400 ``malformed``
checkpoint origin not configured (``[[witness.peers]]``)              404 ``unknown-origin``
no valid signature by the origin's key, or a bad one by that key      403 ``bad-signature``
``old`` greater than the checkpoint size                              400 ``old-size-beyond``
``old`` is not the size this witness last cosigned (0 if none)        409 ``stale-old-size``,
                                                                      body: that size
consistency proof from the cosigned tree does not verify              422 ``inconsistent``
``old`` equals the checkpoint size but the roots differ               409 ``fork``
otherwise: record the checkpoint as the latest cosigned, cosign it    200, cosignature line
====================================================================  =======================

Choices where the spec leaves room, each on the strict side:

* A checkpoint of the empty tree must carry the empty root (RFC 9162: MTH({}) =
  SHA-256("")); anything else is 422, as no proof can make it consistent.
* With ``old`` equal to the checkpoint size the proof must be empty (the consistency proof
  between equal trees is), else 422.
* Sizes above 2^63 - 1 are refused (400): the witness keeps sizes as SQLite integers, and no
  log is within sight of that size.
* Refusals that show the log signed something contradicting what this witness cosigned
  (``fork``; ``inconsistent`` when the proof reproduces the signed root from another tree at
  the cosigned size, not a mere bad proof, which anyone can send; any refusal of a
  checkpoint with the cosigned size and another root, whatever its old line) are marked
  ``evidence``: the spec allows keeping such requests, and the HTTP layer does, since a
  log-signed fork is the proof of misbehaviour a witness exists to catch.

Usage (the HTTP layer does exactly this, with the store's compare-and-swap in between)::

    sub = check_submission(peers, body)                  # 400 / 404 / 403
    last = await store.latest(sub.origin)
    new = decide(sub, last)                              # 400 / 409 / 422
    new = replace(new, cosigned_at=max(now, last.cosigned_at))   # times never go back
    if await store.compare_and_swap(sub.origin, last, new):   # else: read and decide again
        line = cosign(sub.checkpoint_text, witness_signer, timestamp=new.cosigned_at)

Pure: no I/O, no clock (the caller stamps cosignatures), no logging. Refusals are raised as
:class:`WitnessRefusal`, never returned as a flag.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway.audit import merkle
from gateway.audit.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteError,
    NoteVerifier,
    open_note,
    parse_checkpoint,
    parse_note,
)
from gateway.audit.signed_note import ED25519

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "MAX_WITNESSED_SIZE",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "PeerLogs",
    "Refusal",
    "Submission",
    "WitnessRefusal",
    "Witnessed",
    "check_submission",
    "decide",
    "encode_add_checkpoint",
    "parse_add_checkpoint",
    "parse_size_body",
]

MAX_PROOF_LINES: Final = 63
"""tlog-witness: a client MUST NOT send more (a proof in a 2^64 tree has at most 63 hashes)."""
MAX_REQUEST_BYTES: Final = MAX_NOTE_BYTES + 64 * 64
"""The largest add-checkpoint body: a note of the largest size checkpoint.py opens, plus
the old size line and 63 proof lines."""
MAX_WITNESSED_SIZE: Final = 2**63 - 1
SIZE_CONTENT_TYPE: Final = "text/x.tlog.size"
"""Content-Type of a 409 answer to a stale ``old``, exactly as the spec spells it."""

_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")


class Refusal(Enum):
    """Why a checkpoint is not cosigned; ``status`` is the HTTP status tlog-witness assigns."""

    MALFORMED = ("malformed", 400)
    UNKNOWN_ORIGIN = ("unknown-origin", 404)
    BAD_SIGNATURE = ("bad-signature", 403)
    OLD_SIZE_BEYOND = ("old-size-beyond", 400)
    STALE_OLD_SIZE = ("stale-old-size", 409)
    INCONSISTENT = ("inconsistent", 422)
    FORK = ("fork", 409)

    def __init__(self, slug: str, status: int) -> None:
        self.slug = slug
        self.status = status


class WitnessRefusal(Exception):
    """The witness will not cosign: ``cause`` (with its status), a ``reason`` a person can act on.

    ``latest_size`` is set for :attr:`Refusal.STALE_OLD_SIZE` (the body of the 409 answer).
    ``evidence`` marks a log-signed checkpoint that contradicts what this witness cosigned.
    """

    def __init__(
        self,
        cause: Refusal,
        reason: str,
        *,
        latest_size: int | None = None,
        evidence: bool = False,
    ) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason
        self.latest_size = latest_size
        self.evidence = evidence

    @property
    def status(self) -> int:
        return self.cause.status


# -- the request body ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """One add-checkpoint request: the size the client believes was last cosigned, the
    consistency proof from that size, and the signed checkpoint note, verbatim."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """The request body: ``old <size>``, one base64 hash per line, a blank line, the note.

    Raises ValueError for what a witness would refuse anyway (negative size, a hash that is not
    32 bytes, more than 63 of them), so a client learns it before sending.
    """
    if not 0 <= old_size <= 2**64 - 1:
        raise ValueError(f"old size {old_size} is outside 0..2^64-1")
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    lines = [f"old {old_size}\n".encode()]
    for i, h in enumerate(proof):
        if len(h) != merkle.HASH_SIZE:
            raise ValueError(f"proof[{i}] is {len(h)} bytes, expected {merkle.HASH_SIZE}")
        lines.append(base64.b64encode(h) + b"\n")
    return b"".join(lines) + b"\n" + note


def _malformed(reason: str) -> WitnessRefusal:
    return WitnessRefusal(Refusal.MALFORMED, reason)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Split an add-checkpoint body; raise :class:`WitnessRefusal` (400) if it is malformed.

    Only the framing is checked here (old size line, proof lines as canonical base64 of
    32-byte hashes, the blank line); the note is checked by :func:`check_submission`.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise _malformed(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise _malformed("no blank line between the consistency proof and the checkpoint")
    first, *proof_lines = head.split(b"\n")
    if not first.startswith(b"old "):
        raise _malformed("the body must start with the line 'old <size>'")
    size_text = first[4:].decode("ascii", "replace")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > 2**64 - 1:
        raise _malformed("the old size is not a decimal number without leading zeros")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _malformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = tuple(_proof_hash(i, line) for i, line in enumerate(proof_lines))
    return AddCheckpoint(int(size_text), proof, note)


def _proof_hash(i: int, line: bytes) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"consistency proof line {i + 1} is not base64") from None
    if len(raw) != merkle.HASH_SIZE or base64.b64encode(raw) != line:
        raise _malformed(f"consistency proof line {i + 1} is not one base64 SHA-256 hash")
    return raw


def parse_size_body(body: bytes) -> int:
    """The size in a ``text/x.tlog.size`` body (decimal, one newline); ValueError otherwise."""
    text = body.decode("ascii", "replace")
    if not text.endswith("\n") or not _DECIMAL.fullmatch(text[:-1]):
        raise ValueError(f"not a text/x.tlog.size body: {body[:40]!r}")
    return int(text[:-1])


# -- the peer logs and the signature check -----------------------------------------------------


class PeerLogs:
    """The logs this witness cosigns for: origin -> the note keys trusted for that origin.

    Several keys for one origin are allowed (a log rotating its key); a checkpoint needs a
    valid signature from one of them, and none of them may have signed it badly.
    """

    __slots__ = ("_logs",)

    def __init__(self, logs: Mapping[str, Sequence[NoteVerifier]]) -> None:
        for origin, verifiers in logs.items():
            Checkpoint(origin, 0, merkle.EMPTY_ROOT)  # An origin that can head a checkpoint.
            if not verifiers:
                raise NoteError(f"origin {origin!r} has no verifier key")
            ids = [(v.name, v.key_id) for v in verifiers]
            if any(v.sig_type != ED25519 for v in verifiers) or len(set(ids)) != len(ids):
                raise NoteError(f"origin {origin!r}: keys must be distinct note keys (0x01)")
        self._logs = {o: tuple(v) for o, v in logs.items()}

    @classmethod
    def from_config(cls, peers: Iterable[tuple[str, str]]) -> PeerLogs:
        """From ``(origin, verifier key)`` pairs, as ``[[witness.peers]]`` lists them."""
        logs: dict[str, list[NoteVerifier]] = {}
        for i, (origin, vkey) in enumerate(peers):
            try:
                logs.setdefault(origin, []).append(NoteVerifier.from_vkey(vkey))
            except NoteError as e:
                raise NoteError(f"peer #{i} ({origin}): {e.reason}") from None
        return cls(logs)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(self._logs)

    def verifiers(self, origin: str) -> tuple[NoteVerifier, ...] | None:
        return self._logs.get(origin)


@dataclass(frozen=True, slots=True)
class Submission:
    """An add-checkpoint request whose framing parsed and whose note the peer's key signed."""

    request: AddCheckpoint
    checkpoint: Checkpoint
    checkpoint_text: bytes  # The signed note text: what a cosignature signs.

    @property
    def origin(self) -> str:
        return self.checkpoint.origin


def check_submission(peers: PeerLogs, body: bytes) -> Submission:
    """Parse the body and verify the note against the origin's keys (400, 404, 403)."""
    request = parse_add_checkpoint(body)
    try:
        text, _ = parse_note(request.note)
        checkpoint = parse_checkpoint(text)
    except NoteError as e:
        raise _malformed(f"the checkpoint is not a valid signed note: {e.reason}") from None
    if checkpoint.size > MAX_WITNESSED_SIZE:
        raise _malformed(f"tree sizes above {MAX_WITNESSED_SIZE} are not witnessed")
    verifiers = peers.verifiers(checkpoint.origin)
    if verifiers is None:
        raise WitnessRefusal(
            Refusal.UNKNOWN_ORIGIN,
            f"this witness does not cosign checkpoints of origin {checkpoint.origin[:200]!r}",
        )
    try:
        open_note(request.note, verifiers)
    except NoteError as e:
        raise WitnessRefusal(
            Refusal.BAD_SIGNATURE,
            f"the checkpoint is not validly signed by a key of its origin: {e.reason}",
        ) from None
    return Submission(request, checkpoint, text)


# -- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Witnessed:
    """The latest checkpoint this witness cosigned for one origin: its size and root, and the
    time its cosignature carries (Unix seconds; 0 before one is stamped).

    ``cosigned_at`` never goes back for an origin (the caller stamps ``max(now, last)``): a
    cosignature says "as of this time, the largest tree I saw is this one", so a larger tree
    stamped earlier than a smaller one (a clock stepped back, an instance whose clock is
    behind) would have the witness contradict itself.
    """

    size: int
    root: bytes
    cosigned_at: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_WITNESSED_SIZE or len(self.root) != merkle.HASH_SIZE:
            raise ValueError("a witnessed checkpoint needs 0 <= size < 2^63 and a 32-byte root")
        if not 0 <= self.cosigned_at <= MAX_WITNESSED_SIZE:
            raise ValueError("a cosignature time is within 0..2^63-1")


def decide(submission: Submission, last: Witnessed | None) -> Witnessed:
    """Whether to cosign, given the latest checkpoint cosigned for the origin (None: never).

    Returns the new latest cosigned checkpoint (store it, then cosign), or raises
    :class:`WitnessRefusal` with 400, 409 or 422. ``submission`` must come from
    :func:`check_submission` (signature already verified).
    """
    req, cp = submission.request, submission.checkpoint
    # Another root at the cosigned size proves a split view by itself, whatever the old line.
    forked = last is not None and cp.size == last.size and cp.root != last.root
    if req.old_size > cp.size:
        raise WitnessRefusal(
            Refusal.OLD_SIZE_BEYOND,
            f"old size {req.old_size} exceeds the checkpoint's {cp.size}",
            evidence=forked,
        )
    held_size, held_root = (last.size, last.root) if last else (0, merkle.EMPTY_ROOT)
    if req.old_size != held_size:
        raise WitnessRefusal(
            Refusal.STALE_OLD_SIZE,
            f"the latest checkpoint cosigned for this origin has size {held_size}",
            latest_size=held_size,
            evidence=forked,
        )
    if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
        raise WitnessRefusal(
            Refusal.INCONSISTENT, "a checkpoint of the empty tree must carry the empty root"
        )
    if req.old_size == cp.size:
        if cp.root != held_root:  # First: a fork stays a fork whatever lines came with it.
            raise WitnessRefusal(
                Refusal.FORK,
                f"a checkpoint of size {cp.size} with another root was cosigned: a fork",
                evidence=True,
            )
        if req.proof:
            raise WitnessRefusal(
                Refusal.INCONSISTENT, "the consistency proof between equal sizes must be empty"
            )
        return Witnessed(cp.size, cp.root)
    try:
        merkle.verify_consistency(req.old_size, cp.size, req.proof, held_root, cp.root)
    except merkle.ProofError as e:
        raise WitnessRefusal(
            Refusal.INCONSISTENT,
            f"not consistent with the checkpoint of size {held_size} cosigned before: {e}",
            evidence=last is not None and _proves_a_fork(req, cp, held_root),
        ) from None
    return Witnessed(cp.size, cp.root)


def _proves_a_fork(req: AddCheckpoint, cp: Checkpoint, held_root: bytes) -> bool:
    """Whether a refused proof shows the log's tree at ``old`` was not the one cosigned.

    Why not every 422: the route is public, and anyone can send a log's published checkpoint
    with a garbage proof; that proves nothing against the log (and the honest proof then gets
    the same checkpoint cosigned). A proof that reproduces the signed root (RFC 9162
    2.1.4.2, steps 2-6) while yielding another root at ``old`` does, by collision resistance.
    When ``old`` is a power of two the proof starts from the held root itself, so the root it
    leads to at ``old`` is the held one: never evidence.
    """
    try:
        old_root, new_root = merkle.consistency_roots(req.old_size, cp.size, req.proof, held_root)
    except merkle.ProofError:
        return False
    return new_root == cp.root and old_root != held_root
