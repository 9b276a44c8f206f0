"""Test kit for end-to-end tests: a development deployment, a real provider, a real gateway.

Everything runs on 127.0.0.1 with real sockets. The deployment is the one `gateway init`
writes, with the demo connector swapped for the `http` connector pointing at a local provider
server that counts what reaches it, so a test can assert that a rejection delivered nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from connectors.demo import DemoConnector
from gateway.config import load
from gateway.connector import ConnectorContext, OutboundMessage
from gateway.crypto import jws
from gateway.crypto.keys import load_certificates, load_private_key
from gateway.devinit import init_deployment
from gateway.http.app import create_app, server_ssl_context
from gateway.http.protocol import GatewayRunner
from gateway.models import rfc3339

SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Provider:
    """A real HTTP provider on 127.0.0.1 answering like the demo providers; counts requests."""

    mode: str = "ok"  # ok | fail | slow | bad | notjson
    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        body = await request.read()
        envelope = orjson.loads(body)
        self.received.append(
            {"service": service, "envelope": envelope, "headers": dict(request.headers)}
        )
        if self.mode == "fail":
            return web.Response(status=500, text="provider broke")
        if self.mode == "slow":
            await asyncio.sleep(self.delay or 5)
        if self.mode == "notjson":
            return web.Response(status=200, text="<html>oops</html>", content_type="text/html")
        if self.mode == "bad":
            return web.json_response({"unexpected": True})
        payload = _payload_of(envelope)
        demo = DemoConnector({}, ConnectorContext(service=service, provider="x", config_dir="."))
        result = await demo.deliver(
            OutboundMessage(
                exchange_id=str(uuid.uuid4()),
                service=service,
                sender="test",
                provider="x",
                payload=payload,
                envelope=envelope,
                envelope_bytes=body,
            )
        )
        return web.json_response(result.response)


def _payload_of(envelope: dict[str, Any]) -> Any:
    import base64

    raw = envelope["payload"]
    return orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["payload"]


@asynccontextmanager
async def running_provider(provider: Provider) -> AsyncIterator[Provider]:
    app = web.Application()
    app.router.add_post("/{service}", provider.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    provider.port = runner.addresses[0][1]
    try:
        yield provider
    finally:
        await runner.cleanup()


def make_deployment(
    target: Path,
    *,
    provider_port: int | None = None,
    tls: str | None = None,
    timeout: float = 10,
    extra_gateway: str = "",
) -> Path:
    """`gateway init` into target; with provider_port, services use the http connector."""
    init_deployment(target)
    cfg = target / "gateway.toml"
    text = cfg.read_text()
    if provider_port is not None:
        for sid in SERVICES:
            text = text.replace(
                f'id = "{sid}"\n',
                f'id = "{sid}"\nconnector_settings = {{ '
                f'url = "http://127.0.0.1:{provider_port}/{sid}", '
                f'send = "envelope", timeout_seconds = {timeout} }}\n',
                1,
            )
        text = text.replace('connector = "demo"', 'connector = "http"')
    if tls:
        text = text.replace(
            "development = true\n",
            "development = true\n"
            f'tls = {{ certificate = "pki/tls.crt", key = "pki/tls.key", '
            f'client_auth = "{tls}" }}\n',
        )
    if extra_gateway:
        text = text.replace("development = true\n", "development = true\n" + extra_gateway)
    text = text.replace("delivery_timeout_seconds = 10", f"delivery_timeout_seconds = {timeout}")
    cfg.write_text(text)
    return cfg


@dataclass
class Gateway:
    url: str
    config: Path
    app: web.Application

    @property
    def dir(self) -> Path:
        return self.config.parent

    def token(self, participant: str) -> str:
        return (self.dir / "participants" / participant / "token").read_text().strip()

    def client_ssl(self, participant: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki/ca.crt"))
        if participant:
            d = self.dir / "participants" / participant
            ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
        return ctx

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.dir)


def audit_records(deployment_dir: Path) -> list[dict[str, Any]]:
    """Every audit record of a deployment, in index order (read straight from its SQLite file)."""
    conn = sqlite3.connect(deployment_dir / "audit.db")
    try:
        rows = conn.execute("SELECT record FROM audit_records ORDER BY idx").fetchall()
    finally:
        conn.close()
    return [orjson.loads(r[0]) for r in rows]


@asynccontextmanager
async def serving(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 (a free port) as `gateway serve` runs it; its base URL.

    For tests that change the app before it serves (a connector swapped for a misbehaving
    one); :func:`running_gateway` builds the app from a config and serves it with this."""
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_gateway(
    config: Path, *, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[Gateway]:
    dep = load(config)
    app = create_app(dep, clock=clock)
    async with serving(app, server_ssl_context(dep)) as url:
        yield Gateway(url, config, app)


async def exchange_through(
    tmp_path: Path, connector: Any, service: str = "citizen-lookup.v1"
) -> tuple[int, dict[str, Any], list[dict[str, Any]], list[Any]]:
    """POST ``service``'s example (bearer token of hcm.quan-1) through a fresh deployment's
    gateway whose connector for it is ``connector``: the status, the answer's JSON, that
    exchange's audit records, and the structured log lines of the exchange."""
    import aiohttp
    from structlog.testing import capture_logs

    from gateway.http import app as keys

    cfg = make_deployment(tmp_path / "dep")
    app = create_app(load(cfg))
    app[keys.CONNECTORS][service] = connector  # the dict the pipeline uses too
    token = (cfg.parent / "participants" / "hcm.quan-1" / "token").read_text().strip()
    async with serving(app) as base:
        with capture_logs() as logs:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s,
                s.post(
                    f"{base}/v1/exchange/{service}",
                    json=example(service),
                    headers={"Authorization": f"Bearer {token}"},
                ) as r,
            ):
                status, doc = r.status, await r.json(content_type=None)
    xid = doc.get("exchange_id")
    records = [r for r in audit_records(cfg.parent) if r["exchange_id"] == xid]
    return status, doc, records, logs


def signed_request(
    deployment_dir: Path,
    participant: str,
    service: str,
    payload: Any,
    *,
    sender: str | None = None,
    request_id: str | None = None,
    created: datetime | None = None,
    typ: str = "request+jws",
    key_owner: str | None = None,
) -> bytes:
    """The JWS body a unit system sends (signed with `key_owner`'s key, default participant)."""
    d = deployment_dir / "participants" / (key_owner or participant)
    key = load_private_key((d / "key.pem").read_bytes())
    chain = load_certificates((d / "cert.pem").read_bytes())
    req = {
        "id": request_id or str(uuid.uuid4()),
        "sender": sender or participant,
        "service": service,
        "created": rfc3339(created or datetime.now(UTC)),
        "payload": payload,
    }
    return jws.serialize(jws.sign(req, key, chain, typ=typ))


def crl_with(
    ca_key: Any,
    ca: x509.Certificate,
    *,
    now: datetime,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    entries: tuple[tuple[int, tuple[tuple[x509.ExtensionType, bool], ...]], ...] = (),
    number: int = 1,
) -> bytes:
    """A PEM CRL of ``ca`` (thisUpdate ``now``, nextUpdate a day later, CRL number ``number``)
    with extra CRL ``extensions`` and ``entries`` (serial, entry extensions), each extension with
    its criticality: the shapes devpki never makes (delta, indirect, partitioned CRLs)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    for serial, entry_extensions in entries:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        for ext, critical in entry_extensions:
            entry = entry.add_extension(ext, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def example(service: str) -> Any:
    return orjson.loads((REPO / "schemas" / "examples" / f"{service}.json").read_bytes())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until_group_gone(pgid: int, timeout: float = 10) -> None:
    """Wait until no live process of group ``pgid`` is left (zombies count as gone).

    SIGKILL is delivered to each process when it next leaves the kernel: an appender inside
    fsync finishes it first. A test that opened the log while it was still there read the
    wal-index of before that commit, and the commit (durable in the WAL) showed up only at the
    next open: the records counted after a kill -9 were too few."""
    import time

    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} alive {timeout} s after SIGKILL")
        time.sleep(0.02)


class ServerProcess:
    """`gateway serve` as a real process (own process group, so kill -9 takes its workers too)."""

    def __init__(
        self,
        config: Path,
        *,
        workers: int = 1,
        port: int | None = None,
        stdout_to_file: bool = False,
    ):
        """``stdout_to_file``: the log goes to the stderr file too, so a long run cannot fill
        (and block on) the stdout pipe; ``stop`` then returns everything from that file."""
        import subprocess
        import sys

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = config.parent / f"serve-{self.port}.log"
        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            stdout=self._stderr if stdout_to_file else subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.kill9()
            raise

    def wait_ready(self, timeout: float = 30) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.stderr_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def kill9(self) -> None:
        import contextlib
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        _until_group_gone(self.proc.pid)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()

    def stop(self, signum: int = 15) -> str:
        """Signal the whole process group (as systemd and a terminal's Ctrl-C do); wait; log."""
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
            try:
                self.proc.wait(timeout=60)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        out = ""
        if self.proc.stdout:
            out = self.proc.stdout.read().decode()
            self.proc.stdout.close()
        self._stderr.close()
        return out + self.stderr_path.read_text()


def reissue_under_an_intermediate(dep: Path, participant: str) -> Path:
    """Give ``participant`` a certificate from an issuing CA below the development root.

    Writes the chain (leaf, then the intermediate) as its cert.pem, which the config pins by
    its first certificate, and the intermediate alone as pki/issuing.crt.
    """
    from gateway.crypto import devpki
    from gateway.crypto.keys import load_certificates

    now = datetime.now(UTC)
    root_key = devpki.load_private_key_raw((dep / "pki/ca.key").read_bytes())
    root = load_certificates((dep / "pki/ca.crt").read_bytes())[0]
    inter_key, inter = devpki.make_ca("hcm issuing", now=now, issuer=(root_key, root))
    key, leaf = devpki.issue(inter_key, inter, participant, now=now)
    d = dep / "participants" / participant
    (d / "cert.pem").write_bytes(devpki.pem_certificate(leaf) + devpki.pem_certificate(inter))
    (d / "key.pem").write_bytes(devpki.pem_private_key(key))
    (dep / "pki/issuing.crt").write_bytes(devpki.pem_certificate(inter))
    return dep / "pki/issuing.crt"


def post_citizen_lookup(url: str, token: str) -> int:
    """One citizen-lookup.v1 exchange (bearer ``token``) on a connection of its own, so that
    several at once reach several workers; its HTTP status."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{url}/v1/exchange/citizen-lookup.v1",
        data=orjson.dumps(example("citizen-lookup.v1")),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def workers_of(log: str, sender: str) -> set[str]:
    """The processes (``worker-N``) that logged an exchange of ``sender`` in ``log``."""
    lines = [orjson.loads(x) for x in log.split("\n") if x.startswith("{")]
    return {
        x["process"]
        for x in lines
        if x["event"].startswith("exchange.") and x.get("sender") == sender
    }


def until_every_worker_serves(
    server: ServerProcess, dep: Path, *, workers: int = 2, sender: str = "hcm.thu-duc"
) -> None:
    """Readiness passes with the first worker that serves, and the others may still be
    starting: send ``sender``'s exchanges, 8 at a time, until every worker has logged one
    (at most 20 rounds)."""
    from concurrent.futures import ThreadPoolExecutor

    token = (dep / "participants" / sender / "token").read_text().strip()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(20):
            list(pool.map(lambda _: post_citizen_lookup(server.url, token), range(8)))
            if len(workers_of(server.stderr_path.read_text(), sender)) == workers:
                return
    raise AssertionError(f"not every one of {workers} workers served")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    return [pid for pid, _ in group_processes(pgid)]


def group_processes(pgid: int) -> list[tuple[int, str]]:
    """(pid, name) of each live (not zombie) process of process group ``pgid``, from /proc;
    the name is what ``ps -o comm`` shows (``gw-worker-0``, ``gw-appender``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, tail = stat.rsplit(")", 1)
        fields = tail.split()  # after "(comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append((int(entry.name), head.split("(", 1)[1]))
    return found
