"""The built-in connectors, and the test kit's fake, keep the public connector contract.

``gateway.testing.ConnectorContract`` is what plugin authors run against their connectors;
running it here on ours proves the kit's tests pass for connectors that keep the promises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from connectors.demo import DemoConnector
from connectors.http import HttpConnector
from gateway.connector import Connector, ConnectorContext
from gateway.testing import MARKER, Behaviour, ConnectorContract, FakeConnector
from tests.support import example


class TestFakeConnector(ConnectorContract):
    @contextlib.asynccontextmanager
    async def connector(self, behaviour: Behaviour) -> AsyncIterator[Connector]:
        if behaviour == "fail":
            yield FakeConnector(fail="the provider refused")
        elif behaviour == "hang":
            yield FakeConnector(delay=float("inf"))
        else:
            yield FakeConnector(lambda m: {"echo": m.exchange_id})


class TestDemoConnector(ConnectorContract):
    """In-process: it can neither fail nor stay silent, so only the answer tests apply."""

    behaviours = frozenset({"answer"})

    def payload(self) -> Any:
        return example("citizen-lookup.v1")

    @contextlib.asynccontextmanager
    async def connector(self, behaviour: Behaviour) -> AsyncIterator[Connector]:
        yield DemoConnector({}, ConnectorContext("citizen-lookup.v1", "central.dan-cu", "."))


class TestHttpConnector(ConnectorContract):
    """A real provider on 127.0.0.1 that answers, fails (echoing the body, which the connector
    must not repeat) or holds the request without answering."""

    @contextlib.asynccontextmanager
    async def connector(self, behaviour: Behaviour) -> AsyncIterator[Connector]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if behaviour == "fail":
                return web.Response(status=500, body=body, content_type="application/json")
            if behaviour == "hang":
                await asyncio.sleep(60)
            return web.json_response({"status": "ok", "received_bytes": len(body)})

        app = web.Application()
        app.router.add_post("/provider", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield HttpConnector(
                {"url": f"http://127.0.0.1:{port}/provider"},
                ConnectorContext("contract-test.v1", "contract.provider", "."),
            )
        finally:
            await runner.cleanup()


def test_the_marker_is_in_the_default_payload() -> None:
    """The fail and hang tests look for MARKER in error messages: it must be in what is sent."""
    assert MARKER in orjson.dumps(ConnectorContract().payload()).decode()


# --- the contract's tests fail for connectors that break it ------------------------------------
class _Leaky(FakeConnector):
    """Breaks the contract: its errors repeat the payload, and a KeyError escapes after close."""

    async def deliver(self, message: Any) -> Any:
        if self.closed:
            raise KeyError("pool")
        if self._fail is not None:
            from gateway.connector import DeliveryFailed

            raise DeliveryFailed(f"provider said no to {orjson.dumps(message.payload).decode()}")
        return await super().deliver(message)


class _Deaf(FakeConnector):
    """Breaks the contract: ignores the exchange timeout and reports a hang as a failure."""

    async def deliver(self, message: Any) -> Any:
        await asyncio.sleep(message.timeout * 2)
        from gateway.connector import DeliveryFailed

        raise DeliveryFailed("gave up")


class _LeakyContract(ConnectorContract):
    timeout = 0.05

    @contextlib.asynccontextmanager
    async def connector(self, behaviour: Behaviour) -> AsyncIterator[Connector]:
        if behaviour == "hang":
            yield _Deaf()
        else:
            yield _Leaky(fail="no" if behaviour == "fail" else None, answer={"n": float("nan")})


def test_the_contract_catches_connectors_that_break_it() -> None:
    import pytest

    from gateway.connector import DeliveryFailed

    broken = _LeakyContract()
    with pytest.raises(AssertionError, match="repeats payload data"):
        broken.test_a_failing_provider_is_delivery_failed_naming_no_payload_data()
    with pytest.raises(DeliveryFailed, match="gave up"):  # not the DeliveryTimeout expected
        broken.test_a_silent_provider_is_delivery_timeout_at_the_exchange_timeout()
    with pytest.raises(KeyError):
        broken.test_only_connector_errors_escape_deliver_even_after_close()
    with pytest.raises((AssertionError, ValueError)):  # NaN is not JSON the gateway can sign
        broken.test_an_answer_is_json_the_gateway_can_validate_hash_and_sign()


class _Miscounting(FakeConnector):
    """Breaks the contract: its attempt count is not one the gateway can record."""

    def __init__(self, attempts: Any) -> None:
        super().__init__({"status": "ok"})
        self.attempts = attempts

    async def deliver(self, message: Any) -> Any:
        from gateway.connector import DeliveryResult

        result = await super().deliver(message)
        return DeliveryResult(result.response, attempts=self.attempts)


def test_the_contract_catches_an_attempt_count_the_gateway_refuses() -> None:
    """The kit checked only ``attempts >= 1``: True and 2**70 passed it, yet the gateway
    answers 502 for them (a bool is no count; 2**70 cannot be written in an audit record as
    I-JSON). A connector the kit passes must be one the gateway accepts."""
    import pytest

    for attempts in (True, 2**70, 1.0):

        class Contract(ConnectorContract):
            @contextlib.asynccontextmanager
            async def connector(
                self, behaviour: Behaviour, n: Any = attempts
            ) -> AsyncIterator[Connector]:
                yield _Miscounting(n)

        with pytest.raises(AssertionError, match="attempts"):
            Contract().test_an_answer_is_json_the_gateway_can_validate_hash_and_sign()
