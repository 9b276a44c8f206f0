"""Who may call what, outside the exchange itself: principals, and deny-by-default decisions.

Why a module of its own: ``authn.py`` answers "which unit system sent this exchange", and
``acl.py`` "may it call this service". The operators' and auditors' API (the audit log, proofs,
exchange state) needs a third answer, "which role does this caller hold", and one table that
says, for every route of the application, who may use it. A route with no row in the table is
refused (403) and fails the authorization sweep test, so a new route cannot ship unprotected by
forgetting a decorator.

The table (``RULES``; HEAD follows GET):

=========================================  ===========================================
route                                      allowed
=========================================  ===========================================
GET  /v1/audit/records                     operator, auditor, admin
GET  /v1/audit/records/{index}             operator, auditor, admin
GET  /v1/audit/stream                      operator, auditor, admin
GET  /v1/audit/export                      auditor, admin (bulk copy: not for operators)
GET  /v1/audit/proof/inclusion             operator, auditor, admin
GET  /v1/audit/proof/consistency           operator, auditor, admin
GET  /v1/audit/checkpoint                  anyone, no credentials (it is signed and public)
POST /v1/audit/checkpoint                  admin (publish a checkpoint now)
GET  /v1/exchanges/{exchange_id}           operator, admin, and the participant that sent it
GET  /v1/exchanges/{exchange_id}/proof     operator, auditor, admin, and its sender
POST /v1/exchange/{service}                its own authentication (pipeline stage 1)
GET  /healthz, /readyz, /metrics           anyone (orchestrators, Prometheus)
GET  /.well-known/jwks.json                anyone (public keys)
GET  /v1/openapi.json                      anyone
POST /v1/verify                            anyone (checks what it is given, reveals nothing)
GET  /dashboard...                         anyone: static files only; the page's data comes
                                           from the API above, with the operator's credentials
=========================================  ===========================================

Proofs are open to operators: they hold hashes only, less than the records operators already
read. "Its sender" means the participant in the exchange's audit records; any other participant
gets the same 404 as for an exchange that does not exist (no oracle for exchange ids).

Resolving a principal (:class:`PrincipalResolver`), first match wins:

1. ``Authorization: Bearer <token>`` whose SHA-256 is a ``[[roles]]`` ``token_sha256``: that role.
   Otherwise, in development only, a participant's token: that participant. When an
   Authorization header is present it alone decides (a bad token is never rescued by a
   certificate): presenting a wrong credential is an error, not a fallback.
2. A TLS client certificate, valid under the trust anchors for client authentication, naming a
   participant (subject CN / SAN URI, as for exchanges; pinned certificates must match): the
   role whose ``participant`` is that participant, else that participant (if it may use mTLS).
3. Nothing: :class:`~gateway.errors.Unauthenticated`. Every failure above gives the same public
   answer (401, one detail); the cause goes to the log only.

Pure: no I/O, no aiohttp, no clock (``now`` is a parameter), no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gateway.authn import CertificateFacts, ParticipantAuth, bearer_digest
from gateway.config import Role
from gateway.crypto import pki
from gateway.errors import Forbidden, NotFound, Unauthenticated

__all__ = [
    "PUBLIC",
    "RULES",
    "Credentials",
    "Principal",
    "PrincipalResolver",
    "RoleName",
    "Rule",
    "authorize",
    "missing_rules",
    "require_visible",
    "rule_for",
]

RoleName = Literal["operator", "auditor", "admin"]
ROLE_NAMES: tuple[RoleName, ...] = ("operator", "auditor", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller of the API: a role holder, or a participant (a unit system).

    ``id`` is the role entry's id (``dtc-auditor``) or the participant id (``hcm.quan-1``).
    """

    kind: Literal["role", "participant"]
    id: str
    role: RoleName | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented: its Authorization header and its TLS client certificate (DER)."""

    authorization: str | None = None
    peer_cert_der: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may use one route.

    ``public``: no credentials needed (and none are checked). ``own_auth``: the handler
    authenticates by itself (the exchange pipeline); the middleware stays out of the way.
    ``roles``: role holders allowed. ``participants``: participants allowed, each to its own
    resources only (the handler narrows with :func:`require_visible`).
    """

    roles: frozenset[RoleName] = field(default_factory=frozenset)
    participants: bool = False
    public: bool = False
    own_auth: bool = False

    def describe(self) -> str:
        """For 403 details and docs: who is allowed, in words."""
        if self.public:
            return "anyone"
        who: list[str] = [r for r in ROLE_NAMES if r in self.roles]
        if self.participants:
            who.append("the participant concerned")
        return ", ".join(who) or "nobody"


def _roles(*names: RoleName) -> frozenset[RoleName]:
    return frozenset(names)


PUBLIC = Rule(public=True)
_READERS = Rule(roles=_roles("operator", "auditor", "admin"))
_AUDITORS = Rule(roles=_roles("auditor", "admin"))

RULES: Mapping[tuple[str, str], Rule] = {
    ("GET", "/v1/audit/records"): _READERS,
    ("GET", "/v1/audit/records/{index}"): _READERS,
    ("GET", "/v1/audit/stream"): _READERS,
    ("GET", "/v1/audit/export"): _AUDITORS,
    ("GET", "/v1/audit/proof/inclusion"): _READERS,
    ("GET", "/v1/audit/proof/consistency"): _READERS,
    ("GET", "/v1/audit/checkpoint"): PUBLIC,
    ("POST", "/v1/audit/checkpoint"): Rule(roles=_roles("admin")),
    ("GET", "/v1/exchanges/{exchange_id}"): Rule(
        roles=_roles("operator", "admin"), participants=True
    ),
    ("GET", "/v1/exchanges/{exchange_id}/proof"): Rule(
        roles=_roles("operator", "auditor", "admin"), participants=True
    ),
    ("POST", "/v1/exchange/{service}"): Rule(own_auth=True),
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("POST", "/v1/verify"): PUBLIC,
    ("POST", "/v1/witness/add-checkpoint"): PUBLIC,  # tlog-witness: the note signature is the auth
}
"""(method, route template as aiohttp's ``resource.canonical``) -> rule."""

_PREFIX_RULES: tuple[tuple[str, str, Rule], ...] = (("GET", "/dashboard", PUBLIC),)


def rule_for(method: str, template: str) -> Rule | None:
    """The rule of a route, or None when the table has none (the caller must then refuse)."""
    method = "GET" if method == "HEAD" else method.upper()
    rule = RULES.get((method, template))
    if rule is not None:
        return rule
    for m, prefix, prefix_rule in _PREFIX_RULES:
        if method == m and (template == prefix or template.startswith(prefix + "/")):
            return prefix_rule
    return None


def missing_rules(routes: Iterable[tuple[str, str]]) -> list[str]:
    """``METHOD template`` of every route without a rule (``*`` and OPTIONS are never served)."""
    return sorted(
        f"{method} {template}"
        for method, template in routes
        if method not in ("*", "OPTIONS") and rule_for(method, template) is None
    )


def authorize(rule: Rule, principal: Principal) -> None:
    """Return None when ``principal`` may use a route under ``rule``; raise Forbidden if not.

    For a participant this only opens the door: the handler must still check that the
    resource is its own (:func:`require_visible`).
    """
    if rule.public or rule.own_auth:
        return
    if principal.kind == "role" and principal.role in rule.roles:
        return
    if principal.kind == "participant" and rule.participants:
        return
    held = principal.role if principal.kind == "role" else "participant"
    raise Forbidden(
        f"this route is for {rule.describe()}; the credentials presented hold {held}",
        log_detail=f"{principal.kind} {principal.id} ({held}) refused",
    )


NOT_VISIBLE_DETAIL = "No exchange with this id is visible to the credentials presented."


def require_visible(principal: Principal, sender: str | None) -> None:
    """Return None if ``principal`` may see a resource sent by ``sender``, else a 404.

    A participant sees only what it sent; the answer for another sender's resource is the
    very same NotFound as for one that does not exist, so exchange ids cannot be probed.
    Role holders were already filtered by the route's rule.
    """
    if principal.kind == "participant" and principal.id != sender:
        raise NotFound(NOT_VISIBLE_DETAIL)


class PrincipalResolver:
    """Credentials -> Principal, or Unauthenticated (one public answer for every cause).

    Built once at start-up from the ``[[roles]]`` entries and the registered participants.
    ``development`` gates participants' bearer tokens, as for exchanges; role tokens are
    allowed in production (the contract stores them as hashes).
    """

    def __init__(
        self,
        roles: Sequence[Role],
        participants: Mapping[str, ParticipantAuth],
        anchors: pki.TrustAnchors,
        *,
        development: bool,
    ) -> None:
        self._participants = participants
        self._role_tokens: dict[str, Principal] = {}
        self._role_certs: dict[str, Principal] = {}
        for r in roles:
            principal = Principal("role", r.id, r.role)
            if r.token_sha256 is not None:
                self._role_tokens[r.token_sha256] = principal
            if r.participant is not None:
                if r.participant in self._role_certs:
                    raise ValueError(f"participant {r.participant} carries two roles")
                self._role_certs[r.participant] = principal
        self._participant_tokens: dict[str, str] = {}
        if development:
            for p in participants.values():
                if p.token_sha256 and "token" in p.methods:
                    if p.token_sha256 in self._role_tokens:
                        raise ValueError(f"participant {p.id} has the token of a role")
                    self._participant_tokens[p.token_sha256] = p.id
        self._certs = CertificateFacts(anchors)

    def resolve(self, credentials: Credentials, *, now: datetime) -> Principal:
        """The principal of a request, or raise Unauthenticated."""
        if credentials.authorization is not None:
            return self._token(credentials.authorization)
        if credentials.peer_cert_der is not None:
            return self._certificate(credentials.peer_cert_der, now)
        raise Unauthenticated("no credentials: no bearer token and no client certificate")

    def _token(self, authorization: str) -> Principal:
        digest = bearer_digest(authorization)
        role = self._role_tokens.get(digest)
        if role is not None:
            return role
        pid = self._participant_tokens.get(digest)
        if pid is not None:
            return Principal("participant", pid)
        raise Unauthenticated("unknown bearer token (participant tokens need development)")

    def _certificate(self, der: bytes, now: datetime) -> Principal:
        pid, fingerprint = self._certs.client_certificate(der, now)
        p = self._participants.get(pid or "")
        if p is None:
            raise Unauthenticated(f"certificate names {pid!r}, not a registered participant")
        if p.pinned_sha256 and fingerprint != p.pinned_sha256:
            raise Unauthenticated(f"certificate of {p.id} is not the one registered")
        role = self._role_certs.get(p.id)
        if role is not None:
            return role
        if "mtls" not in p.methods:
            raise Unauthenticated(f"{p.id} may not authenticate by mtls")
        return Principal("participant", p.id)
