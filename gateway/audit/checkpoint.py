"""Signed checkpoints of the audit log: tlog-checkpoint bodies in signed notes, cosignatures.

Why this exact format: the contract promises that transparency-log tools (Go's
``golang.org/x/mod/sumdb/note``, transparency-dev witnesses, sigsum) can check our checkpoints,
and that a peer gateway can witness them. So everything here follows the C2SP specs to the byte:

* c2sp.org/signed-note: the envelope (note text, blank line, signature lines), its Ed25519 keys
  and verifier keys, and opening a note against trusted keys are in
  :mod:`gateway.audit.signed_note`; the names callers use are re-exported here.
* c2sp.org/tlog-checkpoint: the note text is ``<origin>\\n<size>\\n<base64 root>\\n`` followed
  by optional non-empty extension lines (we write none, and keep any we read).
* c2sp.org/tlog-cosignature (Ed25519, type 0x04): a witness signs
  ``cosignature/v1\\ntime <unix seconds>\\n`` + the checkpoint text; its signature line carries
  key id (derived with 0x04) || 8-byte big-endian timestamp || Ed25519 signature.

Parsing is strict where the specs allow a choice (canonical base64, decimal sizes without
leading zeros or signs, at most :data:`~gateway.audit.signed_note.MAX_SIGNATURES` lines,
:data:`MAX_NOTE_BYTES`), because two spellings of one checkpoint are two things to argue about
in an audit.

Verification follows signed-note's rules: lines from unknown keys are ignored, every line from
a known key must verify (one bad signature rejects the whole note), and at least one must.
It returns the verified content or raises :class:`NoteError`, never a bool.

Pure: no I/O, no clock (cosignature timestamps are parameters), no logging. Raw Ed25519 (the
note format fixes the algorithm and the key encoding) goes through gateway.crypto.keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.audit.signed_note import (
    COSIGNATURE_V1,
    MAX_NOTE_BYTES,
    MAX_TIMESTAMP,
    NoteError,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    b64,
    b64decode,
    check_text,
    cosigned_message,
    key_id,
    open_note,
    parse_note,
    parse_signature_line,
    signature_line,
)

__all__ = [
    "MAX_NOTE_BYTES",
    "Checkpoint",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "VerifiedNote",
    "cosign",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "sign_checkpoint",
    "verify_cosignature",
    "verify_note",
]

_ROOT_SIZE: Final = 32  # SHA-256: this module checkpoints RFC 9162 SHA-256 trees only.
_MAX_SIZE: Final = 2**64 - 1  # Tree sizes are uint64 in RFC 9162 and every tlog tool.
# At most 20 digits (2^64 - 1 has 20): int() of a longer line could raise a bare ValueError
# (over 4300 digits) instead of a NoteError; the range check in Checkpoint does the rest.
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")


# -- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog-checkpoint note text: the log's origin, tree size and root hash.

    ``extensions`` are any lines after the root, kept verbatim (they are signed too) but given
    no meaning. The constructor validates, so a Checkpoint always has a well-formed body.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError("checkpoint origin must be one non-empty line")
        check_text(self.origin, "checkpoint origin")
        if not 0 <= self.size <= _MAX_SIZE:
            raise NoteError(f"checkpoint size {self.size} is outside 0..2^64-1")
        if len(self.root) != _ROOT_SIZE:
            raise NoteError(f"checkpoint root is {len(self.root)} bytes, expected {_ROOT_SIZE}")
        for line in self.extensions:
            if not line or "\n" in line:
                raise NoteError("checkpoint extension lines must be non-empty single lines")
            check_text(line, "checkpoint extension line")

    def body(self) -> bytes:
        """The note text that is signed: origin, size, base64 root, extensions, each + newline."""
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines).encode()


def parse_checkpoint(body: bytes) -> Checkpoint:
    """Parse a checkpoint note text (the part before the blank line). Raises NoteError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("checkpoint is not UTF-8") from None
    if not text.endswith("\n"):
        raise NoteError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root lines")
    origin, size, root, *extensions = lines
    if not _DECIMAL.fullmatch(size):
        raise NoteError(
            "checkpoint size is not a decimal number (at most 20 digits, no leading zeros)"
        )
    return Checkpoint(origin, int(size), b64decode(root, "checkpoint root"), tuple(extensions))


# -- signed checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedNote:
    """A verified checkpoint note: the signed text, the checkpoint, and who signed it."""

    body: bytes
    checkpoint: Checkpoint
    signers: tuple[NoteSignature, ...]


def verify_note(
    note: bytes, verifiers: Iterable[NoteVerifier], *, origin: str | None = None
) -> VerifiedNote:
    """Verify a signed checkpoint; with ``origin``, also require that origin line.

    ``verifiers`` may hold witnesses' cosigner keys (type 0x04) beside the log's note keys;
    their lines are checked too, but only a note signature (type 0x01) is the log's statement:
    a note whose only known signatures are cosignatures is refused.

    Raises NoteError for a malformed note, no known signature, no signature by a log key, a
    bad signature, or a text that is not a checkpoint.
    """
    opened = open_note(note, verifiers)
    if all(s.timestamp is not None for s in opened.verified):  # Cosignatures carry a time.
        raise NoteError("checkpoint has no signature by a log key, only witness cosignatures")
    checkpoint = parse_checkpoint(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return VerifiedNote(opened.text, checkpoint, opened.verified)


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    """The whole signed note: checkpoint body, blank line, the signer's signature line."""
    body = checkpoint.body()
    return body + b"\n" + signer.sign(body)


def cosign(checkpoint_body: bytes, signer: NoteSigner, *, timestamp: int) -> bytes:
    """A witness's tlog-cosignature/v1 signature line over a checkpoint body.

    The caller appends it to the checkpoint's note. ``timestamp`` is Unix seconds (a parameter:
    this module reads no clock). The body must parse as a checkpoint.
    """
    parse_checkpoint(checkpoint_body)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError("cosignature timestamp must be within 0..2^63-1")
    signature = signer._raw_sign(cosigned_message(checkpoint_body, timestamp))
    kid = key_id(signer.name, COSIGNATURE_V1, signer.public_key)
    return signature_line(signer.name, kid, timestamp.to_bytes(8, "big") + signature)


def verify_cosignature(checkpoint_body: bytes, line: bytes, verifier: NoteVerifier) -> int:
    """Check one cosignature line over a checkpoint body; return its timestamp or raise.

    ``verifier`` must be a cosignature (type 0x04) key, and ``line`` (with its final newline)
    must be a signature line of that key.
    """
    if verifier.sig_type != COSIGNATURE_V1:
        raise NoteError("not a cosignature verifier key (type 0x04)")
    parse_checkpoint(checkpoint_body)
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("signature line is not UTF-8") from None
    if not decoded.endswith("\n") or "\n" in decoded[:-1]:
        raise NoteError("expected one signature line ending in a newline")
    check_text(decoded, "signature line")
    sig = parse_signature_line(decoded[:-1])
    if (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
        raise NoteError("the line is not a cosignature by this key")
    timestamp = verifier.verify(checkpoint_body, sig.signature)
    if timestamp is None:  # Unreachable for type 0x04; keeps the type honest.
        raise NoteError("cosignature carries no timestamp")
    return timestamp
