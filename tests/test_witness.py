"""Witnessing (c2sp.org/tlog-witness): the pure decisions, the durable state, two real gateways.

Pure tests drive gateway.witness with real RFC 9162 trees (gateway.audit.merkle's reference
functions) and real Ed25519 notes. The store tests open two WitnessStores on one file, as two
worker processes would. The end-to-end tests run gateway A (a log publishing checkpoints) and
gateway B (configured with ``[[witness.peers]]`` = A's origin and checkpoint vkey) on
127.0.0.1: A's checkpoints and A's own consistency proofs go to B, which cosigns or refuses
with the spec's statuses, and keeps its promise across a restart.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit import merkle
from gateway.audit.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    cosign,
    sign_checkpoint,
    verify_cosignature,
    verify_note,
)
from gateway.config import load
from gateway.crypto.keys import load_private_key
from gateway.devinit import ORIGIN
from gateway.errors import ConfigError
from gateway.http import witness_api
from gateway.witness import (
    MAX_PROOF_LINES,
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    PeerLogs,
    Refusal,
    Witnessed,
    WitnessRefusal,
    check_submission,
    decide,
    encode_add_checkpoint,
    parse_add_checkpoint,
    parse_size_body,
)
from gateway.witness_client import (
    StaleOldSize,
    WitnessAhead,
    WitnessRefused,
    cosign_checkpoint,
    request_cosignature,
)
from gateway.witness_store import WitnessStore
from tests.support import Gateway, make_deployment, running_gateway
from tests.test_audit_api import (
    AUDITOR,
    BUDGET,
    call,
    first_checkpoint,
    publish,
    quiet_checkpoints,
    role,
    send,
)

LOG = "log.example/audit"


def _signer(name: str = LOG) -> NoteSigner:
    return NoteSigner(name, ed25519.Ed25519PrivateKey.generate())


def _leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(tag + b"%d" % i) for i in range(n)]


def _note(signer: NoteSigner, size: int, leaves: list[bytes], origin: str = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(origin, size, merkle.root(leaves[:size])), signer)


def _held(size: int, leaves: list[bytes]) -> Witnessed:
    return Witnessed(size, merkle.root(leaves[:size]))


def _submit(peers: PeerLogs, old: int, proof: list[bytes], note: bytes) -> Any:
    return check_submission(peers, encode_add_checkpoint(old, proof, note))


def _refusal(fn: Any, *args: Any) -> WitnessRefusal:
    with pytest.raises(WitnessRefusal) as info:
        fn(*args)
    return info.value


# ------------------------------------------------------------------ pure: request framing
def test_the_spec_example_body_parses_into_old_size_proof_and_note() -> None:
    """The request body of c2sp.org/tlog-witness's example, byte for byte."""
    body = (
        b"old 20852014\n"
        b"PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
        b"jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        b"5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
        b"/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
        b"\n"
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        b"\n\xe2\x80\x94 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOo"
        b"RDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    )
    req = parse_add_checkpoint(body)
    assert req.old_size == 20852014
    assert req.proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert len(req.proof) == 4
    assert req.note.startswith(b"example.com/behind-the-sofa\n20852163\n")
    assert encode_add_checkpoint(req.old_size, req.proof, req.note) == body


@given(
    st.integers(0, 2**64 - 1),
    st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LINES),
    st.binary(max_size=300).filter(lambda b: not b.startswith(b"\n")),
)
def test_encode_then_parse_gives_back_the_request(
    old: int, proof: list[bytes], note: bytes
) -> None:
    body = encode_add_checkpoint(old, proof, note)
    assert parse_add_checkpoint(body) == AddCheckpoint(old, tuple(proof), note)


H = base64.b64encode(bytes(32))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 1\n" + H + b"\n",  # No blank line before the checkpoint.
        b"new 1\n\nnote",
        b"old 01\n\nnote",  # Leading zero.
        b"old -1\n\nnote",
        b"old +1\n\nnote",
        b"old  1\n\nnote",
        b"old 1 \n\nnote",
        b"old 18446744073709551616\n\nnote",  # 2^64.
        b"old 1\r\n\nnote",
        b"old 1\n" + H[:-1] + b"\n\nnote",  # Not base64.
        b"old 1\n" + base64.b64encode(bytes(31)) + b"\n\nnote",  # Not a SHA-256 hash.
        b"old 1\n" + H.rstrip(b"=") + b"\n\nnote",  # Unpadded: not canonical.
        b"old 1\n" + b"\n".join([H] * (MAX_PROOF_LINES + 1)) + b"\n\nnote",
    ],
)
def test_malformed_requests_are_400(body: bytes) -> None:
    r = _refusal(parse_add_checkpoint, body)
    assert (r.cause, r.status) == (Refusal.MALFORMED, 400)


def test_encode_refuses_what_a_witness_would_refuse() -> None:
    for old, proof in ((-1, []), (2**64, []), (1, [bytes(31)]), (1, [bytes(32)] * 64)):
        with pytest.raises(ValueError):
            encode_add_checkpoint(old, proof, b"x\n")


def test_size_bodies_are_one_canonical_decimal_and_a_newline() -> None:
    assert parse_size_body(b"0\n") == 0 and parse_size_body(b"50\n") == 50
    for bad in (b"50", b"050\n", b"5 0\n", b"\n", b"-1\n", b"50\n\n"):
        with pytest.raises(ValueError):
            parse_size_body(bad)


# ------------------------------------------------------------------ pure: origin and signature
def test_an_unknown_origin_is_404_and_a_note_by_another_key_is_403() -> None:
    log, leaves = _signer(), _leaves(4)
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    r = _refusal(_submit, peers, 0, [], _note(log, 4, leaves, origin="other.example/log"))
    assert (r.cause, r.status) == (Refusal.UNKNOWN_ORIGIN, 404)
    r = _refusal(_submit, peers, 0, [], _note(_signer(), 4, leaves))  # Same origin, other key.
    assert (r.cause, r.status) == (Refusal.BAD_SIGNATURE, 403)


def test_a_bad_signature_by_the_trusted_key_is_403_even_beside_a_good_one() -> None:
    """signed-note: every line of a known key must verify (the newer tlog-witness says 403)."""
    log, leaves = _signer(), _leaves(4)
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    note = _note(log, 4, leaves)
    other_body = Checkpoint(LOG, 3, merkle.root(leaves[:3])).body()
    wrong_line = log.sign(other_body)  # The right key, over another text.
    r = _refusal(_submit, peers, 0, [], note + wrong_line)
    assert (r.cause, r.status) == (Refusal.BAD_SIGNATURE, 403)


def test_lines_of_unknown_keys_such_as_other_witnesses_are_ignored() -> None:
    log, leaves = _signer(), _leaves(4)
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    note = _note(log, 4, leaves)
    body = Checkpoint(LOG, 4, merkle.root(leaves)).body()
    cosigned = note + cosign(body, _signer("w.example/other"), timestamp=5)
    assert _submit(peers, 0, [], cosigned).checkpoint.size == 4


def test_a_rotated_log_key_is_trusted_when_both_keys_are_configured() -> None:
    old_key, new_key, leaves = _signer(), _signer(), _leaves(4)
    peers = PeerLogs.from_config([(LOG, old_key.vkey()), (LOG, new_key.vkey())])
    assert _submit(peers, 0, [], _note(new_key, 4, leaves)).origin == LOG


def test_a_note_that_is_no_checkpoint_is_400() -> None:
    log = _signer()
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    for note in (b"not a note", log.sign(b"just text\n"), b"a\n\n" + log.sign(b"a\n")):
        r = _refusal(_submit, peers, 0, [], note)
        assert r.status == 400, note


def test_a_checkpoint_whose_size_has_thousands_of_digits_is_400_malformed() -> None:
    log = _signer()
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    body = b"%s\n%s\n%s\n" % (LOG.encode(), b"9" * 5000, base64.b64encode(bytes(32)))
    r = _refusal(_submit, peers, 0, [], body + b"\n" + log.sign(body))
    assert (r.cause, r.status) == (Refusal.MALFORMED, 400)


def test_peer_configuration_errors_are_refused() -> None:
    log = _signer()
    with pytest.raises(ValueError, match="peer #0"):
        PeerLogs.from_config([(LOG, "not a vkey")])
    with pytest.raises(ValueError, match="0x01"):
        PeerLogs.from_config([(LOG, log.cosigner_vkey())])  # A witness key, not a log key.
    with pytest.raises(ValueError, match="distinct"):
        PeerLogs.from_config([(LOG, log.vkey()), (LOG, log.vkey())])
    with pytest.raises(ValueError, match="origin"):
        PeerLogs.from_config([("two\nlines", log.vkey())])


# ------------------------------------------------------------------ pure: the decision
@pytest.fixture
def world() -> tuple[NoteSigner, PeerLogs, list[bytes]]:
    log = _signer()
    return log, PeerLogs.from_config([(LOG, log.vkey())]), _leaves(20)


def test_first_checkpoint_from_old_zero_becomes_the_state(world: Any) -> None:
    log, peers, leaves = world
    sub = _submit(peers, 0, [], _note(log, 7, leaves))
    assert decide(sub, None) == _held(7, leaves)


@given(st.data())
def test_any_consistent_growth_is_cosigned_and_any_other_tree_is_422(data: st.DataObject) -> None:
    """Property: from any held (m, root_m), a valid proof to n is cosigned; a proof of another
    tree of size n (same first m leaves or not) never is."""
    log = _signer()
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    n = data.draw(st.integers(2, 40), label="n")
    m = data.draw(st.integers(1, n - 1), label="m")
    leaves = _leaves(n)
    proof = merkle.consistency_proof(m, n, leaves)
    sub = _submit(peers, m, proof, _note(log, n, leaves))
    assert decide(sub, _held(m, leaves)) == _held(n, leaves)

    cut = data.draw(st.integers(0, n - 1), label="first leaf that differs")
    forked = leaves[:cut] + _leaves(n - cut, b"fork")
    fork_sub = _submit(peers, m, merkle.consistency_proof(m, n, forked), _note(log, n, forked))
    if cut >= m:  # The fork keeps the held prefix: it is a consistent extension after all.
        assert decide(fork_sub, _held(m, leaves)) == _held(n, forked)
    else:
        r = _refusal(decide, fork_sub, _held(m, leaves))
        # The fork's own proof reproduces its signed root from another tree of size m: that is
        # evidence, except from a power of two, where the proof starts from the held root.
        provable = m & (m - 1) != 0
        assert (r.cause, r.status, r.evidence) == (Refusal.INCONSISTENT, 422, provable)


def test_a_stale_old_size_is_409_with_the_held_size(world: Any) -> None:
    log, peers, leaves = world
    for old, held in ((0, _held(5, leaves)), (3, _held(5, leaves)), (3, None)):
        proof = merkle.consistency_proof(old, 9, leaves) if old else []
        r = _refusal(decide, _submit(peers, old, proof, _note(log, 9, leaves)), held)
        assert (r.cause, r.status) == (Refusal.STALE_OLD_SIZE, 409)
        assert r.latest_size == (held.size if held else 0)
        assert not r.evidence


def test_a_stale_old_size_for_the_held_size_with_another_root_is_kept_as_evidence(
    world: Any,
) -> None:
    log, peers, leaves = world
    forked = _leaves(20, b"fork")
    r = _refusal(decide, _submit(peers, 0, [], _note(log, 5, forked)), _held(5, leaves))
    assert (r.status, r.latest_size, r.evidence) == (409, 5, True)


def test_old_size_beyond_the_checkpoint_is_400(world: Any) -> None:
    log, peers, leaves = world
    r = _refusal(decide, _submit(peers, 9, [], _note(log, 5, leaves)), _held(9, leaves))
    assert (r.cause, r.status) == (Refusal.OLD_SIZE_BEYOND, 400)


def test_the_same_checkpoint_again_is_cosigned_and_another_root_at_that_size_is_a_fork(
    world: Any,
) -> None:
    log, peers, leaves = world
    assert decide(_submit(peers, 5, [], _note(log, 5, leaves)), _held(5, leaves)) == _held(
        5, leaves
    )
    fork = _submit(peers, 5, [], _note(log, 5, _leaves(5, b"fork")))
    r = _refusal(decide, fork, _held(5, leaves))
    assert (r.cause, r.status, r.evidence) == (Refusal.FORK, 409, True)


def test_another_root_at_the_cosigned_size_is_a_fork_whatever_proof_lines_come_with_it(
    world: Any,
) -> None:
    """tlog-witness: when the old size is the checkpoint's, roots that differ are 409. A
    log-signed fork at the cosigned size stays a fork (and evidence) with proof lines sent
    along, which such a request should not carry; with the cosigned root they are a 422."""
    log, peers, leaves = world
    junk = [merkle.leaf_hash(b"junk")]
    fork = _submit(peers, 5, junk, _note(log, 5, _leaves(5, b"fork")))
    r = _refusal(decide, fork, _held(5, leaves))
    assert (r.cause, r.status, r.evidence) == (Refusal.FORK, 409, True)
    same = _submit(peers, 5, junk, _note(log, 5, leaves))
    r = _refusal(decide, same, _held(5, leaves))
    assert (r.cause, r.status, r.evidence) == (Refusal.INCONSISTENT, 422, False)


def test_a_fork_at_the_cosigned_size_is_evidence_whatever_old_size_it_claims(
    world: Any,
) -> None:
    """The status follows the old size line (400 beyond the checkpoint, 409 stale), but a
    log-signed checkpoint of the cosigned size with another root is kept as evidence in
    every case: it proves the split view by itself."""
    log, peers, leaves = world
    fork = _note(log, 5, _leaves(5, b"fork"))
    for old, status in ((9, 400), (3, 409), (0, 409), (5, 409)):
        r = _refusal(decide, _submit(peers, old, [], fork), _held(5, leaves))
        assert (r.status, r.evidence) == (status, True), old


def test_proofs_where_none_can_exist_are_422(world: Any) -> None:
    log, peers, leaves = world
    junk = [merkle.leaf_hash(b"junk")]
    cases = [
        (0, junk, _note(log, 5, leaves), None),  # From the empty tree the proof is empty.
        (5, junk, _note(log, 5, leaves), _held(5, leaves)),  # Between equal sizes too.
        (5, [], _note(log, 9, leaves), _held(5, leaves)),  # Growth needs a proof.
    ]
    for old, proof, note, held in cases:
        r = _refusal(decide, _submit(peers, old, proof, note), held)
        assert (r.cause, r.status) == (Refusal.INCONSISTENT, 422)


def test_a_bad_proof_for_a_consistent_checkpoint_is_422_and_no_evidence_against_the_log(
    world: Any,
) -> None:
    """Anyone may replay a log's published checkpoint with a garbage proof (the route is
    public): 422, but that proves nothing against the log, so it is not kept or logged as
    fork evidence, and the honest proof then gets the very checkpoint cosigned."""
    log, peers, leaves = world
    held, note = _held(5, leaves), _note(log, 9, leaves)
    proof = merkle.consistency_proof(5, 9, leaves)
    for bad in (
        [merkle.leaf_hash(b"junk%d" % i) for i in range(len(proof))],
        [*proof[:-1], merkle.leaf_hash(b"junk")],
        [merkle.leaf_hash(b"junk"), *proof[1:]],
        [*proof, merkle.leaf_hash(b"junk")],
    ):
        r = _refusal(decide, _submit(peers, 5, bad, note), held)
        assert (r.cause, r.status, r.evidence) == (Refusal.INCONSISTENT, 422, False)
    assert decide(_submit(peers, 5, proof, note), held) == _held(9, leaves)


def test_the_empty_tree_needs_the_empty_root(world: Any) -> None:
    log, peers, _ = world
    good = sign_checkpoint(Checkpoint(LOG, 0, merkle.EMPTY_ROOT), log)
    assert decide(_submit(peers, 0, [], good), None) == Witnessed(0, merkle.EMPTY_ROOT)
    bad = sign_checkpoint(Checkpoint(LOG, 0, bytes(32)), log)
    r = _refusal(decide, _submit(peers, 0, [], bad), None)
    assert (r.cause, r.status) == (Refusal.INCONSISTENT, 422)


def test_sizes_a_witness_cannot_store_are_refused(world: Any) -> None:
    log, peers, _ = world
    huge = sign_checkpoint(Checkpoint(LOG, 2**63, bytes(32)), log)
    r = _refusal(_submit, peers, 0, [], huge)
    assert r.status == 400


# ------------------------------------------------------------------ store
async def test_compare_and_swap_lets_exactly_one_of_two_workers_advance(tmp_path: Path) -> None:
    """Two stores on one file (two worker processes): both read the same state, one wins."""
    leaves = _leaves(10)
    a = await WitnessStore.open(tmp_path / "state.db")
    b = await WitnessStore.open(tmp_path / "state.db")
    try:
        assert await a.latest(LOG) is None and await b.latest(LOG) is None
        first = await asyncio.gather(
            a.compare_and_swap(LOG, None, _held(3, leaves)),
            b.compare_and_swap(LOG, None, _held(4, leaves)),
        )
        assert sorted(first) == [False, True]
        winner = _held(3, leaves) if first[0] else _held(4, leaves)
        assert await a.latest(LOG) == winner == await b.latest(LOG)
        assert not await b.compare_and_swap(LOG, _held(2, leaves), _held(9, leaves))
        assert not await b.compare_and_swap(
            LOG, Witnessed(winner.size, bytes(32)), _held(9, leaves)
        )
        assert await b.compare_and_swap(LOG, winner, _held(9, leaves))
        assert await a.latest(LOG) == _held(9, leaves)
        assert await a.latest("other") is None
    finally:
        await a.aclose()
        await b.aclose()
    reopened = await WitnessStore.open(tmp_path / "state.db")
    try:
        assert await reopened.latest(LOG) == _held(9, leaves)
    finally:
        await reopened.aclose()


@pytest.mark.parametrize("how", ["directory-removed", "file-replaced"])
async def test_a_state_database_removed_or_replaced_while_open_cosigns_nothing(
    tmp_path: Path, how: str
) -> None:
    """SQLite would go on committing into the unlinked file: the witness would cosign growth
    it forgets at the next start (or that a worker opening the new file never sees), and then
    cosign a fork of it from ``old 0``. Every read and write fails instead (503)."""
    import os
    import shutil

    from gateway.witness_store import WitnessStoreUnavailable

    leaves = _leaves(10)
    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.db"
    store = await WitnessStore.open(path)
    try:
        assert await store.compare_and_swap(LOG, None, _held(3, leaves))
        if how == "directory-removed":
            shutil.rmtree(data)
        else:
            os.rename(path, data / "state.db.old")
            await (await WitnessStore.open(path)).aclose()  # A new, empty one in its place.
        with pytest.raises(WitnessStoreUnavailable, match="removed or replaced"):
            await store.compare_and_swap(LOG, _held(3, leaves), _held(8, leaves))
        with pytest.raises(WitnessStoreUnavailable, match="removed or replaced"):
            await store.latest(LOG)
        with pytest.raises(WitnessStoreUnavailable, match="removed or replaced"):
            await store.keep_evidence(LOG, "fork", b"t", b"n", None, seen_at=1)
    finally:
        await store.aclose()


async def test_evidence_is_kept_once_per_checkpoint_text(tmp_path: Path) -> None:
    store = await WitnessStore.open(tmp_path / "state.db")
    try:
        text, held = b"log\n5\nAAAA\n", _held(5, _leaves(5))
        assert await store.keep_evidence(LOG, "fork", text, text + b"\nsig1\n", held, seen_at=7)
        # The same text with other (unknown-key) lines appended is not new evidence.
        assert not await store.keep_evidence(LOG, "fork", text, text + b"\nsig2\n", None, seen_at=8)
        [kept] = await store.evidence(LOG)
        assert (kept.cause, kept.note, kept.held, kept.seen_at) == (
            "fork",
            text + b"\nsig1\n",
            held,
            7,
        )
    finally:
        await store.aclose()


async def test_a_request_that_loses_the_race_decides_again_and_gets_the_winners_size(
    tmp_path: Path,
) -> None:
    """Another worker advances the state between this request's read and its write: the
    compare-and-swap fails, the request re-reads, and the new decision is a 409."""
    log, leaves = _signer(), _leaves(10)
    peers = PeerLogs.from_config([(LOG, log.vkey())])
    other = await WitnessStore.open(tmp_path / "state.db")
    assert await other.compare_and_swap(LOG, None, _held(3, leaves))

    class LosesOnce(WitnessStore):
        raced = False

        async def compare_and_swap(
            self, origin: str, expected: Witnessed | None, new: Witnessed
        ) -> bool:
            if not self.raced:
                self.raced = True
                assert await other.compare_and_swap(origin, expected, _held(8, leaves))
            return await super().compare_and_swap(origin, expected, new)

    store = await LosesOnce.open(tmp_path / "state.db")
    try:
        sub = _submit(peers, 3, merkle.consistency_proof(3, 6, leaves), _note(log, 6, leaves))
        with pytest.raises(WitnessRefusal) as info:
            await witness_api._advance(store, sub, lambda: datetime.now(UTC))
        assert (info.value.status, info.value.latest_size) == (409, 8)
        assert await store.latest(LOG) == _held(8, leaves)
    finally:
        await store.aclose()
        await other.aclose()


# ------------------------------------------------------------------ two gateways
@asynccontextmanager
async def witness_gateway(config: Path) -> AsyncIterator[Gateway]:
    """A real gateway on 127.0.0.1 with the audit and witness routes, publishing checkpoints
    only when asked."""
    async with running_gateway(config) as gw:
        yield gw


def _log_signer(gw_dir: Path) -> NoteSigner:
    return NoteSigner(ORIGIN, load_private_key((gw_dir / "pki/checkpoint.key").read_bytes()))


def _witness_signer(gw_dir: Path) -> NoteSigner:
    return NoteSigner(
        load(gw_dir / "gateway.toml").config.witness.name or "",
        load_private_key((gw_dir / "pki/witness.key").read_bytes()),
    )


def _configure_peer(witness_cfg: Path, log_dir: Path) -> None:
    with witness_cfg.open("a") as f:
        f.write(
            f'\n[[witness.peers]]\norigin = "{ORIGIN}"\n'
            f'verifier_key = "{_log_signer(log_dir).vkey()}"\n'
        )


@pytest.fixture
def deployments(tmp_path: Path) -> tuple[Path, Path]:
    """A: the log. B: its witness (A's origin and checkpoint vkey in [[witness.peers]])."""
    a = quiet_checkpoints(make_deployment(tmp_path / "a"))
    b = quiet_checkpoints(make_deployment(tmp_path / "b"))
    _configure_peer(b, a.parent)
    return a, b


async def _grow(a: Gateway, n: int) -> dict[str, Any]:
    """n more audit records on A (refused exchanges are audited too), then a checkpoint."""
    for _ in range(n):
        await send(a, "central.dan-cu", BUDGET)  # No grant: 403, one audit record.
    return await publish(a)


async def _proof(a: Gateway, first: int, second: int) -> list[bytes]:
    """A's consistency proof, as any auditor of A fetches it."""
    params = {"first": str(first), "second": str(second)}
    status, _, doc = await call(a, "/v1/audit/proof/consistency", role(a, AUDITOR), params=params)
    assert status == 200, doc
    return [bytes.fromhex(h) for h in doc["proof"]]


async def _raw(b: Gateway, body: bytes) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(b.url + witness_api.ADD_CHECKPOINT_PATH, data=body) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def _prefix(b: Gateway) -> str:
    return b.url + witness_api.SUBMISSION_PREFIX


def _evidence(b: Gateway) -> list[tuple[str, int | None]]:
    conn = sqlite3.connect(b.dir / "state.db")
    try:
        rows = conn.execute("SELECT cause, held_size FROM witness_evidence ORDER BY seen_at")
        return [(str(c), s) for c, s in rows.fetchall()]
    finally:
        conn.close()


async def test_a_peer_cosigns_a_logs_growing_checkpoints_and_refuses_forks(
    deployments: tuple[Path, Path],
) -> None:
    a_cfg, b_cfg = deployments
    log_verifier = NoteVerifier.for_signer(_log_signer(a_cfg.parent))
    cosigner = NoteVerifier.from_vkey(_witness_signer(b_cfg.parent).cosigner_vkey())
    async with witness_gateway(a_cfg) as a, witness_gateway(b_cfg) as b:
        await first_checkpoint(a)
        cp1 = await _grow(a, 3)
        s1 = cp1["size"]
        assert s1 >= 3

        # First contact: old 0, no proof. The cosignature verifies with B's cosigner vkey.
        [line] = await request_cosignature(_prefix(b), cp1["note"].encode(), 0, [])
        body1 = cp1["note"].encode().split(b"\n\n")[0] + b"\n"
        stamp = verify_cosignature(body1, line, cosigner)
        assert abs(stamp - time.time()) < 60
        verified = verify_note(cp1["note"].encode() + line, [log_verifier, cosigner])
        assert {s.name for s in verified.signers} == {ORIGIN, cosigner.name}

        # Growth, with A's own consistency proof from what B cosigned.
        cp2 = await _grow(a, 2)
        s2, note2 = cp2["size"], cp2["note"].encode()
        [line2] = await request_cosignature(_prefix(b), note2, s1, await _proof(a, s1, s2))
        verify_note(note2 + line2, [log_verifier, cosigner])

        # A stale old size: 409, text/x.tlog.size, the size B holds.
        status, ctype, raw = await _raw(
            b, encode_add_checkpoint(s1, await _proof(a, s1, s2), note2)
        )
        assert (status, ctype, raw) == (409, SIZE_CONTENT_TYPE, f"{s2}\n".encode())
        with pytest.raises(StaleOldSize) as stale:
            await request_cosignature(_prefix(b), note2, 0, [])
        assert stale.value.latest_size == s2

        # The same checkpoint again, from the size B holds: cosigned again.
        assert len(await request_cosignature(_prefix(b), note2, s2, [])) == 1

        # A fork at the size B cosigned: the log signed another root for s2. 409, a problem.
        a_key = _log_signer(a_cfg.parent)
        fork_same = sign_checkpoint(Checkpoint(ORIGIN, s2, merkle.leaf_hash(b"fork")), a_key)
        status, ctype, raw = await _raw(b, encode_add_checkpoint(s2, [], fork_same))
        assert (status, ctype) == (409, "application/problem+json"), raw
        assert b"witness-fork" in raw

        # A fork that grows: no proof from B's root verifies. 422.
        fork_leaves = _leaves(s2 + 3, b"fork")
        fork_big = _note(a_key, s2 + 3, fork_leaves, origin=ORIGIN)
        with pytest.raises(WitnessRefused) as refused:
            await request_cosignature(
                _prefix(b), fork_big, s2, merkle.consistency_proof(s2, s2 + 3, fork_leaves)
            )
        assert refused.value.status == 422 and "witness-inconsistent" in refused.value.detail
        # Both kept as evidence (the growing fork's own proof shows another tree at s2, which
        # a proof from a power of two could not).
        provable = [("inconsistent", s2)] if s2 & (s2 - 1) else []
        assert _evidence(b) == [("fork", s2), *provable]

        # Old beyond the checkpoint: 400. Unknown origin: 404. Not A's key: 403.
        status, _, _ = await _raw(b, encode_add_checkpoint(s2 + 1, [], note2))
        assert status == 400
        stranger = _note(_signer("other.example/log"), 1, _leaves(1), "other.example/log")
        status, _, _ = await _raw(b, encode_add_checkpoint(0, [], stranger))
        assert status == 404
        b_own = await publish(b)  # B's own log has A's origin (both are `gateway init`), B's key.
        status, ctype, raw = await _raw(b, encode_add_checkpoint(s2, [], b_own["note"].encode()))
        assert (status, ctype) == (403, "application/problem+json"), raw
        status, _, _ = await _raw(b, b"{}")
        assert status == 400

        # Two submissions racing from the same old size: exactly one advances B.
        cp3 = await _grow(a, 1)
        cp4 = await _grow(a, 1)
        s3, s4 = cp3["size"], cp4["size"]
        results = await asyncio.gather(
            _raw(b, encode_add_checkpoint(s2, await _proof(a, s2, s3), cp3["note"].encode())),
            _raw(b, encode_add_checkpoint(s2, await _proof(a, s2, s4), cp4["note"].encode())),
        )
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 409], results
        loser = next(r for r in results if r[0] == 409)
        winner_size = s3 if results[0][0] == 200 else s4
        assert loser[1:] == (SIZE_CONTENT_TYPE, f"{winner_size}\n".encode())


async def test_the_witness_keeps_its_state_across_a_restart(deployments: tuple[Path, Path]) -> None:
    a_cfg, b_cfg = deployments
    async with witness_gateway(a_cfg) as a:
        await first_checkpoint(a)
        cp1 = await _grow(a, 2)
        cp2 = await _grow(a, 2)
        s1, s2 = cp1["size"], cp2["size"]
        async with witness_gateway(b_cfg) as b:
            await request_cosignature(_prefix(b), cp1["note"].encode(), 0, [])
            await request_cosignature(_prefix(b), cp2["note"].encode(), s1, await _proof(a, s1, s2))
        async with witness_gateway(b_cfg) as b:  # B restarted: same state database.
            with pytest.raises(StaleOldSize) as stale:
                await request_cosignature(_prefix(b), cp1["note"].encode(), 0, [])
            assert stale.value.latest_size == s2  # No re-cosigning of the older size...
            status, _, _ = await _raw(b, encode_add_checkpoint(s2, [], cp1["note"].encode()))
            assert status == 400  # ...from any old size.
            cp3 = await _grow(a, 1)
            s3 = cp3["size"]
            lines = await request_cosignature(
                _prefix(b), cp3["note"].encode(), s2, await _proof(a, s2, s3)
            )
            assert len(lines) == 1


async def test_the_client_helper_learns_the_witness_size_and_verifies_the_cosignature(
    deployments: tuple[Path, Path],
) -> None:
    a_cfg, b_cfg = deployments
    cosigner = NoteVerifier.from_vkey(_witness_signer(b_cfg.parent).cosigner_vkey())
    log_verifier = NoteVerifier.for_signer(_log_signer(a_cfg.parent))
    async with witness_gateway(a_cfg) as a, witness_gateway(b_cfg) as b:
        await first_checkpoint(a)

        async def prove(first: int, second: int) -> list[bytes]:
            return await _proof(a, first, second)

        cp1 = await _grow(a, 2)
        await request_cosignature(_prefix(b), cp1["note"].encode(), 0, [])
        cp2 = await _grow(a, 3)
        # The log does not know what B holds: old 0, then the 409 tells, then the proof.
        done = await cosign_checkpoint(_prefix(b), cp2["note"].encode(), cosigner, prove=prove)
        assert done.witness_size == cp2["size"] and len(done.cosignatures) == 1
        verified = verify_note(done.note, [log_verifier, cosigner])
        assert [s.timestamp for s in verified.signers if s.name == cosigner.name] == list(
            done.timestamps
        )
        # B now holds cp2: the older cp1 cannot be cosigned, and the helper says why.
        with pytest.raises(WitnessAhead):
            await cosign_checkpoint(_prefix(b), cp1["note"].encode(), cosigner, prove=prove)
        # A key B does not cosign with: nothing in the answer verifies.
        wrong = NoteVerifier.for_signer(_signer("w.example/x"), cosignature=True)
        with pytest.raises(Exception, match="no cosignature"):
            await cosign_checkpoint(
                _prefix(b), cp2["note"].encode(), wrong, prove=prove, old_size=cp2["size"]
            )


async def test_cosignature_times_never_go_back_even_when_the_clock_does(tmp_path: Path) -> None:
    """A tlog-cosignature/v1 says: as of its time, the largest tree this witness saw is this
    one. A witness whose clock steps back (NTP), or another instance sharing its state with a
    clock behind, must not stamp a larger tree with an earlier time than a smaller tree it
    cosigned: the two cosignatures would contradict each other. Also across a restart."""
    cfg = quiet_checkpoints(make_deployment(tmp_path / "w"))
    log, leaves = _signer(), _leaves(12)
    with cfg.open("a") as f:
        f.write(f'\n[[witness.peers]]\norigin = "{LOG}"\nverifier_key = "{log.vkey()}"\n')
    cosigner = NoteVerifier.from_vkey(_witness_signer(cfg.parent).cosigner_vkey())
    real = datetime.now(UTC)
    clock = [real + timedelta(minutes=10)]  # Ahead first, then back to the real time.

    def stamp(size: int, line: bytes) -> int:
        body = Checkpoint(LOG, size, merkle.root(leaves[:size])).body()
        return verify_cosignature(body, line, cosigner)

    async with running_gateway(cfg, clock=lambda: clock[0]) as w:
        [line5] = await request_cosignature(_prefix(w), _note(log, 5, leaves), 0, [])
        clock[0] = real
        proof = merkle.consistency_proof(5, 8, leaves)
        [line8] = await request_cosignature(_prefix(w), _note(log, 8, leaves), 5, proof)
        assert stamp(8, line8) >= stamp(5, line5)
    async with running_gateway(cfg, clock=lambda: clock[0]) as w:
        proof = merkle.consistency_proof(8, 9, leaves)
        [line9] = await request_cosignature(_prefix(w), _note(log, 9, leaves), 8, proof)
        assert stamp(9, line9) >= stamp(5, line5)


async def test_a_state_database_from_before_cosignature_times_is_upgraded_in_place(
    tmp_path: Path,
) -> None:
    """A witness_state table without ``cosigned_at`` keeps what it holds (time 0) and moves on."""
    leaves = _leaves(6)
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(
        "CREATE TABLE witness_state (origin TEXT PRIMARY KEY, size INTEGER NOT NULL "
        "CHECK (size >= 0), root BLOB NOT NULL CHECK (length(root) = 32)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO witness_state VALUES (?, 3, ?)", (LOG, merkle.root(leaves[:3])))
    conn.commit()
    conn.close()
    store = await WitnessStore.open(tmp_path / "state.db")
    try:
        assert await store.latest(LOG) == _held(3, leaves)
        later = Witnessed(5, merkle.root(leaves[:5]), 1700000000)
        assert await store.compare_and_swap(LOG, _held(3, leaves), later)
        assert await store.latest(LOG) == later
    finally:
        await store.aclose()


# ------------------------------------------------------------------ configuration
WITNESS_SECTION = '[witness]\nkey = "pki/witness.key"\nname = "hcm.ttcds.gw/witness"\n'


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('[witness]\nkey = "pki/witness.key"\nname = "w"\n', "witness.peers"),  # vkey "nope"
        ("[witness]\n", "witness.key"),  # Peers, but nothing to cosign with.
        ('[witness]\nkey = "pki/witness.key"\n', "witness: set both"),  # Key, no name.
        ('[witness]\nkey = "pki/checkpoint.key"\nname = "w"\n', "witness.key: must not be"),
        ('[witness]\nkey = "pki/gateway.key"\nname = "w"\n', "witness.key: .*Ed25519"),
        ('[witness]\nkey = "pki/witness.key"\nname = "two words"\n', "witness.name"),
    ],
)
def test_an_unusable_witness_configuration_stops_the_gateway(
    tmp_path: Path, section: str, field: str
) -> None:
    cfg = make_deployment(tmp_path / "d")
    text = cfg.read_text()
    assert WITNESS_SECTION in text
    vkey = "nope" if field == "witness.peers" else _signer("o.example/log").vkey()
    peer = f'\n[[witness.peers]]\norigin = "o.example/log"\nverifier_key = "{vkey}"\n'
    cfg.write_text(text.replace(WITNESS_SECTION, section) + peer)
    with pytest.raises(ConfigError, match=field):
        witness_api.build_witness(load(cfg))


def test_a_deployment_without_peers_serves_the_route_and_knows_no_origin(tmp_path: Path) -> None:
    witness = witness_api.build_witness(load(make_deployment(tmp_path / "d")))
    assert witness.peers.origins == frozenset() and witness.signer is not None


@pytest.mark.parametrize("ctype", ["text/x.tlog.size", "text/x.tlog.size; charset=utf-8"])
async def test_the_client_reads_a_stale_size_answer_whatever_its_media_type_parameters(
    ctype: str,
) -> None:
    """A witness of another make may add parameters to ``text/x.tlog.size``: still a 409 that
    tells the size, not a generic refusal."""
    from aiohttp import web

    async def add_checkpoint(_: web.Request) -> web.Response:
        return web.Response(status=409, body=b"7\n", headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_post("/add-checkpoint", add_checkpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with pytest.raises(StaleOldSize) as stale:
            await request_cosignature(f"http://127.0.0.1:{port}", b"note\n", 0, [])
        assert stale.value.latest_size == 7
    finally:
        await runner.cleanup()
