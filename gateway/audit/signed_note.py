"""C2SP signed notes: the note syntax, Ed25519 note keys, and opening a note against its keys.

Why a module of its own: :mod:`gateway.audit.checkpoint` is about what our notes *say* (the
tlog-checkpoint text and the witnesses' tlog-cosignatures); this module is the generic envelope
every such note travels in, c2sp.org/signed-note, which knows nothing about trees. Splitting them
along the specs keeps each one checkable against its own document:

* a note is UTF-8 text ending in a newline, a blank line, then one or more lines
  ``— <key name> <base64(4-byte key id || signature)>`` (U+2014 EM DASH, space);
* Ed25519 keys (signature type 0x01) have key id = SHA-256(name || 0x0A || 0x01 || public
  key)[:4] and a verifier key ("vkey") ``<name>+<8 hex key id>+<base64(0x01 || public key)>``;
* a verifier of timestamped cosignatures (type 0x04, c2sp.org/tlog-cosignature) checks
  ``cosignature/v1\\ntime <unix seconds>\\n`` + the note text, and its signature carries an
  8-byte big-endian timestamp before the Ed25519 signature.

Parsing is strict where the spec allows a choice (canonical base64, at most
:data:`MAX_SIGNATURES` lines, :data:`MAX_NOTE_BYTES`). Opening follows signed-note's rules: lines
from unknown keys are ignored, every line from a known key must verify (one bad signature
rejects the whole note), and at least one must; it raises :class:`NoteError`, never returns a
bool.

Pure: no I/O, no clock, no logging. Raw Ed25519 (the note format fixes the algorithm and the
key encoding) goes through gateway.crypto.keys.
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
    "MAX_TIMESTAMP",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "key_id",
    "note_verifiers",
    "open_note",
    "parse_note",
]
# Also used by gateway.audit.checkpoint, which writes and reads the same lines and encodings:
# b64, b64decode, check_text, cosigned_message, signature_line, parse_signature_line.

ED25519: Final = 0x01
"""signed-note signature type of plain Ed25519 note signatures."""
COSIGNATURE_V1: Final = 0x04
"""signed-note signature type of timestamped Ed25519 witness cosignatures (tlog-cosignature)."""

MAX_SIGNATURES: Final = 100
"""Signature lines accepted per note (the spec asks for at least 16; Go's note package uses 100)."""
MAX_NOTE_BYTES: Final = 1 << 20
"""A note larger than this is refused before any parsing (a checkpoint is a few hundred bytes)."""
MAX_TIMESTAMP: Final = 2**63 - 1
"""tlog-cosignature: a cosignature timestamp MUST NOT exceed 2^63 - 1."""

_DASH: Final = "\u2014 "
_HEX8: Final = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A note, checkpoint, key or signature is malformed or does not verify; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- encoding helpers -------------------------------------------------------------------------


def b64decode(text: str, what: str) -> bytes:
    """Standard base64, padded and canonical: exactly what b64encode would produce."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_text(text: str, what: str) -> None:
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
        return signature_line(self._name, self.key_id, self._sign(text))

    def _raw_sign(self, message: bytes) -> bytes:
        return self._sign(message)

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey()!r})"  # Public parts only.


def _vkey(name: str, sig_type: int, public: bytes) -> str:
    return f"{name}+{key_id(name, sig_type, public):08x}+{b64(bytes([sig_type]) + public)}"


def signature_line(name: str, kid: int, signature: bytes) -> bytes:
    """One signature line, ending in a newline: em dash, name, base64(key id || signature)."""
    return f"{_DASH}{name} {b64(kid.to_bytes(4, 'big') + signature)}\n".encode()


def _require_note_text(text: bytes) -> None:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note text is not UTF-8") from None
    if not decoded.endswith("\n"):
        raise NoteError("note text must end with a newline")
    check_text(decoded, "note text")


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
        raw = b64decode(key64, "verifier key")
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
            if timestamp > MAX_TIMESTAMP:
                raise NoteError(f"cosignature timestamp out of range for key {self._label()}")
            message, signature = cosigned_message(text, timestamp), signature[8:]
        try:
            ed25519_verify(self.public_key, signature, message)
        except CryptoError:
            raise NoteError(f"invalid signature for key {self._label()}") from None
        return timestamp

    def _label(self) -> str:
        return f"{self.name}+{self.key_id:08x}"


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """What a tlog-cosignature/v1 signs: its header with the timestamp, then the note text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def note_verifiers(vkeys: Sequence[str]) -> list[NoteVerifier]:
    """Parse several vkeys (e.g. from configuration); raises NoteError naming the bad one."""
    out = []
    for i, vkey in enumerate(vkeys):
        try:
            out.append(NoteVerifier.from_vkey(vkey))
        except NoteError as e:
            raise NoteError(f"verifier key #{i}: {e.reason}") from None
    return out


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


def parse_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, checking only the syntax."""
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not UTF-8") from None
    check_text(decoded, "note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("note must end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text.encode(), [parse_signature_line(line) for line in lines]


def parse_signature_line(line: str) -> NoteSignature:
    """One signature line without its newline; the syntax only, nothing is verified."""
    if not line.startswith(_DASH):
        raise NoteError("signature line does not start with an em dash and a space")
    name, _, sig64 = line[len(_DASH) :].partition(" ")
    if not _valid_name(name) or not sig64:
        raise NoteError("malformed signature line")
    raw = b64decode(sig64, "signature")
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
