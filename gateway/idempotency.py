"""``Idempotency-Key``: a retried exchange gets the stored answer and is not delivered twice.

The same key with the same body (by its RFC 8785 digest) returns the first exchange's answer,
marked ``Idempotent-Replayed: true`` and audited as ``exchange.replayed`` under the first
exchange's id (the answer is handed out again); the same key with another body is a 409; a key
whose exchange is still under way is a 409 too (``idempotency-in-progress``). Only an answered
(2xx) exchange is kept: any other outcome (a 5xx, a refusal such as a replayed request id, an
exception) releases the key, so a retry is processed, and audited, afresh; a stored refusal
would be given again without an audit record and without its problem+json media type. An
answered key expires the configured TTL after its answer; the state store keeps it (see
gateway.state). A key whose exchange never finished (its process died mid-delivery) expires
after :func:`pending_lease`, not the TTL: its sender's retries would otherwise be refused as
"in progress" for a day.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError, IdempotencyConflict, StoreUnavailable
from gateway.models import ExchangeResult


class IdempotencyStore(Protocol):
    async def idempotency_begin(
        self, sender: str, service: str, key: str, request_sha256: str, ttl: float
    ) -> Any: ...

    async def idempotency_finish(
        self,
        sender: str,
        service: str,
        key: str,
        status: int | None,
        body: bytes | None,
        *,
        request_sha256: str | None = None,
        ttl: float | None = None,
    ) -> None: ...


def pending_lease(delivery_timeout: float) -> float:
    """How long a claimed key stays "in progress" without an answer: then it is free again.

    Why this long: an exchange under way ends within its delivery timeout, plus its two audit
    appends and the rest of the pipeline; twice the timeout and a minute more cannot cut a
    live one short (gateway.config refuses a TTL shorter than this). Why not the TTL: the
    only pending key that outlives this is one whose process died mid-delivery, and a day of
    409 "in progress" would refuse every retry its sender makes.
    """
    return 2 * delivery_timeout + 60


def provider_key(sender: str, service: str, key: str | None) -> str | None:
    """The key the provider gets for a sender's key: a digest scoped to sender and service.

    Why not the sender's key itself: keys are unique per sender and service only, while the
    provider sees one client (the gateway), so two senders' equal keys would be one key to it.
    Deterministic, so a retry after a released key reaches the provider with the same key.
    """
    if key is None:
        return None
    return hashlib.sha256(f"{sender}\n{service}\n{key}".encode()).hexdigest()


async def begin(
    store: IdempotencyStore, sender: str, service: str, key: str, request_sha: str, lease: float
) -> ExchangeResult | GatewayError | None:
    """None: go ahead, the key is claimed (for ``lease`` seconds unless answered). A result:
    answer with it. An error: refuse with it."""
    try:
        entry = await store.idempotency_begin(sender, service, key, request_sha, lease)
    except Exception as e:
        return StoreUnavailable(f"state store unavailable: {e}")
    if entry is None:
        return None
    if entry.request_sha256 != request_sha:
        return IdempotencyConflict(
            "this Idempotency-Key was used with another body; use a new key for a new request"
        )
    if entry.state != "done":
        return IdempotencyConflict(
            "an exchange with this Idempotency-Key is still in progress; retry later",
            slug="idempotency-in-progress",
        )
    prior = orjson.loads(entry.body) if entry.body else {}
    return ExchangeResult(
        status=entry.status or 200,
        body=entry.body or b"{}",
        headers={"Idempotent-Replayed": "true"},
        exchange_id=prior.get("exchange_id"),
        log={"event": "exchange.idempotent_replay", "sender": sender, "service": service},
    )


async def finish(
    store: IdempotencyStore,
    sender: str,
    service: str,
    key: str,
    result: ExchangeResult | None,
    *,
    request_sha: str,
    ttl: float,
) -> bool:
    """Keep a 2xx answer for retries; anything else, or no result (an exception), releases
    the key. False when the store failed: the exchange is over and audited, so its answer
    stands (a 503 would tell the sender to retry what was delivered); the key stays pending
    until it expires, and a retry meanwhile gets ``idempotency-in-progress``, not a second
    delivery."""
    keep = result is not None and 200 <= result.status < 300
    try:
        await store.idempotency_finish(
            sender,
            service,
            key,
            result.status if keep and result is not None else None,
            result.body if keep and result is not None else None,
            request_sha256=request_sha,
            ttl=ttl,
        )
    except Exception:
        return False
    return True
