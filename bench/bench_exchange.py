"""Exchanges per second and latency of the full pipeline, against a bare aiohttp proxy, same run.

What is measured, on this machine, with every server on 127.0.0.1:

* gateway: ``gateway serve --workers 2`` on a ``gateway init`` deployment whose services use the
  ``http`` connector. Each request is a signed request (``application/jose+json``, ES256, a fresh
  ``id`` every time: the gateway refuses replays, so all bodies are generated before the runs and
  none is sent twice); the gateway authenticates, authorizes, validates, signs an envelope,
  audits (SQLite, default settings: WAL, synchronous=FULL), delivers to the provider, validates
  the answer, signs a receipt and audits the outcome before answering.
* proxy (the baseline): ``bench/_proxy.py``, 2 workers sharing one listening socket like
  ``gateway serve``, forwarding the same POST bodies to the same provider with one keep-alive
  ``aiohttp.ClientSession`` per worker, and returning the provider's answer.
* provider: ``bench/_provider.py``, one process, a fixed valid citizen-lookup.v1 answer.

Throughput: ``wrk`` (``bench/wrk_signed.lua``) with the same threads, connections and duration
against both, in interleaved rounds (proxy, gateway, proxy, gateway, ...) because the machine is
noisy; medians and the ratio gateway/proxy are reported. Latency: one connection sending
sequentially (unloaded), and an open-loop client at a fixed rate (latency from each request's
scheduled send time). Correctness: non-2xx answers are counted (the gateway must have none), sample
receipts are verified (gateway's verifier, jwcrypto, the audit log's leaf), and the audit log must
hold an outcome record for every acknowledged exchange.

Where the time goes: the unloaded requests are tagged (``X-Request-Id: bench-seq-N``) and their
``ms``, ``audit_ms`` and ``upstream_ms`` are read back from the gateway's log lines; and a note
sets what a gateway at 0.65x the proxy could spend per exchange on this machine against what
the ES256 work (measured alone before the servers start) and the audit appender cost.

    .venv/bin/python bench/bench_exchange.py                 # full run, about 2 minutes
    .venv/bin/python bench/bench_exchange.py --quick         # smoke check, under a minute
    .venv/bin/python bench/bench_exchange.py --profile       # plus py-spy on a gateway worker
    .venv/bin/python bench/bench_exchange.py --profile appender   # ... or on the audit appender

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). Exit status: 0 when the run completed and the
gateway answered correctly (targets met or not: see the summary), 1 when correctness checks
failed, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _client import Outcome, open_loop, sequential  # noqa: E402

if TYPE_CHECKING:
    from gateway.config import Deployment

SERVICE = "citizen-lookup.v1"
SENDER = "hcm.quan-1"
JOSE = "application/jose+json"
PATH = f"/v1/exchange/{SERVICE}"
HOST = "127.0.0.1"
SEQ_IDS = "bench-seq-"  # X-Request-Id prefix of the unloaded requests (found in the log)
LUA = BENCH / "wrk_signed.lua"
SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")

PROXY_MAX_RATE = 25000.0  # bodies per second of a proxy round (they are reused, so cheap)
TARGET_RATE = 4000.0
TARGET_RATIO = 0.65
TARGET_ADDED_P99_UNLOADED_MS = 2.0
TARGET_ADDED_P99_AT_RATE_MS = 5.0


spawned: list[subprocess.Popen[bytes]] = []  # helper processes to end at exit (py-spy)


class BenchError(Exception):
    """The benchmark cannot run (missing tool, server did not start): exit status 2."""


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    duration: int
    rounds: int
    connections: int
    threads: int
    workers: int
    warmup: int
    unloaded: int
    rate: float
    rate_seconds: float
    rate_connections: int
    max_rate: float
    gap: float
    profile: str | None
    keep: bool


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk round (8)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per target (3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per target (2)")
    p.add_argument("--unloaded", type=int, default=None, help="sequential requests (2000)")
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop rate, req/s (1000)")
    p.add_argument("--rate-seconds", type=float, default=None, help="open-loop seconds (5)")
    p.add_argument(
        "--max-rate",
        type=float,
        default=8000.0,
        help="signed bodies generated per second of a gateway wrk round (8000, twice the "
        "target); a faster round runs out of bodies and is flagged",
    )
    p.add_argument("--quick", action="store_true", help="short run for a smoke check")
    p.add_argument(
        "--profile",
        nargs="?",
        const="worker",
        choices=("worker", "appender"),
        help="py-spy a gateway worker (default) or the audit appender, in an extra round",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args(argv)
    quick = a.quick
    s = Settings(
        duration=a.duration or (2 if quick else 8),
        rounds=a.rounds or (1 if quick else 3),
        connections=a.connections,
        threads=a.threads,
        workers=a.workers,
        warmup=1 if quick else 2,
        unloaded=a.unloaded or (300 if quick else 2000),
        rate=a.rate,
        rate_seconds=a.rate_seconds or (2.0 if quick else 5.0),
        rate_connections=32,
        max_rate=a.max_rate,
        gap=1.0,
        profile=a.profile,
        keep=a.keep,
    )
    if s.duration < 1 or s.rounds < 1 or s.threads < 1 or s.connections < s.threads:
        p.error("need --duration >= 1, --rounds >= 1, --connections >= --threads >= 1")
    return s


# ----------------------------------------------------------------------------- deployment
def make_deployment(target: Path, provider_port: int) -> Path:
    """`gateway init`, with every demo service on the http connector to the local provider.

    The same edit as ``tests/support.py``'s ``make_deployment``; nothing else is changed, so the
    audit log, limits and logging are the defaults.
    """
    from gateway.devinit import init_deployment

    init_deployment(target)
    cfg = target / "gateway.toml"
    text = cfg.read_text()
    for sid in SERVICES:
        text = text.replace(
            f'id = "{sid}"\n',
            f'id = "{sid}"\nconnector_settings = {{ url = "http://{HOST}:{provider_port}/{sid}", '
            f'send = "envelope" }}\n',
            1,
        )
    text = text.replace('connector = "demo"', 'connector = "http"')
    # A per-sender rate limit (when the gateway has one) would cap a one-sender benchmark far
    # below what is measured here: raise it, and say so in the summary.
    from gateway.config import Limits

    fields = Limits.model_fields
    extra = "".join(
        f"{name} = {value}\n"
        for name, value in (("rate_per_second", 1e9), ("rate_burst", 1_000_000_000))
        if name in fields and f"\n{name} =" not in text
    )
    if extra:
        if "\n[limits]\n" in text:
            text = text.replace("\n[limits]\n", "\n[limits]\n" + extra, 1)
        else:
            text += "\n[limits]\n" + extra
    cfg.write_text(text)
    return cfg


# ----------------------------------------------------------------------------- bodies
_SIGNER: dict[str, Any] = {}


def _signer(dep_dir: str) -> tuple[Any, Any, Any]:
    if _SIGNER.get("dir") != dep_dir:
        from gateway.crypto.keys import load_certificates, load_private_key

        d = Path(dep_dir) / "participants" / SENDER
        _SIGNER.update(
            dir=dep_dir,
            key=load_private_key((d / "key.pem").read_bytes()),
            chain=load_certificates((d / "cert.pem").read_bytes()),
            payload=orjson.loads((REPO / "schemas/examples" / f"{SERVICE}.json").read_bytes()),
        )
    return _SIGNER["key"], _SIGNER["chain"], _SIGNER["payload"]


def sign_bodies(dep_dir: str, count: int, created_epoch: float) -> list[bytes]:
    """``count`` signed requests (JWS JSON, one line each), each with a fresh UUID ``id``."""
    from gateway.crypto import jws
    from gateway.models import rfc3339

    key, chain, payload = _signer(dep_dir)
    created = rfc3339(datetime.fromtimestamp(created_epoch, UTC))
    out = []
    for _ in range(count):
        req = {
            "id": str(uuid.uuid4()),
            "sender": SENDER,
            "service": SERVICE,
            "created": created,
            "payload": payload,
        }
        out.append(jws.serialize(jws.sign(req, key, chain, typ="request+jws")))
    return out


def _write_bodies(task: tuple[str, str, int, float]) -> int:
    dep_dir, path, count, created_epoch = task
    lines = sign_bodies(dep_dir, count, created_epoch)
    if any(b"\n" in line for line in lines):
        raise BenchError("a JWS body contains a newline")
    Path(path).write_bytes(b"\n".join(lines) + b"\n")
    return count


@dataclass
class BodyPlan:
    """Files of bodies to generate: (path, count, planned seconds from now of their use)."""

    files: list[tuple[Path, int, float]] = field(default_factory=list)

    def add(self, path: Path, count: int, offset: float) -> Path:
        self.files.append((path, count, offset))
        return path

    @property
    def total(self) -> int:
        return sum(c for _, c, _ in self.files)


def generate(dep_dir: Path, plan: BodyPlan, skew: float) -> float:
    """Sign every planned body in parallel (one process per core); returns seconds taken.

    ``created`` of a file's bodies is set to the planned time of its use (capped to stay inside
    the gateway's clock-skew window from now), so a long run does not send stale requests.
    """
    t0 = time.perf_counter()
    sample = sign_bodies(str(dep_dir), 200, time.time())
    per_body = (time.perf_counter() - t0) / 200
    procs = max(1, os.cpu_count() or 1)
    est = per_body * plan.total / procs
    print(
        f"  signing {plan.total:,} request bodies ({len(sample[0]):,} bytes each, "
        f"{per_body * 1e6:.0f} us each, ~{est:.0f} s on {procs} processes)",
        flush=True,
    )
    now = time.time() + est
    latest = max(off for _, _, off in plan.files)
    if latest > skew - 60:
        print(
            f"  note: the run is planned to last {latest:.0f} s, close to the gateway's "
            f"clock-skew window ({skew:.0f} s): late bodies may be refused as stale",
            flush=True,
        )
    # Split big files into chunks so both processes stay busy; concatenate afterwards.
    tasks: list[tuple[str, str, int, float]] = []
    parts: dict[Path, list[Path]] = {}
    for path, count, offset in plan.files:
        created = now + min(offset, skew - 60)
        chunk = 5000
        for i in range(math.ceil(count / chunk)):
            part = path.with_name(f"{path.name}.part{i}")
            parts.setdefault(path, []).append(part)
            tasks.append((str(dep_dir), str(part), min(chunk, count - i * chunk), created))
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        for _ in pool.imap_unordered(_write_bodies, tasks):
            pass
    for path, chunks in parts.items():
        with path.open("wb") as out:
            for part in chunks:
                out.write(part.read_bytes())
                part.unlink()
    return time.perf_counter() - t0


def read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (scan of /proc: no dependency on CONFIG_PROC_CHILDREN)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    for _ in range(10):
        nxt = [c for c, p in parents.items() if p in frontier]
        if not nxt:
            break
        found += nxt
        frontier = nxt
    return found


def machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine (all cores, everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process (tid -> utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[int(tid)] = (int(f[11]) + int(f[12])) / tick
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    return sum(cpu_split(pids))


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) of the processes (all their threads), in seconds: user space, kernel."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        kernel += int(fields[12])
    return user / tick, kernel / tick


class Server:
    """A server process in its own session (so the whole group is stopped at the end)."""

    def __init__(self, name: str, argv: list[str], log: Path, port: int) -> None:
        self.name, self.port, self.log = name, port, log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(REPO),
        )

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *children_of(self.proc.pid)]

    @property
    def workers(self) -> list[int]:
        return children_of(self.proc.pid) or [self.proc.pid]

    def named(self, prefix: str) -> list[int]:
        """Descendants whose ``comm`` starts with prefix (``gateway serve`` names its forks)."""
        found = []
        for pid in children_of(self.proc.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith(prefix):
                    found.append(pid)
        return found

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                tail = self.log.read_text(errors="replace")[-3000:]
                raise BenchError(f"{self.name} exited at start-up:\n{tail}")
            with contextlib.suppress(OSError):
                if check():
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not become ready within {timeout:.0f} s")

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers that outlived their parent (they are in the same process group).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def check_alive(servers: Sequence[Server], when: str) -> None:
    """Stop the benchmark when a server died: what follows would measure nothing."""
    for srv in servers:
        if not srv.alive():
            tail = srv.log.read_text(errors="replace")[-2000:]
            raise BenchError(
                f"{srv.name} (pid {srv.proc.pid}) died during {when}: exit status "
                f"{srv.proc.returncode} (negative: killed by that signal); end of its log:\n{tail}"
            )


def tcp_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def connection_spread(port: int) -> dict[int, int]:
    """Established connections on the server side of ``port``, per owning process."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    spread: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        spread[int(pid)] = spread.get(int(pid), 0) + 1
    return spread


# ----------------------------------------------------------------------------- wrk
@dataclass
class WrkResult:
    target: str
    label: str
    values: dict[str, float]
    codes: dict[str, int]
    samples: list[str]
    server_cpu: float
    provider_cpu: float
    wrk_cpu: float
    foreign_cpu: float  # CPU seconds of processes outside the benchmark, during the round
    spread: dict[int, int] = field(default_factory=dict)
    threads: dict[int, tuple[float, float]] = field(default_factory=dict)  # worker: main, others
    roles: dict[str, float] = field(default_factory=dict)  # CPU s of the gateway's workers, ...
    kernel: dict[str, float] = field(default_factory=dict)  # ... of which in the kernel

    @property
    def ok(self) -> int:
        return int(self.values.get("ok", 0))

    @property
    def seconds(self) -> float:
        return self.values.get("duration_us", 0) / 1e6 or float("nan")

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    @property
    def bad(self) -> int:
        v = self.values
        errors = sum(int(v.get(k, 0)) for k in ("err_connect", "err_read", "err_write"))
        return int(v.get("bad", 0)) + errors + int(v.get("err_timeout", 0))

    @property
    def unanswered(self) -> int:
        """Bodies taken but not answered when wrk stopped (in flight: at most one/connection)."""
        return max(0, int(self.values.get("used", 0) - self.values.get("requests", 0)) - 1)

    @property
    def exhausted(self) -> bool:
        return self.values.get("exhausted", 0) > 0

    def us_per_request(self, cpu: float) -> float:
        return cpu / self.ok * 1e6 if self.ok else float("nan")


def run_wrk(
    s: Settings,
    target: str,
    label: str,
    url: str,
    prefix: Path,
    duration: int,
    server: Server,
    provider: Server,
    everyone: Sequence[Server],
    *,
    spread: bool = False,
    during: Callable[[], None] | None = None,
) -> WrkResult:
    markers = Path(tempfile.mkdtemp(prefix="wrk-", dir=prefix.parent))
    argv = [
        "wrk",
        f"-t{s.threads}",
        f"-c{s.connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url + PATH,
        "--",
        str(prefix),
        JOSE,
        str(s.threads),
        str(markers / "ready"),
    ]
    server_pids, provider_pids = server.pids, provider.pids
    all_pids = [p for srv in everyone for p in srv.pids]
    cpu0 = cpu_seconds(server_pids), cpu_seconds(provider_pids), cpu_seconds(all_pids)
    role_pids = {r: server.named(f"gw-{r}") for r in ("worker", "appender")}
    roles0 = {r: cpu_split(pids) for r, pids in role_pids.items() if pids}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = machine_busy_seconds()
    workers = server.workers if spread else []
    threads0: dict[int, dict[int, float]] = {}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, int] = {}
    try:
        if spread or during:
            time.sleep(min(1.0, duration / 2))
            if spread:
                seen = connection_spread(server.port)
                threads0 = {w: thread_cpu(w) for w in workers}  # wrk has loaded its bodies
                started = time.monotonic()
            if during:
                during()
        out, err = proc.communicate(timeout=duration + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    shutil.rmtree(markers, ignore_errors=True)
    threads: dict[int, tuple[float, float]] = {}
    elapsed = max(1e-3, time.monotonic() - started)
    for w in threads0:
        after = thread_cpu(w)
        delta = {tid: c - threads0[w].get(tid, 0.0) for tid, c in after.items()}
        main = delta.pop(w, 0.0)
        threads[w] = (main / elapsed, sum(delta.values()) / elapsed)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = machine_busy_seconds()
    cpu1 = cpu_seconds(server_pids), cpu_seconds(provider_pids), cpu_seconds(all_pids)
    split = {r: cpu_split(role_pids[r]) for r in roles0}
    roles = {r: sum(split[r]) - sum(c) for r, c in roles0.items()}
    kernel = {r: split[r][1] - c[1] for r, c in roles0.items()}
    values: dict[str, float] = {}
    codes: dict[str, int] = {}
    samples: list[str] = []
    for line in out.splitlines():
        if line.startswith("BENCH "):
            for item in line.split()[1:]:
                k, _, v = item.partition("=")
                values[k] = float(v)
        elif line.startswith("BENCH_CODE "):
            _, code, n = line.split()
            codes[code] = int(n)
        elif line.startswith("BENCH_SAMPLE "):
            samples.append(line[len("BENCH_SAMPLE ") :])
    if not values:
        raise BenchError(
            f"wrk gave no result (exit {proc.returncode}):\n{out[-2000:]}{err[-2000:]}"
        )
    values["connections"] = float(s.connections)
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return WrkResult(
        target,
        label,
        values,
        codes,
        samples,
        server_cpu=cpu1[0] - cpu0[0],
        provider_cpu=cpu1[1] - cpu0[1],
        wrk_cpu=wrk_cpu,
        foreign_cpu=max(0.0, (busy1 - busy0) - (cpu1[2] - cpu0[2]) - wrk_cpu),
        spread=seen,
        threads=threads,
        roles=roles,
        kernel=kernel,
    )


def describe_round(r: WrkResult) -> str:
    v = r.values
    line = (
        f"  {r.label:<10} {r.target:<8} {r.rate:>9,.0f} req/s  ok {r.ok:>7,}  non-2xx {r.bad:>5}"
        f"  p50 {v.get('lat_p50_us', 0) / 1000:6.2f} ms  p99 {v.get('lat_p99_us', 0) / 1000:6.2f}"
        f" ms  cpu/req: server {r.us_per_request(r.server_cpu):5.0f} us, provider "
        f"{r.us_per_request(r.provider_cpu):4.0f} us, wrk {r.us_per_request(r.wrk_cpu):4.0f} us"
        f"; others {r.foreign_cpu / r.seconds:4.2f} cores"
    )
    if r.roles:
        line += (
            " ["
            + ", ".join(
                f"{role}s {r.us_per_request(c):.0f} us"
                f" ({r.us_per_request(r.kernel.get(role, 0.0)):.0f} in the kernel)"
                for role, c in r.roles.items()
            )
            + "]"
        )
    if r.unanswered > v.get("connections", 0) + 2:
        line += f"  [{r.unanswered} requests unanswered when wrk stopped]"
    if r.exhausted:
        line += "  [RAN OUT OF BODIES: raise --max-rate]"
    return line


# ----------------------------------------------------------------------------- latency
def commit_floor(path: Path, n: int = 500) -> tuple[float, float, int]:
    """p50 and p99 (ms) of one durable audit append on this disk, and n.

    The gateway's own store (WAL, synchronous=FULL) appending one record of an exchange's size
    per transaction, as an unloaded exchange does twice: the disk's part of the added latency.
    """
    from gateway.audit.sqlite import SqliteAuditStore

    store = SqliteAuditStore(str(path))
    record = orjson.dumps({"event": "exchange.accepted", "pad": "x" * 600})
    times = []
    try:
        store.size()
        for _ in range(n):
            t0 = time.perf_counter()
            store.append_batch([record])
            times.append(time.perf_counter() - t0)
    finally:
        store.close()
    return pct(times, 50), pct(times, 99), n


def crypto_floor(dep: Deployment, body: bytes, n: int = 300) -> float:
    """CPU us of the ES256 work every exchange must do, measured alone in this process (the
    best of three repeats of ``n``).

    The gateway's own code on the deployment's keys: verify the sender's signed request (its
    chain cached, as in steady state) and sign an envelope and a receipt of the real sizes.
    """
    from gateway.crypto import jws
    from gateway.http.app import build_anchors, build_keyring

    anchors, ring = build_anchors(dep), build_keyring(dep)
    signer = jws.Signer(ring.current, ring.chain)
    doc = jws.parse(body)
    now = datetime.now(UTC)
    envelope = {"exchange_id": str(uuid.uuid4()), "sender_signature": doc, "pad": "x" * 600}
    receipt = {"exchange_id": str(uuid.uuid4()), "pad": "x" * 700}

    def one() -> None:
        jws.verify(doc, anchors, now=now, expected_typ="request+jws")
        signer.sign(envelope, typ="envelope+jws", trusted=True)  # as the pipeline signs
        signer.sign(receipt, typ="receipt+jws", trusted=True)

    for _ in range(20):
        one()
    best = float("inf")
    for _ in range(3):  # best of three: a floor, so the least disturbed repeat is the estimate
        t0 = time.process_time()
        for _ in range(n):
            one()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def floor_note(rounds: Sequence[WrkResult], crypto_us: float, target: float = 0.65) -> str:
    """What a gateway at ``target`` x the proxy may spend per exchange on this machine, against
    what the ES256 work and the audit appender alone cost (measured in this run)."""
    by = {t: [r for r in rounds if r.target == t] for t in ("proxy", "gateway")}
    proxy_rate = _median([r.rate for r in by["proxy"]])
    gw = by["gateway"]
    others = _median([r.us_per_request(r.provider_cpu + r.wrk_cpu) for r in gw])
    appender = _median([r.us_per_request(r.roles.get("appender", 0.0)) for r in gw])
    budget = (os.cpu_count() or 1) * 1e6 / (target * proxy_rate) - others
    return (
        f"at {target}x the proxy ({target * proxy_rate:,.0f}/s) a gateway could spend about "
        f"{budget:,.0f} us of CPU per exchange here (the cores, minus the provider's and wrk's "
        f"{others:,.0f} us); the ES256 work alone (one verification, two signatures) takes "
        f"{crypto_us:,.0f} us and the audit appender {appender:,.0f} us: "
        f"{crypto_us + appender:,.0f} us before anything else"
    )


def pct(values: Sequence[float], p: float) -> float:
    """p-th percentile (nearest rank), in milliseconds; NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k] * 1000


@dataclass
class LatencyResults:
    unloaded: dict[str, Outcome] = field(default_factory=dict)
    at_rate: dict[str, Outcome] = field(default_factory=dict)


async def latency_suite(
    s: Settings, ports: dict[str, int], warm: list[bytes], seq: list[bytes], rate: list[bytes]
) -> LatencyResults:
    res = LatencyResults()
    for target in ("proxy", "gateway"):
        port = ports[target]
        await sequential(HOST, port, PATH, warm, JOSE)
        res.unloaded[target] = await sequential(
            HOST,
            port,
            PATH,
            seq,
            JOSE,
            keep_samples=3 if target == "gateway" else 0,
            request_ids=SEQ_IDS if target == "gateway" else None,
        )
    await asyncio.sleep(s.gap)
    for target in ("proxy", "gateway"):
        res.at_rate[target] = await open_loop(
            HOST,
            ports[target],
            PATH,
            rate,
            JOSE,
            rate=s.rate,
            connections=s.rate_connections,
        )
        await asyncio.sleep(s.gap)
    return res


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# ----------------------------------------------------------------------------- checks
def _b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_receipts(dep_dir: Path, samples: list[tuple[bytes, bytes]]) -> tuple[bool, list[str]]:
    """Check sample receipts three ways: the gateway's verifier, jwcrypto, the audit leaf."""
    from gateway.verify import describe_verification

    ca_pem = (dep_dir / "pki/ca.crt").read_bytes()
    lines: list[str] = []
    ok = True
    if not samples:
        return False, ["no 2xx gateway answer to take a receipt from"]
    for i, (request, answer) in enumerate(samples):
        doc = orjson.loads(answer)
        receipt = doc["receipt"]
        sent = orjson.loads(_b64u(orjson.loads(request)["payload"]))
        good, detail = describe_verification(
            orjson.dumps(receipt),
            [ca_pem],
            now=datetime.now(UTC),
            payloads={
                "request": orjson.dumps(sent["payload"]),
                "response": orjson.dumps(doc["response"]),
            },
        )
        ok &= good
        if i == 0 or not good:
            lines += [f"receipt {i}: gateway verifier: {'valid' if good else 'INVALID'}"]
            lines += [f"    {d}" for d in detail]
        good_j, why = _jwcrypto_check(receipt, ca_pem)
        ok &= good_j
        if i == 0 or not good_j:
            lines.append(f"receipt {i}: jwcrypto + x5c chain to the CA: {why}")
        body = orjson.loads(_b64u(receipt["payload"]))
        good_a, why = _audit_leaf_check(dep_dir, body)
        ok &= good_a
        if i == 0 or not good_a:
            lines.append(f"receipt {i}: audit log: {why}")
    return ok, lines


def _jwcrypto_check(receipt: dict[str, Any], ca_pem: bytes) -> tuple[bool, str]:
    try:
        from cryptography import x509
        from jwcrypto import jwk
        from jwcrypto import jws as jjws
    except ImportError:
        return True, "skipped (jwcrypto not installed)"
    try:
        header = orjson.loads(_b64u(receipt["protected"]))
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
        ca = x509.load_pem_x509_certificate(ca_pem)
        if chain[-1] == ca:
            chain = chain[:-1]
        for child, parent in zip(chain, [*chain[1:], ca], strict=True):
            child.verify_directly_issued_by(parent)
        key = jwk.JWK.from_pyca(chain[0].public_key())
        token = jjws.JWS()
        token.deserialize(orjson.dumps(receipt).decode(), key)
    except Exception as e:
        return False, f"INVALID ({type(e).__name__}: {e})"
    return True, f"valid ({header.get('alg')}, typ {header.get('typ')})"


def _audit_leaf_check(dep_dir: Path, body: dict[str, Any]) -> tuple[bool, str]:
    audit = body.get("audit") or {}
    idx, leaf = audit.get("index"), audit.get("leaf_hash")
    try:
        conn = sqlite3.connect(f"file:{dep_dir / 'audit.db'}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT record, leaf_hash FROM audit_records WHERE idx = ?", (idx,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return False, f"cannot read the audit log: {e}"
    if row is None:
        return False, f"no record at index {idx}"
    record, stored = bytes(row[0]), bytes(row[1])
    computed = hashlib.sha256(b"\x00" + record).digest()
    rec = orjson.loads(record)
    if computed != stored or stored.hex() != leaf:
        return False, f"leaf hash mismatch at index {idx}"
    if rec.get("exchange_id") != body.get("exchange_id"):
        return False, f"record {idx} is for another exchange"
    return True, f"record {idx} ({rec.get('event')}) matches the receipt's leaf hash"


def audit_summary(dep_dir: Path, acknowledged: int, citizen_id: str) -> tuple[bool, list[str]]:
    """Every acknowledged exchange has its outcome record; no citizen id in the log."""
    conn = sqlite3.connect(f"file:{dep_dir / 'audit.db'}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT count(*) FROM audit_records").fetchone()[0]
        delivered = conn.execute(
            "SELECT count(*) FROM audit_records WHERE instr(record, ?) > 0",
            (b'"event":"exchange.delivered"',),
        ).fetchone()[0]
        leaked = conn.execute(
            "SELECT count(*) FROM audit_records WHERE instr(record, ?) > 0",
            (citizen_id.encode(),),
        ).fetchone()[0]
        top = conn.execute("SELECT max(idx) FROM audit_records").fetchone()[0]
    finally:
        conn.close()
    ok = delivered >= acknowledged and leaked == 0 and top == total - 1
    lines = [
        f"audit log: {total:,} records (indexes 0..{top}, gap-free: {top == total - 1}), "
        f"{delivered:,} 'exchange.delivered' >= {acknowledged:,} acknowledged 2xx: "
        f"{delivered >= acknowledged}; records holding the citizen id: {leaked}"
    ]
    return ok, lines


def unloaded_parts(path: Path, prefix: str = SEQ_IDS) -> dict[str, list[float]]:
    """Where the unloaded requests' time went inside the gateway, from its log lines.

    Each ``exchange.delivered`` line has ``ms`` (the handler, body read to response built),
    ``audit_ms`` (waiting for the two durable appends) and ``upstream_ms`` (the provider
    through the connector); the rest is the gateway's own work. Only lines whose request id
    starts with ``prefix`` (the sequential run) are used.
    """
    parts: dict[str, list[float]] = {"handler": [], "audit": [], "upstream": [], "own": []}
    with path.open("rb") as f:
        for raw in f:
            if b'"exchange.delivered"' not in raw or prefix.encode() not in raw:
                continue
            doc = orjson.loads(raw)
            if not str(doc.get("request_id", "")).startswith(prefix) or "audit_ms" not in doc:
                continue
            ms, audit, upstream = doc["ms"], doc["audit_ms"], doc["upstream_ms"]
            values = (ms, audit, upstream, ms - audit - upstream)
            for name, value in zip(parts, values, strict=True):
                parts[name].append(value / 1000)  # seconds, as pct() expects
    return parts


def scan_log(path: Path, start: int = 0, end: int | None = None) -> tuple[int, list[str]]:
    """Problems in the gateway's log: warning/error JSON lines, and Python tracebacks.

    Returns (count, a few short descriptions): for a JSON line its event and the last line of
    its exception; for a raw traceback its final "Error: message" line.
    """
    problems: list[str] = []
    count = 0
    in_traceback = False
    with path.open("rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
        for raw in data.splitlines():
            line = raw.decode("utf-8", "replace").rstrip()
            if line.startswith("{"):
                in_traceback = False
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if doc.get("level") in ("warning", "error", "critical"):
                    count += 1
                    exc = str(doc.get("exception") or "").strip().splitlines()
                    text = f"[{doc.get('level')}] {doc.get('event')}" + (
                        f": {exc[-1]}" if exc else ""
                    )
                    if len(problems) < 8 and text not in problems:
                        problems.append(text[:300])
            elif line.startswith("Traceback") or line.startswith("Exception in thread"):
                if not in_traceback:
                    count += 1
                in_traceback = True
            elif in_traceback and line and not line.startswith((" ", "During handling")):
                if len(problems) < 8 and line not in problems:
                    problems.append(f"[traceback] {line[:300]}")
                in_traceback = False
    return count, problems


# ----------------------------------------------------------------------------- profile
def profile_worker(
    pid: int, seconds: int, raw: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` (collapsed stacks, all threads, not pausing the worker)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("  py-spy not found: .venv/bin/pip install py-spy", flush=True)
        return None
    argv = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250"]
    argv += ["--format", "raw", "--threads", "--nonblocking", *extra, "-o", str(raw)]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def summarize_profile(raw: Path, top: int = 18, possible: int = 0) -> list[str]:
    """Self and inclusive hot spots from py-spy's collapsed stacks."""
    if not raw.exists():
        return ["(py-spy wrote no profile; ptrace may be denied)"]
    self_by_thread: dict[str, dict[str, int]] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        threads[thread] = threads.get(thread, 0) + count
        leaf = _short(frames[-1])
        per = self_by_thread.setdefault(thread, {})
        per[leaf] = per.get(leaf, 0) + count
        for f in {_short(f) for f in frames}:
            incl[f] = incl.get(f, 0) + count
    if not total:
        return ["(empty profile)"]
    share = f" = {total / possible:.0%} of {possible} sampling ticks" if possible else ""
    lines = [f"{total} samples{share}; by thread:"]
    for t, n in sorted(threads.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * n / total:5.1f}%  {t}")
    for t, _ in sorted(threads.items(), key=lambda kv: -kv[1]):
        lines.append(f"self time in {t} (the frame that was running; % of all samples):")
        limit = top if "MainThread" in t else 6
        for f, n in sorted(self_by_thread[t].items(), key=lambda kv: -kv[1])[:limit]:
            lines.append(f"  {100 * n / total:5.1f}%  {f}")
    lines.append("inclusive time (gateway/connectors frames):")
    ours = [
        kv
        for kv in incl.items()
        if ("gateway/" in kv[0] or "connectors/" in kv[0]) and "gateway/cli" not in kv[0]
    ]
    for f, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    return lines


def _short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py:12)'."""
    m = re.match(r"(.*) \((.*)\)$", frame)
    if not m:
        return frame
    fn, where = m.groups()
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{fn} ({where})"


# ----------------------------------------------------------------------------- summary
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _mark(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _print_parts(parts: dict[str, list[float]], w: int) -> None:
    """The unloaded gateway's time by part (its log), p50 and p99 of each."""
    if not parts or not parts.get("handler"):
        return
    labels = {
        "handler": "handler in all",
        "audit": "durable audit appends",
        "upstream": "provider via connector",
        "own": "gateway's own work",
    }
    print(f"{'  gateway log, unloaded (ms)':34}{'':>{w}}{'p50':>{w}}{'p99':>{w}}")
    for name, label in labels.items():
        values = parts.get(name, [])
        print(f"{'    ' + label:34}{'':>{w}}{pct(values, 50):>{w}.3f}{pct(values, 99):>{w}.3f}")


def print_summary(
    s: Settings,
    rounds: list[WrkResult],
    lat: LatencyResults,
    checks: list[tuple[str, bool]],
    notes: Sequence[str] = (),
    parts: dict[str, list[float]] | None = None,
) -> None:
    by = {t: [r for r in rounds if r.target == t] for t in ("proxy", "gateway")}
    rate = {t: _median([r.rate for r in rs]) for t, rs in by.items()}
    cpu = {t: _median([r.us_per_request(r.server_cpu) for r in rs]) for t, rs in by.items()}
    p50 = {t: _median([r.values["lat_p50_us"] / 1000 for r in rs]) for t, rs in by.items()}
    p99 = {t: _median([r.values["lat_p99_us"] / 1000 for r in rs]) for t, rs in by.items()}
    ratio = rate["gateway"] / rate["proxy"]
    u = {t: (pct(o.latencies, 50), pct(o.latencies, 99)) for t, o in lat.unloaded.items()}
    a = {t: (pct(o.latencies, 50), pct(o.latencies, 99)) for t, o in lat.at_rate.items()}
    lag = {t: pct(o.send_lag, 99) for t, o in lat.at_rate.items()}
    added_u = u["gateway"][1] - u["proxy"][1]
    added_a = a["gateway"][1] - a["proxy"][1]
    w = 16
    print()
    print("=" * 96)
    print(
        f"SUMMARY  wrk -t{s.threads} -c{s.connections} -d{s.duration}s x {s.rounds} interleaved "
        f"rounds; {s.workers} workers each; {os.cpu_count()} cores"
    )
    print("-" * 96)
    print(f"{'':34}{'proxy':>{w}}{'gateway':>{w}}{'gateway/proxy':>{w}}")
    rounds_txt = {t: " / ".join(f"{r.rate:,.0f}" for r in rs) for t, rs in by.items()}
    print(
        f"{'throughput, median (req/s)':34}{rate['proxy']:>{w},.0f}{rate['gateway']:>{w},.0f}"
        f"{ratio:>{w}.2f}"
    )
    print(f"{'  proxy, per round':34}{rounds_txt['proxy']}")
    print(f"{'  gateway, per round':34}{rounds_txt['gateway']}")
    print(
        f"{'server CPU per request (us)':34}{cpu['proxy']:>{w},.0f}{cpu['gateway']:>{w},.0f}"
        f"{cpu['gateway'] / cpu['proxy']:>{w}.2f}"
    )
    print(f"{'latency under wrk load p50 (ms)':34}{p50['proxy']:>{w}.2f}{p50['gateway']:>{w}.2f}")
    print(f"{'latency under wrk load p99 (ms)':34}{p99['proxy']:>{w}.2f}{p99['gateway']:>{w}.2f}")
    n_u = len(lat.unloaded["gateway"].latencies)
    print(
        f"{f'unloaded p50 (ms, n={n_u})':34}{u['proxy'][0]:>{w}.3f}{u['gateway'][0]:>{w}.3f}"
        f"{'added ' + format(u['gateway'][0] - u['proxy'][0], '.3f'):>{w}}"
    )
    print(
        f"{'unloaded p99 (ms)':34}{u['proxy'][1]:>{w}.3f}{u['gateway'][1]:>{w}.3f}"
        f"{'added ' + format(added_u, '.3f'):>{w}}"
    )
    _print_parts(parts or {}, w)
    label = f"at {s.rate:,.0f}/s open loop"
    print(
        f"{label + ' p50 (ms)':34}{a['proxy'][0]:>{w}.3f}{a['gateway'][0]:>{w}.3f}"
        f"{'added ' + format(a['gateway'][0] - a['proxy'][0], '.3f'):>{w}}"
    )
    print(
        f"{label + ' p99 (ms)':34}{a['proxy'][1]:>{w}.3f}{a['gateway'][1]:>{w}.3f}"
        f"{'added ' + format(added_a, '.3f'):>{w}}"
    )
    print(f"{'  open-loop send lag p99 (ms)':34}{lag['proxy']:>{w}.3f}{lag['gateway']:>{w}.3f}")
    non2xx = {
        t: sum(r.bad for r in by[t]) + lat.unloaded[t].non_2xx + lat.at_rate[t].non_2xx for t in by
    }
    print(f"{'non-2xx / errors (all runs)':34}{non2xx['proxy']:>{w}}{non2xx['gateway']:>{w}}")
    print("-" * 96)
    targets = [
        (
            f"gateway >= {TARGET_RATE:,.0f} exchanges/s (median {rate['gateway']:,.0f})",
            rate["gateway"] >= TARGET_RATE,
        ),
        (f"gateway >= {TARGET_RATIO}x proxy (ratio {ratio:.2f})", ratio >= TARGET_RATIO),
        (
            f"added p99 unloaded <= {TARGET_ADDED_P99_UNLOADED_MS} ms ({added_u:.2f} ms)",
            added_u <= TARGET_ADDED_P99_UNLOADED_MS,
        ),
        (
            f"added p99 at {s.rate:,.0f}/s <= {TARGET_ADDED_P99_AT_RATE_MS} ms ({added_a:.2f} ms)",
            added_a <= TARGET_ADDED_P99_AT_RATE_MS,
        ),
    ]
    print("targets:")
    for text, ok in targets:
        print(f"  [{_mark(ok):>7}] {text}")
    print("correctness:")
    for text, ok in checks:
        print(f"  [{'OK' if ok else 'FAILED':>7}] {text}")
    for note in notes:
        print(f"  [   NOTE] {note}")
    others = _median([r.foreign_cpu / r.seconds for r in rounds])
    print(
        f"  [   NOTE] other processes on this machine used {others:.2f} cores (median) during "
        f"the rounds, out of {os.cpu_count()}"
    )
    if s.duration < 5 or s.rounds < 2:
        print("  (short run: numbers are indicative only)")
    print("=" * 96)


# ----------------------------------------------------------------------------- main
def run(s: Settings) -> int:
    if shutil.which("wrk") is None:
        print(
            "bench_exchange: wrk is not installed. Install it (Debian: apt-get install -y wrk) "
            "and run again.",
            file=sys.stderr,
        )
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    servers: list[Server] = []
    spawned.clear()
    try:
        return _run(s, tmp, servers)
    except BenchError as e:
        print(f"bench_exchange: {e}", file=sys.stderr)
        return 2
    finally:
        for proc in spawned:  # py-spy, if still sampling
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for srv in reversed(servers):
            srv.stop()
        if s.keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(s: Settings, tmp: Path, servers: list[Server]) -> int:
    py = sys.executable
    ports = {"provider": free_port(), "proxy": free_port(), "gateway": free_port()}
    dep = tmp / "deploy"
    cfg = make_deployment(dep, ports["provider"])
    print(f"bench_exchange: deployment in {dep}", flush=True)
    from gateway.config import load

    deployment = load(cfg)
    loaded = deployment.config
    skew = float(loaded.limits.clock_skew_seconds)
    svc = next((x for x in loaded.services if x.id == SERVICE), None)
    want = f"http://{HOST}:{ports['provider']}/{SERVICE}"
    if svc is None or svc.connector != "http" or svc.connector_settings.get("url") != want:
        raise BenchError(
            f"could not point {SERVICE} at the local provider (the layout of the gateway.toml "
            "written by `gateway init` changed?): update make_deployment"
        )
    print(f"  audit: {loaded.audit.model_dump()}", flush=True)
    print(f"  limits: {loaded.limits.model_dump()}", flush=True)

    # --- plan and sign every request body before anything is measured
    # Per wrk thread, with 25% margin: threads do not always share the load evenly.
    per_thread = math.ceil(s.max_rate * s.duration * 1.25 / s.threads) + 2 * s.connections
    warm_thread = math.ceil(s.max_rate * s.warmup * 1.25 / s.threads) + 2 * s.connections
    slot = 2 * (s.duration + s.gap + 1.5)
    t_rounds = 10 + 2 * (s.warmup + s.gap + 1.5)
    plan = BodyPlan()
    bodies = tmp / "bodies"
    bodies.mkdir()
    for t in range(s.threads):
        plan.add(bodies / f"warm-{t}.txt", warm_thread, 10)
        for k in range(s.rounds):
            plan.add(bodies / f"r{k}-{t}.txt", per_thread, t_rounds + k * slot + slot / 2)
    t_lat = t_rounds + s.rounds * slot
    n_warm_seq = 200 if s.unloaded >= 1000 else 50
    plan.add(bodies / "seq-warm.txt", n_warm_seq, t_lat)
    plan.add(bodies / "seq.txt", s.unloaded, t_lat + 5)
    plan.add(bodies / "rate.txt", int(s.rate * s.rate_seconds), t_lat + 15)
    if s.profile:
        for t in range(s.threads):
            plan.add(bodies / f"prof-{t}.txt", per_thread, t_lat + 30 + 2 * s.rate_seconds)
    gen_seconds = generate(dep, plan, skew)
    print(f"  signed in {gen_seconds:.1f} s", flush=True)
    # The proxy checks nothing, so its files repeat round 1's bodies (same sizes, same bytes)
    # up to PROXY_MAX_RATE per second of a round.
    px_thread = math.ceil(PROXY_MAX_RATE * s.duration * 1.25 / s.threads) + 2 * s.connections
    for t in range(s.threads):
        lines = read_lines(bodies / f"r0-{t}.txt")
        reps = math.ceil(px_thread / len(lines))
        (bodies / f"px-{t}.txt").write_bytes(b"\n".join((lines * reps)[:px_thread]) + b"\n")

    # --- the disk's floor for durable latency, measured before any server runs
    floor = commit_floor(tmp / "floor.db")
    print(
        f"  durable audit commit on this disk (one record, n={floor[2]}): "
        f"p50 {floor[0]:.3f} ms, p99 {floor[1]:.3f} ms",
        flush=True,
    )

    crypto_us = crypto_floor(deployment, read_lines(bodies / "r0-0.txt")[0])
    print(f"  ES256 per exchange (verify + two signatures), best of 3: {crypto_us:.0f} us CPU")

    # --- servers
    provider = Server(
        "provider",
        [py, str(BENCH / "_provider.py"), "--port", str(ports["provider"])],
        tmp / "provider.log",
        ports["provider"],
    )
    servers.append(provider)
    provider.wait_ready(lambda: tcp_open(ports["provider"]))
    upstream = f"http://{HOST}:{ports['provider']}/{SERVICE}"
    proxy = Server(
        "proxy",
        [
            py,
            str(BENCH / "_proxy.py"),
            "--port",
            str(ports["proxy"]),
            "--upstream",
            upstream,
            "--workers",
            str(s.workers),
        ],
        tmp / "proxy.log",
        ports["proxy"],
    )
    servers.append(proxy)
    gw_log = tmp / "gateway.log"
    gateway = Server(
        "gateway",
        [
            py,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(ports["gateway"]),
            "--workers",
            str(s.workers),
        ],
        gw_log,
        ports["gateway"],
    )
    servers.append(gateway)
    proxy.wait_ready(lambda: tcp_open(ports["proxy"]))
    gateway.wait_ready(lambda: http_ok(f"http://{HOST}:{ports['gateway']}/readyz"))
    time.sleep(0.5)  # let every worker of both reach its accept loop
    urls = {t: f"http://{HOST}:{ports[t]}" for t in ("proxy", "gateway")}
    targets = {"proxy": proxy, "gateway": gateway}
    print(
        f"  provider :{ports['provider']} (pid {provider.proc.pid}), proxy :{ports['proxy']} "
        f"(workers {proxy.workers}), gateway :{ports['gateway']} (workers {gateway.workers})",
        flush=True,
    )

    # --- throughput: warm-up, then interleaved rounds
    acknowledged = 0
    print(f"  load average before the runs: {loadavg()}", flush=True)
    print(f"warm-up ({s.warmup} s each)", flush=True)
    for t in ("proxy", "gateway"):
        prefix = bodies / ("px" if t == "proxy" else "warm")
        r = run_wrk(s, t, "warm-up", urls[t], prefix, s.warmup, targets[t], provider, servers)
        if t == "gateway":
            acknowledged += r.ok
        print(describe_round(r), flush=True)
        time.sleep(s.gap)
    rounds: list[WrkResult] = []
    print(f"rounds (wrk -t{s.threads} -c{s.connections} -d{s.duration}s)", flush=True)
    for k in range(s.rounds):
        for t in ("proxy", "gateway"):
            prefix = bodies / ("px" if t == "proxy" else f"r{k}")
            r = run_wrk(
                s,
                t,
                f"round {k + 1}",
                urls[t],
                prefix,
                s.duration,
                targets[t],
                provider,
                servers,
                spread=(k == 0),
            )
            rounds.append(r)
            if t == "gateway":
                acknowledged += r.ok
            print(describe_round(r), flush=True)
            if r.spread:
                print(f"             connections per worker pid: {r.spread}", flush=True)
            if r.threads:
                cores = ", ".join(
                    f"{w}: main thread {m:.2f} + other threads {o:.2f}"
                    for w, (m, o) in r.threads.items()
                )
                print(f"             cores used per worker: {cores}", flush=True)
            for sample in r.samples[:3]:
                print(f"             non-2xx: {sample}", flush=True)
            check_alive(servers, f"round {k + 1} ({t})")
            time.sleep(s.gap)

    # --- latency: unloaded, then open loop at a fixed rate
    print(
        f"latency: {s.unloaded} sequential requests on one connection; then "
        f"{int(s.rate * s.rate_seconds)} requests at {s.rate:,.0f}/s open loop "
        f"(load average {loadavg()})",
        flush=True,
    )
    busy0 = machine_busy_seconds()
    ours0 = cpu_seconds([p for srv in servers for p in srv.pids])
    t0 = time.monotonic()
    lat: LatencyResults = run_async(
        latency_suite(
            s,
            {"proxy": ports["proxy"], "gateway": ports["gateway"]},
            read_lines(bodies / "seq-warm.txt"),
            read_lines(bodies / "seq.txt"),
            read_lines(bodies / "rate.txt"),
        )
    )
    acknowledged += len(lat.unloaded["gateway"].latencies) + len(lat.at_rate["gateway"].latencies)
    check_alive(servers, "the latency runs")
    ours = cpu_seconds([p for srv in servers for p in srv.pids]) - ours0
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"  (during the latency runs: servers {ours / (time.monotonic() - t0):.2f} cores, "
        f"whole machine {(machine_busy_seconds() - busy0) / (time.monotonic() - t0):.2f} cores "
        f"incl. this client; client total so far {own.ru_utime + own.ru_stime:.0f} s)",
        flush=True,
    )
    for kind, group in (("unloaded", lat.unloaded), (f"{s.rate:,.0f}/s", lat.at_rate)):
        for t, o in group.items():
            print(
                f"  {kind:<9} {t:<8} n={len(o.latencies):>5}  p50 {pct(o.latencies, 50):.3f} ms"
                f"  p99 {pct(o.latencies, 99):.3f} ms  max {pct(o.latencies, 100):.3f} ms"
                f"  statuses {o.statuses}  errors {o.errors}",
                flush=True,
            )
            for prob in o.problems[:3]:
                print(f"             non-2xx: {prob}", flush=True)

    # --- optional profile of one gateway worker (or the appender) under wrk load
    profile_lines: list[str] = []
    if s.profile:
        role = s.profile
        worker = (gateway.named(f"gw-{role}") or gateway.workers)[0]
        print(f"profile: py-spy on gateway {role} {worker} during an extra round", flush=True)
        spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        kinds = {
            "holding the GIL (Python and native code run under it: CPU)": ["--gil"],
            "every non-idle thread (also waits py-spy cannot tell from work: fsync, locks)": [],
        }

        def start_spy() -> None:
            for i, (kind, extra) in enumerate(kinds.items()):
                raw = tmp / f"profile-{i}.txt"
                spy = profile_worker(worker, max(1, s.duration - 2), raw, extra)
                if spy is not None:
                    spies[kind] = (spy, raw)
                    spawned.append(spy)

        r = run_wrk(
            s,
            "gateway",
            "profiled",
            urls["gateway"],
            bodies / "prof",
            s.duration,
            gateway,
            provider,
            servers,
            during=start_spy,
        )
        acknowledged += r.ok
        print(describe_round(r) + "  (py-spy attached: not counted)", flush=True)
        for kind, (spy, raw) in spies.items():
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate(timeout=10)
            profile_lines.append(f"samples {kind}:")
            lines = summarize_profile(raw, top=12, possible=250 * max(1, s.duration - 2))
            if not raw.exists() and err:
                lines.append(err.decode(errors="replace").strip()[-300:])
            profile_lines += [f"  {line}" for line in lines]

    # --- stop servers, then check the audit log and receipts
    alive = {srv.name: srv.alive() for srv in servers}
    for srv in servers:
        if not srv.alive():
            tail = srv.log.read_text(errors="replace")[-1500:]
            print(
                f"  {srv.name} (pid {srv.proc.pid}) exited with status {srv.proc.returncode} "
                f"(negative: killed by that signal); end of its log:\n{tail}",
                flush=True,
            )
    time.sleep(0.5)
    log_at_stop = gw_log.stat().st_size
    for srv in reversed(servers):
        srv.stop()
    checks: list[tuple[str, bool]] = []
    gw_non2xx = (
        sum(r.bad for r in rounds if r.target == "gateway")
        + lat.unloaded["gateway"].non_2xx
        + lat.at_rate["gateway"].non_2xx
    )
    checks.append((f"gateway non-2xx answers and errors: {gw_non2xx}", gw_non2xx == 0))
    stalled = [
        r.label
        for r in rounds
        if r.target == "gateway" and (r.ok == 0 or r.unanswered > s.connections + 2)
    ]
    checks.append((f"every gateway round answered its requests {stalled or ''}", not stalled))
    exhausted = [f"{r.label} {r.target}" for r in rounds if r.exhausted]
    checks.append((f"no round ran out of bodies {exhausted or ''}", not exhausted))
    checks.append((f"servers alive to the end {alive}", all(alive.values())))
    ok_r, receipt_lines = verify_receipts(dep, lat.unloaded["gateway"].samples)
    checks.append(("sample receipts verify (gateway verifier, jwcrypto, audit leaf)", ok_r))
    citizen = orjson.loads((REPO / "schemas/examples" / f"{SERVICE}.json").read_bytes())
    ok_a, audit_lines = audit_summary(dep, acknowledged, citizen["citizen_id"])
    checks.append(("audit log holds every acknowledged exchange, gap-free, no citizen id", ok_a))
    n_bad, bad_lines = scan_log(gw_log, 0, log_at_stop)
    checks.append((f"gateway log during the runs: {n_bad} warnings/errors", n_bad == 0))
    n_stop, stop_lines = scan_log(gw_log, log_at_stop)
    print("checks:")
    for line in receipt_lines + audit_lines:
        print(f"  {line}")
    log_size = gw_log.stat().st_size if gw_log.exists() else 0
    print(f"  gateway log: {log_size / 1e6:.1f} MB")
    for line in bad_lines:
        print(f"    during the runs: {line}")
    for line in stop_lines:
        print(f"    at shutdown (SIGTERM): {line}")
    if profile_lines:
        print(f"py-spy profile of the gateway {s.profile} under load:")
        for line in profile_lines:
            print(f"  {line}")
    notes = []
    if "rate_per_second" in type(loaded.limits).model_fields:
        notes.append(
            "the per-sender rate limit was raised for the benchmark "
            f"(rate_per_second = {loaded.limits.model_dump()['rate_per_second']:g}); "
            "everything else is the `gateway init` default"
        )
    notes.append(
        f"an exchange waits for two durable audit commits in sequence (accepted, outcome); one "
        f"commit on this disk took p50 {floor[0]:.2f} / p99 {floor[1]:.2f} ms, measured alone "
        "before the rounds: the floor under the added-latency figures"
    )
    notes.append(floor_note(rounds, crypto_us))
    if n_stop:
        notes.append(
            f"gateway shutdown on SIGTERM logged {n_stop} traceback(s)/error(s): "
            + "; ".join(stop_lines[:3])
        )
    print_summary(s, rounds, lat, checks, notes, unloaded_parts(gw_log))
    return 0 if all(ok for _, ok in checks) else 1


def main() -> None:
    sys.exit(run(parse_args()))


if __name__ == "__main__":
    main()
