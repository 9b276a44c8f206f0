"""What the audit log proves: inclusion and consistency proofs, and each exchange's state.

It exists because these handlers answer a different question from search and export: not
"which records are there" but "what can a client check", each one reading the tree (proof
paths, roots, the latest signed checkpoint) rather than pages of records. The exchange routes
belong here as well: the state of an exchange and its proof bundle are both read from the
exchange's own records, and a participant sees only the exchanges it sent (another's answer
is the same 404 as a missing one, so exchange ids cannot be probed).

The proof bundle (``GET /v1/exchanges/{id}/proof``) is what ``gateway verify`` checks offline;
its format is documented on :func:`exchange_proof`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import authz
from gateway.audit.log import AuditLog
from gateway.audit.store import RecordQuery, StoredCheckpoint, StoredRecord
from gateway.errors import BadRequest, NotFound, NotReady
from gateway.http.audit_query import (
    PRINCIPAL,
    audit_of,
    bad,
    check_params,
    decode_cursor,
    encode_cursor,
    exchange_id_param,
    int_param,
    json_response,
    record_json,
    req_int,
)

_TERMINAL = ("exchange.delivered", "exchange.failed", "exchange.rejected")


class CheckpointPending(NotReady):
    """The record exists but no signed checkpoint covers it yet: retry in a second."""

    retry_after = 1


async def _default_size(audit: AuditLog, index: int) -> tuple[int, StoredCheckpoint]:
    cp = await audit.latest_checkpoint()
    if cp is None or cp.size <= index:
        raise CheckpointPending(
            f"record {index} is not yet covered by a signed checkpoint; retry in a second"
            " (or pass tree_size)"
        )
    return cp.size, cp


EXCHANGE_PAGE = 100
"""Records per page of ``GET /v1/exchanges/{id}``. An exchange has no bound on its records:
every answer given again under its ``Idempotency-Key`` is audited against it."""


async def _exchange_records(audit: AuditLog, xid: str) -> tuple[StoredRecord, list[StoredRecord]]:
    """The exchange's accepted record (else its first: a rejection), and its first records.

    Those hold what the exchange's state is read from: its first record (accepted or
    rejected) and its outcome come before any replayed record (an answer is stored for replay
    only once its outcome is audited). One more than a page tells whether there are more.
    """
    rows = await audit.query(RecordQuery(exchange_id=xid, limit=EXCHANGE_PAGE + 1))
    if not rows:
        raise NotFound(authz.NOT_VISIBLE_DETAIL)
    for r in rows:
        if orjson.loads(r.record).get("event") == "exchange.accepted":
            return r, rows
    return rows[0], rows


# ------------------------------------------------------------------ proofs
async def inclusion(request: web.Request) -> web.Response:
    """``GET /v1/audit/proof/inclusion?index=|exchange_id=[&tree_size=]`` (RFC 9162 2.1.3)."""
    check_params(request, frozenset({"index", "exchange_id", "tree_size"}))
    q, audit = request.query, audit_of(request)
    if ("index" in q) == ("exchange_id" in q):
        raise BadRequest("give exactly one of the parameters 'index' and 'exchange_id'")
    head, _ = await audit.tree_head()
    if "exchange_id" in q:
        rec, _ = await _exchange_records(audit, exchange_id_param(q["exchange_id"]))
        index = rec.index
    else:
        index = req_int(q["index"], "index")
    tree_size = int_param(q.get("tree_size"), "tree_size")
    if tree_size is None and index >= head:  # No checkpoint will cover it: not a 503 to retry.
        raise NotFound(f"the audit log has no record at index {index}")
    if tree_size is None:
        tree_size, _ = await _default_size(audit, index)
    elif tree_size > head:
        raise bad("tree_size", f"at most the current size of the log ({head})")
    if index >= tree_size:
        raise bad("tree_size", f"greater than the index ({index})")
    found = await audit.get(index)
    if found is None:
        raise NotFound(f"the audit log has no record at index {index}")
    proof = await audit.inclusion_proof(index, tree_size)
    doc = {
        "index": index,
        "tree_size": tree_size,
        "leaf_hash": found.leaf_hash.hex(),
        "proof": [p.hex() for p in proof],
        "root": (await audit.root_at(tree_size)).hex(),
    }
    if "exchange_id" in q:
        doc["exchange_id"] = q["exchange_id"]
    return json_response(doc)


async def consistency(request: web.Request) -> web.Response:
    """``GET /v1/audit/proof/consistency?first=[&second=]`` (RFC 9162 2.1.4).

    ``second`` defaults to the latest checkpoint's size.
    """
    check_params(request, frozenset({"first", "second"}))
    audit = audit_of(request)
    if "first" not in request.query:
        raise bad("first", "given (the size of the older tree)")
    first = req_int(request.query["first"], "first")
    second = int_param(request.query.get("second"), "second")
    head, _ = await audit.tree_head()
    if second is None:
        cp = await audit.latest_checkpoint()
        if cp is None:
            raise CheckpointPending("no checkpoint has been published yet; pass 'second'")
        second = cp.size
    if second > head:
        raise bad("second", f"at most the current size of the log ({head})")
    if first > second:
        raise bad("first", f"at most 'second' ({second})")
    proof = await audit.consistency_proof(first, second)
    return json_response(
        {
            "first": first,
            "second": second,
            "proof": [p.hex() for p in proof],
            "first_root": (await audit.root_at(first)).hex(),
            "second_root": (await audit.root_at(second)).hex(),
        }
    )


# ------------------------------------------------------------------ exchanges
async def exchange_state(request: web.Request) -> web.Response:
    """``GET /v1/exchanges/{exchange_id}[?cursor=]``: the exchange as its audit records tell
    it, and one page of those records (``next_cursor`` for the next, null on the last)."""
    check_params(request, frozenset({"cursor"}))
    xid = exchange_id_param(request.match_info["exchange_id"])
    after = decode_cursor(request.query.get("cursor"))
    audit = audit_of(request)
    _, rows = await _exchange_records(audit, xid)
    records = [orjson.loads(r.record) for r in rows]
    sender = next((r.get("sender") for r in records if r.get("sender")), None)
    authz.require_visible(request[PRINCIPAL], sender)
    page = rows
    if after >= 0:  # a later page, asked for once the exchange is known to be visible
        query = RecordQuery(exchange_id=xid, after_index=after, limit=EXCHANGE_PAGE + 1)
        page = await audit.query(query)
    more = len(page) > EXCHANGE_PAGE
    page = page[:EXCHANGE_PAGE]
    last = next((r for r in reversed(records) if r.get("event") in _TERMINAL), records[-1])
    terminal = last.get("event") in _TERMINAL
    doc: dict[str, Any] = {
        "exchange_id": xid,
        "service": next((r["service"] for r in records if r.get("service")), None),
        "sender": sender,
        "provider": next((r["provider"] for r in records if r.get("provider")), None),
        "state": str(last.get("event", "")).removeprefix("exchange."),
        "status": last.get("status") if terminal else None,
        "records": [_record_line(row) for row in page],
        "next_cursor": encode_cursor(page[-1].index) if more else None,
    }
    for member in ("cause", "attempts", "receipt_sha256"):
        if member in last:
            doc[member] = last[member]
    return json_response(doc)


def _record_line(row: StoredRecord) -> dict[str, Any]:
    record = orjson.loads(row.record)
    return {"index": row.index, "event": record.get("event"), "at": record.get("at")}


async def exchange_proof(request: web.Request) -> web.Response:
    """``GET /v1/exchanges/{exchange_id}/proof``: the bundle that completes a receipt.

    ``{"format": "dtc-gateway/inclusion-proof/v1", "exchange_id", "index", "leaf_hash" (hex),
    "record" (the audit record, whose RFC 8785 canonical JSON hashes to leaf_hash),
    "tree_size", "proof" ([hex], RFC 9162 inclusion path), "root" (hex, at tree_size),
    "checkpoint" (the signed note text whose size is tree_size and whose root is root)}``.
    The proven record is the exchange's ``exchange.accepted`` record, the one a receipt's
    ``audit`` member names (for a rejection, its ``exchange.rejected`` record). A client may
    add its receipt under ``"receipt"`` so ``gateway verify`` checks both in one go.
    """
    audit = audit_of(request)
    xid = exchange_id_param(request.match_info["exchange_id"])
    rec, rows = await _exchange_records(audit, xid)
    sender = next(
        (s for r in rows if (s := orjson.loads(r.record).get("sender")) is not None), None
    )
    authz.require_visible(request[PRINCIPAL], sender)
    tree_size, cp = await _default_size(audit, rec.index)
    proof = await audit.inclusion_proof(rec.index, tree_size)
    return json_response(
        {
            "format": "dtc-gateway/inclusion-proof/v1",
            "exchange_id": xid,
            "index": rec.index,
            "leaf_hash": rec.leaf_hash.hex(),
            "record": orjson.Fragment(record_json(rec.record)),
            "tree_size": tree_size,
            "proof": [p.hex() for p in proof],
            "root": cp.root.hex(),
            "checkpoint": cp.note.decode("utf-8"),
        }
    )
