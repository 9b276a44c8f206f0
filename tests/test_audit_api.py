"""The audit API on a real gateway on 127.0.0.1: search, stream, export, checkpoints, proofs.

Records are produced by real exchanges (bearer tokens of the demo participants) and read back
with the tokens `gateway init` writes for the operator, auditor and admin roles. Every proof is
checked with gateway.audit.merkle's RFC 9162 verifiers, every checkpoint with its note key.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.audit import merkle
from gateway.audit.checkpoint import NoteSigner, NoteVerifier, open_note, parse_checkpoint
from gateway.config import load
from gateway.crypto.canonical import canonicalize
from gateway.crypto.keys import load_private_key
from gateway.http import audit_api
from gateway.models import uuid7
from gateway.verify import Trust, checkpoint_verifiers, verify_artifact
from tests.support import (
    Gateway,
    Provider,
    example,
    make_deployment,
    running_gateway,
)

CITIZEN, BUDGET, PILOT = "citizen-lookup.v1", "budget-proposal.v1", "pilot-progress-report.v1"


def quiet_checkpoints(config: Path) -> Path:
    """Publish checkpoints only when a test asks (POST), so "not yet covered" is testable."""
    text = config.read_text()
    config.write_text(
        text.replace("checkpoint_interval_seconds = 1.0", "checkpoint_interval_seconds = 3600")
    )
    return config


@asynccontextmanager
async def audit_gateway(config: Path) -> AsyncIterator[Gateway]:
    """A real gateway on 127.0.0.1 (audit routes and checkpoint publisher included)."""
    async with running_gateway(config) as gw:
        yield gw


@pytest.fixture
async def gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=2)
    async with audit_gateway(quiet_checkpoints(cfg)) as g:
        await first_checkpoint(g)
        yield g


async def first_checkpoint(gw: Gateway) -> None:
    """Wait for the publisher's start-up checkpoint (of the empty log), so later ones are ours."""
    async with asyncio.timeout(5):
        while (await call(gw, "/v1/audit/checkpoint"))[0] != 200:
            await asyncio.sleep(0.02)


def role(gw: Gateway, rid: str) -> dict[str, str]:
    token = (gw.dir / "roles" / f"{rid}.token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def participant(gw: Gateway, pid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.token(pid)}"}


OPERATOR, AUDITOR, ADMIN = "dtc-operator", "dtc-auditor", "dtc-admin"


async def call(
    gw: Gateway,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.url + path, headers=headers or {}, params=params) as r,
    ):
        raw = await r.read()
        ctype = r.headers.get("Content-Type", "")
        is_json = ctype.startswith(("application/json", "application/problem+json"))
        body: Any = orjson.loads(raw) if is_json and raw else raw
        return r.status, dict(r.headers), body


async def send(gw: Gateway, sender: str, service: str) -> dict[str, Any]:
    """One exchange by bearer token; returns the response document (delivered or a problem)."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.url}/v1/exchange/{service}",
            data=orjson.dumps(example(service)),
            headers={**participant(gw, sender), "Content-Type": "application/json"},
        ) as r,
    ):
        doc: dict[str, Any] = orjson.loads(await r.read())
        return doc


async def search(gw: Gateway, who: str = OPERATOR, **params: str) -> list[dict[str, Any]]:
    status, _, doc = await call(gw, "/v1/audit/records", role(gw, who), params=params)
    assert status == 200, doc
    records: list[dict[str, Any]] = doc["records"]
    return records


async def publish(gw: Gateway) -> dict[str, Any]:
    status, _, doc = await call(
        gw,
        "/v1/audit/checkpoint",
        {**role(gw, ADMIN), "Accept": "application/json"},
        method="POST",
    )
    assert status == 200, doc
    return dict(doc)


def leaf_of(record: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(canonicalize(record))


# ------------------------------------------------------------------ search and records
async def test_search_filters_by_sender_service_provider_outcome_exchange_and_time(
    gw: Gateway, provider: Provider
) -> None:
    ok1 = await send(gw, "hcm.quan-1", CITIZEN)
    ok2 = await send(gw, "hcm.thu-duc", BUDGET)
    denied = await send(gw, "central.dan-cu", BUDGET)  # No grant: rejected, 403.
    provider.mode = "fail"
    failed = await send(gw, "hcm.quan-1", PILOT)
    provider.mode = "ok"
    everything = gw.records()
    assert len(everything) == 7

    rows = await search(gw)
    assert [r["index"] for r in rows] == list(range(7))
    assert [r["record"] for r in rows] == everything
    assert all(bytes.fromhex(r["leaf_hash"]) == leaf_of(r["record"]) for r in rows)

    by_sender = await search(gw, sender="hcm.quan-1")
    assert {r["record"]["exchange_id"] for r in by_sender} == {
        ok1["exchange_id"],
        failed["exchange_id"],
    }
    assert [r["record"]["service"] for r in await search(gw, service=BUDGET)] == [BUDGET] * 3
    assert {r["record"]["exchange_id"] for r in await search(gw, provider="hcm.so-tc")} == {
        ok2["exchange_id"]
    }  # The rejected record names no provider: the request never got that far.
    for outcome, doc in (("delivered", ok1), ("rejected", denied), ("failed", failed)):
        found = await search(gw, outcome=outcome)
        assert {r["record"]["event"] for r in found} == {f"exchange.{outcome}"}
        assert doc["exchange_id"] in {r["record"]["exchange_id"] for r in found}
    assert len(await search(gw, outcome="accepted")) == 3
    mine = await search(gw, exchange_id=ok2["exchange_id"])
    assert [r["record"]["event"] for r in mine] == ["exchange.accepted", "exchange.delivered"]

    ats = sorted(r["at"] for r in everything)
    since, until = ats[2], ats[-1]
    window = await search(gw, since=since, until=until)
    expected = [i for i, r in enumerate(everything) if since <= r["at"] < until]
    assert [r["index"] for r in window] == expected
    # An offset is understood, also when its "+" arrives unescaped (as a space).
    for raw in ("2000-01-01T07:00:00%2B07:00", "2000-01-01T07:00:00+07:00"):
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{gw.url}/v1/audit/records?since={raw}", headers=role(gw, OPERATOR)) as r,
        ):
            assert r.status == 200 and len((await r.json())["records"]) == 7
    assert await search(gw, until="2000-01-01T00:00:00Z") == []


async def test_pagination_walks_every_record_once_even_while_records_are_appended(
    gw: Gateway,
) -> None:
    for _ in range(9):
        await send(gw, "hcm.quan-1", BUDGET)
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "4"} | ({"cursor": cursor} if cursor else {})
        status, _, doc = await call(gw, "/v1/audit/records", role(gw, AUDITOR), params=params)
        assert status == 200, doc
        assert len(doc["records"]) <= 4
        seen += [r["index"] for r in doc["records"]]
        pages += 1
        if pages == 2:  # New records arrive between pages: they show up once, at the end.
            await send(gw, "hcm.thu-duc", BUDGET)
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(20))
    assert pages == 5  # 20 records, 4 per page: the fifth page is full and says it is the last.


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"outcome": "lost"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-28"}, "until"),
        ({"until": "2026-13-28T00:00:00Z"}, "until"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"exchange_id": "1234"}, "exchange_id"),
        ({"sender": "x" * 300}, "sender"),
        ({"servce": CITIZEN}, "servce"),
    ],
)
async def test_bad_search_parameters_are_400_problems_naming_the_parameter(
    gw: Gateway, params: dict[str, str], named: str
) -> None:
    status, headers, doc = await call(gw, "/v1/audit/records", role(gw, OPERATOR), params=params)
    assert status == 400, doc
    assert headers["Content-Type"].startswith("application/problem+json")
    assert doc["type"] == "urn:gateway:problem:bad-request"
    assert repr(named) in doc["detail"]


@pytest.mark.parametrize("path", ["/v1/audit/records", "/v1/audit/export"])
@pytest.mark.parametrize(
    ("name", "value"),
    [("since", "9999-12-31T23:59:59-01:00"), ("until", "0001-01-01T00:00:00+01:00")],
)
async def test_a_time_that_moves_outside_years_1_to_9999_in_utc_is_a_400_not_a_500(
    gw: Gateway, path: str, name: str, value: str
) -> None:
    status, headers, doc = await call(gw, path, role(gw, AUDITOR), params={name: value})
    assert status == 400, doc
    assert headers["Content-Type"].startswith("application/problem+json")
    assert repr(name) in doc["detail"]


async def test_one_record_by_index_with_its_leaf_hash_and_404_past_the_end(gw: Gateway) -> None:
    await send(gw, "hcm.quan-1", CITIZEN)
    status, _, doc = await call(gw, "/v1/audit/records/1", role(gw, OPERATOR))
    assert status == 200, doc
    assert doc["index"] == 1 and doc["record"] == gw.records()[1]
    assert bytes.fromhex(doc["leaf_hash"]) == leaf_of(doc["record"])
    status, _, doc = await call(gw, "/v1/audit/records/2", role(gw, OPERATOR))
    assert status == 404 and doc["type"] == "urn:gateway:problem:not-found"
    status, _, doc = await call(gw, "/v1/audit/records/-1", role(gw, OPERATOR))
    assert status == 400 and "'index'" in doc["detail"]


# ------------------------------------------------------------------ live tail
async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[tuple[int, dict[str, Any]]]:
    """Read n `record` events from an SSE response (comments and retry lines skipped)."""
    events: list[tuple[int, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(10):
        while len(events) < n:
            line = (await resp.content.readline()).decode()
            assert line, "stream ended early"
            line = line.rstrip("\n")
            if not line:
                if "data" in fields:
                    assert fields["event"] == "record"
                    events.append((int(fields["id"]), orjson.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def test_stream_tails_new_records_and_resumes_after_last_event_id(gw: Gateway) -> None:
    await send(gw, "hcm.quan-1", CITIZEN)  # Records 0, 1: before the stream, not sent.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/v1/audit/stream", headers=role(gw, OPERATOR)) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            await send(gw, "hcm.quan-1", BUDGET)
            await send(gw, "hcm.thu-duc", BUDGET)
            events = await read_events(r, 4)
        assert [i for i, _ in events] == [2, 3, 4, 5]
        records = gw.records()
        assert [e["record"] for _, e in events] == records[2:6]
        assert all(bytes.fromhex(e["leaf_hash"]) == leaf_of(e["record"]) for _, e in events)

        await send(gw, "hcm.quan-1", CITIZEN)  # 6, 7: missed while disconnected.
        headers = {**role(gw, AUDITOR), "Last-Event-ID": "5"}
        async with s.get(f"{gw.url}/v1/audit/stream", headers=headers) as r:
            missed = await read_events(r, 2)
            await send(gw, "hcm.thu-duc", CITIZEN)  # 8, 9: live again.
            live = await read_events(r, 2)
        assert [i for i, _ in missed + live] == [6, 7, 8, 9]
        assert [e["record"] for _, e in missed + live] == gw.records()[6:10]

        async with s.get(
            f"{gw.url}/v1/audit/stream", headers=role(gw, ADMIN), params={"from": "0"}
        ) as r:
            assert [i for i, _ in await read_events(r, 10)] == list(range(10))


async def test_stream_stops_on_client_disconnect_and_on_shutdown(
    tmp_path: Path, provider: Provider
) -> None:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    async with aiohttp.ClientSession() as s:
        async with audit_gateway(cfg) as gw:
            tail = gw.app[audit_api.TAIL]
            r = await s.get(f"{gw.url}/v1/audit/stream", headers=role(gw, OPERATOR))
            assert r.status == 200 and len(tail.streams) == 1
            r.close()
            deadline = time.monotonic() + 3
            while tail.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not tail.streams, "the stream outlived its client"
            r = await s.get(f"{gw.url}/v1/audit/stream", headers=role(gw, OPERATOR))
            assert r.status == 200
            started = time.monotonic()
        # The app shut down: the open stream was ended at once, as a complete response.
        assert time.monotonic() - started < 5
        assert (await r.read()).startswith(b"retry: 2000")
        r.close()


def _fill(config: Path, count: int, pad: int) -> None:
    """``count`` records of about ``pad`` bytes in the deployment's log, before the app starts."""
    from gateway.audit.factory import open_store

    store = open_store(load(config), appends=True)
    try:
        for first in range(0, count, 500):
            store.append_batch(
                [
                    orjson.dumps({"event": "test.padding", "n": n, "pad": "x" * pad})
                    for n in range(first, min(count, first + 500))
                ]
            )
    finally:
        store.close()


def _tcp_state(sock: socket.socket) -> int:
    """tcpi_state of TCP_INFO (1 established; 7 closed, e.g. after a reset)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.parametrize("path", ["/v1/audit/stream?from=0", "/v1/audit/export"])
async def test_a_client_that_stops_reading_is_dropped_after_the_idle_timeout(
    tmp_path: Path, provider: Provider, path: str
) -> None:
    """6 MB of records to a client that reads only the status line: the server's buffers
    fill, and after idle_timeout_seconds (1 here) without progress it resets the connection
    and frees the stream slot, instead of holding both until shutdown."""
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port)
    text = cfg.read_text()
    assert "idle_timeout_seconds = 60\n" in text
    cfg.write_text(text.replace("idle_timeout_seconds = 60\n", "idle_timeout_seconds = 1\n"))
    _fill(cfg, 3000, 2000)
    async with audit_gateway(cfg) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        token = role(gw, AUDITOR)["Authorization"]
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            assert (await loop.sock_recv(sock, 12)) == b"HTTP/1.1 200"
            deadline = time.monotonic() + 30  # and then read nothing more
            while _tcp_state(sock) == 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert _tcp_state(sock) != 1, "the server kept writing to a client that stopped reading"
            assert not gw.app[audit_api.TAIL].streams
        finally:
            sock.close()


async def test_bad_last_event_id_is_a_400(gw: Gateway) -> None:
    headers = {**role(gw, OPERATOR), "Last-Event-ID": "abc"}
    status, _, doc = await call(gw, "/v1/audit/stream", headers)
    assert status == 400 and "'Last-Event-ID'" in doc["detail"]


# ------------------------------------------------------------------ export
async def test_export_streams_json_lines_of_the_records_in_the_time_range(gw: Gateway) -> None:
    for sender in ("hcm.quan-1", "hcm.thu-duc", "hcm.quan-1"):
        await send(gw, sender, BUDGET)
    everything = gw.records()
    ats = sorted(r["at"] for r in everything)
    since, until = ats[1], ats[-1]
    status, headers, body = await call(
        gw, "/v1/audit/export", role(gw, AUDITOR), params={"since": since, "until": until}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Audit-Tree-Size"] == "6"
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert body.endswith(b"\n")
    expected = [i for i, r in enumerate(everything) if since <= r["at"] < until]
    assert [x["index"] for x in lines] == expected
    assert [x["record"] for x in lines] == [everything[i] for i in expected]
    assert all(bytes.fromhex(x["leaf_hash"]) == leaf_of(x["record"]) for x in lines)

    status, _, body = await call(gw, "/v1/audit/export", role(gw, ADMIN))
    assert [orjson.loads(line)["record"] for line in body.splitlines()] == everything


# ------------------------------------------------------------------ checkpoints and proofs
def checkpoint_verifier(gw: Gateway, note: bytes) -> NoteVerifier:
    """The verifier of the gateway's checkpoint key, under the name the note is signed with."""
    key = load_private_key((gw.dir / "pki/checkpoint.key").read_bytes())
    name = note.decode().rsplit("\n\n", 1)[1].split(" ")[1]
    return NoteVerifier.for_signer(NoteSigner(name, key))


async def test_checkpoint_as_signed_note_text_and_as_json(gw: Gateway) -> None:
    await send(gw, "hcm.quan-1", CITIZEN)
    published = await publish(gw)
    assert published["size"] == 2
    status, headers, note = await call(gw, "/v1/audit/checkpoint")  # No credentials needed.
    assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    opened = open_note(note, [checkpoint_verifier(gw, note)])
    cp = parse_checkpoint(opened.text)
    size, root = len(gw.records()), merkle.root([leaf_of(r) for r in gw.records()])
    assert (cp.size, cp.root) == (size, root)

    status, headers, doc = await call(
        gw, "/v1/audit/checkpoint", {"Accept": "application/json, text/plain;q=0.5"}
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert doc == {
        "origin": cp.origin,
        "size": size,
        "root": base64.b64encode(root).decode(),
        "note": note.decode(),
    }
    assert doc == published


async def test_inclusion_proofs_verify_against_the_returned_root(gw: Gateway) -> None:
    sent = [await send(gw, p, BUDGET) for p in ("hcm.quan-1", "hcm.thu-duc", "hcm.ca-tp")]
    leaves = [leaf_of(r) for r in gw.records()]
    for size in (1, 3, 6):
        for index in range(size):
            status, _, doc = await call(
                gw,
                "/v1/audit/proof/inclusion",
                role(gw, AUDITOR),
                params={"index": str(index), "tree_size": str(size)},
            )
            assert status == 200, doc
            assert (doc["index"], doc["tree_size"]) == (index, size)
            assert bytes.fromhex(doc["root"]) == merkle.root(leaves[:size])
            merkle.verify_inclusion(
                bytes.fromhex(doc["leaf_hash"]),
                index,
                size,
                [bytes.fromhex(p) for p in doc["proof"]],
                bytes.fromhex(doc["root"]),
            )
    # By exchange id, against the latest checkpoint by default.
    await publish(gw)
    status, _, doc = await call(
        gw,
        "/v1/audit/proof/inclusion",
        role(gw, OPERATOR),
        params={"exchange_id": sent[1]["exchange_id"]},
    )
    assert status == 200, doc
    assert doc["index"] == 2 and doc["tree_size"] == 6
    assert doc["exchange_id"] == sent[1]["exchange_id"]
    assert sent[1]["receipt"] and bytes.fromhex(doc["leaf_hash"]) == leaves[2]
    merkle.verify_inclusion(
        leaves[2], 2, 6, [bytes.fromhex(p) for p in doc["proof"]], merkle.root(leaves)
    )


@pytest.mark.parametrize(
    ("params", "status", "named"),
    [
        ({"index": "0", "tree_size": "0"}, 400, "tree_size"),
        ({"index": "2", "tree_size": "2"}, 400, "tree_size"),
        ({"index": "0", "tree_size": "3"}, 400, "tree_size"),  # Larger than the log.
        ({"index": "x"}, 400, "index"),
        ({"tree_size": "1"}, 400, "index"),
        ({"index": "0", "exchange_id": "x"}, 400, "index"),
        ({"exchange_id": "00000000-0000-7000-8000-000000000000"}, 404, None),
        ({"index": "0"}, 503, None),  # No checkpoint yet: retry, or pass tree_size.
    ],
)
async def test_bad_inclusion_requests(
    gw: Gateway, params: dict[str, str], status: int, named: str | None
) -> None:
    await send(gw, "hcm.quan-1", CITIZEN)
    got, headers, doc = await call(
        gw, "/v1/audit/proof/inclusion", role(gw, AUDITOR), params=params
    )
    assert got == status, doc
    if named:
        assert repr(named) in doc["detail"]
    if status == 503:
        assert headers["Retry-After"] == "1"


@pytest.mark.parametrize("index", ["2", "4611686018427387904"])
async def test_inclusion_of_an_index_past_the_logs_end_is_404_not_retry_later(
    gw: Gateway, index: str
) -> None:
    """Without tree_size, a record that does not exist is no checkpoint away: a 503 with
    Retry-After would have the client retry forever."""
    await send(gw, "hcm.quan-1", CITIZEN)  # Records 0 and 1.
    await publish(gw)
    got, headers, doc = await call(
        gw, "/v1/audit/proof/inclusion", role(gw, AUDITOR), params={"index": index}
    )
    assert got == 404, doc
    assert "Retry-After" not in headers and index in doc["detail"]


async def test_consistency_proofs_verify_between_any_two_sizes(gw: Gateway) -> None:
    for _ in range(3):
        await send(gw, "hcm.quan-1", BUDGET)
    leaves = [leaf_of(r) for r in gw.records()]
    for first in range(7):
        for second in range(first, 7):
            status, _, doc = await call(
                gw,
                "/v1/audit/proof/consistency",
                role(gw, AUDITOR),
                params={"first": str(first), "second": str(second)},
            )
            assert status == 200, doc
            assert bytes.fromhex(doc["first_root"]) == merkle.root(leaves[:first])
            assert bytes.fromhex(doc["second_root"]) == merkle.root(leaves[:second])
            merkle.verify_consistency(
                first,
                second,
                [bytes.fromhex(p) for p in doc["proof"]],
                bytes.fromhex(doc["first_root"]),
                bytes.fromhex(doc["second_root"]),
            )
    status, _, doc = await call(
        gw, "/v1/audit/proof/consistency", role(gw, AUDITOR), params={"first": "3", "second": "2"}
    )
    assert status == 400 and "'first'" in doc["detail"]
    status, _, doc = await call(
        gw, "/v1/audit/proof/consistency", role(gw, AUDITOR), params={"first": "1", "second": "7"}
    )
    assert status == 400 and "'second'" in doc["detail"]


# ------------------------------------------------------------------ exchanges
async def test_exchange_state_for_its_sender_and_operators_only(
    gw: Gateway, provider: Provider
) -> None:
    ok = await send(gw, "hcm.quan-1", CITIZEN)
    path = f"/v1/exchanges/{ok['exchange_id']}"
    for headers in (participant(gw, "hcm.quan-1"), role(gw, OPERATOR), role(gw, ADMIN)):
        status, _, doc = await call(gw, path, headers)
        assert status == 200, doc
        assert doc["state"] == "delivered" and doc["status"] == 200
        assert (doc["sender"], doc["service"], doc["provider"]) == (
            "hcm.quan-1",
            CITIZEN,
            "central.dan-cu",
        )
        assert [r["event"] for r in doc["records"]] == ["exchange.accepted", "exchange.delivered"]
        assert [r["index"] for r in doc["records"]] == [0, 1]
    status, _, _ = await call(gw, path, role(gw, AUDITOR))
    assert status == 403

    # Another sender's exchange and an absent one: the same 404, word for word.
    status, _, other = await call(gw, path, participant(gw, "hcm.thu-duc"))
    absent_path = f"/v1/exchanges/{uuid7()}"
    status2, _, absent = await call(gw, absent_path, participant(gw, "hcm.thu-duc"))
    assert status == status2 == 404
    assert other.pop("instance") == path and absent.pop("instance") == absent_path
    assert other == absent

    provider.mode = "fail"
    failed = await send(gw, "hcm.thu-duc", BUDGET)
    status, _, doc = await call(
        gw, f"/v1/exchanges/{failed['exchange_id']}", participant(gw, "hcm.thu-duc")
    )
    assert (doc["state"], doc["status"], doc["cause"]) == ("failed", 502, "provider-failed")
    rejected = await send(gw, "central.dan-cu", BUDGET)
    status, _, doc = await call(
        gw, f"/v1/exchanges/{rejected['exchange_id']}", participant(gw, "central.dan-cu")
    )
    assert (doc["state"], doc["status"], doc["cause"]) == ("rejected", 403, "forbidden")


async def test_exchange_state_lists_every_record_of_a_much_replayed_exchange_page_by_page(
    gw: Gateway,
) -> None:
    """Each answer given again under an Idempotency-Key is audited against the original
    exchange, so an exchange gathers any number of records; the state listed its first 100
    and silently dropped the rest. Now the list comes in pages, with ``next_cursor`` (null on
    the last page), and the summary is the exchange's whichever page is asked for."""
    replays = 120
    headers = {**participant(gw, "hcm.quan-1"), "Idempotency-Key": str(uuid7())}
    async with aiohttp.ClientSession() as s:
        for _ in range(replays + 1):
            async with s.post(
                f"{gw.url}/v1/exchange/{CITIZEN}", json=example(CITIZEN), headers=headers
            ) as r:
                assert r.status == 200, await r.text()
                xid = r.headers["X-Exchange-Id"]
    path = f"/v1/exchanges/{xid}"
    listed: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    for _ in range(10):  # bounded: 122 records are two pages
        status, _, doc = await call(gw, path, participant(gw, "hcm.quan-1"), params=params)
        assert status == 200, doc
        assert (doc["state"], doc["status"]) == ("delivered", 200)
        listed += doc["records"]
        if doc["next_cursor"] is None:
            break
        params = {"cursor": doc["next_cursor"]}
    events = [r["event"] for r in listed]
    assert events == ["exchange.accepted", "exchange.delivered"] + ["exchange.replayed"] * replays
    assert [r["index"] for r in listed] == sorted({r["index"] for r in listed})
    status, _, doc = await call(gw, path, role(gw, OPERATOR), params={"cursor": "nonsense"})
    assert status == 400 and "cursor" in doc["detail"]
    status, _, doc = await call(gw, path, role(gw, OPERATOR), params={"limit": "5"})
    assert status == 400 and "limit" in doc["detail"]  # unknown parameters are not ignored


async def test_exchange_proof_bundle_completes_the_receipt(gw: Gateway) -> None:
    ok = await send(gw, "hcm.quan-1", CITIZEN)
    await send(gw, "hcm.thu-duc", CITIZEN)
    path = f"/v1/exchanges/{ok['exchange_id']}/proof"
    status, headers, _ = await call(gw, path, participant(gw, "hcm.quan-1"))
    assert status == 503 and headers["Retry-After"] == "1"  # Not checkpointed yet.
    await publish(gw)
    status, _, bundle = await call(gw, path, participant(gw, "hcm.quan-1"))
    assert status == 200, bundle
    receipt = orjson.loads(base64.urlsafe_b64decode(ok["receipt"]["payload"] + "=="))
    assert bundle["format"] == "dtc-gateway/inclusion-proof/v1"
    assert bundle["index"] == receipt["audit"]["index"] == 0
    assert bundle["leaf_hash"] == receipt["audit"]["leaf_hash"]
    assert bytes.fromhex(bundle["leaf_hash"]) == leaf_of(bundle["record"])
    assert bundle["record"]["exchange_id"] == ok["exchange_id"]
    note = bundle["checkpoint"].encode()
    cp = parse_checkpoint(open_note(note, [checkpoint_verifier(gw, note)]).text)
    assert (cp.size, cp.root.hex()) == (bundle["tree_size"], bundle["root"]) == (4, cp.root.hex())
    merkle.verify_inclusion(
        bytes.fromhex(bundle["leaf_hash"]),
        bundle["index"],
        bundle["tree_size"],
        [bytes.fromhex(p) for p in bundle["proof"]],
        cp.root,
    )
    status, _, _ = await call(gw, path, participant(gw, "hcm.thu-duc"))
    assert status == 404
    status, _, _ = await call(gw, path, role(gw, AUDITOR))
    assert status == 200

    # What `gateway verify` does with it, offline, once the sender adds its receipt.
    dep = load(gw.config)
    trust = Trust.from_pems(
        dep.trust_anchor_pems,
        note_verifiers=checkpoint_verifiers(dep.config.audit.origin, dep.checkpoint_key_pem),
        gateway_id=dep.config.gateway.id,
        origin=dep.config.audit.origin,
    )
    report = verify_artifact(
        orjson.dumps(bundle | {"receipt": ok["receipt"]}), trust, now=datetime.now(UTC)
    )
    assert report.valid, report.lines()
    assert any("receipt names audit index 0" in line for line in report.lines())
    tampered = bundle | {"record": bundle["record"] | {"sender": "hcm.thu-duc"}}
    report = verify_artifact(orjson.dumps(tampered), trust, now=datetime.now(UTC))
    assert not report.valid
