"""The audit log over HTTP: the routes, their authorization, and search, export and checkpoints.

This module registers every audit and exchange-state route (:func:`add_routes`), owns the one
authorization middleware and the startup rule check, and serves the record and checkpoint
routes itself. The rest lives beside it, each with its reason in its docstring:
:mod:`gateway.http.audit_query` (parameters, cursors, the served record shape),
:mod:`gateway.http.audit_stream` (the Server-Sent Events live tail) and
:mod:`gateway.http.audit_proofs` (proofs, exchange state, the proof bundle).

Why these shapes:

* Every record is served as ``{"index", "leaf_hash", "record"}``, with ``record`` the stored
  canonical JSON spliced in unchanged; cursors are opaque and mean "strictly after this index"
  (see :mod:`gateway.http.audit_query`).
* The stream and the export are bounded per connection: the stream reads at most
  ``STREAM_BATCH`` records at a time, the export ``EXPORT_BATCH``, and each write waits for
  the socket to drain. One task per process polls the tree size and wakes the streams
  (see :mod:`gateway.http.audit_stream`).
* The export has no trailer line: every line is a record, so ``wc -l`` and line-by-line
  tools stay simple. It is a snapshot: records at indexes below the tree size read when it
  started (response header ``Audit-Tree-Size``), in index order; a truncated transfer is
  visible to the client as an unterminated chunked body.
* Authorization is one middleware (made by :func:`_authorizer`) applying ``gateway.authz.RULES`` to
  every route of the application: deny by default, and the app refuses to start while a route
  has no rule. Handlers read the principal from ``request[PRINCIPAL]``.

The proof bundle (``GET /v1/exchanges/{id}/proof``) is what ``gateway verify`` checks offline;
its format is documented on :func:`gateway.http.audit_proofs.exchange_proof`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway import authz
from gateway.audit.publisher import CheckpointPublisher
from gateway.audit.store import RecordQuery, StoredCheckpoint
from gateway.authz import Credentials, PrincipalResolver
from gateway.errors import ConfigError, Forbidden, NotFound, NotReady, Unauthenticated
from gateway.http import app as keys
from gateway.http.audit_proofs import (
    CheckpointPending,
    consistency,
    exchange_proof,
    exchange_state,
    inclusion,
)
from gateway.http.audit_query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    OUTCOMES,
    PRINCIPAL,
    audit_of,
    bad,
    check_params,
    decode_cursor,
    encode_cursor,
    exchange_id_param,
    int_param,
    json_response,
    record_item,
    req_int,
    text_param,
    time_param,
)
from gateway.http.audit_stream import TAIL, Tail, abort, stream, write_or_drop
from gateway.http.bodies import continue_within
from gateway.http.middlewares import peer_certificate

__all__ = [
    "PRINCIPAL",
    "PUBLISHER",
    "RESOLVER",
    "TAIL",
    "CheckpointPending",
    "add_routes",
    "decode_cursor",
    "encode_cursor",
]

log = structlog.get_logger("gateway.audit_api")

EXPORT_BATCH = 1000
_NDJSON = "application/x-ndjson"

RESOLVER = web.AppKey("principal_resolver", PrincipalResolver)
_NOT_CONFIGURED = "set audit.origin and audit.checkpoint_key in the configuration"
PUBLISHER = web.AppKey("checkpoint_publisher", CheckpointPublisher)
"""Set by the composition root when checkpoints are configured; POST publishes through it."""


# ------------------------------------------------------------------ checkpoint responses
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
        return json_response(
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
    check_params(request, _SEARCH_PARAMS)
    outcome = q.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise bad("outcome", f"one of {', '.join(OUTCOMES)}")
    limit = int_param(q.get("limit"), "limit", default=DEFAULT_LIMIT)
    assert limit is not None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad("limit", f"between 1 and {MAX_LIMIT}")
    xid = q.get("exchange_id")
    query = RecordQuery(
        since=time_param(q.get("since"), "since"),
        until=time_param(q.get("until"), "until"),
        sender=text_param(q.get("sender"), "sender"),
        service=text_param(q.get("service"), "service"),
        provider=text_param(q.get("provider"), "provider"),
        event=OUTCOMES[outcome] if outcome else None,
        exchange_id=exchange_id_param(xid) if xid is not None else None,
        after_index=decode_cursor(q.get("cursor")),
        limit=limit + 1,  # One more tells whether there is a next page.
    )
    rows = await audit_of(request).query(query)
    page = rows[:limit]
    more = len(rows) > limit
    return json_response(
        {
            "records": [record_item(r) for r in page],
            "next_cursor": encode_cursor(page[-1].index) if more else None,
        }
    )


_SEARCH_PARAMS = frozenset(
    {"since", "until", "sender", "service", "provider", "outcome", "exchange_id", "cursor", "limit"}
)


async def one_record(request: web.Request) -> web.Response:
    """``GET /v1/audit/records/{index}``."""
    index = req_int(request.match_info["index"], "index")
    rec = await audit_of(request).get(index)
    if rec is None:
        raise NotFound(f"the audit log has no record at index {index}")
    return json_response(record_item(rec))


async def export(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audit/export?since=&until=``: JSON Lines, a snapshot, in index order."""
    check_params(request, frozenset({"since", "until"}))
    since = time_param(request.query.get("since"), "since")
    until = time_param(request.query.get("until"), "until")
    audit = audit_of(request)
    size, _ = await audit.tree_head()
    resp = web.StreamResponse(headers={"Cache-Control": "no-store", "Audit-Tree-Size": str(size)})
    resp.content_type = _NDJSON
    resp.enable_chunked_encoding()
    stall = request.app[keys.DEPLOYMENT].config.limits.idle_timeout_seconds
    after = -1
    try:  # A client gone before the headers are written is a disconnect too, not a 500.
        await resp.prepare(request)
        while True:
            rows = await audit.query(
                RecordQuery(since=since, until=until, after_index=after, limit=EXPORT_BATCH)
            )
            rows = [r for r in rows if r.index < size]
            if rows:
                lines = b"".join(orjson.dumps(record_item(r)) + b"\n" for r in rows)
                await write_or_drop(resp, lines, stall)
                after = rows[-1].index
            if len(rows) < EXPORT_BATCH:
                break
        await resp.write_eof()
    except Exception as e:
        abort(request, "audit.export_aborted", e, after_index=after)
    return resp


# ------------------------------------------------------------------ checkpoints
async def get_checkpoint(request: web.Request) -> web.Response:
    """``GET /v1/audit/checkpoint``: the signed note, or JSON with ``Accept: application/json``."""
    cp = await audit_of(request).latest_checkpoint()
    if cp is None and request.app.get(PUBLISHER) is None:  # Retrying would not help.
        raise NotReady(f"this gateway publishes no checkpoints: {_NOT_CONFIGURED}")
    if cp is None:  # The publisher's first one is on its way.
        raise CheckpointPending("no checkpoint has been published yet; retry in a second")
    return _checkpoint_response(request, cp)


async def publish_checkpoint(request: web.Request) -> web.Response:
    """``POST /v1/audit/checkpoint`` (admin): sign and publish a checkpoint of the tree now."""
    publisher = request.app.get(PUBLISHER)
    if publisher is None:
        raise NotReady(f"checkpoints are not configured: {_NOT_CONFIGURED}")
    cp = await publisher.publish_now()
    log.info("audit.checkpoint_published", size=cp.size, by=request[PRINCIPAL].id)
    return _checkpoint_response(request, cp)


# ------------------------------------------------------------------ wiring
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
            creds = Credentials(request.headers.get("Authorization"), peer_certificate(request))
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
            app[keys.PARTICIPANTS],
            app[keys.ANCHORS],
            development=dep.config.gateway.development,
        )
    except ValueError as e:
        raise ConfigError(str(dep.path), "roles", str(e)) from None
    tail = Tail(app)
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
    # It reads no body: none is asked for.
    r.add_post("/v1/audit/checkpoint", publish_checkpoint, expect_handler=continue_within(0))
    r.add_get("/v1/audit/proof/inclusion", inclusion)
    r.add_get("/v1/audit/proof/consistency", consistency)
    r.add_get("/v1/exchanges/{exchange_id}", exchange_state)
    r.add_get("/v1/exchanges/{exchange_id}/proof", exchange_proof)
