"""PUBLIC test kit for connector authors: the contract every connector keeps, a fake, a clock.

Why a contract: the gateway trusts a connector with promises it cannot check while it runs.

* Only ``ConnectorError`` subclasses leave ``deliver``: anything else would reach the sender as
  an unexplained failure instead of an audited 502/504.
* The exchange's ``timeout`` is honoured (``DeliveryTimeout``), so a silent provider cannot hold
  a sender, a worker slot and a pooled connection for ever.
* Error messages name causes, never payload data: they end up in logs and audit records.
* An answer is JSON the gateway can validate, hash and sign (I-JSON: RFC 8785 canonical form).

A plugin proves them by subclassing :class:`ConnectorContract` in its own tests and saying how
to build its connector against a provider that answers, fails or stays silent::

    class TestMyConnector(ConnectorContract):
        @contextlib.asynccontextmanager
        async def connector(self, behaviour):
            async with my_provider(behaviour) as url:   # "answer" | "fail" | "hang"
                yield MyConnector({"url": url}, ConnectorContext("x.v1", "prov", "."))

The contract's tests are plain pytest functions that run their own event loop, so they work
with any pytest-asyncio setting. A connector that cannot be made to fail or hang (an in-process
one) narrows :attr:`ConnectorContract.behaviours`, and those tests are skipped with the reason.
Importing this module needs pytest. The names in ``__all__`` are pinned by a test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, TypeVar

import orjson
import pytest

from gateway.connector import (
    Connector,
    ConnectorError,
    DeliveryFailed,
    DeliveryResult,
    DeliveryTimeout,
    OutboundMessage,
    parse_json,
)
from gateway.crypto.canonical import canonicalize
from gateway.delivery import MAX_ATTEMPTS
from gateway.models import uuid7

__all__ = [
    "MARKER",
    "Behaviour",
    "ConnectorContract",
    "FakeConnector",
    "ManualClock",
    "make_message",
]

Behaviour = Literal["answer", "fail", "hang"]
T = TypeVar("T")

MARKER = "contract-marker-079912345678"  # a payload value that must never show in an error


def make_message(
    payload: Any,
    *,
    service: str = "contract-test.v1",
    sender: str = "hcm.quan-1",
    provider: str = "contract.provider",
    timeout: float = 5.0,
    idempotency_key: str | None = None,
) -> OutboundMessage:
    """An OutboundMessage as the gateway builds it, with an UNSIGNED stand-in envelope.

    The envelope has the JWS JSON shape (protected, payload, signature) so a connector that
    forwards envelopes can be exercised; its signature is a placeholder, not a signature.
    """
    xid = uuid7()
    body = orjson.dumps({"exchange_id": xid, "service": service, "payload": payload})

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    envelope = {
        "protected": b64(b'{"alg":"none","typ":"envelope+jws"}'),
        "payload": b64(body),
        "signature": "UNSIGNED-test-envelope",
    }
    return OutboundMessage(
        exchange_id=xid,
        service=service,
        sender=sender,
        provider=provider,
        payload=payload,
        envelope=envelope,
        envelope_bytes=orjson.dumps(envelope),
        idempotency_key=idempotency_key,
        timeout=timeout,
    )


class ManualClock:
    """A clock that moves only when told: ``clock()`` is the time, ``advance(s)`` moves it."""

    def __init__(self, start: datetime = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class FakeConnector:
    """An in-memory Connector for code that uses connectors: answers, fails or stays silent.

    ``answer`` is the response, or a function of the message giving it; ``fail`` makes every
    delivery a ``DeliveryFailed`` with that text; ``delay`` seconds pass before answering (a
    delivery still ends with ``DeliveryTimeout`` at the message's timeout). ``messages`` records
    what was delivered, in order.
    """

    def __init__(
        self,
        answer: Any | Callable[[OutboundMessage], Any] = None,
        *,
        fail: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self._answer = answer if answer is not None else {"status": "ok"}
        self._fail = fail
        self._delay = delay
        self.messages: list[OutboundMessage] = []
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def ready(self) -> bool:
        return self.started and not self.closed

    async def close(self) -> None:
        self.closed = True

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        if self.closed:
            raise DeliveryFailed("the fake connector is closed")
        self.messages.append(message)
        if self._delay > 0:
            try:
                async with asyncio.timeout(message.timeout):
                    await asyncio.sleep(self._delay if math.isfinite(self._delay) else 1e9)
            except TimeoutError:
                raise DeliveryTimeout(f"no answer within {message.timeout:g} s") from None
        if self._fail is not None:
            raise DeliveryFailed(self._fail)
        answer = self._answer(message) if callable(self._answer) else self._answer
        return DeliveryResult(response=answer, attempts=1, metadata={"connector": "fake"})


class ConnectorContract:
    """Subclass as ``Test...`` and implement :meth:`connector`; see the module docstring."""

    behaviours: ClassVar[frozenset[str]] = frozenset({"answer", "fail", "hang"})
    timeout: ClassVar[float] = 0.5  # the exchange timeout used by the "hang" test, seconds

    def connector(self, behaviour: Behaviour) -> contextlib.AbstractAsyncContextManager[Connector]:
        """Yield a built, not yet started, connector wired to a provider that behaves so."""
        raise NotImplementedError("a ConnectorContract subclass implements connector()")

    def payload(self) -> Any:
        """A payload the provider accepts; the fail and hang tests look for :data:`MARKER`."""
        return {"reference": MARKER}

    # -- the contract -----------------------------------------------------------------------
    def test_start_ready_close_and_close_again(self) -> None:
        async def run(c: Connector) -> None:
            await c.start()
            assert await c.ready() is True, "ready() is False right after start()"
            await c.close()
            await c.close()  # idempotent: shutdown paths may close twice

        self._run("answer", run, start=False)

    def test_an_answer_is_json_the_gateway_can_validate_hash_and_sign(self) -> None:
        result = self._run("answer", lambda c: c.deliver(make_message(self.payload())))
        assert isinstance(result, DeliveryResult), f"deliver returned {type(result).__name__}"
        assert parse_json(orjson.dumps(result.response)) == result.response
        canonicalize(result.response)  # raises for NaN, big integers, lone surrogates
        attempts = result.attempts  # what the gateway accepts (gateway.delivery): else a 502
        assert type(attempts) is int and 1 <= attempts <= MAX_ATTEMPTS, (
            f"attempts is {attempts!r}: it must be an int from 1 to 2**53 - 1"
        )
        assert isinstance(result.metadata, Mapping)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.metadata.items())

    def test_concurrent_deliveries_all_complete(self) -> None:
        async def run(c: Connector) -> list[DeliveryResult]:
            messages = [make_message(self.payload()) for _ in range(16)]
            return list(await asyncio.gather(*(c.deliver(m) for m in messages)))

        assert len(self._run("answer", run, start=True)) == 16

    def test_a_failing_provider_is_delivery_failed_naming_no_payload_data(self) -> None:
        self._require("fail")
        with pytest.raises(DeliveryFailed) as caught:
            self._run("fail", lambda c: c.deliver(make_message(self.payload())))
        assert MARKER not in str(caught.value), "the error message repeats payload data"

    def test_a_silent_provider_is_delivery_timeout_at_the_exchange_timeout(self) -> None:
        self._require("hang")
        message = make_message(self.payload(), timeout=self.timeout)

        async def run(c: Connector) -> DeliveryResult:
            # The bound only keeps a broken connector from hanging the test run.
            return await asyncio.wait_for(c.deliver(message), self.timeout * 10 + 5)

        with pytest.raises(DeliveryTimeout) as caught:
            self._run("hang", run)
        assert MARKER not in str(caught.value)

    def test_only_connector_errors_escape_deliver_even_after_close(self) -> None:
        async def run(c: Connector) -> None:
            await c.close()
            with contextlib.suppress(ConnectorError):
                await c.deliver(make_message(self.payload()))

        self._run("answer", run)

    # -- helpers ----------------------------------------------------------------------------
    def _require(self, behaviour: Behaviour) -> None:
        if behaviour not in self.behaviours:
            pytest.skip(f"{type(self).__name__} cannot be made to {behaviour}")

    def _run(
        self,
        behaviour: Behaviour,
        body: Callable[[Connector], Awaitable[T]],
        *,
        start: bool = True,
    ) -> T:
        async def main() -> T:
            async with self.connector(behaviour) as c:
                if start:
                    await c.start()
                try:
                    return await body(c)
                finally:
                    await c.close()

        return asyncio.run(main())
