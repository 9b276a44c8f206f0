"""Every failure the gateway reports, with a stable problem ``type`` and HTTP status.

Why a tree: handlers never pick status codes; they raise the cause, and one middleware turns it
into an RFC 9457 ``application/problem+json`` answer. The ``slug`` is part of the external
contract (clients switch on it), so it never changes once published.

    GatewayError
    +-- BadRequest               400  malformed-json, bad-request, incomplete-body (the client
                                       left mid-body), malformed-request (not HTTP/1.1)
    +-- Unauthenticated          401  unauthenticated (one answer for every cause: no oracle)
    +-- Forbidden                403  forbidden
    +-- NotFound                 404  unknown-service, not-found
    +-- MethodNotAllowed         405  method-not-allowed
    +-- RequestTimeout           408  request-timeout (the body did not arrive in time)
    +-- Conflict                 409  replay, idempotency-conflict
    +-- PayloadTooLarge          413  payload-too-large
    +-- UnsupportedMediaType     415  unsupported-media-type
    +-- SchemaInvalid            422  schema-invalid (with JSON Pointer errors)
    +-- RateLimited              429  rate-limited (with Retry-After)
    +-- ProviderFailed           502  provider-failed, provider-contract-broken
    +-- NotReady                 503  not-ready (a store outage), gateway-busy (a worker at
                                       max_concurrent_exchanges); both with Retry-After
    +-- ProviderTimeout          504  provider-timeout
    +-- Internal                 500  internal (a bug, never bad input)

``ConfigError`` is separate: it stops start-up and is never sent over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

PROBLEM_BASE = "urn:gateway:problem:"


@dataclass(frozen=True, slots=True)
class PointerError:
    """One schema violation: where in the payload (RFC 6901 JSON Pointer) and what is wrong."""

    pointer: str
    message: str


class GatewayError(Exception):
    """Base of every error that becomes a problem response."""

    status: ClassVar[int] = 500
    default_slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    #: A short cause for the audit record (fixed wording, no untrusted or personal data), when
    #: the status and slug alone would hide what an auditor needs (a revoked certificate).
    audit_reason: str | None = None

    def __init__(self, detail: str, *, slug: str | None = None, log_detail: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.slug = slug or self.default_slug
        # What goes to the structured log only (never to the client): for authentication this is
        # the real cause, while the client sees one uniform answer.
        self.log_detail = log_detail or detail

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def extra_members(self) -> Mapping[str, Any]:
        """Extension members added to the problem document."""
        return {}

    def extra_headers(self) -> Mapping[str, str]:
        return {}

    def problem(
        self, *, exchange_id: str | None = None, instance: str | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if exchange_id:
            doc["exchange_id"] = exchange_id
        doc.update(self.extra_members())
        return doc


class BadRequest(GatewayError):
    status = 400
    default_slug = "bad-request"
    title = "Bad request"


class MalformedJson(BadRequest):
    default_slug = "malformed-json"
    title = "Malformed JSON"


class MalformedRequest(BadRequest):
    """Not valid HTTP/1.1 (RFC 9112): refused by the HTTP parser, or a body that cannot be
    decoded (chunked coding, Content-Encoding). The connection is closed after the answer:
    what follows on it cannot be trusted to start a request."""

    default_slug = "malformed-request"
    title = "Malformed request"


class Unauthenticated(GatewayError):
    """Uniform answer for every authentication failure; the cause goes in ``log_detail``."""

    status = 401
    default_slug = "unauthenticated"
    title = "Unauthenticated"
    PUBLIC_DETAIL: ClassVar[str] = (
        "The sender could not be authenticated. Present a valid client certificate, a signed "
        "request (application/jose+json) or, in development, a bearer token."
    )

    def __init__(self, cause: str, *, audit_reason: str | None = None):
        super().__init__(self.PUBLIC_DETAIL, log_detail=cause)
        self.audit_reason = audit_reason

    def extra_headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="gateway"'}


class Forbidden(GatewayError):
    status = 403
    default_slug = "forbidden"
    title = "Forbidden"


class NotFound(GatewayError):
    status = 404
    default_slug = "not-found"
    title = "Not found"


class UnknownService(NotFound):
    default_slug = "unknown-service"
    title = "Unknown service"


class MethodNotAllowed(GatewayError):
    """RFC 9110 15.5.6: a 405 must name the methods the resource does allow (``Allow``)."""

    status = 405
    default_slug = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, *, allowed: Iterable[str]):
        super().__init__(detail)
        self.allowed = tuple(sorted(set(allowed)))

    def extra_headers(self) -> Mapping[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class Conflict(GatewayError):
    status = 409
    default_slug = "conflict"
    title = "Conflict"


class Replay(Conflict):
    default_slug = "replay"
    title = "Replayed request"


class IdempotencyConflict(Conflict):
    default_slug = "idempotency-conflict"
    title = "Idempotency key reused with another body"


class RequestTimeout(GatewayError):
    """The request's body did not arrive within ``limits.body_timeout_seconds``: a client too
    slow (or holding connections open on purpose) must not keep a handler waiting forever."""

    status = 408
    default_slug = "request-timeout"
    title = "Request body not received in time"

    @classmethod
    def after(cls, what: str, seconds: float) -> RequestTimeout:
        """The one wording of this cause, wherever a body was too slow."""
        return cls(
            f"{what} did not arrive within {seconds:g} s of the request headers; send the whole"
            " body at once (on a new connection: this one is closed)"
        )


class PayloadTooLarge(GatewayError):
    status = 413
    default_slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    default_slug = "unsupported-media-type"
    title = "Unsupported media type"


class SchemaInvalid(GatewayError):
    status = 422
    default_slug = "schema-invalid"
    title = "Payload does not match the service schema"

    def __init__(self, detail: str, errors: Sequence[PointerError]):
        super().__init__(detail)
        self.errors = list(errors)

    def extra_members(self) -> Mapping[str, Any]:
        return {"errors": [{"pointer": e.pointer, "message": e.message} for e in self.errors]}


class RateLimited(GatewayError):
    status = 429
    default_slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    def extra_headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ProviderFailed(GatewayError):
    status = 502
    default_slug = "provider-failed"
    title = "Provider failed"


class ProviderContractBroken(ProviderFailed):
    """The answer broke the response schema. It is withheld, and so is its shape: no JSON
    Pointers into it (they would name members the sender may not see, and a member's name can
    be personal data). The sender gets the count, the log the value-free messages."""

    default_slug = "provider-contract-broken"
    title = "Provider answer does not match the service schema"

    def __init__(self, detail: str, errors: Sequence[PointerError]):
        causes = sorted({e.message for e in errors})
        super().__init__(
            f"{detail} ({len(errors)} error(s))",
            log_detail=f"{detail}: {'; '.join(causes)}"[:1000],
        )
        self.errors = list(errors)


class NotReady(GatewayError):
    status = 503
    default_slug = "not-ready"
    title = "Gateway not ready"
    #: For a condition that passes by itself: the seconds after which a retry may succeed,
    #: sent as RFC 9110 ``Retry-After``. None for one that waits on the operator.
    retry_after: ClassVar[int | None] = None

    def extra_headers(self) -> Mapping[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class StoreUnavailable(NotReady):
    """The audit or state store failed this exchange. The gateway recovers by itself once the
    store is back, so the sender is told when to try again."""

    retry_after = 1


class GatewayBusy(NotReady):
    """The worker already has ``limits.max_concurrent_exchanges`` exchanges going. Refused
    before the body is read: under a flood of (slow) requests a worker's memory stays bounded,
    and the exchanges it has accepted keep their share of it. The sender retries shortly."""

    default_slug = "gateway-busy"
    title = "Gateway busy"
    retry_after = 1


class ProviderTimeout(GatewayError):
    status = 504
    default_slug = "provider-timeout"
    title = "Provider timed out"


class Internal(GatewayError):
    """A fault of the gateway itself (never of the input); logged with its traceback."""

    status = 500
    default_slug = "internal"
    title = "Internal error"


class ConfigError(Exception):
    """A configuration that cannot be served: names the file, the field and the problem."""

    def __init__(self, file: str, field: str, problem: str):
        super().__init__(f"{file}: {field}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem
