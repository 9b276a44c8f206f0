"""GET /metrics: Prometheus text, counts by bounded labels, summed across `serve` workers.

The app-level tests drive a real app on 127.0.0.1 (tests.support); the multi-worker test runs
`gateway serve --workers 2` as a real process and scrapes it repeatedly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

from gateway.devinit import init_deployment
from gateway.http import app as keys
from gateway.http import handlers
from gateway.metrics import UNKNOWN_SERVICE, ExchangeMetrics
from tests.support import (
    Gateway,
    Provider,
    ServerProcess,
    example,
    make_deployment,
    running_gateway,
    signed_request,
)

CITIZEN = "citizen-lookup.v1"
BUDGET = "budget-proposal.v1"
JOSE = {"Content-Type": "application/jose+json"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=2)
    async with running_gateway(cfg) as g:
        yield g


def bearer(deployment: Path, participant: str) -> dict[str, str]:
    """Headers of a plain JSON exchange with a participant's development token."""
    token = (deployment / "participants" / participant / "token").read_text().strip()
    return {"Authorization": f"Bearer {token}", **JSON}


async def post(url: str, service: str, body: bytes, headers: dict[str, str]) -> int:
    # A new connection each time: under `serve` any worker may accept it.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.post(f"{url}/v1/exchange/{service}", data=body, headers=headers) as r,
    ):
        await r.read()
        return r.status


async def scrape(url: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(f"{url}/metrics") as r,
    ):
        return r.status, dict(r.headers), await r.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels); parsing it is itself a check of the exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: dict[Any, float], name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def label_values(text: str) -> set[str]:
    return {
        v for family in text_string_to_metric_families(text) for s in family.samples
        for v in s.labels.values()
    }  # fmt: skip


async def test_delivered_and_rejected_exchanges_are_counted_by_configured_service(
    gw: Gateway,
) -> None:
    """One delivered and three rejected exchanges; an unknown service is one placeholder."""
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, example(CITIZEN))
    assert await post(gw.url, CITIZEN, body, JOSE) == 200
    assert await post(gw.url, BUDGET, b"{not json", JSON) == 400
    unit = bearer(gw.dir, "hcm.thu-duc")
    assert await post(gw.url, "no-such-service.v1", b"{}", unit) == 404
    assert await post(gw.url, "Robert'); DROP TABLE--", b"{}", unit) == 404
    status, headers, text = await scrape(gw.url)
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    got = samples(text)
    total = "gateway_exchanges_total"
    assert value(got, total, service=CITIZEN, outcome="delivered", status="200") == 1
    assert value(got, total, service=BUDGET, outcome="rejected", status="400") == 1
    assert value(got, total, service=UNKNOWN_SERVICE, outcome="rejected", status="404") == 2
    assert sum(v for (n, _), v in got.items() if n == total) == 4
    by = {"service": CITIZEN, "outcome": "delivered"}
    for h in ("duration", "audit_wait", "provider_wait"):
        assert value(got, f"gateway_exchange_{h}_seconds_count", **by) == 1, h
        assert (value(got, f"gateway_exchange_{h}_seconds_sum", **by) or 0) > 0, h
    names = label_values(text)
    assert not any("no-such-service" in v or "DROP" in v for v in names)
    assert value(got, "gateway_build_info", version="0.1.0") == 1
    assert any(n == "python_info" for n, _ in got)
    assert any(n.startswith("process_") for n, _ in got)  # one process: its own collectors


async def test_a_provider_failure_and_an_idempotent_replay_have_their_own_outcomes(
    gw: Gateway, provider: Provider
) -> None:
    unit = bearer(gw.dir, "hcm.thu-duc")
    body = orjson.dumps(example(BUDGET))
    again = {**unit, "Idempotency-Key": "metrics-test-1"}
    assert [await post(gw.url, BUDGET, body, again) for _ in range(2)] == [200, 200]
    provider.mode = "fail"
    assert await post(gw.url, BUDGET, body, unit) == 502
    got = samples((await scrape(gw.url))[2])
    total = "gateway_exchanges_total"
    assert value(got, total, service=BUDGET, outcome="delivered", status="200") == 1
    assert value(got, total, service=BUDGET, outcome="replayed", status="200") == 1
    assert value(got, total, service=BUDGET, outcome="failed", status="502") == 1
    failed = {"service": BUDGET, "outcome": "failed"}
    assert value(got, "gateway_exchange_provider_wait_seconds_count", **failed) == 1
    assert value(got, "gateway_exchange_audit_wait_seconds_count", **failed) == 1
    # A replay waited for nothing: it has no wait histograms at all.
    assert not any(dict(labels).get("outcome") == "replayed" for n, labels in got if "wait" in n)


async def test_no_citizen_id_or_payload_content_reaches_the_metrics(gw: Gateway) -> None:
    payload = example(CITIZEN)
    citizen_id = payload["citizen_id"]
    body = signed_request(gw.dir, "hcm.quan-1", CITIZEN, payload)
    assert await post(gw.url, CITIZEN, body, JOSE) == 200
    unit = bearer(gw.dir, "hcm.thu-duc")
    assert await post(gw.url, citizen_id, orjson.dumps(payload), unit) == 404
    assert await post(gw.url, CITIZEN, orjson.dumps(payload), unit) == 200
    broken = {**payload, "citizen_id": citizen_id + "x"}
    assert await post(gw.url, CITIZEN, orjson.dumps(broken), unit) == 422
    _, _, text = await scrape(gw.url)
    assert citizen_id not in text
    rejected = {"service": CITIZEN, "outcome": "rejected", "status": "422"}
    assert value(samples(text), "gateway_exchanges_total", **rejected) == 1
    for word in (payload["case_reference"], "full_name", "hcm.quan-1", "hcm.thu-duc"):
        assert word not in text, word


async def test_head_answers_like_get_without_a_body(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.head(f"{gw.url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert await r.read() == b""


class _Broken(Collector):
    def collect(self) -> Iterable[Metric]:
        raise OSError("the metrics directory is gone")


async def test_a_failed_collection_is_logged_and_answered_503_as_a_problem(
    gw: Gateway,
) -> None:
    gw.app[keys.METRICS].registry.register(_Broken())
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        assert r.status == 503
        assert r.headers["Content-Type"] == "application/problem+json"
        doc = await r.json(content_type=None)
    assert doc["type"].endswith(":not-ready") and doc["instance"] == "/metrics"
    assert "directory is gone" not in doc["detail"]


class _Unwritable(ExchangeMetrics):
    def observe(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("No space left on device")


def test_a_failure_to_record_is_logged_and_does_not_fail_the_exchange() -> None:
    """The handler records after the exchange is audited: it must still answer."""
    with capture_logs() as logs:
        handlers._count(_Unwritable([CITIZEN]), CITIZEN, "exchange.delivered", 200, 0.01)
    assert [e["event"] for e in logs] == ["metrics.record_failed"]


def _metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("gateway-metrics-*"))


@pytest.mark.slow
async def test_every_scrape_of_two_workers_shows_the_same_totals_and_the_dir_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape lands on one worker; it must still count what both workers served."""
    d = tmp_path / "demo"
    init_deployment(d)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the supervisor makes its private directory
    server = ServerProcess(d / "gateway.toml", workers=2)
    try:
        [mdir] = _metrics_dirs(tmp)
        assert stat.S_IMODE(mdir.stat().st_mode) == 0o700
        headers = bearer(d, "hcm.thu-duc")
        body = orjson.dumps(example(BUDGET))
        sent = 0
        # Concurrent connections until both workers have counted some (each writes its own file).
        while len(list(mdir.glob("counter_*.db"))) < 2 and sent < 400:
            got = await asyncio.gather(*(post(server.url, BUDGET, body, headers) for _ in range(8)))
            assert got == [200] * 8
            sent += 8
        assert len(list(mdir.glob("counter_*.db"))) == 2, "one worker served everything"
        for _ in range(12):
            status, _, text = await scrape(server.url)
            assert status == 200
            got_samples = samples(text)
            total = "gateway_exchanges_total"
            delivered = {"service": BUDGET, "outcome": "delivered", "status": "200"}
            assert value(got_samples, total, **delivered) == sent
            by = {"service": BUDGET, "outcome": "delivered"}
            count = "gateway_exchange_duration_seconds_count"
            assert value(got_samples, count, **by) == sent
            assert value(got_samples, "gateway_build_info", version="0.1.0") == 1
        # SIGTERM to the supervisor alone, as `docker stop` does: it stops its workers itself.
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    assert _metrics_dirs(tmp) == [] and os.listdir(tmp) == []
