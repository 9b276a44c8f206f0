"""What the gateway signs and audits about one exchange: the envelope and receipt claims, and
the audit records of its outcomes (accepted, delivered, failed, rejected, and replayed for an
``Idempotency-Key`` retry).

Apart from the pipeline so that the straight line in ``pipeline.py`` reads as stages, and so
that every member of every signed or audited document is defined in one place (CONTRACT.md's
formats). Records hold digests and metadata only, never payload values: the privacy test greps
the audit log for the citizen ids it sent.

Pure: builds dicts and canonical bytes from values it is given; no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from gateway.acl import Grant
from gateway.crypto.canonical import Canonical, canonicalize, canonicalize_trusted
from gateway.models import RawRequest, Sender


class _Schema(Protocol):
    schema_id: str
    sha256: str


class Service(Protocol):
    """The facts of a service that documents name (ServiceRuntime has them)."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def request_schema(self) -> _Schema: ...
    @property
    def response_schema(self) -> _Schema: ...


class Placed(Protocol):
    """Where the audit log put a record (AppendResult has it)."""

    index: int
    leaf_hash: bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _schema(s: _Schema) -> dict[str, str]:
    return {"id": s.schema_id, "sha256": s.sha256}


def _parties(xid: str, svc: Service, sender: Sender, gateway_id: str) -> dict[str, Any]:
    """Who an exchange is between: the members the envelope and the receipt both start with."""
    return {
        "exchange_id": xid,
        "service": svc.id,
        "sender": sender.id,
        "provider": svc.provider,
        "gateway": gateway_id,
    }


def envelope_claims(
    xid: str,
    svc: Service,
    sender: Sender,
    gateway_id: str,
    received: str,
    grant: Grant,
    request_sha: str,
    canon: Canonical,
) -> dict[str, Any]:
    """(4) What the provider receives, signed by the gateway around the sender's signature."""
    return {
        **_parties(xid, svc, sender, gateway_id),
        "received_at": received,
        "purpose": grant.purpose,
        "legal_basis": grant.legal_basis,
        "request_sha256": request_sha,
        "payload": canon,  # canonicalized once, embedded as is
        "sender_signature": sender.signed_request,
    }


def receipt_claims(
    xid: str,
    svc: Service,
    sender: Sender,
    gateway_id: str,
    received: str,
    completed: str,
    request_sha: str,
    response_sha: str,
    accepted: Placed,
) -> dict[str, Any]:
    """(8) What the sender keeps: both digests, both schemas, and the accepted record's leaf."""
    return {
        **_parties(xid, svc, sender, gateway_id),
        "request_sha256": request_sha,
        "response_sha256": response_sha,
        "schemas": {
            "request": _schema(svc.request_schema),
            "response": _schema(svc.response_schema),
        },
        "status": "delivered",
        "received_at": received,
        "completed_at": completed,
        "audit": {"index": accepted.index, "leaf_hash": accepted.leaf_hash.hex()},
    }


def accepted_record(
    raw: RawRequest,
    xid: str,
    svc: Service,
    sender: Sender,
    grant: Grant,
    request_sha: str,
    envelope_bytes: bytes,
) -> bytes:
    """(5) Durable before delivery (with the signed request's id spent in the same commit)."""
    return canonicalize_trusted(
        {
            "v": 1,
            "event": "exchange.accepted",
            "exchange_id": xid,
            "at": raw.received,
            "service": svc.id,
            "sender": sender.id,
            "provider": svc.provider,
            "auth": sender.method,
            "purpose": grant.purpose,
            "legal_basis": grant.legal_basis,
            "request_sha256": request_sha,
            "envelope_sha256": sha256_hex(envelope_bytes),
            "request_schema": _schema(svc.request_schema),
            "idempotency_key_sha256": _key_digest(raw),
        }
    )


def delivered_record(
    xid: str,
    svc: Service,
    sender: Sender,
    completed: str,
    attempts: int,
    accepted: Placed,
    response_sha: str,
    receipt_bytes: bytes,
) -> bytes:
    """(9) The outcome of a delivered exchange; the response leaves once this is durable."""
    return canonicalize_trusted(
        {
            "v": 1,
            "event": "exchange.delivered",
            "exchange_id": xid,
            "at": completed,
            "service": svc.id,
            "sender": sender.id,
            "provider": svc.provider,
            "status": 200,
            "attempts": attempts,
            "accepted_index": accepted.index,
            "response_sha256": response_sha,
            "receipt_sha256": sha256_hex(receipt_bytes),
        }
    )


def failed_record(
    xid: str, svc: Service, sender: Sender, at: str, status: int, cause: str, accepted: Placed
) -> bytes:
    """(9) The outcome of an accepted exchange the provider did not answer well (502/504)."""
    return canonicalize_trusted(
        {
            "v": 1,
            "event": "exchange.failed",
            "exchange_id": xid,
            "at": at,
            "service": svc.id,
            "sender": sender.id,
            "provider": svc.provider,
            "status": status,
            "cause": cause,
            "accepted_index": accepted.index,
        }
    )


def _key_digest(raw: RawRequest) -> str | None:
    """The ``Idempotency-Key`` as the audit log holds it: a digest, never the key itself."""
    return sha256_hex(raw.idempotency_key.encode()) if raw.idempotency_key else None


def replayed_record(
    raw: RawRequest, xid: str, svc: Service, sender: Sender, status: int, request_sha: str
) -> bytes:
    """An ``Idempotency-Key`` retry answered with the stored answer of exchange ``xid``.

    Nothing is delivered, but the provider's answer is handed out again, so the attempt is
    recorded under the exchange it repeats (whose state stays that of its own outcome).
    """
    return canonicalize_trusted(
        {
            "v": 1,
            "event": "exchange.replayed",
            "exchange_id": xid,
            "at": raw.received,
            "service": svc.id,
            "sender": sender.id,
            "provider": svc.provider,
            "auth": sender.method,
            "status": status,
            "request_sha256": request_sha,
            "idempotency_key_sha256": _key_digest(raw),
        }
    )


def rejected_record(
    raw: RawRequest,
    xid: str,
    service: str | None,
    sender: str | None,
    status: int,
    cause: str,
    reason: str | None = None,
) -> bytes:
    """(0)-(3) A refusal: the body's digest and size, never its content.

    ``reason``: the error's ``audit_reason`` (fixed wording, e.g. "certificate revoked: serial
    0x..., revoked on ..."), a member only when there is one. Canonicalized with the checks on
    (not the trusted variant): refusals are not the hot path.
    """
    extra = {} if reason is None else {"reason": reason}
    return canonicalize(
        {
            **extra,
            "v": 1,
            "event": "exchange.rejected",
            "exchange_id": xid,
            "at": raw.received,
            "service": service,
            "sender": sender,
            "status": status,
            "cause": cause,
            "body_sha256": sha256_hex(raw.body),
            # A declared Content-Length is the client's word: clamp it to I-JSON.
            "body_size": min(max(len(raw.body), raw.declared_length or 0), 2**53 - 1),
        }
    )
