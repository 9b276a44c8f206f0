"""The composition root: builds every stage from a loaded Deployment and wires the routes.

Each resource (audit log, state store, connectors) is opened and closed by exactly one
cleanup_ctx, so a failed start-up closes what it had opened and a stop flushes the audit log.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import plugins
from gateway.acl import AccessList, Grant
from gateway.audit.appender import RemoteAppender
from gateway.audit.checkpoint import NoteError
from gateway.audit.factory import note_signer, open_store
from gateway.audit.log import AuditLog
from gateway.audit.publisher import CheckpointPublisher, check_not_rolled_back
from gateway.authn import Authenticator, ParticipantAuth
from gateway.config import Deployment
from gateway.connector import Connector, ConnectorContext
from gateway.crypto import jws, pki
from gateway.crypto.keys import (
    CryptoError,
    Keyring,
    SigningKey,
    encode_x5c,
    load_certificates,
    load_private_key,
    note_key_jwk,
)
from gateway.errors import ConfigError
from gateway.metrics import ExchangeMetrics
from gateway.models import Limits
from gateway.pipeline import Pipeline, ServiceRuntime
from gateway.ratelimit import RateLimiter
from gateway.state import ExchangeState
from gateway.state import opened as opened_state
from gateway.trust import anchor_certificates, build_anchors, check_bound, check_own_certificate
from gateway.validation import CompiledSchema, compile_schema

DEPLOYMENT = web.AppKey("deployment", Deployment)
KEYRING = web.AppKey("keyring", Keyring)
AUDIT = web.AppKey("audit", AuditLog)
STATE: web.AppKey[ExchangeState] = web.AppKey("state")
PIPELINE = web.AppKey("pipeline", Pipeline)
CONNECTORS = web.AppKey("connectors", dict[str, Connector])
METRICS = web.AppKey("metrics", ExchangeMetrics)
# Built once at start-up (CRLs checked against the clock then): authn, roles and /v1/verify.
ANCHORS = web.AppKey("anchors", pki.TrustAnchors)
# The registry's participants as the exchange authenticator knows them; the audit routes'
# principal resolver takes the same mapping (certificates pinned and checked once).
PARTICIPANTS: web.AppKey[Mapping[str, ParticipantAuth]] = web.AppKey("participants")
# Published in the JWKS beside the keyring's keys: the audit log's checkpoint (note) key.
NOTE_KEYS = web.AppKey("note_keys", tuple[dict[str, Any], ...])
# Under `gateway serve` only: the worker's connection to the appender process.
APPENDER = web.AppKey("appender", RemoteAppender)


def build_keyring(dep: Deployment) -> Keyring:
    try:
        key: SigningKey = load_private_key(dep.key_pem)
    except CryptoError as e:
        raise ConfigError(str(dep.path), "gateway.key", f"not a usable private key: {e}") from None
    try:
        chain = load_certificates(dep.certificate_pem)
    except CryptoError as e:
        raise ConfigError(str(dep.path), "gateway.certificate", str(e)) from None
    retired = []
    for i, pem in enumerate(dep.retired_certificate_pems):
        field = f"gateway.retired_certificates[{i}]"
        try:
            old = load_certificates(pem)
            named = pki.participant_id(old[0])
        except CryptoError as e:
            raise ConfigError(str(dep.path), field, str(e)) from None
        if named != dep.config.gateway.id and dep.config.participant(named or "") is not None:
            # Published as one of the gateway's keys: a unit's certificate here (a wrong file)
            # would have the JWKS and gateway verify vouch for the unit's signatures as ours.
            raise ConfigError(
                str(dep.path),
                field,
                f"names the participant {named!r}, not the gateway {dep.config.gateway.id!r}: "
                "the JWKS would publish that participant's key as the gateway's",
            )
        retired.append(old)
    try:
        return Keyring(key, chain, retired=retired)
    except CryptoError as e:
        raise ConfigError(str(dep.path), "gateway.certificate", str(e)) from None


def build_note_keys(dep: Deployment, keyring: Keyring) -> tuple[dict[str, Any], ...]:
    """The checkpoint key's JWK (CONTRACT.md: published in the JWKS like the others), if any.

    Refused when it is one of the gateway's JWS keys (an Ed25519 ``gateway.key``, current or
    retired): one key would then sign two formats, and the JWKS would list one kid twice,
    once with the x5c a JWS verifier requires and once without."""
    try:
        signer = note_signer(dep)
    except (CryptoError, NoteError) as e:
        raise ConfigError(str(dep.path), "audit.checkpoint_key", str(e)) from None
    if signer is None:
        return ()
    jwk = note_key_jwk(signer.public_key, signer.vkey())
    if keyring.find(jwk["kid"]) is not None:
        raise ConfigError(
            str(dep.path),
            "audit.checkpoint_key",
            "is the gateway's own signing key (gateway.key or a retired one): checkpoints "
            "need a key of their own",
        )
    return (jwk,)


def build_participants(dep: Deployment) -> dict[str, ParticipantAuth]:
    out: dict[str, ParticipantAuth] = {}
    for i, p in enumerate(dep.config.participants):
        pinned = None
        if p.id in dep.participant_cert_pems:
            field = f"participants[{i}].certificate"
            try:
                cert = load_certificates(dep.participant_cert_pems[p.id])[0]
            except (CryptoError, IndexError):
                raise ConfigError(str(dep.path), field, "not a PEM certificate") from None
            check_bound(dep, field, cert, p.id)
            pinned = pki.fingerprint_sha256(cert)
        out[p.id] = ParticipantAuth(p.id, frozenset(p.auth), pinned, p.token_sha256)
    return out


def build_schemas(dep: Deployment) -> dict[str, tuple[CompiledSchema, CompiledSchema]]:
    out = {}
    for i, (sid, loaded) in enumerate(dep.services.items()):
        out[sid] = (
            compile_schema(
                loaded.request_schema,
                source=f"{dep.path}: services[{i}].request_schema ({loaded.spec.request_schema})",
            ),
            compile_schema(
                loaded.response_schema,
                source=f"{dep.path}: services[{i}].response_schema ({loaded.spec.response_schema})",
            ),
        )
    return out


def build_connectors(dep: Deployment) -> dict[str, Connector]:
    out = {}
    for i, (sid, loaded) in enumerate(dep.services.items()):
        spec = loaded.spec
        ctx = ConnectorContext(service=sid, provider=spec.provider, config_dir=str(dep.base_dir))
        out[sid] = plugins.build(
            spec.connector,
            spec.connector_settings,
            ctx,
            source=str(dep.path),
            field=f"services[{i}].connector",
        )
    return out


def server_ssl_context(dep: Deployment) -> ssl.SSLContext | None:
    """TLS for the listener; with client_auth the trust anchors verify client certificates."""
    tls = dep.config.gateway.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(dep.resolve(tls.certificate), dep.resolve(tls.key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            str(dep.path), "gateway.tls", f"cannot load certificate/key: {e}"
        ) from None
    if tls.client_auth != "none":
        # As DER: a PEM file may hold explanatory text (RFC 7468), in Vietnamese too.
        anchors = encode_x5c(anchor_certificates(dep))
        ctx.load_verify_locations(cadata=b"".join(base64.b64decode(c) for c in anchors))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def build_access(dep: Deployment) -> AccessList:
    return AccessList(
        {
            sid: [Grant(g.participant, g.purpose, g.legal_basis) for g in s.spec.access]
            for sid, s in dep.services.items()
        }
    )


@dataclass(frozen=True, slots=True)
class _Stages:
    """The parts of the pipeline built (and checked) by create_app, before anything is opened."""

    keyring: Keyring
    anchors: pki.TrustAnchors
    participants: dict[str, ParticipantAuth]
    schemas: dict[str, tuple[CompiledSchema, CompiledSchema]]
    connectors: dict[str, Connector]
    access: AccessList


def build_limits(dep: Deployment) -> Limits:
    limits = dep.config.limits
    return Limits(
        max_body_bytes=limits.max_body_bytes,
        max_depth=limits.max_json_depth,
        delivery_timeout=limits.delivery_timeout_seconds,
        idempotency_ttl=limits.idempotency_ttl_seconds,
        replay_ttl=2 * limits.clock_skew_seconds + 60,
        rate_per_second=limits.rate_per_second,
        rate_burst=limits.rate_burst,
        body_timeout=limits.body_timeout_seconds,
    )


def _build_pipeline(
    dep: Deployment,
    stages: _Stages,
    *,
    audit: AuditLog | RemoteAppender,
    state: ExchangeState,
    clock: Callable[[], datetime],
    rate: RateLimiter | None,
) -> Pipeline:
    """The pipeline over the opened audit sink and state store (built at start-up)."""
    cfg = dep.config
    return Pipeline(
        authenticator=Authenticator(
            stages.participants,
            stages.anchors,
            skew_seconds=cfg.limits.clock_skew_seconds,
            max_depth=cfg.limits.max_json_depth,
            development=cfg.gateway.development,
        ),
        access=stages.access,
        services={
            sid: ServiceRuntime(
                sid,
                s.spec.provider,
                stages.schemas[sid][0],
                stages.schemas[sid][1],
                stages.connectors[sid],
            )
            for sid, s in dep.services.items()
        },
        signer=jws.Signer(stages.keyring.current, stages.keyring.chain),
        audit=audit,
        idempotency=state,
        limits=build_limits(dep),
        clock=clock,
        gateway_id=cfg.gateway.id,
        rate=rate,
    )


# One context manager per resource: it opens the resource and closes it, nothing else.
@contextlib.asynccontextmanager
async def _audit_log(dep: Deployment, *, appends: bool) -> AsyncIterator[AuditLog]:
    store = open_store(dep, appends=appends)
    audit = await AuditLog.open(store, max_batch=dep.config.audit.max_batch)
    try:
        yield audit
    finally:
        await audit.aclose()


@contextlib.asynccontextmanager
async def _remote_appender(address: str | None) -> AsyncIterator[RemoteAppender | None]:
    """Under `gateway serve` records go to the appender process (one writer for all workers);
    an app built alone (tests, tools) has none and appends from its own writer thread."""
    if address is None:
        yield None
        return
    remote = await RemoteAppender.connect(address)
    try:
        yield remote
    finally:
        await remote.aclose()


@contextlib.asynccontextmanager
async def _checkpoint_publisher(
    app: web.Application, dep: Deployment, audit: AuditLog, *, periodic: bool
) -> AsyncIterator[None]:
    """Set ``app[PUBLISHER]`` (POST /v1/audit/checkpoint) when a checkpoint key is configured;
    publish periodically only if ``periodic`` (under `gateway serve` the appender does that)."""
    from gateway.http import audit_api

    signer = note_signer(dep)
    if signer is None:
        yield
        return
    publisher = CheckpointPublisher(
        audit,
        signer,
        signer.name,  # the log's origin: note_signer names the key after it
        interval=dep.config.audit.checkpoint_interval_seconds,
        published_path=dep.published_path(),
    )
    app[audit_api.PUBLISHER] = publisher
    try:
        if periodic:
            await publisher.start()
        yield
    finally:
        await publisher.stop()


def _resources(
    dep: Deployment,
    stages: _Stages,
    clock: Callable[[], datetime],
    appender_address: str | None,
    rate: RateLimiter | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup_ctx: opens every resource in order, closes them in reverse order."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            appends = appender_address is None  # else the appender process writes the log
            audit = await stack.enter_async_context(_audit_log(dep, appends=appends))
            cfg = dep.config.audit
            state = await stack.enter_async_context(
                opened_state(cfg.store, dep.state_path(), cfg.dsn)
            )
            remote = await stack.enter_async_context(_remote_appender(appender_address))
            size, _ = await audit.tree_head()
            await check_not_rolled_back(dep.published_path(), size, audit.root_at)
            await stack.enter_async_context(
                _checkpoint_publisher(app, dep, audit, periodic=remote is None)
            )
            await stack.enter_async_context(
                plugins.started(stages.connectors, source=str(dep.path))
            )
            app[AUDIT] = audit
            app[STATE] = state
            if remote is not None:
                app[APPENDER] = remote
            sink = remote if remote is not None else audit
            app[PIPELINE] = _build_pipeline(
                dep, stages, audit=sink, state=state, clock=clock, rate=rate
            )
            yield

    return resources


def create_app(
    dep: Deployment,
    *,
    clock: Callable[[], datetime] | None = None,
    appender_address: str | None = None,
    metrics_dir: Path | None = None,
    rate: RateLimiter | None = None,
) -> web.Application:
    """Build the application; everything that can be checked before serving is checked here.

    ``metrics_dir`` and ``rate``: the workers' shared metrics directory and rate buckets under
    `gateway serve` (see gateway.metrics, gateway.ratelimit_shared); without them the metrics
    and the buckets are this process's own."""
    from gateway.http import audit_api, handlers, middlewares, verify_api, witness_api

    now = clock or (lambda: datetime.now(UTC))
    started = now()  # the one instant the start-up checks (certificates, CRLs) are made at
    stages = _Stages(  # built in this order (as keyword arguments run): the first bad field fails
        keyring=build_keyring(dep),
        anchors=build_anchors(dep, now=started),
        participants=build_participants(dep),
        schemas=build_schemas(dep),
        connectors=build_connectors(dep),
        access=build_access(dep),
    )
    check_own_certificate(dep, stages.keyring.chain, stages.anchors, now=started)
    app = web.Application(
        middlewares=[middlewares.request_context, middlewares.problems],
        client_max_size=dep.config.limits.max_body_bytes + 1,
    )
    app.on_response_prepare.append(middlewares.echo_request_id)
    app[DEPLOYMENT] = dep
    app[KEYRING] = stages.keyring
    app[ANCHORS] = stages.anchors
    app[PARTICIPANTS] = stages.participants
    app[NOTE_KEYS] = build_note_keys(dep, stages.keyring)
    app[CONNECTORS] = stages.connectors
    app[METRICS] = ExchangeMetrics(dep.services, multiprocess_dir=metrics_dir)
    app.cleanup_ctx.append(_resources(dep, stages, now, appender_address, rate))
    handlers.add_routes(app, clock=now)
    verify_api.add_routes(app, clock=now)
    witness_api.add_routes(app, clock=now)
    audit_api.add_routes(app, clock=now)  # last: its middleware and startup check cover every route
    return app
