"""A connector plugin that breaks its contract costs one exchange an audited 502, never a 500.

The gateway cannot check a plugin's promises before it runs (a Protocol is only a shape), so
the pipeline checks what it is handed back: anything a plugin does wrong during ``deliver``
ends as an ``exchange.failed`` outcome record and an RFC 9457 problem naming the exchange.
Each test drives a real gateway on 127.0.0.1 with a deliberately broken connector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.connector import ConnectorError, DeliveryResult, OutboundMessage, SettingsError
from gateway.testing import FakeConnector
from tests.support import exchange_through

CITIZEN = "citizen-lookup.v1"
# Valid under the citizen-lookup.v1 response schema: a "not-found" answer.
ANSWER = {"citizen_id": "079912345678", "status": "not-found", "checked_at": "2026-11-28T09:00:00Z"}


class Returning(FakeConnector):
    """A connector whose deliver hands back ``value`` as it is (or raises it, if an error)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    async def deliver(self, message: OutboundMessage) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def _broken_results() -> Iterator[Any]:
    yield pytest.param(None, id="None")
    yield pytest.param(ANSWER, id="the-answer-itself-not-a-DeliveryResult")
    yield pytest.param(DeliveryResult(ANSWER, attempts=0), id="attempts-0")
    yield pytest.param(DeliveryResult(ANSWER, attempts=True), id="attempts-bool")
    yield pytest.param(DeliveryResult(ANSWER, attempts="079912345678"), id="attempts-str")
    yield pytest.param(DeliveryResult(ANSWER, attempts=float("nan")), id="attempts-nan")
    yield pytest.param(DeliveryResult(ANSWER, attempts=2**70), id="attempts-huge")


@pytest.mark.parametrize("returned", list(_broken_results()))
async def test_a_connector_returning_no_valid_delivery_result_is_an_audited_502(
    tmp_path: Path, returned: Any
) -> None:
    """``deliver`` returning None or a bare answer was an AttributeError after the delivery
    stage: a 500 without ``exchange_id`` and an exchange whose audit trail stopped at
    "accepted". ``attempts`` went unchecked into the outcome record, which is serialized as
    trusted: a string (personal data, even) was written to the audit log as is, NaN as null,
    and 2**70 (no I-JSON integer) crashed the exchange after the receipt was signed."""
    status, doc, records, logs = await exchange_through(tmp_path, Returning(returned))
    assert status == 502 and doc["type"].endswith(":provider-failed"), doc
    assert "079912345678" not in str(doc)
    assert [(r["event"], r.get("cause")) for r in records] == [
        ("exchange.accepted", None),
        ("exchange.failed", "provider-failed"),
    ]
    broke = [e for e in logs if e["event"] == "exchange.connector_broke_contract"]
    assert broke and "079912345678" not in str(broke), logs


async def test_a_well_formed_delivery_result_still_delivers(tmp_path: Path) -> None:
    """The check above refuses only what breaks the contract: attempts counts from 1."""
    status, doc, records, _ = await exchange_through(
        tmp_path, Returning(DeliveryResult(ANSWER, attempts=3))
    )
    assert status == 200 and doc["response"] == ANSWER, doc
    assert records[-1]["event"] == "exchange.delivered" and records[-1]["attempts"] == 3


async def test_a_connector_raising_cancelled_error_of_its_own_is_an_audited_502(
    tmp_path: Path,
) -> None:
    """A plugin that cancels a task of its own and lets the CancelledError out (``t.cancel();
    await t``) was taken for the request being cancelled: the gateway dropped the connection
    without an answer and the exchange stayed "accepted" for ever. Only a cancellation of the
    exchange itself (the sender gone, shutdown) still propagates."""
    status, doc, records, logs = await exchange_through(
        tmp_path, Returning(asyncio.CancelledError())
    )
    assert status == 502 and doc["type"].endswith(":provider-failed"), doc
    assert [(r["event"], r.get("cause")) for r in records] == [
        ("exchange.accepted", None),
        ("exchange.failed", "provider-failed"),
    ]
    assert any(e["event"] == "exchange.connector_crashed" for e in logs), logs


@pytest.mark.parametrize(
    "error",
    [ConnectorError("provider quota used up"), SettingsError("provider quota used up")],
    ids=["ConnectorError", "SettingsError"],
)
async def test_any_connector_error_from_deliver_is_a_provider_failure_with_its_cause(
    tmp_path: Path, error: ConnectorError
) -> None:
    """The contract (gateway.testing) lets any ConnectorError leave ``deliver``, and the kit
    passes a connector raising the base class; the pipeline caught DeliveryFailed only, so
    such an error was logged as a crash with a traceback and the sender told "failed
    unexpectedly" instead of the cause the plugin gave."""
    status, doc, records, logs = await exchange_through(tmp_path, Returning(error))
    assert status == 502 and doc["type"].endswith(":provider-failed"), doc
    assert "provider quota used up" in doc["detail"]
    assert records[-1]["event"] == "exchange.failed"
    assert not any(e["event"] == "exchange.connector_crashed" for e in logs), logs
