"""C2SP signed notes, checkpoints and cosignatures (gateway.audit.checkpoint).

Provenance of the known answers (copied verbatim, not produced by this code):

* PeterNeumann / EnochRoot keys, text and signatures: golang.org/x/mod ``sumdb/note/note_test.go``
  (TestNewVerifier, TestNewSigner, TestSign, TestOpen), commit
  02c991387e35f9e4c0a9b7ce137717055f8d716d. Ed25519 is deterministic, so signing Go's text
  with Go's private key must give Go's signature line byte for byte.
* Two real checkpoints of the Go checksum database, signed by sum.golang.org, and its public
  vkey ``sum.golang.org+033de0ae+...`` (the key compiled into the go command,
  cmd/go/internal/modfetch/key.go). Tree 31700353: transparency-dev/trillian-tessera
  ``internal/parse`` tests (BenchmarkCheckpointUnsafe; the note there lacks its final newline,
  restored here). Tree 65209736: a Go 1.27.1 lookup quoted by a public test suite.
* Cosignature (type 0x04) and note (0x01) vkeys: transparency-dev/formats
  ``note/note_cosigv1_test.go`` (TestCoSigV1NewVerifier); the cosignature line layout (key id,
  8-byte timestamp, signature) from the example in c2sp.org/tlog-cosignature, whose signed
  message shows ``time 1679315147``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.audit import checkpoint as cpm
from gateway.audit.checkpoint import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    cosign,
    open_note,
    parse_checkpoint,
    parse_note,
    sign_checkpoint,
    verify_cosignature,
    verify_note,
)
from gateway.audit.signed_note import note_verifiers
from gateway.crypto.keys import SigningKey

# -- golang.org/x/mod/sumdb/note vectors -----------------------------------------------------

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpR"
    "Zb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox3"
    "3WWd1RvMc+QQ=\n"
).encode()

# -- real sum.golang.org checkpoints ---------------------------------------------------------

SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTES = [
    (
        31700353,
        "go.sum database tree\n31700353\nqINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=\n\n"
        "— sum.golang.org Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/C3YI8o"
        "W9/C8DJ87F61QqspBYwM=\n",
    ),
    (
        65209736,
        "go.sum database tree\n65209736\n5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo=\n\n"
        "— sum.golang.org Az3grnbssgK7ubgFX36gVETtNv0U23qxyAhAMai2QUfeGa3nB/akvkMdlUErfcZz7l/R3cV"
        "tYspg3dxXABkGZZKdsQ8=\n",
    ),
]

# -- transparency-dev/formats and c2sp.org/tlog-cosignature ------------------------------------

COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
ED25519_VKEY_WITH_PLUS = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
SPEC_COSIG_LINE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX"
    "3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
).encode()

ROOT = bytes(range(32))


def _peter() -> NoteSigner:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01
    return NoteSigner("PeterNeumann", ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:]))


def _signer(name: str = "gw.example/audit") -> NoteSigner:
    return NoteSigner(name, ed25519.Ed25519PrivateKey.generate())


# -- known answers -------------------------------------------------------------------------


def test_go_private_key_gives_go_vkey_and_go_signature_line_byte_for_byte() -> None:
    signer = _peter()
    assert signer.vkey() == PETER_VKEY
    assert signer.key_id == 0xC74F20A3
    assert signer.sign(TEXT) == PETER_SIG


def test_go_note_with_two_signatures_opens_with_either_or_both_keys() -> None:
    note = TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    peter, enoch = NoteVerifier.from_vkey(PETER_VKEY), NoteVerifier.from_vkey(ENOCH_VKEY)
    opened = open_note(note, [peter])
    assert opened.text == TEXT
    assert [(s.name, s.key_id) for s in opened.verified] == [("PeterNeumann", 0xC74F20A3)]
    assert [(s.name, s.key_id) for s in opened.unverified] == [("EnochRoot", 0xAF0CFE78)]
    both = open_note(note, [peter, enoch])
    assert [s.name for s in both.verified] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(note, [])


def test_real_sum_golang_org_checkpoints_verify_as_checkpoints() -> None:
    """Production notes of another implementation: our parser and verifier agree with Go's."""
    verifier = NoteVerifier.from_vkey(SUMDB_VKEY)
    for size, note in SUMDB_NOTES:
        verified = verify_note(note.encode(), [verifier], origin="go.sum database tree")
        assert verified.checkpoint.size == size
        assert verified.checkpoint.origin == "go.sum database tree"
        assert base64.b64encode(verified.checkpoint.root).decode() in note
        assert verified.checkpoint.body() == verified.body  # Re-serializes to the signed bytes.
        changed = note.replace(str(size), str(size + 1)).encode()
        with pytest.raises(NoteError, match="invalid signature"):
            verify_note(changed, [verifier])


def test_vkeys_of_both_types_parse_and_their_key_ids_are_recomputed() -> None:
    cosig = NoteVerifier.from_vkey(COSIG_VKEY)
    assert (cosig.name, cosig.key_id, cosig.sig_type) == ("remora.n621.de", 0xDA77ADE7, 0x04)
    assert cosig.vkey() == COSIG_VKEY
    plain = NoteVerifier.from_vkey(ED25519_VKEY_WITH_PLUS)  # base64 with "+" in it.
    assert (plain.key_id, plain.sig_type) == (0x7997405C, 0x01)
    assert plain.vkey() == ED25519_VKEY_WITH_PLUS


def test_several_vkeys_parse_in_order_and_a_bad_one_is_named_by_position() -> None:
    got = note_verifiers([PETER_VKEY, COSIG_VKEY])
    assert [v.vkey() for v in got] == [PETER_VKEY, COSIG_VKEY]
    with pytest.raises(NoteError, match=r"^verifier key #1: malformed verifier key$"):
        note_verifiers([PETER_VKEY, "PeterNeumann+c74f20a3"])


def test_cosignature_line_layout_matches_the_spec_example() -> None:
    """tlog-cosignature: key id (4) || timestamp (8, big-endian) || Ed25519 signature (64)."""
    _, [sig] = parse_note(b"x\n\n" + SPEC_COSIG_LINE)
    assert sig.name == "witness.example.com/w1"
    assert len(sig.signature) == 8 + 64
    assert int.from_bytes(sig.signature[:8], "big") == 1679315147


def test_every_mangling_of_a_vkey_is_refused() -> None:
    """Go's TestNewVerifier: every proper substring and every single-byte change fails."""
    NoteVerifier.from_vkey(PETER_VKEY)
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(NoteError):
                    NoteVerifier.from_vkey(b[i:j])
    for i in range(len(b)):
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :])
    for bad in [
        # Wrong key length / unknown algorithm, each with a key id made to match (from Go).
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        # transparency-dev/formats: wrong number of parts, bad base64, bad and wrong key ids.
        "bananas.sigstore.dev+12344556",
        "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
        "rekor.sigstore.dev+12345678+AwEB",
        "PeterNeumann+NOT_A_NUMBER+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]:
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(bad)


def test_a_bad_verifier_key_is_refused_for_its_own_reason() -> None:
    """Each check of NoteVerifier holds on its own, also for one built without a vkey."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    long_key = base64.b64encode(b"\x01" + peter.public_key + b"\x00").decode()
    for vkey, reason in [
        (f"PeterNeumann+c74f20a3+{long_key}", "must be a type byte and a 32-byte Ed25519 key"),
        (
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "unsupported signature type 0x65",
        ),
        (
            "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "key id does not match",
        ),
        (
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "malformed verifier key",
        ),
        ("PeterNeumann+c74f20a3+!!!!", "^verifier key is not valid base64"),
    ]:
        with pytest.raises(NoteError, match=reason):
            NoteVerifier.from_vkey(vkey)
    key = peter.public_key
    for name, kid, sig_type, public, reason in [
        ("Peter Neumann", peter.key_id, 0x01, key, "invalid key name"),
        ("PeterNeumann", peter.key_id, 0x01, key[:31], "public key is 32 bytes"),
        ("PeterNeumann", peter.key_id, 0x02, key, "unsupported signature type 0x02"),
    ]:
        with pytest.raises(NoteError, match=reason):
            NoteVerifier(name, kid, sig_type, public)


def test_keys_and_verified_signatures_cannot_be_altered() -> None:
    """A verifier's key id is checked against its key once, at construction; what open_note
    reports as verified is final too."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    opened = open_note(TEXT + b"\n" + PETER_SIG, [peter])
    for obj, field in [(peter, "public_key"), (opened.verified[0], "name"), (opened, "text")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, b"")


# -- malformed notes -------------------------------------------------------------------------


def test_every_malformed_note_of_go_open_is_refused() -> None:
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    bad = [
        TEXT,  # No signatures.
        TEXT + b"\n",  # Blank line, then nothing.
        TEXT + b"\n" + PETER_SIG[:-1],  # No final newline.
        b"\x01" + TEXT + b"\n" + PETER_SIG,  # Control character.
        b"\xff" + TEXT + b"\n" + PETER_SIG,  # Not UTF-8.
        TEXT + b"\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8p=\n".encode(),
        TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n",
        TEXT + b"\n" + PETER_SIG * 101,  # Too many signatures.
        TEXT + b"\n" + PETER_SIG.replace("—".encode(), b"--"),  # Not an em dash.
        TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann ", b"PeterNeumann  "),
        TEXT + b"\n" + PETER_SIG.replace(b"=\n", b"\n"),  # Unpadded base64.
        TEXT + b"\n" + "— PeterNeumann AAAA\n".encode(),  # Shorter than key id + 1 byte.
        TEXT + b"\n" + "— Peter+Neumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8p=\n".encode(),
        TEXT + b"\n" + PETER_SIG + b"\n",  # Blank line after the signatures.
        TEXT.replace(b"\n", b"\r\n") + b"\n" + PETER_SIG,  # CR is a control character.
        b"x" * cpm.MAX_NOTE_BYTES + b"\n\n" + PETER_SIG,
    ]
    for i, note in enumerate(bad):
        with pytest.raises(NoteError):
            open_note(note, [peter])
            pytest.fail(f"malformed note {i} opened")


def _peter_line(text: bytes) -> bytes:
    """Peter's signature line over any text, built from the spec (em dash, name, base64 of key
    id || Ed25519 signature) with Go's private key, so it passes no check of ours."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(
        base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    )
    return (
        "— PeterNeumann ".encode()
        + base64.b64encode(bytes.fromhex("c74f20a3") + key.sign(text))
        + b"\n"
    )


def _sized(total: int) -> bytes:
    """A note correctly signed by Peter, ``total`` bytes long."""
    text = b"x" * (total - 2 - len(_peter_line(b"x\n"))) + b"\n"
    note = text + b"\n" + _peter_line(text)
    assert len(note) == total
    return note


_CTRL, _CRLF = b"\x01" + TEXT, TEXT.replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (TEXT, "no blank line before its signatures"),
        (TEXT + b"\n", "must end with a signature line and a newline"),
        (TEXT + b"\n" + PETER_SIG[:-1], "must end with a signature line and a newline"),
        (TEXT + b"\n" + PETER_SIG + b"\n", "must end with a signature line and a newline"),
        (_CTRL + b"\n" + _peter_line(_CTRL), "^note contains control character U\\+0001"),
        (_CRLF + b"\n" + _peter_line(_CRLF), "control character U\\+000D"),
        (TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n", "does not start with an em dash"),
        (TEXT + b"\n" + PETER_SIG.replace("—".encode(), b"--"), "does not start with an em dash"),
        (TEXT + b"\n" + PETER_SIG.replace(b"Peter", b"Pe+ter"), "malformed signature line"),
        (TEXT + b"\n" + "— PeterNeumann\n".encode(), "malformed signature line"),
        (TEXT + b"\n" + PETER_SIG.replace(b"Neumann ", b"Neumann  "), "^signature is not valid"),
        (TEXT + b"\n" + "— PeterNeumann AAAA\n".encode(), "signature is too short"),
        (TEXT + b"\n" + "— PeterNeumann AAAAAA==\n".encode(), "signature is too short"),
        (TEXT + b"\n" + PETER_SIG * 101, "more than 100 signatures"),
        (_sized(cpm.MAX_NOTE_BYTES + 1), "larger than 1048576 bytes"),
    ],
)
def test_a_malformed_note_is_refused_as_malformed_even_when_its_signature_verifies(
    note: bytes, reason: str
) -> None:
    """Go's note.Open calls these malformed. Refusing them only because a signature then fails
    is not enough: where the signature is good, the syntax alone must refuse the note."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    with pytest.raises(NoteError, match=reason) as e:
        open_note(note, [peter])
    assert str(e.value) == e.value.reason


def test_a_note_at_the_limits_opens() -> None:
    """Exactly MAX_NOTE_BYTES, and exactly 100 signature lines, are still notes."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    assert _peter_line(TEXT) == PETER_SIG  # The helper is Go's signer, byte for byte.
    assert open_note(_sized(cpm.MAX_NOTE_BYTES), [peter]).verified
    assert open_note(TEXT + b"\n" + PETER_SIG * 100, [peter]).verified
    # The shortest signature line: a key id and one byte (an unknown key's, so ignored).
    _, [sig] = parse_note(TEXT + b"\n" + "— Someone AAAAAAA=\n".encode())
    assert (sig.name, sig.key_id, sig.signature) == ("Someone", 0, b"\x00")
    # The shortest text: one empty line (Go's note.Open splits at the last blank line too).
    assert open_note(b"\n\n" + _peter_line(b"\n"), [peter]).text == b"\n"


def test_a_signature_that_does_not_verify_rejects_the_whole_note() -> None:
    """Go: "ABCD" spliced into Peter's signature; and a bad line next to a good one."""
    peter, enoch = NoteVerifier.from_vkey(PETER_VKEY), NoteVerifier.from_vkey(ENOCH_VKEY)
    forged = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + b"\n" + forged, [peter])
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT + b"\n" + PETER_SIG + forged, [peter])
    # Unknown keys are ignored, even when broken: only known keys are checked.
    forged_enoch = ENOCH_SIG[:60] + b"ABCD" + ENOCH_SIG[60:]
    assert open_note(TEXT + b"\n" + PETER_SIG + forged_enoch, [peter]).verified
    with pytest.raises(NoteError):
        open_note(TEXT + b"\n" + PETER_SIG + forged_enoch, [peter, enoch])


def test_a_repeated_line_counts_once_and_a_verifier_listed_twice_is_harmless() -> None:
    """Go's note.Open drops repeated lines. Two *different* keys with one name and key id
    would be ambiguous and are refused, but a verifier's id is recomputed from its key, so
    building such a pair needs a 32-bit SHA-256 prefix collision: not exercised here."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    opened = open_note(TEXT + b"\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG, [peter])
    assert len(opened.verified) == 1 and len(opened.unverified) == 1
    assert open_note(TEXT + b"\n" + PETER_SIG, [peter, NoteVerifier.from_vkey(PETER_VKEY)])


def test_a_key_sharing_only_the_name_or_only_the_id_is_ignored() -> None:
    """signed-note: ignore unknown keys even if they share a name or an ID (but not both)."""
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    other = _signer("PeterNeumann")  # Same name, another key (so another id).
    note = TEXT + b"\n" + other.sign(TEXT) + PETER_SIG
    opened = open_note(note, [peter])
    assert [s.key_id for s in opened.verified] == [peter.key_id]
    assert [s.key_id for s in opened.unverified] == [other.key_id]


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_body_is_origin_size_root_lines() -> None:
    cp = Checkpoint("gw.example/audit", 20852163, ROOT)
    root64 = base64.b64encode(ROOT)
    assert cp.body() == b"gw.example/audit\n20852163\n" + root64 + b"\n"
    assert parse_checkpoint(cp.body()) == cp
    assert Checkpoint("o", 0, ROOT).body().split(b"\n")[1] == b"0"


def test_extension_lines_are_kept_and_signed() -> None:
    body = b"gw.example/audit\n5\n" + base64.b64encode(ROOT) + b"\nextension one\nx\n"
    cp = parse_checkpoint(body)
    assert cp.extensions == ("extension one", "x") and cp.body() == body
    signer = _signer()
    note = body + b"\n" + signer.sign(body)
    assert verify_note(note, [NoteVerifier.for_signer(signer)]).checkpoint == cp
    tampered = note.replace(b"extension one", b"extension two")
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(tampered, [NoteVerifier.for_signer(signer)])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"origin\n5\n",  # Two lines.
        b"origin\n5\nROOT",  # No final newline.
        b"\n5\nROOT\n",  # Empty origin.
        b"origin\n05\nROOT\n",  # Leading zero.
        b"origin\n+5\nROOT\n",
        b"origin\n-5\nROOT\n",
        b"origin\n 5\nROOT\n",
        b"origin\n5 \nROOT\n",
        b"origin\n1_0\nROOT\n",
        "origin\n\u0665\nROOT\n".encode(),  # ARABIC-INDIC DIGIT FIVE: int() would take it.
        b"origin\n18446744073709551616\nROOT\n",  # 2^64.
        b"origin\n\nROOT\n",
        b"origin\n5\nROOT\n\n",  # Empty extension line.
        b"origin\n5\nROOT\next\x01\n",
        b"ori\x00gin\n5\nROOT\n",
        b"\xffrigin\n5\nROOT\n",
        b"origin\n5\n" + base64.b64encode(ROOT)[:-1] + b"\n",  # Padding missing.
        b"origin\n5\n" + base64.b64encode(ROOT).replace(b"=", b"") + b"\n",
        b"origin\n5\n" + base64.b64encode(ROOT[:31]) + b"\n",  # 31 bytes.
        b"origin\n5\n" + base64.b64encode(ROOT + b"x") + b"\n",
        b"origin\n5\n" + base64.urlsafe_b64encode(b"\xfb" * 32) + b"\n",  # URL alphabet.
        b"origin\n5\n" + base64.b64encode(ROOT)[:-2] + b"1=\n",  # Non-canonical last char.
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: bytes) -> None:
    body = body.replace(b"ROOT", base64.b64encode(ROOT))
    with pytest.raises(NoteError):
        parse_checkpoint(body)


def test_a_size_line_of_thousands_of_digits_is_a_note_error_not_a_crash() -> None:
    """int() refuses strings over 4300 digits with a bare ValueError: callers catching NoteError
    (the witness, `gateway verify`, `gateway audit verify`) must get a NoteError instead."""
    body = b"origin\n" + b"1" * 5000 + b"\n" + base64.b64encode(ROOT) + b"\n"
    with pytest.raises(NoteError, match="size"):
        parse_checkpoint(body)


def test_checkpoint_fields_are_validated_on_construction() -> None:
    for args in [("", 1, ROOT), ("a\nb", 1, ROOT), ("o", -1, ROOT), ("o", 2**64, ROOT)]:
        with pytest.raises(NoteError):
            Checkpoint(*args)
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT[:31])
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT, ("",))
    assert Checkpoint("o", 2**64 - 1, ROOT).size == 2**64 - 1


def test_each_checkpoint_field_is_refused_for_its_own_reason() -> None:
    """Origin and extension lines are single lines of text; the body ends in a newline (else
    its last line would be read short); the root is canonical base64."""
    for args, reason in [
        (("o\x01", 1, ROOT), "^checkpoint origin contains control character"),
        (("o", 1, ROOT, ("a\nb",)), "extension lines must be non-empty single lines"),
        (("o", 1, ROOT, ("a\x01",)), "^checkpoint extension line contains control character"),
    ]:
        with pytest.raises(NoteError, match=reason):
            Checkpoint(*args)  # type: ignore[arg-type]
    body = Checkpoint("o", 1, ROOT, ("ext",)).body()
    with pytest.raises(NoteError, match="must end with a newline"):
        parse_checkpoint(body[:-1])
    with pytest.raises(NoteError, match=r"^checkpoint root is not valid base64"):
        parse_checkpoint(b"o\n1\n!!!!\n")


def test_a_checkpoint_and_a_verified_note_cannot_be_altered() -> None:
    """A Checkpoint is validated once, at construction; verify_note's answer is final."""
    log = _signer()
    cp = Checkpoint("o", 1, ROOT)
    verified = verify_note(sign_checkpoint(cp, log), [NoteVerifier.for_signer(log)])
    for obj, field in [(cp, "size"), (verified, "checkpoint")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


def test_sign_and_verify_round_trip() -> None:
    signer = _signer()
    cp = Checkpoint("gw.example/audit", 42, ROOT)
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.body() + "\n\u2014 gw.example/audit ".encode())
    verified = verify_note(note, [NoteVerifier.from_vkey(signer.vkey())], origin=cp.origin)
    assert verified.checkpoint == cp and verified.body == cp.body()
    assert [(s.name, s.key_id, s.timestamp) for s in verified.signers] == [
        (signer.name, signer.key_id, None)
    ]


def test_a_checkpoint_signed_by_key_a_is_refused_by_verifier_b() -> None:
    a, b = _signer(), _signer()
    note = sign_checkpoint(Checkpoint("gw.example/audit", 1, ROOT), a)
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(note, [NoteVerifier.for_signer(b)])


def test_changing_any_byte_of_the_signed_body_is_refused() -> None:
    signer = _signer()
    verifier = NoteVerifier.for_signer(signer)
    body = Checkpoint("gw.example/audit", 1234, ROOT).body()
    note = body + b"\n" + signer.sign(body)
    for i in range(len(body)):
        for new in {body[i] ^ 1, ord("7")} - {body[i]}:
            changed = note[:i] + bytes([new]) + note[i + 1 :]
            with pytest.raises(NoteError):
                verify_note(changed, [verifier])


def test_verify_note_checks_the_origin_and_that_the_text_is_a_checkpoint() -> None:
    signer = _signer()
    verifier = NoteVerifier.for_signer(signer)
    note = sign_checkpoint(Checkpoint("gw.example/audit", 1, ROOT), signer)
    with pytest.raises(NoteError, match="origin"):
        verify_note(note, [verifier], origin="another.example/log")
    not_a_checkpoint = TEXT + b"\n" + signer.sign(TEXT)
    assert open_note(not_a_checkpoint, [verifier]).text == TEXT
    with pytest.raises(NoteError):
        verify_note(not_a_checkpoint, [verifier])


def test_signer_refuses_bad_names_texts_and_non_ed25519_keys() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    for name in ["", "a b", "a+b", "a\u00a0b"]:
        with pytest.raises(NoteError):
            NoteSigner(name, key)
    signer = NoteSigner("ok", key)
    for text, reason in [
        (b"no newline", "note text must end with a newline"),
        (b"bad\x01\n", "^note text contains control character U\\+0001"),
        (b"\xff\n", "note text is not UTF-8"),
    ]:
        with pytest.raises(NoteError, match=reason):
            signer.sign(text)
    with pytest.raises(NoteError):
        NoteSigner("ok", SigningKey(ec.generate_private_key(ec.SECP256R1())))


def test_a_gateway_signing_key_signs_notes_like_the_raw_key() -> None:
    """The composition root loads PEM keys as crypto.keys.SigningKey: same signature bytes."""
    raw = ed25519.Ed25519PrivateKey.generate()
    a, b = NoteSigner("gw", raw), NoteSigner("gw", SigningKey(raw))
    assert a.vkey() == b.vkey() and a.sign(TEXT) == b.sign(TEXT)
    assert "PRIVATE" not in repr(b) and repr(b).startswith("NoteSigner('gw+")


# -- cosignatures ----------------------------------------------------------------------------


def test_cosignature_round_trip_and_its_key_id_uses_type_0x04() -> None:
    log, witness = _signer(), _signer("witness.example/w1")
    cp = Checkpoint("gw.example/audit", 7, ROOT)
    note = sign_checkpoint(cp, log)
    line = cosign(cp.body(), witness, timestamp=1679315147)
    cosigner = NoteVerifier.from_vkey(witness.cosigner_vkey())
    assert cosigner.sig_type == 0x04 and cosigner.key_id != witness.key_id
    assert verify_cosignature(cp.body(), line, cosigner) == 1679315147
    verified = verify_note(note + line, [NoteVerifier.for_signer(log), cosigner])
    assert [(s.name, s.timestamp) for s in verified.signers] == [
        (log.name, None),
        (witness.name, 1679315147),
    ]
    # The witness's plain note key does not verify its cosignature (ids differ: ignored).
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(cp.body() + b"\n" + line, [NoteVerifier.for_signer(witness)])


def test_a_cosignature_signs_the_timestamp_and_the_whole_body() -> None:
    witness = _signer("witness.example/w1")
    cosigner = NoteVerifier.for_signer(witness, cosignature=True)
    body = Checkpoint("gw.example/audit", 7, ROOT, ("ext",)).body()
    line = cosign(body, witness, timestamp=1000)
    _, [sig] = parse_note(b"x\n\n" + line)
    later = sig.signature[:7] + b"\x01" + sig.signature[8:]  # Timestamp 1000 -> 1001 (0x3e9).
    kid = sig.key_id.to_bytes(4, "big")
    forged = f"— {witness.name} {base64.b64encode(kid + later).decode()}\n".encode()
    with pytest.raises(NoteError, match="invalid signature"):
        verify_cosignature(body, forged, cosigner)
    with pytest.raises(NoteError, match="invalid signature"):
        verify_cosignature(body.replace(b"ext", b"exu"), line, cosigner)
    with pytest.raises(NoteError):
        verify_cosignature(body, line, NoteVerifier.for_signer(witness))  # Type 0x01 key.
    with pytest.raises(NoteError):
        verify_cosignature(body, line, NoteVerifier.for_signer(_signer("w2"), cosignature=True))


def test_cosign_refuses_timestamps_out_of_range_and_bodies_that_are_not_checkpoints() -> None:
    witness = _signer("w")
    body = Checkpoint("o", 1, ROOT).body()
    for ts in (-1, 2**63):
        with pytest.raises(NoteError):
            cosign(body, witness, timestamp=ts)
    assert cosign(body, witness, timestamp=2**63 - 1)
    with pytest.raises(NoteError):
        cosign(TEXT, witness, timestamp=1)


def _cosig_line(signer: NoteSigner, name: str, key_id: int, text: bytes, ts: int) -> bytes:
    """A tlog-cosignature/v1 line built from the spec by hand, over any text, under any name."""
    sig = signer._raw_sign(b"cosignature/v1\ntime %d\n" % ts + text)
    value = key_id.to_bytes(4, "big") + ts.to_bytes(8, "big") + sig
    return f"— {name} {base64.b64encode(value).decode()}\n".encode()


def test_verify_cosignature_refuses_each_wrong_input_for_its_own_reason() -> None:
    """Each check holds on its own: a line that is correctly signed by the witness's key but
    is over a text that is no checkpoint, under another key name, not one line, or checked
    with a note (0x01) key, is refused, and says why."""
    witness = _signer("w")
    cosigner = NoteVerifier.for_signer(witness, cosignature=True)
    body = Checkpoint("o", 1, ROOT).body()
    good = _cosig_line(witness, "w", cosigner.key_id, body, 7)
    assert verify_cosignature(body, good, cosigner) == 7
    assert verify_cosignature(body, cosign(body, witness, timestamp=0), cosigner) == 0
    other = NoteVerifier.for_signer(_signer("x"), cosignature=True)
    for text, line, verifier, reason in [
        (TEXT, _cosig_line(witness, "w", cosigner.key_id, TEXT, 7), cosigner, "checkpoint"),
        (body, _cosig_line(witness, "x", other.key_id, body, 7), cosigner, "not a cosignature by"),
        (body, good[:-1], cosigner, "^expected one signature line ending in a newline"),
        (body, good + good, cosigner, "^expected one signature line ending in a newline"),
        (body, good + b"\n", cosigner, "^expected one signature line ending in a newline"),
        (body, b"\xff" + good, cosigner, "^signature line is not UTF-8"),
        (body, good.replace(b"w", b"w\x01", 1), cosigner, "^signature line contains control"),
        (body, witness.sign(body), NoteVerifier.for_signer(witness), "^not a cosignature verifier"),
    ]:
        with pytest.raises(NoteError, match=reason):
            verify_cosignature(text, line, verifier)


def test_a_cosignature_with_a_timestamp_beyond_2_63_is_refused() -> None:
    """Spec: the timestamp MUST NOT exceed 2^63 - 1, whatever the signature says."""
    witness = _signer("w")
    cosigner = NoteVerifier.for_signer(witness, cosignature=True)
    body = Checkpoint("o", 1, ROOT).body()
    ts = 2**63
    sig = witness._raw_sign(b"cosignature/v1\ntime %d\n" % ts + body)
    value = cosigner.key_id.to_bytes(4, "big") + ts.to_bytes(8, "big") + sig
    line = f"— w {base64.b64encode(value).decode()}\n".encode()
    with pytest.raises(NoteError, match="timestamp"):
        verify_cosignature(body, line, cosigner)


def test_a_cosignature_is_a_timestamp_and_a_signature_and_may_be_dated_2_63_minus_1() -> None:
    """tlog-cosignature: 8 + 64 bytes after the key id, the time at most 2^63 - 1 inclusive."""
    witness = _signer("w")
    cosigner = NoteVerifier.for_signer(witness, cosignature=True)
    body = Checkpoint("o", 1, ROOT).body()

    def line(ts: int, cut: int = 0) -> bytes:
        sig = witness._raw_sign(b"cosignature/v1\ntime %d\n" % ts + body)
        value = cosigner.key_id.to_bytes(4, "big") + ts.to_bytes(8, "big") + sig
        return f"— w {base64.b64encode(value[: len(value) - cut]).decode()}\n".encode()

    assert verify_cosignature(body, line(2**63 - 1), cosigner) == 2**63 - 1
    with pytest.raises(NoteError, match=r"^invalid cosignature length for key w"):
        verify_cosignature(body, line(5, cut=1), cosigner)


def test_a_checkpoint_carrying_only_cosignatures_is_not_a_verified_checkpoint() -> None:
    """A cosignature is a witness's statement about the log's checkpoint, not the log's own:
    a note whose only known-key line is a cosignature (the log's line stripped, or never
    there) must not verify as a checkpoint, even when the caller trusts the cosigner key.
    The line is built with ``cryptography`` directly, as tlog-cosignature spells it."""
    witness_key = ed25519.Ed25519PrivateKey.generate()
    public = witness_key.public_key().public_bytes_raw()
    name = "witness.example/w1"
    kid = hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
    body = b"gw.example/audit\n7\n" + base64.b64encode(ROOT) + b"\n"
    ts = 1679315147
    sig = witness_key.sign(b"cosignature/v1\ntime %d\n" % ts + body)
    line = f"— {name} {base64.b64encode(kid + ts.to_bytes(8, 'big') + sig).decode()}\n"
    key64 = base64.b64encode(bytes([0x04]) + public).decode()
    cosigner = NoteVerifier.from_vkey(f"{name}+{kid.hex()}+{key64}")
    only_cosigned = body + b"\n" + line.encode()
    assert open_note(only_cosigned, [cosigner]).verified  # A valid cosignature, as a note...
    with pytest.raises(NoteError, match="no signature by a log key"):
        verify_note(only_cosigned, [cosigner])  # ...but no checkpoint signed by its log.
    log = _signer()
    with_log = sign_checkpoint(parse_checkpoint(body), log) + line.encode()
    verified = verify_note(with_log, [NoteVerifier.for_signer(log), cosigner])
    assert [s.name for s in verified.signers] == [log.name, name]


def test_our_cosignature_line_is_byte_for_byte_the_spec_construction() -> None:
    """cosign() against tlog-cosignature computed here with ``cryptography`` alone: key id
    SHA-256(name || 0x0A || 0x04 || key)[:4], then the 8-byte big-endian time, then the
    deterministic Ed25519 signature of "cosignature/v1\\ntime <t>\\n" + the whole body
    (extension line included). Go's PeterNeumann key makes the vector reproducible."""
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes_raw()
    body = (
        b"example.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\next\n"
    )
    ts = 1679315147
    kid = hashlib.sha256(b"PeterNeumann\n\x04" + public).digest()[:4]
    sig = key.sign(b"cosignature/v1\ntime 1679315147\n" + body)
    expected = "— PeterNeumann " + base64.b64encode(kid + ts.to_bytes(8, "big") + sig).decode()
    assert cosign(body, _peter(), timestamp=ts) == (expected + "\n").encode()
    assert _peter().cosigner_vkey() == (
        f"PeterNeumann+{kid.hex()}+{base64.b64encode(bytes([0x04]) + public).decode()}"
    )
