"""One exchange, as a straight line (the numbering of ARCHITECTURE.md).

    (0) parse          strict JSON or JWS                         -> 400/413/415
    (1) authenticate   mTLS | signed request | dev token          -> 401 (409 replay)
    (2) authorize      service lookup, access list                -> 404/403
    (3) validate       request schema                             -> 422
    (4) sign           envelope signed by the gateway
    (5) audit          "accepted" record, durable before delivery
    (6) deliver        connector under a timeout                  -> 502/504
    (7) validate       response schema                            -> 502
    (8) receipt        gateway signature binding both sides and the audit index
    (9) audit          outcome record, durable before the response leaves

Every rejection in (0)-(3) is audited (digest of the body and the cause) before it is answered.
Stages are injected, so this module knows nothing of aiohttp, SQLite or files.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway import delivery, idempotency, records
from gateway.acl import AccessList, Grant
from gateway.audit.log import ClaimRefused
from gateway.audit.store import Claim
from gateway.authn import Authenticator
from gateway.connector import Connector, OutboundMessage
from gateway.crypto.canonical import Canonical, canonical, canonicalize
from gateway.errors import (
    BadRequest,
    GatewayError,
    ProviderContractBroken,
    ProviderFailed,
    Replay,
    SchemaInvalid,
    UnknownService,
)
from gateway.idempotency import IdempotencyStore
from gateway.models import ExchangeResult, Limits, RawRequest, Sender, Timings, rfc3339, uuid7
from gateway.parse import parse_request
from gateway.ratelimit import RateLimiter, TokenBuckets
from gateway.records import sha256_hex
from gateway.validation import CompiledSchema

ENVELOPE_TYP = "envelope+jws"
RECEIPT_TYP = "receipt+jws"
_SERVICE_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\.v[0-9]+$")


class AuditAppender(Protocol):
    async def append(self, record: bytes, *, claim: Claim | None = None) -> Any: ...


class Signer(Protocol):
    def sign(self, obj: Any, *, typ: str, trusted: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ServiceRuntime:
    """A service ready to serve: compiled schemas and a started connector."""

    id: str
    provider: str
    request_schema: CompiledSchema
    response_schema: CompiledSchema
    connector: Connector


def _canonical_payload(payload: Any) -> Canonical:
    """The payload's RFC 8785 form, which every digest and signature is computed over."""
    try:
        return canonical(payload)
    except (ValueError, TypeError) as e:
        raise BadRequest(
            "the payload cannot be signed as canonical JSON (RFC 8785 / I-JSON): "
            f"{e}; send integers within +-(2**53 - 1) or as strings"
        ) from None


def _checked_response(svc: ServiceRuntime, response: Any) -> bytes:
    """(7) The answer against the response schema, then its RFC 8785 form (the receipt's
    digest); a provider breaking its contract is a 502, audited like any provider failure."""
    try:
        svc.response_schema.validate(response)
    except SchemaInvalid as e:
        raise ProviderContractBroken(
            f"the provider {svc.provider} answered outside the response schema of {svc.id}",
            e.errors,
        ) from None
    try:
        return canonicalize(response)
    except (ValueError, TypeError) as e:
        raise ProviderFailed(
            f"the provider {svc.provider} answered with JSON that cannot be canonicalized: {e}",
            slug="provider-contract-broken",
        ) from None


def _replay(sender: Sender) -> Replay:
    return Replay(
        f"request id {sender.request_id!r} was already used by {sender.id}; "
        "sign each request with a new id"
    )


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


class Pipeline:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        access: AccessList,
        services: Mapping[str, ServiceRuntime],
        signer: Signer,
        audit: AuditAppender,
        idempotency: IdempotencyStore,
        limits: Limits,
        clock: Callable[[], datetime],
        gateway_id: str,
        rate: RateLimiter | None = None,
    ):
        self._authn = authenticator
        self._acl = access
        self._services = services
        self._signer = signer
        self._audit = audit
        self._idem = idempotency
        self._limits = limits
        self._clock = clock
        self._gateway_id = gateway_id
        # The workers' shared buckets under `gateway serve`; else this process's own.
        self._rate = rate or TokenBuckets(limits.rate_per_second, limits.rate_burst)

    async def process(self, raw: RawRequest) -> ExchangeResult:
        """Run one exchange; every outcome, good or bad, is audited before it is returned."""
        xid = uuid7()
        sender: Sender | None = None
        try:
            payload_in = parse_request(raw, self._limits)  # (0)
            sender, payload = await self._authn.authenticate(raw, payload_in, raw.received_at)
            self._rate.take(sender.id, time.monotonic())
            svc = self._service(raw.service)  # (2)
            grant = self._acl.decide(svc.id, sender.id)
            svc.request_schema.validate(payload)  # (3)
            canon = _canonical_payload(payload)
        except GatewayError as e:
            return await self._reject(raw, xid, sender, e)
        request_sha = sha256_hex(canon.data)
        key = raw.idempotency_key
        if key is not None:
            lease = idempotency.pending_lease(self._limits.delivery_timeout)
            stored = await idempotency.begin(self._idem, sender.id, svc.id, key, request_sha, lease)
            if isinstance(stored, GatewayError):
                return await self._reject(raw, xid, sender, stored)
            if stored is not None:
                return await self._replayed(raw, xid, sender, svc, request_sha, stored)
        result = None
        try:
            result = await self._exchange(raw, xid, sender, svc, grant, payload, canon, request_sha)
        finally:
            ttl = self._limits.idempotency_ttl
            saved = key is None or await idempotency.finish(
                self._idem, sender.id, svc.id, key, result, request_sha=request_sha, ttl=ttl
            )
        if not saved:  # the answer stands; the log line says the key could not be settled
            result = replace(result, log={**result.log, "idempotency": "state store failed"})
        return result

    # (2)
    def _service(self, service_id: str) -> ServiceRuntime:
        svc = self._services.get(service_id)
        if svc is None:
            shown = service_id if _SERVICE_RE.match(service_id) else "(malformed name)"
            raise UnknownService(f"no service {shown} on this gateway; see GET /v1/openapi.json")
        return svc

    async def _exchange(
        self,
        raw: RawRequest,
        xid: str,
        sender: Sender,
        svc: ServiceRuntime,
        grant: Grant,
        payload: Any,
        canon: Canonical,
        request_sha: str,
    ) -> ExchangeResult:
        envelope = self._signer.sign(  # (4)
            records.envelope_claims(
                xid, svc, sender, self._gateway_id, raw.received, grant, request_sha, canon
            ),
            typ=ENVELOPE_TYP,
            trusted=True,  # strings from config and the verified JWS, the Canonical payload
        )
        envelope_bytes = _json(envelope)
        spent = Timings()
        try:
            accepted = await self._accept(  # (5)
                raw, xid, sender, svc, grant, request_sha, envelope_bytes, spent
            )
        except ClaimRefused:
            return await self._reject(raw, xid, sender, _replay(sender))
        message = OutboundMessage(
            exchange_id=xid,
            service=svc.id,
            sender=sender.id,
            provider=svc.provider,
            payload=payload,
            envelope=envelope,
            envelope_bytes=envelope_bytes,
            idempotency_key=idempotency.provider_key(sender.id, svc.id, raw.idempotency_key),
            timeout=self._limits.delivery_timeout,
        )
        try:
            response, attempts = await self._deliver(svc, message, spent)  # (6)
            response_canon = _checked_response(svc, response)  # (7)
        except GatewayError as e:
            return await self._failed(raw, xid, sender, svc, accepted, e, spent)
        return await self._complete(
            raw, xid, sender, svc, request_sha, accepted, response, response_canon, attempts, spent
        )

    async def _complete(
        self,
        raw: RawRequest,
        xid: str,
        sender: Sender,
        svc: ServiceRuntime,
        request_sha: str,
        accepted: Any,
        response: Any,
        response_canon: bytes,
        attempts: int,
        spent: Timings,
    ) -> ExchangeResult:
        """(8) the receipt, (9) the outcome record; the answer once that record is durable."""
        completed_at = rfc3339(self._clock())
        response_sha = sha256_hex(response_canon)
        receipt = self._signer.sign(
            records.receipt_claims(
                xid,
                svc,
                sender,
                self._gateway_id,
                raw.received,
                completed_at,
                request_sha,
                response_sha,
                accepted,
            ),
            typ=RECEIPT_TYP,
            trusted=True,
        )
        body = _json(
            {"exchange_id": xid, "status": "delivered", "response": response, "receipt": receipt}
        )
        outcome = await self._append(
            records.delivered_record(
                xid, svc, sender, completed_at, attempts, accepted, response_sha, _json(receipt)
            ),
            spent,
        )
        return ExchangeResult(
            status=200,
            body=body,
            exchange_id=xid,
            log={
                "event": "exchange.delivered",
                "sender": sender.id,
                "service": svc.id,
                "auth": sender.method,
                "audit_index": outcome.index,
            },
            timings=spent,
        )

    async def _accept(
        self,
        raw: RawRequest,
        xid: str,
        sender: Sender,
        svc: ServiceRuntime,
        grant: Grant,
        request_sha: str,
        envelope_bytes: bytes,
        spent: Timings,
    ) -> Any:
        """The "accepted" record, durable (with the request id spent) before any delivery."""
        claim = None
        if sender.request_id is not None:  # a signed request: its id is spent in this commit
            now = time.time()
            claim = Claim(f"{sender.id}\n{sender.request_id}", now + self._limits.replay_ttl, now)
        record = records.accepted_record(raw, xid, svc, sender, grant, request_sha, envelope_bytes)
        return await self._append(record, spent, claim=claim)

    async def _append(self, record: bytes, spent: Timings, *, claim: Claim | None = None) -> Any:
        """An exchange's audit append (durable when it returns), timed into ``spent``."""
        started = time.perf_counter()
        try:
            return await self._audit.append(record, claim=claim)
        finally:
            spent.audit += time.perf_counter() - started

    async def _deliver(
        self, svc: ServiceRuntime, message: OutboundMessage, spent: Timings
    ) -> tuple[Any, int]:
        started = time.perf_counter()
        try:
            seconds = self._limits.delivery_timeout
            return await delivery.deliver(
                svc.connector, message, provider=svc.provider, seconds=seconds
            )
        finally:
            spent.upstream += time.perf_counter() - started

    async def _failed(
        self,
        raw: RawRequest,
        xid: str,
        sender: Sender,
        svc: ServiceRuntime,
        accepted: Any,
        err: GatewayError,
        spent: Timings,
    ) -> ExchangeResult:
        at = rfc3339(self._clock())
        await self._append(
            records.failed_record(xid, svc, sender, at, err.status, err.slug, accepted), spent
        )
        return self._problem(err, xid, "exchange.failed", sender.id, svc.id, spent)

    async def _replayed(
        self,
        raw: RawRequest,
        xid: str,
        sender: Sender,
        svc: ServiceRuntime,
        request_sha: str,
        stored: ExchangeResult,
    ) -> ExchangeResult:
        """The stored answer again, once its handing out is audited: every attempt is."""
        original = stored.exchange_id or xid
        await self._audit.append(
            records.replayed_record(raw, original, svc, sender, stored.status, request_sha)
        )
        return stored

    async def _reject(
        self, raw: RawRequest, xid: str, sender: Sender | None, err: GatewayError
    ) -> ExchangeResult:
        service = raw.service if raw.service in self._services else None
        who = sender.id if sender else None
        await self._audit.append(
            records.rejected_record(raw, xid, service, who, err.status, err.slug, err.audit_reason)
        )
        return self._problem(err, xid, "exchange.rejected", sender.id if sender else None, service)

    @staticmethod
    def _problem(
        err: GatewayError,
        xid: str,
        event: str,
        sender: str | None,
        service: str | None,
        spent: Timings | None = None,
    ) -> ExchangeResult:
        return ExchangeResult(
            status=err.status,
            body=_json(err.problem(exchange_id=xid)),
            content_type="application/problem+json",
            headers=dict(err.extra_headers()),
            exchange_id=xid,
            log={
                "event": event,
                "sender": sender,
                "service": service,
                "cause": err.slug,
                "status": err.status,
                "reason": err.log_detail,
            },
            timings=spent,
        )
