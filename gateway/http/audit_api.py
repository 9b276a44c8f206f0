"""The audit log over HTTP: search, live tail, export, checkpoints, proofs and exchange state.

Why these shapes:

* Every record is served as ``{"index", "leaf_hash", "record"}``, with ``record`` the stored
  canonical JSON spliced in unchanged (``orjson.Fragment``): what a client reads is byte for byte
  what was hashed, so ``leaf_hash`` can be recomputed from it, and serving costs no re-encoding.
* Cursors are opaque (``base64url("v1:<last index>")``) and mean "strictly after this index":
  records appended between two pages never cause duplicates or gaps.
* The stream and the export are bounded per connection: the stream reads at most
  ``STREAM_BATCH`` records at a time, the export ``EXPORT_BATCH``, and each write waits for
  the socket to drain. One task per process polls the tree size (every ``POLL_SECONDS``, since
  other processes and instances append too) and wakes the streams, so a hundred open streams
  cost one store read per poll, not a hundred.
* The export has no trailer line: every line is a record, so ``wc -l`` and line-by-line
  tools stay simple. It is a snapshot: records at indexes below the tree size read when it
  started (response header ``Audit-Tree-Size``), in index order; a truncated transfer is
  visible to the client as an unterminated chunked body.
* Authorization is one middleware (made by :func:`_authorizer`) applying ``gateway.authz.RULES`` to
  every route of the application: deny by default, and the app refuses to start while a route
  has no rule. Handlers read the principal from ``request[PRINCIPAL]``.

The proof bundle (``GET /v1/exchanges/{id}/proof``) is what ``gateway verify`` checks offline;
its format is documented on :func:`exchange_proof`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway import authz
from gateway.audit.log import AuditLog
from gateway.audit.publisher import CheckpointPublisher
from gateway.audit.store import RecordQuery, StoredCheckpoint, StoredRecord
from gateway.authz import Credentials, Principal, PrincipalResolver
from gateway.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    NotReady,
    RateLimited,
    Unauthenticated,
)
from gateway.http import app as keys
from gateway.models import rfc3339

log = structlog.get_logger("gateway.audit_api")

POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 15.0
STREAM_BATCH = 256
EXPORT_BATCH = 1000
MAX_STREAMS = 64  # Per process; more get 429 with Retry-After.
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_INDEX = 2**62
OUTCOMES = {o: f"exchange.{o}" for o in ("accepted", "delivered", "failed", "rejected")}
_TERMINAL = ("exchange.delivered", "exchange.failed", "exchange.rejected")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+\- ]\d{2}:\d{2})"
)
_NDJSON = "application/x-ndjson"


PRINCIPAL = web.RequestKey("principal", Principal)
RESOLVER = web.AppKey("principal_resolver", PrincipalResolver)
PUBLISHER = web.AppKey("checkpoint_publisher", CheckpointPublisher)
"""Set by the composition root when checkpoints are configured; POST publishes through it."""


class CheckpointPending(NotReady):
    """The record exists but no signed checkpoint covers it yet: retry in a second."""

    def extra_headers(self) -> Mapping[str, str]:
        return {"Retry-After": "1"}


# ------------------------------------------------------------------ parameters
def _bad(name: str, expected: str) -> BadRequest:
    return BadRequest(f"parameter {name!r} must be {expected}")


def _int(value: str | None, name: str, *, default: int | None = None) -> int | None:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > MAX_INDEX:
        raise _bad(name, "a non-negative decimal integer")
    return int(value)


def _time(value: str | None, name: str) -> str | None:
    """RFC 3339 -> the records' own form (UTC, milliseconds, Z), which sorts as a string.

    A space before the offset is read as ``+``: an unescaped ``+`` in a query string arrives
    as a space. Precision beyond milliseconds is cut, like the records' own times.
    """
    if value is None:
        return None
    if not _RFC3339.fullmatch(value):
        raise _bad(name, "an RFC 3339 date-time, e.g. 2026-11-28T09:00:00Z")
    text = value.upper().replace(" ", "+")
    try:
        return rfc3339(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC))
    except ValueError:
        raise _bad(name, "a valid RFC 3339 date-time") from None


def _req_int(value: str, name: str) -> int:
    index = _int(value, name)
    assert index is not None  # A value was given, so _int parsed it or raised.
    return index


def _text(value: str | None, name: str) -> str | None:
    if value is not None and not (0 < len(value) <= 200 and value.isprintable()):
        raise _bad(name, "a printable string of 1 to 200 characters")
    return value


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """-1 (start) for no cursor; 400 naming ``cursor`` for anything not made by encode_cursor."""
    if cursor is None:
        return -1
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _bad("cursor", "a next_cursor value returned by this API") from None
    version, _, index = raw.partition(":")
    if version != "v1" or not index.isdigit() or len(index) > 19:
        raise _bad("cursor", "a next_cursor value returned by this API")
    return int(index)


def _check_params(request: web.Request, allowed: frozenset[str]) -> None:
    """Unknown parameters are errors: a mistyped filter must not silently match everything."""
    for name in request.query:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name[:40]!r}; expected one of {sorted(allowed)}")


def _exchange_id(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise _bad("exchange_id", "an exchange id (a lowercase UUID)")
    return value


# ------------------------------------------------------------------ responses
def _record_json(raw: bytes) -> bytes:
    """Stored canonical JSON as it is; re-encoded only if it could break SSE/NDJSON framing."""
    if b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw))
    return raw


def _item(r: StoredRecord) -> dict[str, Any]:
    return {
        "index": r.index,
        "leaf_hash": r.leaf_hash.hex(),
        "record": orjson.Fragment(_record_json(r.record)),
    }


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(doc),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _audit(request: web.Request) -> AuditLog:
    return request.app[keys.AUDIT]


def _prefers_json(accept: str) -> bool:
    """``application/json`` with a q above 0 and above ``text/plain``'s; otherwise note text."""
    q: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for p in params:
            if p.startswith("q="):
                with contextlib.suppress(ValueError):
                    weight = float(p[2:])
        q[media.lower()] = max(q.get(media.lower(), 0.0), weight)
    j = q.get("application/json", 0.0)
    return j > 0 and j > q.get("text/plain", 0.0)


def _checkpoint_response(request: web.Request, cp: StoredCheckpoint) -> web.Response:
    note = cp.note.decode("utf-8")
    if _prefers_json(request.headers.get("Accept", "")):
        return _json(
            {
                "origin": note.split("\n", 1)[0],
                "size": cp.size,
                "root": base64.b64encode(cp.root).decode(),
                "note": note,
            }
        )
    return web.Response(
        body=cp.note, content_type="text/plain", charset="utf-8", headers={"Vary": "Accept"}
    )


# ------------------------------------------------------------------ records
async def search(request: web.Request) -> web.Response:
    """``GET /v1/audit/records``: filters, then one page in index order, with its cursor."""
    q = request.query
    _check_params(request, _SEARCH_PARAMS)
    outcome = q.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise _bad("outcome", f"one of {', '.join(OUTCOMES)}")
    limit = _int(q.get("limit"), "limit", default=DEFAULT_LIMIT)
    assert limit is not None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"between 1 and {MAX_LIMIT}")
    xid = q.get("exchange_id")
    query = RecordQuery(
        since=_time(q.get("since"), "since"),
        until=_time(q.get("until"), "until"),
        sender=_text(q.get("sender"), "sender"),
        service=_text(q.get("service"), "service"),
        provider=_text(q.get("provider"), "provider"),
        event=OUTCOMES[outcome] if outcome else None,
        exchange_id=_exchange_id(xid) if xid is not None else None,
        after_index=decode_cursor(q.get("cursor")),
        limit=limit + 1,  # One more tells whether there is a next page.
    )
    rows = await _audit(request).query(query)
    page = rows[:limit]
    more = len(rows) > limit
    return _json(
        {
            "records": [_item(r) for r in page],
            "next_cursor": encode_cursor(page[-1].index) if more else None,
        }
    )


_SEARCH_PARAMS = frozenset(
    {"since", "until", "sender", "service", "provider", "outcome", "exchange_id", "cursor", "limit"}
)


async def one_record(request: web.Request) -> web.Response:
    """``GET /v1/audit/records/{index}``."""
    index = _req_int(request.match_info["index"], "index")
    rec = await _audit(request).get(index)
    if rec is None:
        raise NotFound(f"the audit log has no record at index {index}")
    return _json(_item(rec))


async def export(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audit/export?since=&until=``: JSON Lines, a snapshot, in index order."""
    _check_params(request, frozenset({"since", "until"}))
    since = _time(request.query.get("since"), "since")
    until = _time(request.query.get("until"), "until")
    audit = _audit(request)
    size, _ = await audit.tree_head()
    resp = web.StreamResponse(headers={"Cache-Control": "no-store", "Audit-Tree-Size": str(size)})
    resp.content_type = _NDJSON
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    after = -1
    try:
        while True:
            rows = await audit.query(
                RecordQuery(since=since, until=until, after_index=after, limit=EXPORT_BATCH)
            )
            rows = [r for r in rows if r.index < size]
            if rows:
                await resp.write(b"".join(orjson.dumps(_item(r)) + b"\n" for r in rows))
                after = rows[-1].index
            if len(rows) < EXPORT_BATCH:
                break
        await resp.write_eof()
    except Exception as e:
        _abort(request, "audit.export_aborted", e, after_index=after)
    return resp


def _abort(request: web.Request, event: str, error: Exception, **fields: Any) -> None:
    """A streamed answer failed after its status was sent: cut the connection, log why.

    No problem document can follow a 200 that is already on the wire; an unterminated
    chunked body is how HTTP tells the client the transfer failed.
    """
    if isinstance(error, ConnectionResetError):  # The client left: nothing went wrong here.
        log.info(event, reason="client disconnected", **fields)
    else:
        log.error(event, error=f"{type(error).__name__}: {error}", **fields)
    if request.transport is not None:
        request.transport.close()


# ------------------------------------------------------------------ live tail (SSE)
class _Tail:
    """The log size, polled by one task per process while streams are open; wakes them."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.size = 0
        self.changed = asyncio.Event()
        self.stopping = False
        self.streams: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None

    def join(self, task: asyncio.Task[Any]) -> None:
        if len(self.streams) >= MAX_STREAMS:
            raise RateLimited(f"{MAX_STREAMS} audit streams are open already; retry later", 5)
        self.streams.add(task)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="audit-tail-poller")

    def leave(self, task: asyncio.Task[Any]) -> None:
        self.streams.discard(task)
        if not self.streams and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _poll(self) -> None:
        while True:
            try:
                size, _ = await self._app[keys.AUDIT].tree_head()
            except Exception as e:  # Store briefly unavailable: streams wait, polling goes on.
                log.warning("audit.tail_poll_failed", error=f"{type(e).__name__}: {e}")
            else:
                if size != self.size:
                    self.size = size
                    self._wake()
            await asyncio.sleep(POLL_SECONDS)

    async def shutdown(self, _app: web.Application) -> None:
        """on_shutdown: end every stream (they finish their response), then stop polling."""
        self.stopping = True
        self._wake()
        if self.streams:
            _, pending = await asyncio.wait(set(self.streams), timeout=2)
            for task in pending:  # Blocked writing to a client that does not read.
                task.cancel()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None


TAIL = web.AppKey("audit_tail", _Tail)


def _stream_start(request: web.Request, size: int) -> int:
    """Last-Event-ID (resume after it), else ``?from=``, else the current end of the log."""
    last = request.headers.get("Last-Event-ID")
    if last is not None and last.strip():
        return _req_int(last.strip(), "Last-Event-ID") + 1
    start = _int(request.query.get("from"), "from", default=size)
    assert start is not None
    return start


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audit/stream``: ``id: <index>``, ``event: record``, ``data: <item JSON>``."""
    _check_params(request, frozenset({"from"}))
    audit, tail = _audit(request), request.app[TAIL]
    start = _stream_start(request, (await audit.tree_head())[0])
    task = asyncio.current_task()
    assert task is not None
    tail.join(task)
    try:
        resp = web.StreamResponse(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        try:
            await _pump(request, resp, audit, tail, start)
        except Exception as e:
            _abort(request, "audit.stream_ended", e)
        return resp
    finally:
        tail.leave(task)


async def _pump(
    request: web.Request, resp: web.StreamResponse, audit: AuditLog, tail: _Tail, start: int
) -> None:
    """Send records from ``start`` on as they are committed, until shutdown or disconnect."""
    loop = asyncio.get_running_loop()
    nxt, quiet_since = start, loop.time()
    size = max(tail.size, (await audit.tree_head())[0])
    while not tail.stopping:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if size > nxt:
            rows = await audit.records(nxt, min(size, nxt + STREAM_BATCH))
            if rows:
                await resp.write(b"".join(_sse(r) for r in rows))
                nxt, quiet_since = rows[-1].index + 1, loop.time()
                continue
        changed = tail.changed  # Taken before checking the size: no wake-up is lost.
        if tail.size > nxt:
            size = tail.size
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # Also notice a disconnect within a second.
                await changed.wait()
        size = max(size, tail.size)
        if loop.time() - quiet_since >= HEARTBEAT_SECONDS:
            await resp.write(b": keepalive\n\n")
            quiet_since = loop.time()
    await resp.write_eof()


def _sse(r: StoredRecord) -> bytes:
    return b"id: %d\nevent: record\ndata: %s\n\n" % (r.index, orjson.dumps(_item(r)))


# ------------------------------------------------------------------ checkpoints
async def get_checkpoint(request: web.Request) -> web.Response:
    """``GET /v1/audit/checkpoint``: the signed note, or JSON with ``Accept: application/json``."""
    cp = await _audit(request).latest_checkpoint()
    if cp is None:
        raise NotReady("no checkpoint has been published yet; retry in a few seconds")
    return _checkpoint_response(request, cp)


async def publish_checkpoint(request: web.Request) -> web.Response:
    """``POST /v1/audit/checkpoint`` (admin): sign and publish a checkpoint of the tree now."""
    publisher = request.app.get(PUBLISHER)
    if publisher is None:
        raise NotReady("checkpoints are not configured (audit.origin and audit.checkpoint_key)")
    cp = await publisher.publish_now()
    log.info("audit.checkpoint_published", size=cp.size, by=request[PRINCIPAL].id)
    return _checkpoint_response(request, cp)


# ------------------------------------------------------------------ proofs
async def _default_size(audit: AuditLog, index: int) -> tuple[int, StoredCheckpoint]:
    cp = await audit.latest_checkpoint()
    if cp is None or cp.size <= index:
        raise CheckpointPending(
            f"record {index} is not yet covered by a signed checkpoint; retry in a second"
            " (or pass tree_size)"
        )
    return cp.size, cp


async def _exchange_records(audit: AuditLog, xid: str) -> tuple[StoredRecord, list[StoredRecord]]:
    """The exchange's accepted record (else its first: a rejection), and all its records."""
    rows = await audit.query(RecordQuery(exchange_id=xid, limit=100))
    if not rows:
        raise NotFound(authz.NOT_VISIBLE_DETAIL)
    for r in rows:
        if orjson.loads(r.record).get("event") == "exchange.accepted":
            return r, rows
    return rows[0], rows


async def inclusion(request: web.Request) -> web.Response:
    """``GET /v1/audit/proof/inclusion?index=|exchange_id=[&tree_size=]`` (RFC 9162 2.1.3)."""
    _check_params(request, frozenset({"index", "exchange_id", "tree_size"}))
    q, audit = request.query, _audit(request)
    if ("index" in q) == ("exchange_id" in q):
        raise BadRequest("give exactly one of the parameters 'index' and 'exchange_id'")
    head, _ = await audit.tree_head()
    if "exchange_id" in q:
        rec, _ = await _exchange_records(audit, _exchange_id(q["exchange_id"]))
        index = rec.index
    else:
        index = _req_int(q["index"], "index")
    tree_size = _int(q.get("tree_size"), "tree_size")
    if tree_size is None:
        tree_size, _ = await _default_size(audit, index)
    elif tree_size > head:
        raise _bad("tree_size", f"at most the current size of the log ({head})")
    if index >= tree_size:
        raise _bad("tree_size", f"greater than the index ({index})")
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
    return _json(doc)


async def consistency(request: web.Request) -> web.Response:
    """``GET /v1/audit/proof/consistency?first=[&second=]`` (RFC 9162 2.1.4).

    ``second`` defaults to the latest checkpoint's size.
    """
    _check_params(request, frozenset({"first", "second"}))
    audit = _audit(request)
    if "first" not in request.query:
        raise _bad("first", "given (the size of the older tree)")
    first = _req_int(request.query["first"], "first")
    second = _int(request.query.get("second"), "second")
    head, _ = await audit.tree_head()
    if second is None:
        cp = await audit.latest_checkpoint()
        if cp is None:
            raise CheckpointPending("no checkpoint has been published yet; pass 'second'")
        second = cp.size
    if second > head:
        raise _bad("second", f"at most the current size of the log ({head})")
    if first > second:
        raise _bad("first", f"at most 'second' ({second})")
    proof = await audit.consistency_proof(first, second)
    return _json(
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
    """``GET /v1/exchanges/{exchange_id}``: the exchange as its audit records tell it."""
    xid = _exchange_id(request.match_info["exchange_id"])
    _, rows = await _exchange_records(_audit(request), xid)
    records = [orjson.loads(r.record) for r in rows]
    sender = next((r.get("sender") for r in records if r.get("sender")), None)
    authz.require_visible(request[PRINCIPAL], sender)
    last = next((r for r in reversed(records) if r.get("event") in _TERMINAL), records[-1])
    terminal = last.get("event") in _TERMINAL
    doc: dict[str, Any] = {
        "exchange_id": xid,
        "service": next((r["service"] for r in records if r.get("service")), None),
        "sender": sender,
        "provider": next((r["provider"] for r in records if r.get("provider")), None),
        "state": str(last.get("event", "")).removeprefix("exchange."),
        "status": last.get("status") if terminal else None,
        "records": [
            {"index": row.index, "event": r.get("event"), "at": r.get("at")}
            for row, r in zip(rows, records, strict=True)
        ],
    }
    for member in ("cause", "attempts", "receipt_sha256"):
        if member in last:
            doc[member] = last[member]
    return _json(doc)


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
    audit = _audit(request)
    xid = _exchange_id(request.match_info["exchange_id"])
    rec, rows = await _exchange_records(audit, xid)
    sender = next(
        (s for r in rows if (s := orjson.loads(r.record).get("sender")) is not None), None
    )
    authz.require_visible(request[PRINCIPAL], sender)
    tree_size, cp = await _default_size(audit, rec.index)
    proof = await audit.inclusion_proof(rec.index, tree_size)
    return _json(
        {
            "format": "dtc-gateway/inclusion-proof/v1",
            "exchange_id": xid,
            "index": rec.index,
            "leaf_hash": rec.leaf_hash.hex(),
            "record": orjson.Fragment(_record_json(rec.record)),
            "tree_size": tree_size,
            "proof": [p.hex() for p in proof],
            "root": cp.root.hex(),
            "checkpoint": cp.note.decode("utf-8"),
        }
    )


# ------------------------------------------------------------------ wiring
def _peer_cert(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    return der or None


def _authorizer(clock: Callable[[], datetime]) -> Middleware:
    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply ``authz.RULES`` to the matched route; no rule -> refuse (deny by default)."""
        route = request.match_info.route
        if route.resource is None:  # 404 / 405: nothing is served, let aiohttp answer.
            return await handler(request)
        rule = authz.rule_for(request.method, route.resource.canonical)
        if rule is None:
            log.error("authz.no_rule", method=request.method, route=route.resource.canonical)
            raise Forbidden("this route has no access rule, so it is closed")
        if not (rule.public or rule.own_auth):
            creds = Credentials(request.headers.get("Authorization"), _peer_cert(request))
            try:
                principal = request.app[RESOLVER].resolve(creds, now=clock())
                authz.authorize(rule, principal)
            except (Unauthenticated, Forbidden) as e:  # The client sees one answer; we see why.
                log.info("authz.refused", path=request.path[:200], reason=e.log_detail)
                raise
            request[PRINCIPAL] = principal
        return await handler(request)

    return authorize


async def _require_rules(app: web.Application) -> None:
    """on_startup: a route without an access rule stops the gateway (fail closed)."""
    missing = authz.missing_rules(
        (r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None
    )
    if missing:
        raise ConfigError(
            "gateway/authz.py", "RULES", f"routes without an access rule: {', '.join(missing)}"
        )


def add_routes(app: web.Application, *, clock: Callable[[], datetime] | None = None) -> None:
    """Add the audit and exchange-state routes, the authorization middleware and its checks.

    Call from ``create_app`` after ``handlers.add_routes`` (the middleware covers every
    route, including those). Set ``app[PUBLISHER]`` when checkpoints are configured.
    """
    dep = app[keys.DEPLOYMENT]
    now = clock or (lambda: datetime.now(UTC))
    try:
        app[RESOLVER] = PrincipalResolver(
            dep.config.roles,
            keys.build_participants(dep),
            keys.build_anchors(dep),
            development=dep.config.gateway.development,
        )
    except ValueError as e:
        raise ConfigError(str(dep.path), "roles", str(e)) from None
    tail = _Tail(app)
    app[TAIL] = tail
    app.on_shutdown.append(tail.shutdown)
    app.on_startup.append(_require_rules)
    app.middlewares.append(_authorizer(now))
    r = app.router
    r.add_get("/v1/audit/records", search)
    r.add_get("/v1/audit/records/{index}", one_record)
    # No HEAD for the streamed answers: their bodies are written as they are read.
    r.add_get("/v1/audit/stream", stream, allow_head=False)
    r.add_get("/v1/audit/export", export, allow_head=False)
    r.add_get("/v1/audit/checkpoint", get_checkpoint)
    r.add_post("/v1/audit/checkpoint", publish_checkpoint)
    r.add_get("/v1/audit/proof/inclusion", inclusion)
    r.add_get("/v1/audit/proof/consistency", consistency)
    r.add_get("/v1/exchanges/{exchange_id}", exchange_state)
    r.add_get("/v1/exchanges/{exchange_id}/proof", exchange_proof)
