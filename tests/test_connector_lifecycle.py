"""A connector's start and close: a failure names the service, a hang never holds shutdown.

The app opens connectors in its cleanup_ctx, after the audit log and the state store, and
closes them first on the way out. A plugin's ``start``/``close`` is third-party code running in
that sequence: what it does wrong must not hide which service broke, nor keep the resources
opened before it (the audit log, the state store) from closing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.audit.log import AuditUnavailable
from gateway.config import load
from gateway.errors import ConfigError
from gateway.http import app as keys
from gateway.http.app import create_app
from gateway.http.protocol import GatewayRunner
from gateway.testing import FakeConnector
from tests.support import make_deployment, serving

SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")


class Starting(FakeConnector):
    """A connector whose start raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def start(self) -> None:
        raise self.error


class Closing(FakeConnector):
    """A connector whose close raises ``error``, or never returns if it is None."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error

    async def close(self) -> None:
        if self.error is None:
            await asyncio.Event().wait()
        raise self.error


def test_missing_tls_files_stop_create_app_naming_the_settings(tmp_path: Path) -> None:
    """The http connector loaded its ca_file in start(), which runs in each worker's
    cleanup_ctx, not in the parent's create_app check: `gateway serve` with a wrong path
    forked its workers, each died with a traceback, instead of one "configuration error"
    naming the field (exit 2). The files are now loaded when the connector is built."""
    cfg = make_deployment(tmp_path / "dep", provider_port=1)
    text = cfg.read_text().replace(
        'url = "http://127.0.0.1:1/citizen-lookup.v1"',
        'url = "https://127.0.0.1:1/citizen-lookup.v1", ca_file = "pki/missing.pem"',
    )
    cfg.write_text(text)
    with pytest.raises(ConfigError) as caught:
        create_app(load(cfg))
    assert caught.value.field == "services[0].connector_settings"
    assert "TLS files" in caught.value.problem


async def test_a_connector_failing_to_start_names_its_service_and_closes_the_others(
    tmp_path: Path,
) -> None:
    """A plugin's start() raising came out of start-up as its own traceback, naming no
    service. Now it is a ConfigError on that service's connector field; the connectors
    started before it are closed."""
    app = create_app(load(make_deployment(tmp_path / "dep")))
    connectors = app[keys.CONNECTORS]
    first = FakeConnector()
    connectors[SERVICES[0]] = first
    connectors[SERVICES[1]] = Starting(OSError(111, "Connection refused"))
    runner = GatewayRunner(app, access_log=None)
    with pytest.raises(ConfigError) as caught:
        await runner.setup()
    await runner.cleanup()
    assert caught.value.field == "services[1].connector"
    assert SERVICES[1] in caught.value.problem and "Connection refused" in caught.value.problem
    assert first.started and first.closed


@pytest.mark.parametrize(
    "error", [RuntimeError("pool already closed"), None], ids=["raises", "hangs"]
)
async def test_a_connector_whose_close_fails_or_hangs_does_not_hold_shutdown(
    tmp_path: Path, error: Any
) -> None:
    """A plugin's close() is awaited in the cleanup_ctx before the audit log and state store
    close. One that hung held shutdown for ever (the supervisor's kill was the only way out,
    the audit log's writer thread never joined); one that raised skipped nothing but surfaced
    as an aiohttp cleanup traceback. Now each close is bounded and its failure is one log
    line naming the service; the other connectors and the audit log still close."""
    app = create_app(load(make_deployment(tmp_path / "dep")))
    connectors = app[keys.CONNECTORS]
    broken, after = Closing(error), FakeConnector()
    connectors[SERVICES[0]] = after  # started first, so closed after the broken one
    connectors[SERVICES[1]] = broken
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    audit = app[keys.AUDIT]
    with capture_logs() as logs:
        await asyncio.wait_for(runner.cleanup(), 60)  # a bound on a broken test run only
    assert after.closed
    with pytest.raises(AuditUnavailable):  # the audit log closed after them
        await audit.tree_head()
    events = [e for e in logs if e["event"].startswith("connector.close")]
    assert [e["service"] for e in events] == [SERVICES[1]], logs


async def test_readyz_asks_every_connector_at_once(tmp_path: Path) -> None:
    """/readyz awaited each connector's ready() in turn, each given READY_CHECK_SECONDS: with
    providers down and plugins whose ready() pings them, the probe took that many seconds
    per service (a probe of 20 services: 40 s, far past any orchestrator's probe timeout,
    one more pending handler per probe period). The checks now run together. Pinned without
    a clock: each connector is ready only once all three are being asked at the same time."""
    import aiohttp

    arrived = 0
    everyone = asyncio.Event()

    class Rendezvous(FakeConnector):
        async def ready(self) -> bool:
            nonlocal arrived
            arrived += 1
            if arrived == len(SERVICES):
                everyone.set()
            await everyone.wait()
            return True

    app = create_app(load(make_deployment(tmp_path / "dep")))
    for sid in SERVICES:
        app[keys.CONNECTORS][sid] = Rendezvous()
    async with serving(app) as base:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{base}/readyz") as r:
            status, doc = r.status, await r.json()
    assert status == 200, doc
    assert [k for k in doc["checks"] if k.startswith("connector:")] == [
        f"connector:{sid}" for sid in SERVICES
    ]
