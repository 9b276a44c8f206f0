"""``POST /v1/witness/add-checkpoint``: this gateway cosigns its peers' checkpoints.

The C2SP tlog-witness ``add-checkpoint`` call, with ``/v1/witness`` as the witness's
*submission prefix* (the spec lets each witness choose its prefix; clients are configured with
it). The decisions and their statuses are gateway.witness's; this module reads the body,
runs decide-then-compare-and-swap against gateway.witness_store until the state it decided on
is the state it replaced, and only then signs and answers:

* 200 ``text/plain``: one tlog-cosignature/v1 line by ``[witness] name`` / ``key``.
* 409 ``text/x.tlog.size`` (exactly; no charset) with ``<latest cosigned size>\\n`` for a stale
  ``old``, as the spec requires, so a log can resubmit from that size.
* Every other refusal (400, 403, 404, 409 fork, 422), 413 and 503: an RFC 9457 problem, as
  everywhere in this API, type ``urn:gateway:problem:witness-<cause>``.

No credentials are asked (the route's rule is public): the spec authenticates nothing but the
checkpoint's signature, and logs call witnesses with no account there. What a caller can make
the witness do is bounded by what the peer's key signed.

A refused checkpoint that the log signed and that contradicts what was cosigned is kept in
``witness_evidence`` and logged as ``witness.fork_evidence``: it is the proof of misbehaviour
witnessing exists to produce.

The state is gateway.witness_store's (SQLite, on the store's own thread) or, when the audit
log is in PostgreSQL, gateway.witness_store_postgres's (shared by every instance). Note
verification and hashing (a few Ed25519 verifications and at most 63 hashes) are cheaper than
the thread hop and stay on the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import structlog
from aiohttp import web

from gateway.audit.checkpoint import NoteError, NoteSigner, cosign
from gateway.config import Deployment
from gateway.crypto.keys import CryptoError, load_private_key
from gateway.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    NotReady,
)
from gateway.http import app as keys
from gateway.http.bodies import continue_within, read_whole
from gateway.witness import (
    SIZE_CONTENT_TYPE,
    PeerLogs,
    Refusal,
    Submission,
    Witnessed,
    WitnessRefusal,
    check_submission,
    decide,
)
from gateway.witness_store import WitnessState, WitnessStore, WitnessStoreUnavailable

__all__ = [
    "ADD_CHECKPOINT_PATH",
    "SUBMISSION_PREFIX",
    "WITNESS",
    "WITNESS_STORE",
    "Witness",
    "add_routes",
    "build_witness",
]

log = structlog.get_logger("gateway.witness")

SUBMISSION_PREFIX = "/v1/witness"
ADD_CHECKPOINT_PATH = SUBMISSION_PREFIX + "/add-checkpoint"
MAX_ATTEMPTS = 8
"""Compare-and-swap rounds before giving up (503); each lost round means the state moved,
and the next decision is then almost always a 409, so this is never reached in practice."""


@dataclass(frozen=True, slots=True)
class Witness:
    """This gateway as a witness: the logs it cosigns for, and its cosigning key (None when
    no ``[witness] key`` is configured; then no peers may be, and every origin is unknown)."""

    peers: PeerLogs
    signer: NoteSigner | None


WITNESS = web.AppKey("witness", Witness)
WITNESS_STORE = web.AppKey("witness_store", WitnessState)


class Unprocessable(GatewayError):
    """422: the request is well formed but its consistency proof does not hold."""

    status: ClassVar[int] = 422
    default_slug: ClassVar[str] = "unprocessable"
    title: ClassVar[str] = "Unprocessable content"


_PROBLEMS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
}


def build_witness(dep: Deployment) -> Witness:
    """The witness of a deployment, or ConfigError naming the field (fail closed).

    Peers need a key and a name; the key must be Ed25519 (tlog-cosignature/v1) and must not
    be the audit log's checkpoint key: one key, one role, so a cosignature can never be
    mistaken for this gateway's own statement about its log.
    """
    cfg, where = dep.config.witness, str(dep.path)
    try:
        peers = PeerLogs.from_config((p.origin, p.verifier_key) for p in cfg.peers)
    except NoteError as e:
        raise ConfigError(where, "witness.peers", e.reason) from None
    if (cfg.key is None) != (cfg.name is None):
        raise ConfigError(where, "witness", "set both key and name, or neither")
    if dep.witness_key_pem is None or cfg.name is None:
        if cfg.peers:
            raise ConfigError(where, "witness.key", "peers are configured but no witness key")
        return Witness(peers, None)
    try:
        signer = NoteSigner(cfg.name, load_private_key(dep.witness_key_pem))
    except CryptoError as e:
        raise ConfigError(where, "witness.key", str(e)) from None
    except NoteError as e:
        field = "witness.key" if "Ed25519" in e.reason else "witness.name"
        raise ConfigError(where, field, e.reason) from None
    if dep.checkpoint_key_pem is not None:
        try:
            log_public = NoteSigner("log", load_private_key(dep.checkpoint_key_pem)).public_key
        except (CryptoError, NoteError):
            log_public = None  # Not a note key: the audit configuration reports that itself.
        if signer.public_key == log_public:
            raise ConfigError(where, "witness.key", "must not be the audit checkpoint key")
    return Witness(peers, signer)


async def _read(request: web.Request) -> bytes:
    limits = request.app[keys.DEPLOYMENT].config.limits
    return await read_whole(
        request,
        limit=limits.max_body_bytes,
        time_limit=limits.body_timeout_seconds,
        what="the add-checkpoint request",
    )


def _refused(r: WitnessRefusal) -> web.Response:
    """The stale-``old`` 409 in the spec's exact form; any other refusal raised as a problem."""
    if r.cause is Refusal.STALE_OLD_SIZE and r.latest_size is not None:
        return web.Response(
            status=409,
            body=f"{r.latest_size}\n".encode(),
            headers={"Content-Type": SIZE_CONTENT_TYPE, "Cache-Control": "no-store"},
        )
    raise _PROBLEMS[r.status](r.reason, slug=f"witness-{r.cause.slug}")


async def _advance(store: WitnessState, sub: Submission, now: Callable[[], datetime]) -> Witnessed:
    """decide() against the stored state, then compare-and-swap; repeat if the state moved.

    Returns the new state once the checkpoint is durably the latest cosigned, stamped with
    the time its cosignature must carry: now, but never before the time stored with the
    previous one (see Witnessed). Raises WitnessRefusal.
    """
    for _ in range(MAX_ATTEMPTS):
        last = await store.latest(sub.origin)
        try:
            new = decide(sub, last)
        except WitnessRefusal as r:
            if r.evidence:
                await _keep_evidence(store, sub, r, last, now)
            raise
        # The spec forbids a zero timestamp (hence at least 1).
        stamp = max(1, int(now().timestamp()), last.cosigned_at if last else 0)
        new = dataclasses.replace(new, cosigned_at=stamp)
        if await store.compare_and_swap(sub.origin, last, new):
            return new
    raise NotReady("the witness state kept changing under this request; retry")


async def _keep_evidence(
    store: WitnessState,
    sub: Submission,
    r: WitnessRefusal,
    last: Witnessed | None,
    now: Callable[[], datetime],
) -> None:
    """Keep and log a log-signed contradiction; a store failure here does not change the
    answer (the refusal stands, and the log line still carries the evidence)."""
    try:
        new: bool | None = await store.keep_evidence(
            sub.origin,
            r.cause.slug,
            sub.checkpoint_text,
            sub.request.note,
            last,
            seen_at=int(now().timestamp()),
        )
    except WitnessStoreUnavailable as e:
        log.error("witness.evidence_not_kept", error=str(e))
        new = None
    log.warning(
        "witness.fork_evidence",
        origin=sub.origin,
        cause=r.cause.slug,
        size=sub.checkpoint.size,
        root=sub.checkpoint.root.hex(),
        note=sub.request.note.decode("utf-8", "replace")[:4096],
        held_size=last.size if last else None,
        held_root=last.root.hex() if last else None,
        first_seen=new,
    )


def add_routes(app: web.Application, *, clock: Callable[[], datetime] | None = None) -> None:
    """Register ``POST /v1/witness/add-checkpoint`` and the store's cleanup context.

    Needs ``app[DEPLOYMENT]``; raises ConfigError for an unusable witness configuration.
    The route's rule in gateway.authz.RULES is public (see the module docstring).
    """
    app[WITNESS] = witness = build_witness(app[keys.DEPLOYMENT])
    now = clock or (lambda: datetime.now(UTC))

    async def add_checkpoint(request: web.Request) -> web.Response:
        """The tlog-witness add-checkpoint call (statuses in gateway.witness)."""
        body = await _read(request)
        store = request.app[WITNESS_STORE]
        try:
            sub = check_submission(witness.peers, body)
            cosigned = await _advance(store, sub, now)
        except WitnessRefusal as r:
            log.info("witness.refused", cause=r.cause.slug, status=r.status, reason=r.reason)
            return _refused(r)
        except WitnessStoreUnavailable as e:
            log.error("witness.store_unavailable", error=str(e))
            raise NotReady("the witness state is unavailable; nothing was cosigned") from None
        return _cosigned(sub, witness, cosigned.cosigned_at)

    app.cleanup_ctx.append(_store_ctx)
    limit = app[keys.DEPLOYMENT].config.limits.max_body_bytes
    app.router.add_post(ADD_CHECKPOINT_PATH, add_checkpoint, expect_handler=continue_within(limit))


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens and closes ``app[WITNESS_STORE]``: in the shared PostgreSQL database when the
    audit log is there (every instance of this gateway is then one witness, under one key:
    state kept per host would let two hosts cosign a fork and its original), else in the
    deployment's state database."""
    dep = app[keys.DEPLOYMENT]
    audit = dep.config.audit
    store: WitnessState
    if audit.store == "postgres" and audit.dsn:
        from gateway.witness_store_postgres import PostgresWitnessStore

        store = await PostgresWitnessStore.open(audit.dsn)
    else:
        store = await WitnessStore.open(dep.state_path())
    app[WITNESS_STORE] = store
    try:
        yield
    finally:
        await store.aclose()


def _cosigned(sub: Submission, witness: Witness, timestamp: int) -> web.Response:
    """The 200 answer: the cosignature line of a checkpoint now durably the latest cosigned,
    with the time stored with it."""
    assert witness.signer is not None  # A known origin implies a configured key.
    line = cosign(sub.checkpoint_text, witness.signer, timestamp=timestamp)
    log.info(
        "witness.cosigned",
        origin=sub.origin,
        size=sub.checkpoint.size,
        old_size=sub.request.old_size,
    )
    return web.Response(
        body=line,
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
