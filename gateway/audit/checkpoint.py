"""Signed checkpoints of the audit log: C2SP signed notes, tlog-checkpoint bodies, cosignatures.

Why this exact format: the contract promises that transparency-log tools (Go's
``golang.org/x/mod/sumdb/note``, transparency-dev witnesses, sigsum) can check our checkpoints,
and that a peer gateway can witness them. So everything here follows the C2SP specs to the byte:

* c2sp.org/signed-note: a note is UTF-8 text ending in a newline, a blank line, then one or more
  lines ``— <key name> <base64(4-byte key id || signature)>`` (U+2014 EM DASH, space). Ed25519
  keys (signature type 0x01) have key id = SHA-256(name || 0x0A || 0x01 || public key)[:4] and
  a verifier key ("vkey") ``<name>+<8 hex key id>+<base64(0x01 || public key)>``.
* c2sp.org/tlog-checkpoint: the note text is ``<origin>\\n<size>\\n<base64 root>\\n`` followed
  by optional non-empty extension lines (we write none, and keep any we read).
* c2sp.org/tlog-cosignature (Ed25519, type 0x04): a witness signs
  ``cosignature/v1\\ntime <unix seconds>\\n`` + the checkpoint text; its signature line carries
  key id (derived with 0x04) || 8-byte big-endian timestamp || Ed25519 signature.

Parsing is strict where the specs allow a choice (canonical base64, decimal sizes without
leading zeros or signs, at most :data:`MAX_SIGNATURES` lines, :data:`MAX_NOTE_BYTES`), because
two spellings of one checkpoint are two things to argue about in an audit.

Verification follows signed-note's rules: lines from unknown keys are ignored, every line from
a known key must verify (one bad signature rejects the whole note), and at least one must.
It returns the verified content or raises :class:`NoteError`, never a bool.

Pure: no I/O, no clock (cosignature timestamps are parameters), no logging. Raw Ed25519 (the
note format fixes the algorithm and the key encoding) goes through gateway.crypto.keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.crypto.keys import CryptoError, SigningKey, ed25519_public_raw, ed25519_verify

__all__ = [
    "COSIGNATURE_V1",
    "ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "VerifiedNote",
    "cosign",
    "key_id",
    "note_verifiers",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "sign_checkpoint",
    "verify_cosignature",
    "verify_note",
]

ED25519: Final = 0x01
"""signed-note signature type of plain Ed25519 note signatures."""
COSIGNATURE_V1: Final = 0x04
"""signed-note signature type of timestamped Ed25519 witness cosignatures (tlog-cosignature)."""

MAX_SIGNATURES: Final = 100
"""Signature lines accepted per note (the spec asks for at least 16; Go's note package uses 100)."""
MAX_NOTE_BYTES: Final = 1 << 20
"""A note larger than this is refused before any parsing (a checkpoint is a few hundred bytes)."""

_DASH: Final = "\u2014 "
_ROOT_SIZE: Final = 32  # SHA-256: this module checkpoints RFC 9162 SHA-256 trees only.
_MAX_SIZE: Final = 2**64 - 1  # Tree sizes are uint64 in RFC 9162 and every tlog tool.
_MAX_TIMESTAMP: Final = 2**63 - 1  # tlog-cosignature: MUST NOT exceed 2^63 - 1.
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]*")
_HEX8: Final = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A note, checkpoint, key or signature is malformed or does not verify; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- encoding helpers -------------------------------------------------------------------------


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64, padded and canonical: exactly what b64encode would produce."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_text(text: str, what: str) -> None:
    """signed-note: no ASCII control characters other than newline."""
    for ch in text:
        if ch < " " and ch != "\n":
            raise NoteError(f"{what} contains control character U+{ord(ch):04X}")


def _valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode space, no plus (they delimit vkeys)."""
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || type || public key)[:4], big-endian (signed-note, recommended)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


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
        _check_text(self.origin, "checkpoint origin")
        if not 0 <= self.size <= _MAX_SIZE:
            raise NoteError(f"checkpoint size {self.size} is outside 0..2^64-1")
        if len(self.root) != _ROOT_SIZE:
            raise NoteError(f"checkpoint root is {len(self.root)} bytes, expected {_ROOT_SIZE}")
        for line in self.extensions:
            if not line or "\n" in line:
                raise NoteError("checkpoint extension lines must be non-empty single lines")
            _check_text(line, "checkpoint extension line")

    def body(self) -> bytes:
        """The note text that is signed: origin, size, base64 root, extensions, each + newline."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
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
        raise NoteError("checkpoint size is not a decimal number without leading zeros")
    return Checkpoint(origin, int(size), _b64decode(root, "checkpoint root"), tuple(extensions))


# -- keys ----------------------------------------------------------------------------------------


class NoteSigner:
    """An Ed25519 key with the note key name it signs under (the log's key, or a witness's).

    ``key`` is an Ed25519 private key, or a gateway.crypto.keys.SigningKey holding one (which
    is how the composition root loads PEM keys). The same key signs notes (type 0x01) and, for a
    witness, cosignatures (type 0x04); tlog-cosignature asks that one key serve one cosigner.
    """

    __slots__ = ("_name", "_public", "_sign")

    def __init__(self, name: str, key: SigningKey | Any) -> None:
        if not _valid_name(name):
            raise NoteError(f"invalid key name {name!r}: empty, or has a space or a plus")
        try:
            signing = key if isinstance(key, SigningKey) else SigningKey(key)
            public = ed25519_public_raw(signing.public_key)
        except (CryptoError, TypeError):
            raise NoteError("a note signer needs an Ed25519 key") from None
        self._name = name
        self._public = public
        self._sign = signing.sign

    @property
    def name(self) -> str:
        return self._name

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public

    @property
    def key_id(self) -> int:
        """Key id of note signatures (type 0x01)."""
        return key_id(self._name, ED25519, self._public)

    def vkey(self) -> str:
        """The verifier key to give to verifiers: ``name+keyid+base64(0x01 || key)``."""
        return _vkey(self._name, ED25519, self._public)

    def cosigner_vkey(self) -> str:
        """The verifier key of this signer's cosignatures (type 0x04)."""
        return _vkey(self._name, COSIGNATURE_V1, self._public)

    def sign(self, text: bytes) -> bytes:
        """The signature line (ending in a newline) of this key over note text ``text``."""
        _require_note_text(text)
        return _line(self._name, self.key_id, self._sign(text))

    def _raw_sign(self, message: bytes) -> bytes:
        return self._sign(message)

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey()!r})"  # Public parts only.


def _vkey(name: str, sig_type: int, public: bytes) -> str:
    return f"{name}+{key_id(name, sig_type, public):08x}+{_b64(bytes([sig_type]) + public)}"


def _line(name: str, kid: int, signature: bytes) -> bytes:
    return f"{_DASH}{name} {_b64(kid.to_bytes(4, 'big') + signature)}\n".encode()


def _require_note_text(text: bytes) -> None:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note text is not UTF-8") from None
    if not decoded.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_text(decoded, "note text")


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted public key: name, key id, signature type (0x01 note, 0x04 cosignature), key.

    Build from a vkey with :meth:`from_vkey`; the key id is always recomputed and must match.
    """

    name: str
    key_id: int
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise NoteError(f"invalid key name {self.name!r}")
        if self.sig_type not in (ED25519, COSIGNATURE_V1):
            raise NoteError(f"unsupported signature type 0x{self.sig_type:02x}")
        if len(self.public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")
        if self.key_id != key_id(self.name, self.sig_type, self.public_key):
            raise NoteError("key id does not match the key name and public key")

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<8 hex key id>+<base64(type || key)>`` (type 0x01 or 0x04)."""
        name, _, rest = vkey.partition("+")
        hex_id, _, key64 = rest.partition("+")
        if not _valid_name(name) or not _HEX8.fullmatch(hex_id) or not key64:
            raise NoteError("malformed verifier key")
        raw = _b64decode(key64, "verifier key")
        if len(raw) != 33:
            raise NoteError("verifier key must be a type byte and a 32-byte Ed25519 key")
        return cls(name, int(hex_id, 16), raw[0], raw[1:])

    @classmethod
    def for_signer(cls, signer: NoteSigner, *, cosignature: bool = False) -> NoteVerifier:
        """The verifier of ``signer``'s note signatures (or, with cosignature, cosignatures)."""
        t = COSIGNATURE_V1 if cosignature else ED25519
        return cls(signer.name, key_id(signer.name, t, signer.public_key), t, signer.public_key)

    def vkey(self) -> str:
        return _vkey(self.name, self.sig_type, self.public_key)

    def verify(self, text: bytes, signature: bytes) -> int | None:
        """Check ``signature`` (without the key id) over note text; raise NoteError if bad.

        Returns the cosignature timestamp for type 0x04, None for a plain note signature.
        """
        timestamp: int | None = None
        message = text
        if self.sig_type == COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                raise NoteError(f"invalid cosignature length for key {self._label()}")
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp > _MAX_TIMESTAMP:
                raise NoteError(f"cosignature timestamp out of range for key {self._label()}")
            message, signature = _cosigned_message(text, timestamp), signature[8:]
        try:
            ed25519_verify(self.public_key, signature, message)
        except CryptoError:
            raise NoteError(f"invalid signature for key {self._label()}") from None
        return timestamp

    def _label(self) -> str:
        return f"{self.name}+{self.key_id:08x}"


def _cosigned_message(text: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + text


# -- notes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key id, and the signature bytes after the key id."""

    name: str
    key_id: int
    signature: bytes
    timestamp: int | None = None  # Set once verified as a cosignature.


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note whose signatures were checked: its text, the verified and the ignored lines."""

    text: bytes
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


@dataclass(frozen=True, slots=True)
class VerifiedNote:
    """A verified checkpoint note: the signed text, the checkpoint, and who signed it."""

    body: bytes
    checkpoint: Checkpoint
    signers: tuple[NoteSignature, ...]


def parse_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, checking only the syntax."""
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not UTF-8") from None
    _check_text(decoded, "note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("note must end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text.encode(), [_parse_line(line) for line in lines]


def _parse_line(line: str) -> NoteSignature:
    if not line.startswith(_DASH):
        raise NoteError("signature line does not start with an em dash and a space")
    name, _, b64 = line[len(_DASH) :].partition(" ")
    if not _valid_name(name) or not b64:
        raise NoteError("malformed signature line")
    raw = _b64decode(b64, "signature")
    if len(raw) < 5:
        raise NoteError("signature is too short")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Verify a signed note's signatures against the trusted ``verifiers``. Raises NoteError.

    Lines whose (name, key id) no verifier has are ignored (kept in ``unverified``); every line
    of a known key must verify; at least one must. Two verifiers with the same name and key id
    are a configuration error (the note could not say which one signed).
    """
    text, lines = parse_note(note)
    known: dict[tuple[str, int], NoteVerifier] = {}
    for v in verifiers:
        if known.setdefault((v.name, v.key_id), v) != v:
            raise NoteError(f"ambiguous key {v.name}+{v.key_id:08x}")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, int, bytes]] = set()
    for sig in lines:
        if (sig.name, sig.key_id, sig.signature) in seen:
            continue  # The same line twice says nothing new (Go's note.Open drops it too).
        seen.add((sig.name, sig.key_id, sig.signature))
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.append(sig)
            continue
        timestamp = verifier.verify(text, sig.signature)
        verified.append(NoteSignature(sig.name, sig.key_id, sig.signature, timestamp))
    if not verified:
        raise NoteError("note has no signature from a known key")
    return OpenedNote(text, tuple(verified), tuple(unverified))


def verify_note(
    note: bytes, verifiers: Iterable[NoteVerifier], *, origin: str | None = None
) -> VerifiedNote:
    """Verify a signed checkpoint; with ``origin``, also require that origin line.

    Raises NoteError for a malformed note, no known signature, a bad signature, or a text
    that is not a checkpoint.
    """
    opened = open_note(note, verifiers)
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
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise NoteError("cosignature timestamp must be within 0..2^63-1")
    signature = signer._raw_sign(_cosigned_message(checkpoint_body, timestamp))
    kid = key_id(signer.name, COSIGNATURE_V1, signer.public_key)
    return _line(signer.name, kid, timestamp.to_bytes(8, "big") + signature)


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
    _check_text(decoded, "signature line")
    sig = _parse_line(decoded[:-1])
    if (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
        raise NoteError("the line is not a cosignature by this key")
    timestamp = verifier.verify(checkpoint_body, sig.signature)
    if timestamp is None:  # Unreachable for type 0x04; keeps the type honest.
        raise NoteError("cosignature carries no timestamp")
    return timestamp


def note_verifiers(vkeys: Sequence[str]) -> list[NoteVerifier]:
    """Parse several vkeys (e.g. from configuration); raises NoteError naming the bad one."""
    out = []
    for i, vkey in enumerate(vkeys):
        try:
            out.append(NoteVerifier.from_vkey(vkey))
        except NoteError as e:
            raise NoteError(f"verifier key #{i}: {e.reason}") from None
    return out
