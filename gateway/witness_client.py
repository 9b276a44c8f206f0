"""Getting this gateway's checkpoints cosigned by witnesses (the client of c2sp.org/tlog-witness).

Two layers:

* :func:`request_cosignature`: one ``add-checkpoint`` call, as the spec defines it. It returns
  the witness's signature lines, raises :class:`StaleOldSize` (with the witness's latest
  cosigned size) on a 409 ``text/x.tlog.size``, and :class:`WitnessRefused` on any other
  refusal. It checks the framing of the answer, not its signatures: which keys to trust is the
  caller's to say.
* :func:`cosign_checkpoint`: what a log actually wants. It submits from the size it believes
  the witness holds (0 when it does not know: the spec's way to learn it), resubmits once from
  the size a 409 names with a proof from ``prove``, and keeps only the lines that verify as
  cosignatures by the witness's key over this checkpoint (the spec: ignore unknown keys). A
  witness ahead of the checkpoint (it cosigned a larger tree) raises :class:`WitnessAhead`:
  submit a newer checkpoint instead.

A gateway's own consistency proofs come from its audit log: pass
``prove=audit_log.consistency_proof`` (an ``async (size1, size2) -> list[bytes]``).

Uses aiohttp's client only (gateway.http owns aiohttp.web). No retries beyond the one 409
resubmission and no background scheduling here; the caller owns both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from gateway.audit.checkpoint import (
    NoteError,
    NoteVerifier,
    parse_checkpoint,
    parse_note,
)
from gateway.audit.checkpoint import verify_cosignature as _verify_line
from gateway.audit.signed_note import COSIGNATURE_V1
from gateway.witness import SIZE_CONTENT_TYPE, encode_add_checkpoint, parse_size_body

__all__ = [
    "CosignedCheckpoint",
    "StaleOldSize",
    "WitnessAhead",
    "WitnessError",
    "WitnessRefused",
    "cosign_checkpoint",
    "request_cosignature",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds per add-checkpoint call; wrap calls in ``asyncio.timeout`` for a tighter bound."""
_TIMEOUT = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT)
MAX_RESPONSE_BYTES = 64 * 1024  # Cosignature lines are ~150 bytes; more is not a witness.
_DASH = "\u2014 ".encode()

Prove = Callable[[int, int], Awaitable[Sequence[bytes]]]
"""``async prove(old_size, new_size) -> consistency proof hashes`` (RFC 9162)."""


class WitnessError(Exception):
    """A witness did not cosign; the message says why (status and the witness's words)."""


class WitnessRefused(WitnessError):
    """The witness answered with a refusal other than a stale old size, or an unusable 200."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"witness answered {status}: {detail}")
        self.status = status
        self.detail = detail


class StaleOldSize(WitnessError):
    """409 ``text/x.tlog.size``: the witness's latest cosigned checkpoint has ``latest_size``."""

    def __init__(self, latest_size: int) -> None:
        super().__init__(f"the witness last cosigned size {latest_size}")
        self.latest_size = latest_size


class WitnessAhead(WitnessError):
    """The witness cosigned a larger tree than this checkpoint; submit a newer checkpoint."""

    def __init__(self, latest_size: int, size: int) -> None:
        super().__init__(f"the witness holds size {latest_size}, beyond this checkpoint's {size}")
        self.latest_size = latest_size
        self.size = size


async def request_cosignature(
    submission_url: str,
    note: bytes,
    old_size: int,
    consistency_proof: Sequence[bytes],
    *,
    session: aiohttp.ClientSession | None = None,
) -> list[bytes]:
    """POST ``<submission_url>/add-checkpoint``; return the signature lines (each ending ``\\n``).

    ``submission_url`` is the witness's submission prefix, e.g.
    ``https://gw.central.example/v1/witness``. Raises StaleOldSize, WitnessRefused, or
    aiohttp.ClientError / TimeoutError (after :data:`DEFAULT_TIMEOUT`) for transport failures.
    """
    body = encode_add_checkpoint(old_size, consistency_proof, note)
    url = submission_url.rstrip("/") + "/add-checkpoint"
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await _post(own, url, body)
    return await _post(session, url, body)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> list[bytes]:
    async with session.post(url, data=body, timeout=_TIMEOUT) as resp:
        raw = await _read_capped(resp)
        # The media type without its parameters: a witness may add "; charset=utf-8".
        if resp.status == 409 and resp.content_type == SIZE_CONTENT_TYPE:
            try:
                latest = parse_size_body(raw)
            except ValueError as e:
                raise WitnessRefused(409, str(e)) from None
            raise StaleOldSize(latest)
        if resp.status != 200:
            raise WitnessRefused(resp.status, raw.decode("utf-8", "replace")[:500])
    return _lines(raw)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused beyond MAX_RESPONSE_BYTES (a witness is not a download)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise WitnessRefused(resp.status, "answer larger than any cosignature set")
        chunks.append(chunk)
    return b"".join(chunks)


def _lines(raw: bytes) -> list[bytes]:
    """A 200 body: one or more note signature lines, each starting with an em dash."""
    if not raw.endswith(b"\n"):
        raise WitnessRefused(200, "the answer is not newline-terminated signature lines")
    lines = [line + b"\n" for line in raw[:-1].split(b"\n")]
    if not all(line.startswith(_DASH) for line in lines):
        raise WitnessRefused(200, "the answer holds something other than signature lines")
    return lines


@dataclass(frozen=True, slots=True)
class CosignedCheckpoint:
    """A checkpoint with the witness's verified cosignatures appended, and their timestamps.

    ``note`` is the submitted note plus the verified lines: a signed note that a verifier
    holding both the log key and the witness's cosigner key accepts.
    """

    note: bytes
    cosignatures: tuple[bytes, ...]
    timestamps: tuple[int, ...]
    witness_size: int  # The size the witness now holds: this checkpoint's.


async def cosign_checkpoint(
    submission_url: str,
    note: bytes,
    witness: NoteVerifier,
    *,
    prove: Prove,
    old_size: int = 0,
    session: aiohttp.ClientSession | None = None,
) -> CosignedCheckpoint:
    """Get ``note`` cosigned by the witness whose cosigner key is ``witness`` (type 0x04).

    ``old_size`` is the size the witness is believed to hold (0: unknown). On a 409 the call
    is repeated once from the size the witness names. Raises WitnessAhead, WitnessError
    (including when no returned line verifies under ``witness``), NoteError for a note that
    is not a checkpoint.
    """
    if witness.sig_type != COSIGNATURE_V1:
        raise ValueError("witness must be a cosigner verifier key (type 0x04, cosigner_vkey)")
    text, _ = parse_note(note)
    size = parse_checkpoint(text).size

    async def attempt(old: int) -> list[bytes]:
        if old > size:
            raise WitnessAhead(old, size)
        proof = await prove(old, size) if 0 < old < size else []
        return await request_cosignature(submission_url, note, old, proof, session=session)

    try:
        lines = await attempt(old_size)
    except StaleOldSize as e:
        lines = await attempt(e.latest_size)
    good: list[bytes] = []
    stamps: list[int] = []
    for line in lines:
        try:
            stamps.append(_verify_line(text, line, witness))
        except NoteError:
            continue  # Another key of the witness, or a bad line: ignored, as the spec says.
        good.append(line)
    if not good:
        raise WitnessError("no cosignature in the answer verifies under the witness key")
    return CosignedCheckpoint(note + b"".join(good), tuple(good), tuple(stamps), size)
