"""Stage (1): who is sending. mTLS client certificate, signed request, or development token.

Every authentication failure gets the same public answer (``Unauthenticated``); the real cause
goes to the log only, so the endpoint is no oracle for probing keys, clocks or ids. A replayed
signed request is the exception: the sender proved who it is, so it may learn that the id was
used (409), which is what a well-behaved client needs to recover. That check happens when the
exchange is accepted (pipeline stage 5), where the id is spent in the same durable transaction
as the "accepted" audit record: one fsync for both, and only an accepted exchange spends an id
(a request refused for its payload can be corrected and signed again with the same id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from cryptography import x509

from gateway.config import token_hash
from gateway.crypto import jws, pki
from gateway.crypto.canonical import canonicalize
from gateway.crypto.jws import CryptoError
from gateway.crypto.revocation import CertificateRevoked
from gateway.errors import BadRequest, MalformedJson, Unauthenticated
from gateway.models import RawRequest, Sender
from gateway.strictjson import JsonError, loads

REQUEST_TYP = "request+jws"
SIGNED_MEDIA_TYPE = "application/jose+json"
_REQUEST_MEMBERS = frozenset({"id", "sender", "service", "created", "payload"})
log = structlog.get_logger("gateway.authn")


def revocation_reason(error: BaseException) -> str | None:
    """The audit wording of the revocation behind ``error`` (jws wraps chain errors), if any."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, CertificateRevoked):
            return cause.audit_reason
        cause = cause.__cause__
    return None


class StaleCrlWarning:
    """Warns once per CRL that passed its nextUpdate while the gateway runs.

    Such a CRL still applies (its revocations stand: forgetting them would let a revoked
    certificate back in); the operator publishes a fresh CRL and restarts. One comparison per
    request until the next CRL goes stale.
    """

    def __init__(self, anchors: pki.TrustAnchors) -> None:
        self._crls = list(anchors.revocations.crls)

    def check(self, now: datetime) -> None:
        if not self._crls or now < min(crl.next_update for crl in self._crls):
            return
        for crl in [c for c in self._crls if c.next_update <= now]:
            self._crls.remove(crl)
            log.warning(
                "crl.stale",
                issuer=crl.issuer_name,
                next_update=crl.next_update.isoformat(),
                detail="still applied; publish a fresh CRL and restart the gateway",
            )


@dataclass(frozen=True, slots=True)
class ParticipantAuth:
    """What authentication needs to know of one participant."""

    id: str
    methods: frozenset[str]
    pinned_sha256: str | None = None
    token_sha256: str | None = None


#: RFC 3339 section 5.6 ``date-time`` in UTC (``Z``/``z`` or ``+00:00``); ASCII digits only.
_CREATED_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|\+00:00)", re.ASCII
)


def parse_created(value: str) -> datetime:
    """RFC 3339 UTC (``Z`` or ``+00:00``) to an aware datetime; ValueError otherwise.

    Why not ``datetime.fromisoformat``: it also takes ISO 8601 forms the contract does not
    allow (basic format, week dates, no seconds, a space for ``T``), which other verifiers of
    the same signed request would read differently or refuse. A leap second (``:60``) is the
    first instant of the next minute.
    """
    m = _CREATED_RE.fullmatch(value)
    if m is None:
        raise ValueError("created must be an RFC 3339 UTC time, e.g. 2026-11-28T09:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    leap = second == 60
    t = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=UTC)
    try:
        return t + timedelta(seconds=1) if leap else t
    except OverflowError:  # 9999-12-31T23:59:60Z
        raise ValueError("created is beyond the last representable time") from None


def _require_canonical(req: dict[str, Any], signed: bytes) -> None:
    """The signed bytes must be the RFC 8785 form of the request, as the contract says.

    Why here: the sender's JWS travels on inside the envelope, and every verifier downstream
    (``gateway verify`` included) refuses a payload that is not canonical; forwarding one would
    hand the provider a signature that cannot be checked. Refused before any id is spent.
    """
    try:
        canonical = canonicalize(req)
    except (ValueError, TypeError):  # integers beyond 2**53 - 1, lone surrogates
        canonical = None
    if canonical != signed:
        raise BadRequest(
            "the signed payload must be the RFC 8785 (JCS) canonical JSON of the request: "
            "members sorted, no whitespace, integers within +-(2**53 - 1)"
        )


class CertificateFacts:
    """Participant id and SHA-256 fingerprint of certificates, cached by their bytes.

    Why a cache: parsing the subject and hashing the DER cost more than the signature check,
    and a sender presents the same certificate on every request (as x5c text in a signed
    request, as DER in a TLS handshake). Shared by sender authentication and role resolution,
    so both bind a certificate to a participant the same way. Bounded: cleared when full.
    """

    def __init__(self, anchors: pki.TrustAnchors, *, max_entries: int = 4096) -> None:
        self._anchors = anchors
        self._max = max_entries
        self._facts: dict[str | bytes, tuple[str | None, str]] = {}

    def of(self, key: str | bytes, leaf: x509.Certificate) -> tuple[str | None, str]:
        """(participant id or None, fingerprint) of ``leaf``; CryptoError if its names conflict."""
        facts = self._facts.get(key)
        if facts is None:
            if len(self._facts) >= self._max:
                self._facts.clear()
            facts = self._facts[key] = (pki.participant_id(leaf), pki.fingerprint_sha256(leaf))
        return facts

    def client_certificate(self, der: bytes, now: datetime) -> tuple[str | None, str]:
        """A TLS client certificate checked against the trust anchors; its facts.

        Raises Unauthenticated (the cause in its log detail) when the certificate is refused.
        """
        try:
            leaf = self._anchors.validate_leaf_der(der, now=now, purpose="client_auth").leaf
            return self.of(der, leaf)
        except (CryptoError, ValueError) as e:
            raise Unauthenticated(
                f"client certificate refused: {e}", audit_reason=revocation_reason(e)
            ) from None


def bearer_digest(authorization: str) -> str:
    """The stored form (``config.token_hash``) of an ``Authorization: Bearer`` token.

    Shared by sender authentication and role resolution, so both read the header the same way.
    Unauthenticated when the header is not a bearer token.
    """
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization header is not a bearer token")
    try:
        return token_hash(token)
    except UnicodeEncodeError:  # header bytes that are not UTF-8 reach us as lone surrogates
        raise Unauthenticated("bearer token is not UTF-8 text") from None


class Authenticator:
    def __init__(
        self,
        participants: Mapping[str, ParticipantAuth],
        anchors: pki.TrustAnchors,
        *,
        skew_seconds: int,
        max_depth: int,
        development: bool,
    ):
        self._participants = participants
        self._anchors = anchors
        self._skew = timedelta(seconds=skew_seconds)
        self._max_depth = max_depth
        self._tokens = {
            p.token_sha256: p for p in participants.values() if p.token_sha256 and development
        }
        self._certs = CertificateFacts(anchors)
        self._stale_crls = StaleCrlWarning(anchors)

    async def authenticate(self, raw: RawRequest, parsed: Any, now: datetime) -> tuple[Sender, Any]:
        """Return the sender and the business payload, or raise."""
        self._stale_crls.check(now)
        if raw.content_type == SIGNED_MEDIA_TYPE:
            return await self._signed(raw, parsed, now)
        if raw.peer_cert_der is not None:
            return Sender(self._mtls(raw.peer_cert_der, now), "mtls"), parsed
        if raw.authorization is not None:
            return Sender(self._token(raw.authorization), "token"), parsed
        raise Unauthenticated("no credentials: no client certificate, signature or token")

    def _participant(self, pid: str | None, method: str) -> ParticipantAuth:
        p = self._participants.get(pid or "")
        if p is None:
            raise Unauthenticated(f"{pid!r} is not a registered participant")
        if method not in p.methods:
            raise Unauthenticated(f"{p.id} may not authenticate by {method}")
        return p

    def _bind(self, facts: tuple[str | None, str], method: str) -> str:
        pid, fingerprint = facts
        p = self._participant(pid, method)
        if p.pinned_sha256 and fingerprint != p.pinned_sha256:
            raise Unauthenticated(f"certificate of {p.id} is not the one registered")
        return p.id

    def _mtls(self, der: bytes, now: datetime) -> str:
        return self._bind(self._certs.client_certificate(der, now), "mtls")

    def _token(self, authorization: str) -> str:
        p = self._tokens.get(bearer_digest(authorization))
        if p is None:
            raise Unauthenticated("unknown bearer token (or tokens disabled: not development)")
        return self._participant(p.id, "token").id

    async def _signed(self, raw: RawRequest, parsed: Any, now: datetime) -> tuple[Sender, Any]:
        if not isinstance(parsed, dict):
            raise MalformedJson("a signed request is a JWS JSON object (flattened serialization)")
        try:
            verified = jws.verify(parsed, self._anchors, now=now, expected_typ=REQUEST_TYP)
        except CryptoError as e:
            raise Unauthenticated(
                f"signed request refused: {e}", audit_reason=revocation_reason(e)
            ) from None
        try:
            # The request object holds the payload one level down: the limit is the payload's,
            # as for a plain body, whatever the way the sender authenticates.
            req = loads(verified.payload, max_depth=self._max_depth + 1)
        except JsonError as e:
            if e.too_deep:  # counted from the request object
                raise MalformedJson(
                    f"the payload nests deeper than {self._max_depth} (the request object "
                    "around it not counted)"
                ) from None
            raise MalformedJson(
                f"signed payload is not valid JSON: {e}",
                log_detail=f"signed payload is not valid JSON: {e.loggable}",
            ) from None
        if not isinstance(req, dict) or set(req) != _REQUEST_MEMBERS:
            raise BadRequest(
                "the signed payload must be an object with exactly the members "
                "id, sender, service, created, payload"
            )
        _require_canonical(req, verified.payload)
        rid, sender, service, created = req["id"], req["sender"], req["service"], req["created"]
        if not (isinstance(rid, str) and 1 <= len(rid) <= 128 and rid.isprintable()):
            raise BadRequest("signed request 'id' must be a printable string of 1 to 128 chars")
        if not isinstance(sender, str) or not isinstance(service, str):
            raise BadRequest("signed request 'sender' and 'service' must be strings")
        if service != raw.service:
            raise BadRequest(  # the sender may see what it signed; the log may not
                f"the request was signed for service {service[:100]!r} but sent to "
                f"{raw.service[:100]!r}",
                log_detail="the request was signed for another service than the URL names",
            )
        try:
            created_at = parse_created(created) if isinstance(created, str) else None
        except ValueError:
            created_at = None
        if created_at is None:
            raise BadRequest("signed request 'created' must be an RFC 3339 UTC time")
        if abs(now - created_at) > self._skew:
            raise Unauthenticated(f"signed request created {created} is outside the skew window")
        try:
            facts = self._certs.of(verified.header["x5c"][0], verified.leaf)
        except CryptoError as e:
            raise Unauthenticated(f"certificate names no participant: {e}") from None
        if self._bind(facts, "signed") != sender:
            raise Unauthenticated("signer certificate is not bound to the declared sender")
        # The id is spent when the exchange is accepted: the pipeline claims it in the same
        # durable transaction as the "accepted" audit record (409 replay if already spent).
        return Sender(sender, "signed", signed_request=parsed, request_id=rid), req["payload"]
