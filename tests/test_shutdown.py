"""Stopping `gateway serve` the way service managers and terminals do finishes what is in flight.

systemd (KillMode=control-group, its default) and a terminal's Ctrl-C signal every process of
the gateway at once, not just the supervisor; the supervisor then forwards the signal to the
workers, so each worker gets it twice, and the audit appender gets it while workers still
finish their exchanges. Those exchanges must still be answered 200 with durable audit records,
and the processes must exit cleanly: status 0, no traceback.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support import (
    Provider,
    ServerProcess,
    audit_records,
    example,
    group_members,
    make_deployment,
    running_provider,
)

SERVICE = "budget-proposal.v1"
IN_FLIGHT = 6


async def _exchange(url: str, token: str, timeout: float = 20) -> tuple[int, dict[str, str]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.post(
            f"{url}/v1/exchange/{SERVICE}", data=orjson.dumps(example(SERVICE)), headers=headers
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_a_signal_to_every_gateway_process_lets_in_flight_exchanges_finish(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with running_provider(Provider(mode="slow", delay=1.5)) as provider:
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=10)
        server = ServerProcess(cfg, workers=2, stdout_to_file=True)
        token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
        calls = [asyncio.create_task(_exchange(server.url, token)) for _ in range(IN_FLIGHT)]
        for _ in range(200):  # until every exchange waits at the provider (accepted, in flight)
            if len(provider.received) == IN_FLIGHT:
                break
            await asyncio.sleep(0.05)
        assert len(provider.received) == IN_FLIGHT
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, signum)
        answers = await asyncio.gather(*calls)
        log = await stopping
    assert [status for status, _ in answers] == [200] * IN_FLIGHT, answers
    # Every process stopped cleanly, also a worker still starting up (the readiness check
    # passes with the first worker that serves): it used to die of the stop signal.
    assert server.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    lines = [orjson.loads(x) for x in log.split("\n") if x.startswith("{")]
    assert not [x for x in lines if x.get("level") in ("error", "critical")], log[-3000:]
    records = audit_records(cfg.parent)
    delivered = {r["exchange_id"] for r in records if r["event"] == "exchange.delivered"}
    assert {doc["exchange_id"] for _, doc in answers} <= delivered


def test_workers_and_the_appender_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) on the supervisor alone: its children must not go on serving
    unsupervised on the port, nor hold the log; they get the stop signal from the kernel."""
    import os
    import time

    cfg = make_deployment(tmp_path / "dep")
    server = ServerProcess(cfg, workers=2, stdout_to_file=True)
    try:
        pgid = server.proc.pid
        assert len(group_members(pgid)) == 4  # supervisor, appender, two workers
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_members(pgid) == [], "children outlived their supervisor"
    finally:
        if group_members(pgid):  # a failed run must not leave them serving
            os.killpg(pgid, signal.SIGKILL)
        log = server.stop()
    assert "Traceback" not in log, log[-3000:]


_STOPPED_WHILE_STARTING = """
import asyncio, contextlib, signal, socket, sys
from aiohttp import web
from gateway.http.serving import run

marks = open(sys.argv[1], "a", buffering=1)


@contextlib.asynccontextmanager
async def inner():
    marks.write("inner opened\\n")
    try:
        yield
    finally:
        await asyncio.sleep(0.05)  # closing takes a moment, as a connection or a pool does
        marks.write("inner closed\\n")


async def resources(app):  # the shape of gateway.http.app's cleanup_ctx
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(inner())
        marks.write("outer opened\\n")
        yield
    marks.write("outer closed\\n")


async def slow_start(app):  # a start-up hook after the cleanup_ctx, still running
    marks.write("starting\\n")
    await asyncio.sleep(3)


app = web.Application()
app.cleanup_ctx.append(resources)
app.on_startup.append(slow_start)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
run(app, sock, None, signal.SIGUSR2, idle_timeout=5)
marks.write("exited\\n")
"""


def test_the_stop_signal_during_start_up_closes_every_resource_once_in_order(
    tmp_path: Path,
) -> None:
    """A worker told to stop while its app is still starting (the gateway stopped right after
    it started: the readiness check passes with the first worker that serves) finishes
    starting, then closes what it opened, innermost first, with no traceback. It used to
    leave run_app's start-up cancelled, and the loop then closed the cleanup_ctx generators
    all at once: "athrow(): asynchronous generator is already running"."""
    import subprocess
    import sys
    import time

    script, marks = tmp_path / "worker.py", tmp_path / "marks"
    script.write_text(_STOPPED_WHILE_STARTING)
    marks.touch()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marks)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while "starting" not in marks.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "starting" in marks.read_text()
        proc.send_signal(signal.SIGUSR2)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "already running" not in err, err
    assert marks.read_text().split("\n")[:-1] == [
        "inner opened",
        "outer opened",
        "starting",
        "inner closed",
        "outer closed",
        "exited",
    ]


async def test_in_flight_exchanges_finish_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) on the supervisor while exchanges wait at their provider:
    the kernel stops every child at once (PR_SET_PDEATHSIG), with nobody left to stop the
    workers before the appender. The appender must outlast the workers still finishing,
    or their exchanges, delivered, are answered 503 for want of their outcome records."""
    import os

    async with running_provider(Provider(mode="slow", delay=1.5)) as provider:
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=10)
        server = ServerProcess(cfg, workers=2, stdout_to_file=True)
        token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
        try:
            calls = [asyncio.create_task(_exchange(server.url, token)) for _ in range(IN_FLIGHT)]
            for _ in range(200):  # until every exchange waits at the provider
                if len(provider.received) == IN_FLIGHT:
                    break
                await asyncio.sleep(0.05)
            assert len(provider.received) == IN_FLIGHT
            os.kill(server.proc.pid, signal.SIGKILL)
            answers = await asyncio.gather(*calls)
            for _ in range(300):  # until the children are gone
                if not group_members(server.proc.pid):
                    break
                await asyncio.sleep(0.05)
            assert group_members(server.proc.pid) == [], "children outlived their supervisor"
        finally:
            log = server.stop()
    assert [status for status, _ in answers] == [200] * IN_FLIGHT, answers
    assert "Traceback" not in log, log[-3000:]
    records = audit_records(cfg.parent)
    delivered = {r["exchange_id"] for r in records if r["event"] == "exchange.delivered"}
    assert {doc["exchange_id"] for _, doc in answers} <= delivered


@pytest.mark.slow
async def test_a_stop_waits_for_a_delivery_as_long_as_the_delivery_timeout_allows(
    tmp_path: Path,
) -> None:
    """With a delivery timeout above aiohttp's fixed grace (10 s to finish, 10 s more before
    the handler was cancelled), a delivery still running when the gateway was told to stop
    was cut off: the provider had the request, the client a dropped connection and no
    outcome record. The grace now follows the configured delivery timeout."""
    async with running_provider(Provider(mode="slow", delay=28)) as provider:
        cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=40)
        server = ServerProcess(cfg, workers=1, stdout_to_file=True)
        token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
        call = asyncio.create_task(_exchange(server.url, token, timeout=60))
        for _ in range(200):  # until the exchange waits at the provider
            if provider.received:
                break
            await asyncio.sleep(0.05)
        assert len(provider.received) == 1
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, signal.SIGTERM)
        try:
            status, doc = await call
        finally:
            log = await stopping
    assert status == 200, doc
    assert server.proc.returncode == 0, log[-3000:]
    delivered = [r for r in audit_records(cfg.parent) if r["event"] == "exchange.delivered"]
    assert [r["exchange_id"] for r in delivered] == [doc["exchange_id"]]
