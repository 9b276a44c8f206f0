"""`gateway verify FILE` and `POST /v1/verify` take any artifact and say what holds.

Receipts, envelopes and signed requests come from a real exchange through a running gateway
(the envelope as the provider received it); checkpoints and proof bundles are built from the
gateway's own audit database and signed with its checkpoint key, exactly as published.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import cli
from gateway.audit import merkle
from gateway.audit.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    cosign,
    sign_checkpoint,
)
from gateway.config import load
from gateway.crypto import devpki, jws, jws_rules
from gateway.crypto.keys import load_certificates, load_private_key
from tests.support import (
    Provider,
    example,
    make_deployment,
    running_gateway,
    running_provider,
    signed_request,
)

SID = "citizen-lookup.v1"


@asynccontextmanager
async def serve(config: Path) -> AsyncIterator[str]:
    """A (re)started gateway, built from the config on disk as at start-up."""
    async with running_gateway(config) as gw:
        yield gw.url


def auditor(d: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (d / "roles/dtc-auditor.token").read_text().strip()}


async def post_verify(url: str, d: Path, body: bytes) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/verify", data=body, headers=auditor(d)) as r,
    ):
        return r.status, await r.json(content_type=None)


@dataclass
class Artifacts:
    dir: Path
    config: Path
    receipt: dict[str, Any]
    envelope: dict[str, Any]
    request: bytes
    exchange_id: str


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return asyncio.run(_exchange(tmp_path_factory.mktemp("artifacts") / "dep"))


async def _exchange(d: Path) -> Artifacts:
    provider = Provider()
    async with running_provider(provider):
        config = make_deployment(d, provider_port=provider.port)
        request = signed_request(d, "hcm.quan-1", SID, example(SID))
        async with (
            serve(config) as url,
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/exchange/{SID}",
                data=request,
                headers={"Content-Type": "application/jose+json"},
            ) as r,
        ):
            assert r.status == 200
            doc = await r.json()
        return Artifacts(
            d, config, doc["receipt"], provider.received[0]["envelope"], request, doc["exchange_id"]
        )


def gateway_verify(
    capsys: pytest.CaptureFixture[str], a: Artifacts, tmp: Path, data: bytes, *extra: str
) -> tuple[int, str]:
    f = tmp / "artifact"
    f.write_bytes(data)
    code = cli.main(["verify", str(f), "--config", str(a.config), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def note_signer(a: Artifacts) -> NoteSigner:
    dep = load(a.config)
    assert dep.checkpoint_key_pem and dep.config.audit.origin
    return NoteSigner(dep.config.audit.origin, load_private_key(dep.checkpoint_key_pem))


def bundle(a: Artifacts, *, with_receipt: bool = True) -> dict[str, Any]:
    """What GET /v1/exchanges/{id}/proof serves, computed from the database."""
    conn = sqlite3.connect(a.dir / "audit.db")
    rows = conn.execute("SELECT idx, leaf_hash, record FROM audit_records ORDER BY idx").fetchall()
    conn.close()
    hashes = [bytes(h) for _, h, _ in rows]
    index = _audit(a)["index"]
    size = len(hashes)
    signer = note_signer(a)
    note = sign_checkpoint(Checkpoint(signer.name, size, merkle.root(hashes)), signer)
    doc: dict[str, Any] = {
        "format": "dtc-gateway/inclusion-proof/v1",
        "exchange_id": a.exchange_id,
        "index": index,
        "leaf_hash": hashes[index].hex(),
        "record": orjson.loads(rows[index][2]),
        "tree_size": size,
        "proof": [p.hex() for p in merkle.inclusion_proof(index, size, hashes)],
        "root": merkle.root(hashes).hex(),
        "checkpoint": note.decode(),
    }
    if with_receipt:
        doc["receipt"] = a.receipt
    return doc


def _other_origin(note: str) -> str:
    """The same note with its origin line changed: the signature no longer covers it."""
    origin, rest = note.split("\n", 1)
    return origin + "x\n" + rest


def _audit(a: Artifacts) -> dict[str, Any]:
    raw = a.receipt["payload"]
    return dict(orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["audit"])


# -- JWS artifacts ----------------------------------------------------------------------------


async def test_a_receipt_verifies_offline_and_over_http(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = orjson.dumps(artifacts.receipt)
    code, out = gateway_verify(capsys, artifacts, tmp_path, raw)
    assert code == 0, out
    assert "OK    signed by the gateway hcm.ttcds.gw" in out
    assert "is the gateway's current signing key" in out
    async with serve(artifacts.config) as url:
        status, doc = await post_verify(url, artifacts.dir, raw)
    assert status == 200 and doc["valid"] is True and doc["kind"] == "receipt"
    assert all(c["ok"] for c in doc["checks"])


async def test_an_envelope_and_the_senders_signature_inside_it_verify(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = orjson.dumps(artifacts.envelope)
    code, out = gateway_verify(capsys, artifacts, tmp_path, raw)
    assert code == 0, out
    assert "OK    envelope payload matches its request_sha256" in out
    assert "OK    sender's signature ES256 by hcm.quan-1" in out
    assert "OK    sender's signed request carries the same payload as the envelope" in out
    async with serve(artifacts.config) as url:
        status, doc = await post_verify(url, artifacts.dir, raw)
    assert status == 200 and doc["valid"] is True and doc["kind"] == "envelope"


async def test_a_signed_request_verifies_and_is_bound_to_its_sender(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = gateway_verify(capsys, artifacts, tmp_path, artifacts.request)
    assert code == 0, out
    assert "OK    signer certificate is bound to the sender hcm.quan-1" in out


async def test_a_tampered_receipt_is_a_report_not_an_error(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = orjson.loads(base64.urlsafe_b64decode(artifacts.receipt["payload"] + "=="))
    body["status"] = "failed"
    forged = dict(
        artifacts.receipt, payload=jws_rules.b64u(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    )
    raw = orjson.dumps(forged)
    code, out = gateway_verify(capsys, artifacts, tmp_path, raw)
    assert code == 1 and "FAIL  signature: the ES256 signature does not verify" in out
    async with serve(artifacts.config) as url:
        status, doc = await post_verify(url, artifacts.dir, raw)
    assert status == 200 and doc["valid"] is False and doc["kind"] == "receipt"
    assert doc["checks"][0]["ok"] is False and "does not verify" in doc["checks"][0]["what"]


async def test_a_receipt_signed_by_a_participant_is_not_the_gateways(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = artifacts.dir / "participants/hcm.quan-1"
    key = load_private_key((d / "key.pem").read_bytes())
    chain = load_certificates((d / "cert.pem").read_bytes())
    body = orjson.loads(base64.urlsafe_b64decode(artifacts.receipt["payload"] + "=="))
    forged = jws.serialize(jws.sign(body, key, chain, typ="receipt+jws"))
    code, out = gateway_verify(capsys, artifacts, tmp_path, forged)
    assert code == 1
    assert "FAIL  signed by hcm.quan-1, not by the gateway hcm.ttcds.gw" in out


# -- checkpoints and proof bundles ----------------------------------------------------------------


async def test_a_checkpoint_note_verifies_with_the_configured_key(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = bundle(artifacts)["checkpoint"].encode()
    code, out = gateway_verify(capsys, artifacts, tmp_path, note)
    assert code == 0, out
    assert "OK    checkpoint signature by gateway.ttcds.hcm.dev/audit+" in out
    assert "OK    origin is this gateway's log" in out
    other = NoteSigner("gateway.ttcds.hcm.dev/audit", devpki.generate_key("ed25519"))
    forged = sign_checkpoint(Checkpoint(other.name, 3, b"\1" * 32), other)
    code, out = gateway_verify(capsys, artifacts, tmp_path, forged)
    assert code == 1 and "FAIL  checkpoint signature: note has no signature from a known key" in out
    # ... unless its key is given explicitly (a peer's log, checked with its vkey).
    code, out = gateway_verify(capsys, artifacts, tmp_path, forged, "--vkey", other.vkey())
    assert code == 0, out
    async with serve(artifacts.config) as url:
        status, doc = await post_verify(url, artifacts.dir, note)
    assert status == 200 and doc["valid"] is True and doc["kind"] == "checkpoint"
    # The JSON form GET /v1/audit/checkpoint serves: its plain members must agree with the note.
    size = int(note.split(b"\n")[1])
    as_json = {"origin": "gateway.ttcds.hcm.dev/audit", "size": size, "note": note.decode()}
    code, out = gateway_verify(capsys, artifacts, tmp_path, orjson.dumps(as_json))
    assert code == 0, out
    code, out = gateway_verify(capsys, artifacts, tmp_path, orjson.dumps(dict(as_json, size=9)))
    assert code == 1 and "FAIL  the JSON size 9 is not the signed note's" in out


def test_gateway_verify_refuses_a_checkpoint_signed_only_by_a_witness(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--vkey`` with a witness's cosigner key (type 0x04) does not make the witness's
    cosignature a checkpoint signature: a note whose log line was replaced by a line of an
    unknown key and that carries only a cosignature is not a valid checkpoint."""
    witness = NoteSigner("witness.example/w1", devpki.generate_key("ed25519"))
    checkpoint = Checkpoint("gateway.ttcds.hcm.dev/audit", 3, b"\1" * 32)
    stranger = NoteSigner("gateway.ttcds.hcm.dev/audit", devpki.generate_key("ed25519"))
    note = sign_checkpoint(checkpoint, stranger) + cosign(checkpoint.body(), witness, timestamp=9)
    code, out = gateway_verify(capsys, artifacts, tmp_path, note, "--vkey", witness.cosigner_vkey())
    assert code == 1, out
    assert "FAIL  checkpoint signature: " in out and "no signature by a log key" in out


def test_gateway_verify_reports_a_cosignature_as_the_witness_s_not_as_the_log_s(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the witness's cosigner key given, a cosigned checkpoint verifies and the report
    tells the log's signature from the witness's timestamped cosignature; a forged
    cosignature by that key fails the checkpoint."""
    log = note_signer(artifacts)
    witness = NoteSigner("witness.example/w1", devpki.generate_key("ed25519"))
    checkpoint = Checkpoint(log.name, 3, b"\1" * 32)
    line = cosign(checkpoint.body(), witness, timestamp=1679315147)
    note = sign_checkpoint(checkpoint, log) + line
    code, out = gateway_verify(capsys, artifacts, tmp_path, note, "--vkey", witness.cosigner_vkey())
    assert code == 0, out
    assert f"OK    checkpoint signature by {log.name}+{log.key_id:08x} (Ed25519" in out
    kid = NoteVerifier.for_signer(witness, cosignature=True).key_id
    assert (
        f"OK    cosignature by witness.example/w1+{kid:08x} at 2023-03-20T12:25:47Z "
        "(tlog-cosignature/v1)" in out
    ), out
    assert "witness.example/w1" not in out.split("checkpoint signature by", 1)[1].split("\n")[0]
    other = cosign(Checkpoint(log.name, 4, b"\1" * 32).body(), witness, timestamp=1679315147)
    forged = sign_checkpoint(checkpoint, log) + other
    code, out = gateway_verify(
        capsys, artifacts, tmp_path, forged, "--vkey", witness.cosigner_vkey()
    )
    assert code == 1 and "invalid signature for key witness.example/w1" in out, out


def test_a_cosignature_dated_in_the_future_fails_the_checkpoint(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cosignature vouches "as of its time"; one dated an hour ahead of the verifier's clock
    was reported OK. A minute ahead (clock drift) still passes."""
    import time

    log = note_signer(artifacts)
    witness = NoteSigner("witness.example/w1", devpki.generate_key("ed25519"))
    checkpoint = Checkpoint(log.name, 3, b"\1" * 32)
    vkey = ("--vkey", witness.cosigner_vkey())
    for ahead, code_wanted in ((60, 0), (3600, 1)):
        line = cosign(checkpoint.body(), witness, timestamp=int(time.time()) + ahead)
        note = sign_checkpoint(checkpoint, log) + line
        code, out = gateway_verify(capsys, artifacts, tmp_path, note, *vkey)
        assert code == code_wanted, out
    assert "FAIL  cosignature by witness.example/w1+" in out and "dated after now" in out, out


async def test_a_proof_bundle_with_its_receipt_verifies(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = orjson.dumps(bundle(artifacts))
    code, out = gateway_verify(capsys, artifacts, tmp_path, raw)
    assert code == 0, out
    for expected in (
        "OK    checkpoint signature by",
        "is in the log of size",
        "OK    the record's canonical JSON hashes to leaf_hash",
        "OK    receipt: signed by the gateway hcm.ttcds.gw",
        "OK    receipt names audit index",
    ):
        assert expected in out
    async with serve(artifacts.config) as url:
        status, doc = await post_verify(url, artifacts.dir, raw)
    assert status == 200 and doc["valid"] is True and doc["kind"] == "inclusion-proof"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda b: b.update(proof=["00" * 32, *b["proof"][1:]]),
            "FAIL  inclusion proof of record",
        ),
        (lambda b: b.update(tree_size=b["tree_size"] + 1), "is not the checkpoint's size"),
        (lambda b: b.update(index=b["index"] + 1), "FAIL  receipt names audit index"),
        (lambda b: b["record"].update(sender="hcm.thu-duc"), "FAIL  the record's canonical JSON"),
        (
            lambda b: b.update(checkpoint=_other_origin(b["checkpoint"])),
            "FAIL  checkpoint signature",
        ),
    ],
    ids=["proof", "tree_size", "index", "record", "checkpoint"],
)
async def test_a_broken_proof_bundle_says_what_does_not_hold(
    artifacts: Artifacts,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Any,
    expected: str,
) -> None:
    b = bundle(artifacts)
    change(b)
    code, out = gateway_verify(capsys, artifacts, tmp_path, orjson.dumps(b))
    assert code == 1 and expected in out, out


async def test_input_that_is_no_artifact_is_a_400_problem(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = gateway_verify(capsys, artifacts, tmp_path, b"hello")
    assert code == 1 and "FAIL  not an artifact the gateway signs" in out
    async with serve(artifacts.config) as url:
        for body in (b"hello", b'{"a": 1}', b"{not json"):
            status, doc = await post_verify(url, artifacts.dir, body)
            assert status == 400 and doc["type"] == "urn:gateway:problem:bad-request", body


async def test_a_payload_given_to_bind_fails_unless_the_artifact_binds_that_very_payload(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine, other = tmp_path / "mine.json", tmp_path / "other.json"
    mine.write_bytes(orjson.dumps(example(SID)))
    other.write_bytes(orjson.dumps(dict(example(SID), citizen_id="079203009999")))
    full, bare = bundle(artifacts), bundle(artifacts, with_receipt=False)
    for raw, holds in [
        (orjson.dumps(full), ["--request", str(mine)]),
        (artifacts.request, ["--request", str(mine)]),
    ]:
        code, out = gateway_verify(capsys, artifacts, tmp_path, raw, *holds)
        assert code == 0 and "OK    request payload matches request_sha256" in out, out
    for raw, fails in [
        (orjson.dumps(full), ["--request", str(other)]),  # the bundled receipt binds another
        (artifacts.request, ["--request", str(other)]),  # the signed request carries another
        (orjson.dumps(bare), ["--request", str(mine)]),  # no receipt: nothing binds it
        (full["checkpoint"].encode(), ["--request", str(mine)]),  # a checkpoint binds none
        (orjson.dumps(artifacts.envelope), ["--response", str(mine)]),  # no response in it
    ]:
        code, out = gateway_verify(capsys, artifacts, tmp_path, raw, *fails)
        assert code == 1 and "FAIL  " in out and "payload" in out, (fails, out)


# -- receipts outlive certificates --------------------------------------------------------------


def test_a_receipt_verifies_after_its_certificate_expired_if_it_was_valid_when_signed() -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.models import rfc3339
    from gateway.verify import describe_verification

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    ca_key, ca_cert = devpki.make_ca("Old", now=t0)
    key, cert = devpki.issue(
        ca_key, ca_cert, "hcm.ttcds.gw", now=t0, days=30, purposes=("signing",)
    )
    signing = load_private_key(devpki.pem_private_key(key))
    anchors = [devpki.pem_certificate(ca_cert)]
    now = t0 + timedelta(days=400)

    def receipt(completed: datetime) -> bytes:
        body = {"exchange_id": "x", "status": "delivered", "completed_at": rfc3339(completed)}
        return jws.serialize(jws.sign(body, signing, [cert], typ="receipt+jws"))

    ok, lines = describe_verification(
        receipt(t0 + timedelta(days=1)), anchors, now=now, gateway_id="hcm.ttcds.gw"
    )
    assert ok, lines
    assert any("was valid when signed (2024-01-02" in line and "not now" in line for line in lines)
    # Claiming a time when the certificate was not valid either does not help.
    ok, lines = describe_verification(
        receipt(t0 + timedelta(days=300)), anchors, now=now, gateway_id="hcm.ttcds.gw"
    )
    assert not ok and lines[0].startswith("FAIL  signature:")
