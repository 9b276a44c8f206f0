"""Every route of the app, with every kind of caller: allowed, 403, or 401, as the table says.

The sweep iterates ``app.router.routes()``, so a route added without a row in ``EXPECTED``
(and in gateway.authz.RULES) fails here. ``EXPECTED`` is written out again on purpose rather
than read from RULES: a change to who may do what has to be made twice, once deliberately.

Callers: no credentials, a bad token, the operator, auditor and admin role tokens `gateway
init` writes, a participant's bearer token, a participant's mTLS certificate, and an mTLS
certificate that carries a role (a `[[roles]]` entry with `participant`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import authz
from gateway.config import load
from gateway.errors import ConfigError, Forbidden, NotFound, Unauthenticated
from gateway.http import app as keys
from gateway.http import audit_api
from gateway.http.app import create_app
from tests.support import Gateway, Provider, example, make_deployment, running_provider
from tests.test_audit_api import audit_gateway, quiet_checkpoints

ROLES = {"operator", "auditor", "admin"}
PUBLIC = "public"
EXCHANGE = "exchange"  # POST /v1/exchange: the pipeline authenticates senders itself.
SENDER = "participant"  # The participant that sent the exchange in the path.

EXPECTED: dict[tuple[str, str], str | frozenset[str]] = {
    ("GET", "/v1/audit/records"): frozenset(ROLES),
    ("GET", "/v1/audit/records/{index}"): frozenset(ROLES),
    ("GET", "/v1/audit/stream"): frozenset(ROLES),
    ("GET", "/v1/audit/export"): frozenset({"auditor", "admin"}),
    ("GET", "/v1/audit/proof/inclusion"): frozenset(ROLES),
    ("GET", "/v1/audit/proof/consistency"): frozenset(ROLES),
    ("GET", "/v1/audit/checkpoint"): PUBLIC,
    ("POST", "/v1/audit/checkpoint"): frozenset({"admin"}),
    ("GET", "/v1/exchanges/{exchange_id}"): frozenset({"operator", "admin", SENDER}),
    ("GET", "/v1/exchanges/{exchange_id}/proof"): frozenset(ROLES | {SENDER}),
    ("POST", "/v1/exchange/{service}"): EXCHANGE,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("POST", "/v1/verify"): PUBLIC,
    ("POST", "/v1/witness/add-checkpoint"): PUBLIC,
}

MTLS_ROLE_PARTICIPANT = "hcm.ttcds"  # Its certificate carries the auditor role below.
SENDER_ID = "hcm.quan-1"


def expected_for(method: str, template: str) -> str | frozenset[str]:
    if template == "/dashboard" or template.startswith("/dashboard/"):
        return PUBLIC  # Static files; the page's data comes from the API, with credentials.
    key = ("GET" if method == "HEAD" else method, template)
    assert key in EXPECTED, f"route {method} {template} has no expected rule in this sweep"
    return EXPECTED[key]


# Caller name -> (role it holds or SENDER/"none"/"bad", bearer token file or None, cert owner).
CALLERS: dict[str, tuple[str, str | None, str | None]] = {
    "none": ("none", None, None),
    "bad-token": ("bad", "bad", None),
    "operator": ("operator", "roles/dtc-operator.token", None),
    "auditor": ("auditor", "roles/dtc-auditor.token", None),
    "admin": ("admin", "roles/dtc-admin.token", None),
    "participant-token": (SENDER, f"participants/{SENDER_ID}/token", None),
    "participant-mtls": (SENDER, None, SENDER_ID),
    "role-mtls": ("auditor", None, MTLS_ROLE_PARTICIPANT),
}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_provider(Provider()) as provider:
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, tls="optional")
        with cfg.open("a") as f:
            f.write(
                '\n[[roles]]\nid = "ttcds-security"\nrole = "auditor"\n'
                f'participant = "{MTLS_ROLE_PARTICIPANT}"\n'
            )
        async with audit_gateway(quiet_checkpoints(cfg)) as g:
            yield g


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "x"), template)


async def request(
    gw: Gateway, caller: str, method: str, path: str, body: bytes | None
) -> tuple[int, dict[str, Any] | None]:
    _, token_file, cert_owner = CALLERS[caller]
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token_file == "bad":
        headers["Authorization"] = "Bearer dev-not-a-token-anyone-holds"
    elif token_file:
        headers["Authorization"] = f"Bearer {(gw.dir / token_file).read_text().strip()}"
    conn = aiohttp.TCPConnector(ssl=gw.client_ssl(cert_owner))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, gw.url + path, headers=headers, data=body) as r,
    ):
        doc = None
        problem = r.headers.get("Content-Type", "").startswith("application/problem+json")
        if problem and method != "HEAD":  # HEAD answers carry the headers only.
            doc = orjson.loads(await r.read())
        return r.status, doc


async def test_every_route_answers_every_caller_as_the_table_says(gw: Gateway) -> None:
    # An exchange sent by SENDER_ID, and a checkpoint covering it, so allowed calls succeed.
    status, doc = await request(
        gw, "participant-token", "POST", "/v1/exchange/budget-proposal.v1",
        orjson.dumps(example("budget-proposal.v1")),
    )  # fmt: skip
    assert status == 200, doc
    xid = gw.records()[0]["exchange_id"]
    status, _ = await request(gw, "admin", "POST", "/v1/audit/checkpoint", None)
    values = {"index": "0", "exchange_id": xid, "service": "budget-proposal.v1"}

    unauthenticated: list[dict[str, Any]] = []
    checked = 0
    for route in gw.app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("*", "OPTIONS"):
            continue
        template = resource.canonical
        rule = expected_for(route.method, template)
        assert authz.rule_for(route.method, template) is not None, template
        path = fill(template, values)
        if isinstance(resource, web.StaticResource):
            path = template + "/index.html"
        body = None
        if route.method == "POST":
            body = orjson.dumps(example("budget-proposal.v1")) if rule == EXCHANGE else b"{}"
        for caller, (holds, _, cert_owner) in CALLERS.items():
            status, problem = await request(gw, caller, route.method, path, body)
            where = f"{caller} {route.method} {path} -> {status} {problem}"
            checked += 1
            if rule == PUBLIC:
                assert status not in (401, 403), where
            elif rule == EXCHANGE:
                # Only a participant's own credentials send exchanges; a role token never does.
                if holds == SENDER or (caller == "role-mtls" and cert_owner):
                    assert status not in (401, 403), where
                else:
                    assert status == 401, where
            elif holds in ("none", "bad"):
                assert status == 401, where
                if route.method != "HEAD":
                    assert problem is not None
                    unauthenticated.append(problem)
            elif holds in rule:
                assert status not in (401, 403), where
            else:
                assert status == 403, where
                if route.method != "HEAD":
                    assert problem is not None and problem["type"].endswith(":forbidden"), where
    assert checked >= len(CALLERS) * 10
    # One answer for every authentication failure, whatever the route or the cause.
    details = {(p["type"], p["title"], p["detail"]) for p in unauthenticated}
    assert details == {
        ("urn:gateway:problem:unauthenticated", "Unauthenticated", Unauthenticated.PUBLIC_DETAIL)
    }


async def test_another_participant_may_not_read_a_senders_exchange(gw: Gateway) -> None:
    status, _ = await request(
        gw, "participant-mtls", "POST", "/v1/exchange/budget-proposal.v1",
        orjson.dumps(example("budget-proposal.v1")),
    )  # fmt: skip
    assert status == 200
    xid = gw.records()[0]["exchange_id"]
    token = (gw.dir / "participants/hcm.thu-duc/token").read_text().strip()
    conn = aiohttp.TCPConnector(ssl=gw.client_ssl(None))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.get(f"{gw.url}/v1/exchanges/{xid}", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 404
    status, _ = await request(gw, "participant-token", "GET", f"/v1/exchanges/{xid}", None)
    assert status == 200


async def test_a_route_without_an_access_rule_stops_the_gateway(tmp_path: Path) -> None:
    cfg = make_deployment(tmp_path / "dep")
    app = create_app(load(cfg))
    if not any(
        r.resource is not None and r.resource.canonical == "/v1/audit/records"
        for r in app.router.routes()
    ):
        audit_api.add_routes(app)

    async def secret(request: web.Request) -> web.Response:
        return web.Response(text="nobody decided who may read this")

    app.router.add_get("/v1/secret", secret)
    runner = web.AppRunner(app)
    with pytest.raises(ConfigError, match="GET /v1/secret"):
        await runner.setup()
    await runner.cleanup()


def test_rule_lookup_is_deny_by_default_and_head_follows_get() -> None:
    assert authz.rule_for("HEAD", "/v1/audit/records") == authz.rule_for("GET", "/v1/audit/records")
    assert authz.rule_for("DELETE", "/v1/audit/records") is None
    assert authz.rule_for("GET", "/v1/audit/records/") is None
    assert authz.rule_for("GET", "/dashboardx") is None
    assert authz.missing_rules(
        [("GET", "/healthz"), ("PUT", "/x"), ("OPTIONS", "/y"), ("*", "/z")]
    ) == ["PUT /x"]


def test_the_dashboard_prefix_is_public_for_get_and_head_only() -> None:
    """The page and its static files need no credentials; no other method is served there."""
    for template in ("/dashboard", "/dashboard/", "/dashboard/{filename}"):
        assert authz.rule_for("GET", template) is authz.PUBLIC
        assert authz.rule_for("HEAD", template) is authz.PUBLIC
        assert authz.rule_for("POST", template) is None


_OPERATOR = authz.Principal("role", "dtc-operator", "operator")
_AUDITOR = authz.Principal("role", "dtc-auditor", "auditor")
_ADMIN = authz.Principal("role", "dtc-admin", "admin")
_UNIT = authz.Principal("participant", SENDER_ID)


@pytest.mark.parametrize(
    ("route", "allowed"),
    [
        (("GET", "/v1/audit/checkpoint"), {_OPERATOR, _AUDITOR, _ADMIN, _UNIT}),
        (("POST", "/v1/exchange/{service}"), {_OPERATOR, _AUDITOR, _ADMIN, _UNIT}),
        (("GET", "/v1/audit/records"), {_OPERATOR, _AUDITOR, _ADMIN}),
        (("GET", "/v1/audit/export"), {_AUDITOR, _ADMIN}),
        (("POST", "/v1/audit/checkpoint"), {_ADMIN}),
        (("GET", "/v1/exchanges/{exchange_id}"), {_OPERATOR, _ADMIN, _UNIT}),
    ],
)
def test_authorize_lets_in_exactly_whom_the_rule_names(
    route: tuple[str, str], allowed: set[authz.Principal]
) -> None:
    """authorize() on its own, without the middleware's shortcut for public routes: a public
    or self-authenticating rule lets anyone through, any other only its roles (and, where the
    rule says so, participants); everyone else gets a 403 naming who is allowed."""
    rule = authz.RULES[route]
    for principal in (_OPERATOR, _AUDITOR, _ADMIN, _UNIT):
        if principal in allowed:
            assert authz.authorize(rule, principal) is None
            continue
        with pytest.raises(Forbidden) as e:
            authz.authorize(rule, principal)
        held = principal.role or "participant"
        assert e.value.detail == (
            f"this route is for {rule.describe()}; the credentials presented hold {held}"
        )


def test_a_403_says_in_words_who_may_use_the_route() -> None:
    assert authz.PUBLIC.describe() == "anyone"
    assert authz.RULES[("GET", "/v1/audit/export")].describe() == "auditor, admin"
    assert (
        authz.RULES[("GET", "/v1/exchanges/{exchange_id}")].describe()
        == "operator, admin, the participant concerned"
    )
    assert authz.Rule().describe() == "nobody"


def test_a_participant_sees_only_what_it_sent_and_others_get_not_found() -> None:
    """Another sender's exchange answers exactly like one that does not exist (no oracle)."""
    assert authz.require_visible(_UNIT, SENDER_ID) is None
    for sender in ("hcm.someone-else", None):
        with pytest.raises(NotFound) as e:
            authz.require_visible(_UNIT, sender)
        assert e.value.detail == authz.NOT_VISIBLE_DETAIL
    assert authz.require_visible(_OPERATOR, "hcm.someone-else") is None


def test_participant_tokens_only_in_development_role_tokens_always(tmp_path: Path) -> None:
    """A participant's bearer token is a development convenience; a role token is a credential."""
    cfg = make_deployment(tmp_path / "dep")
    dep = load(cfg)
    args = (dep.config.roles, keys.build_participants(dep), keys.build_anchors(dep))
    role_token = (cfg.parent / "roles/dtc-auditor.token").read_text().strip()
    unit_token = (cfg.parent / f"participants/{SENDER_ID}/token").read_text().strip()
    now = datetime.now(UTC)
    dev = authz.PrincipalResolver(*args, development=True)
    prod = authz.PrincipalResolver(*args, development=False)
    for resolver in (dev, prod):
        got = resolver.resolve(authz.Credentials(f"Bearer {role_token}"), now=now)
        assert got == authz.Principal("role", "dtc-auditor", "auditor")
    assert dev.resolve(authz.Credentials(f"Bearer {unit_token}"), now=now) == authz.Principal(
        "participant", SENDER_ID
    )
    for creds in (
        authz.Credentials(f"Bearer {unit_token}"),
        authz.Credentials(f"Basic {role_token}"),
        authz.Credentials("Bearer "),
        authz.Credentials(None, b"not a certificate"),
        authz.Credentials(None, None),
    ):
        with pytest.raises(Unauthenticated) as e:
            prod.resolve(creds, now=now)
        assert e.value.detail == Unauthenticated.PUBLIC_DETAIL


def test_a_client_certificate_resolves_only_as_the_registry_allows(tmp_path: Path) -> None:
    """A valid certificate is not enough: its participant must be registered, match its pinned
    certificate, and may use mTLS; a role bound to the participant wins over all of that."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.authn import ParticipantAuth
    from gateway.config import Role

    dep = load(make_deployment(tmp_path / "dep"))
    anchors = keys.build_anchors(dep)
    pem = (tmp_path / f"dep/participants/{SENDER_ID}/cert.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    fingerprint = hashlib.sha256(der).hexdigest()
    creds, now = authz.Credentials(None, der), datetime.now(UTC)

    def resolve(roles: list[Role], *participants: ParticipantAuth) -> authz.Principal:
        known = {p.id: p for p in participants}
        return authz.PrincipalResolver(roles, known, anchors, development=False).resolve(
            creds, now=now
        )

    mtls = frozenset({"mtls"})
    assert resolve([], ParticipantAuth(SENDER_ID, mtls)) == _UNIT
    assert resolve([], ParticipantAuth(SENDER_ID, mtls, fingerprint)) == _UNIT
    auditor = Role(id="dtc-auditor", role="auditor", participant=SENDER_ID)
    token_only = ParticipantAuth(SENDER_ID, frozenset({"token"}))
    assert resolve([auditor], token_only) == authz.Principal("role", "dtc-auditor", "auditor")
    for refused in (
        [ParticipantAuth("hcm.quan-2", mtls)],  # Not registered.
        [ParticipantAuth(SENDER_ID, mtls, "0" * 64)],  # Another certificate is pinned.
        [token_only],  # May not use mTLS.
    ):
        with pytest.raises(Unauthenticated) as e:
            resolve([], *refused)
        assert e.value.detail == Unauthenticated.PUBLIC_DETAIL


def test_the_resolver_refuses_ambiguous_roles_and_tokens_of_participants_without_token_auth(
    tmp_path: Path,
) -> None:
    """A participant's token opens the API only (in development) if it may use tokens at all;
    a token shared with a role, or a participant holding two roles, is a configuration error
    (which one would the request be?)."""
    from gateway.authn import ParticipantAuth
    from gateway.config import Role, token_hash

    anchors = keys.build_anchors(load(make_deployment(tmp_path / "dep")))
    now = datetime.now(UTC)
    unit_hash, role_hash = token_hash("unit-token"), token_hash("role-token")
    mtls_only = ParticipantAuth(SENDER_ID, frozenset({"mtls"}), token_sha256=unit_hash)
    resolver = authz.PrincipalResolver([], {SENDER_ID: mtls_only}, anchors, development=True)
    with pytest.raises(Unauthenticated):
        resolver.resolve(authz.Credentials("Bearer unit-token"), now=now)
    with_token = ParticipantAuth(SENDER_ID, frozenset({"token"}), token_sha256=role_hash)
    auditor = Role(id="dtc-auditor", role="auditor", token_sha256=role_hash)
    with pytest.raises(ValueError, match=f"participant {SENDER_ID} has the token of a role"):
        authz.PrincipalResolver([auditor], {SENDER_ID: with_token}, anchors, development=True)
    two = [
        Role(id="dtc-auditor", role="auditor", participant=SENDER_ID),
        Role(id="dtc-admin", role="admin", participant=SENDER_ID),
    ]
    with pytest.raises(ValueError, match=f"participant {SENDER_ID} carries two roles"):
        authz.PrincipalResolver(two, {}, anchors, development=False)


def test_rules_and_credentials_cannot_be_altered() -> None:
    """RULES is shared by every request: a rule changed at run time would change the table."""
    for obj, field in [(authz.PUBLIC, "public"), (authz.Credentials(), "authorization")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


def test_a_bearer_token_that_is_not_utf8_is_unauthenticated_for_the_api_too(
    tmp_path: Path,
) -> None:
    """aiohttp hands non-UTF-8 header bytes over as lone surrogates; they are a 401, not a 500."""
    dep = load(make_deployment(tmp_path / "dep"))
    resolver = authz.PrincipalResolver(
        dep.config.roles, keys.build_participants(dep), keys.build_anchors(dep), development=True
    )
    with pytest.raises(Unauthenticated) as e:
        resolver.resolve(authz.Credentials("Bearer \udcff\udcfe"), now=datetime.now(UTC))
    assert e.value.detail == Unauthenticated.PUBLIC_DETAIL
