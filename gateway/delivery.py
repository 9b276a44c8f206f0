"""(6) deliver: one call to a connector plugin under the exchange timeout, and its result checked.

Why a stage of its own: a connector is third-party code the gateway runs on trust, and the
``Connector`` Protocol is only a shape (``isinstance`` checks method names, nothing more). What a
plugin does wrong here must still end as an audited provider failure (502/504) with the exchange
named, never a 500 that leaves the exchange "accepted" for ever. So everything that leaves
:func:`deliver` is a ``GatewayError`` or a well-formed ``(response, attempts)``; whether the
response is JSON the gateway can sign is step (7)'s check.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from gateway.connector import Connector, ConnectorError, DeliveryResult, DeliveryTimeout
from gateway.connector import OutboundMessage as Message
from gateway.errors import ProviderFailed, ProviderTimeout

log = structlog.get_logger("gateway.exchange")

MAX_ATTEMPTS = 2**53 - 1
"""``attempts`` goes into the outcome record, serialized as trusted (no per-value scan): it must
be an integer JSON (I-JSON, RFC 8785) represents exactly."""


async def deliver(
    connector: Connector, message: Message, *, provider: str, seconds: float
) -> tuple[Any, int]:
    """The connector's answer and attempt count, or ProviderTimeout/ProviderFailed."""
    try:
        async with asyncio.timeout(seconds):
            result = await connector.deliver(message)
    except (TimeoutError, DeliveryTimeout):
        raise ProviderTimeout(f"{provider} did not answer within {seconds:g} s") from None
    except ConnectorError as e:  # DeliveryFailed, or the base the contract also lets out
        raise ProviderFailed(f"{provider} could not be reached or failed: {e}") from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():  # the exchange itself is cancelled: let it go
            raise
        # The plugin's own (``t.cancel(); await t`` left unsuppressed): a crash like any other.
        raise _crashed(provider, message) from None
    except Exception:  # a connector's bug: audit an outcome, or it stays "accepted" for ever
        raise _crashed(provider, message) from None
    return _checked(result, provider, message)


def _crashed(provider: str, message: Message) -> ProviderFailed:
    """Log the plugin's exception (its traceback, for its author) and say so to the sender."""
    log.exception("exchange.connector_crashed", exchange_id=message.exchange_id)
    return ProviderFailed(f"the connector to {provider} failed unexpectedly; the error was logged")


def _checked(result: object, provider: str, message: Message) -> tuple[Any, int]:
    """``result`` as the plugin API promises it: a DeliveryResult with ``attempts`` >= 1.

    The log names the types only: a plugin's stray value can hold the provider's answer."""
    attempts: object = None
    if isinstance(result, DeliveryResult):
        attempts = result.attempts
        if type(attempts) is int and 1 <= attempts <= MAX_ATTEMPTS:
            return result.response, attempts
    log.error(
        "exchange.connector_broke_contract",
        exchange_id=message.exchange_id,
        returned=type(result).__name__,
        attempts=type(attempts).__name__,
    )
    raise ProviderFailed(
        f"the connector to {provider} returned no valid DeliveryResult (an integer "
        "attempts >= 1 and a response); the error was logged"
    )
