"""``POST /v1/verify``: security staff hand over any artifact and get a report back.

The body is the artifact itself, exactly as saved: a receipt, envelope or signed request (JWS
JSON), a checkpoint (signed note text) or an inclusion proof bundle (JSON). The answer is
``{"valid", "kind", "checks": [{"ok", "what"}], "details": [...]}`` with status 200 whether the
artifact holds or not, because the report *is* the result: a forged receipt is a successful
verification with ``valid: false``. Only input that is no artifact at all (not JSON, not a note,
a JSON object of no known shape) is a 400 problem.

Same checks as ``gateway verify`` (:mod:`gateway.verify`), against this deployment's trust
anchors, its checkpoint key and its current and retired signing keys; nothing is fetched and
nothing is stored. Verification (chain validation, RSA) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from aiohttp import web

from gateway.audit.checkpoint import NoteError
from gateway.crypto.keys import CryptoError, jwk_thumbprint
from gateway.errors import BadRequest, ConfigError
from gateway.http import app as keys
from gateway.http.bodies import continue_within, read_whole
from gateway.verify import Trust, Unreadable, checkpoint_verifiers, verify_artifact

__all__ = ["VERIFY_PATH", "add_routes", "build_trust"]

VERIFY_PATH = "/v1/verify"


def build_trust(app: web.Application) -> Trust:
    """What artifacts are checked against, from the app's deployment and keyring.

    A checkpoint key that cannot make a verifier stops start-up (ConfigError), like any key.
    """
    dep = app[keys.DEPLOYMENT]
    keyring = app[keys.KEYRING]
    audit = dep.config.audit
    try:
        verifiers = checkpoint_verifiers(audit.origin, dep.checkpoint_key_pem)
    except (NoteError, CryptoError) as e:
        raise ConfigError(str(dep.path), "audit.checkpoint_key", str(e)) from None
    kids = {keyring.current.kid: "current"}
    for chain in keyring.retired:
        kids.setdefault(jwk_thumbprint(chain[0].public_key()), "retired")
    anchors = app[keys.ANCHORS]
    return Trust(
        anchors.without_revocations(),
        revocations=anchors.revocations,
        note_verifiers=verifiers,
        gateway_id=dep.config.gateway.id,
        gateway_kids=kids,
        origin=audit.origin,
    )


def add_routes(app: web.Application, *, clock: Callable[[], datetime] | None = None) -> None:
    """Register ``POST /v1/verify`` (needs DEPLOYMENT and KEYRING set on ``app``)."""
    trust = build_trust(app)
    limits = app[keys.DEPLOYMENT].config.limits
    now = clock or (lambda: datetime.now(UTC))

    async def verify(request: web.Request) -> web.Response:
        body = await read_whole(
            request,
            limit=limits.max_body_bytes,
            time_limit=limits.body_timeout_seconds,
            what="the artifact",
        )
        if not body.strip():
            raise BadRequest(
                "send the artifact (JWS JSON, proof bundle or signed note) as the body"
            )
        check = functools.partial(verify_artifact, body, trust, now=now())
        try:
            report = await asyncio.get_running_loop().run_in_executor(None, check)
        except Unreadable as e:
            raise BadRequest(f"not an artifact the gateway signs: {e}") from None
        return web.Response(body=orjson.dumps(report.as_json()), content_type="application/json")

    app.router.add_post(VERIFY_PATH, verify, expect_handler=continue_within(limits.max_body_bytes))
