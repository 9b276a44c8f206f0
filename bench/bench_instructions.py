"""Instructions per exchange in a gateway worker and in the audit appender, counted by callgrind.

``bench_exchange.py`` measures throughput and latency, in seconds, on a noisy machine: two
versions of the code a few percent apart cannot be told apart there. This counts instructions
instead (``valgrind --tool=callgrind``), which repeat for the same code and inputs whatever else
the machine is doing, so an optimisation can be measured against the commit before it.

What runs: ``gateway serve --workers 1`` under callgrind (it follows the fork into the worker and
the appender) on the ``bench_exchange`` deployment (``gateway init``, services on the ``http``
connector to ``bench/_provider.py``, which runs natively). One connection sends signed
citizen-lookup.v1 requests one after another (fresh ``id`` each): a warm-up, then the counters of
both processes are zeroed (``callgrind_control -z``), ``--exchanges`` more are sent, and the
counters are dumped. Printed: instructions per exchange in the worker and in the appender (whose
batches hold one record each here, as nothing runs concurrently), and the worker's top functions
by inclusive count (``callgrind_annotate``), so a change can be attributed.

    .venv/bin/python bench/bench_instructions.py                  # 300 exchanges, ~3 minutes
    .venv/bin/python bench/bench_instructions.py --exchanges 100  # quicker, a bit less exact

Needs valgrind (Debian: ``apt-get install -y valgrind``). Exit status 0 when every exchange got a
2xx, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _client import sequential  # noqa: E402
from bench_exchange import (  # noqa: E402
    HOST,
    SERVICE,
    BenchError,
    Server,
    free_port,
    make_deployment,
    sign_bodies,
    tcp_open,
)


def total_instructions(dump: Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind output file."""
    text = dump.read_text(errors="replace")
    m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    if m is None:
        raise BenchError(f"no totals in {dump}")
    return int(m.group(1))


def self_costs(dump: Path) -> dict[str, int]:
    """Instructions spent in each function itself (callgrind_annotate's exclusive counts)."""
    tool = shutil.which("callgrind_annotate")
    if tool is None:
        return {}
    out = subprocess.run(
        [tool, "--threshold=100", str(dump)], capture_output=True, text=True, check=False
    ).stdout
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r"^.*/", "", m.group(2))[:110]
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def top_differences(short: Path, long: Path, exchanges: int, top: int) -> list[str]:
    """The functions whose own instructions grew most from the short run to the long one."""
    a, b = self_costs(short), self_costs(long)
    per = {k: (b.get(k, 0) - a.get(k, 0)) / exchanges for k in b.keys() | a.keys()}
    ranked = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return [f"{v:>10,.0f}  {k}" for k, v in ranked]


def send(port: int, bodies: list[bytes]) -> int:
    """Send ``bodies`` in turn on one connection; return how many did not get a 2xx."""
    out = asyncio.run(
        sequential(
            HOST, port, f"/v1/exchange/{SERVICE}", bodies, "application/jose+json", timeout=60
        )
    )
    return out.non_2xx + out.errors


def counted_run(tmp: Path, bodies: list[bytes]) -> tuple[dict[str, Path], int]:
    """One ``gateway serve --workers 1`` under callgrind that answers ``bodies`` and stops.

    callgrind_control cannot reach forked children, so each process writes its counts when it
    exits: the gateway is stopped with SIGTERM (a clean stop) and the dumps are read after.
    """
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    # A copy of the deployment each, so both runs start on the same empty audit log.
    shutil.copytree(tmp / "deploy", run_dir / "deploy")
    cfg = run_dir / "deploy" / "gateway.toml"
    gateway = Server(
        "gateway",
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={run_dir}/callgrind.out.%p",
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        run_dir / "gateway.log",
        port,
    )
    try:
        gateway.wait_ready(lambda: tcp_open(port), timeout=600)
        pids = {"worker": _named(gateway, "gw-worker"), "appender": _named(gateway, "gw-appender")}
        bad = send(port, bodies)
        os.kill(gateway.proc.pid, signal.SIGTERM)  # the supervisor: it stops the others cleanly
        gateway.proc.wait(timeout=600)
    finally:
        gateway.stop()
    dumps = {}
    for name, pid in pids.items():
        dump = run_dir / f"callgrind.out.{pid}"
        if not dump.exists():
            seen = sorted(x.name for x in run_dir.iterdir())
            raise BenchError(f"callgrind wrote no counts for the {name} ({pid}): {seen}")
        dumps[name] = dump
    return dumps, bad


def run(exchanges: int, baseline: int, top: int) -> int:
    if shutil.which("valgrind") is None:
        print("bench_instructions: needs valgrind (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as t:
        tmp = Path(t)
        provider_port = free_port()
        make_deployment(tmp / "deploy", provider_port)
        bodies = sign_bodies(str(tmp / "deploy"), 2 * baseline + exchanges, time.time())
        provider = Server(
            "provider",
            [sys.executable, str(BENCH / "_provider.py"), "--port", str(provider_port)],
            tmp / "provider.log",
            provider_port,
        )
        try:
            provider.wait_ready(lambda: tcp_open(provider_port))
            # Same start-up and shut-down in both runs; only the number of exchanges differs.
            short, bad = counted_run(tmp, bodies[:baseline])
            long, bad2 = counted_run(tmp, bodies[baseline:])
        finally:
            provider.stop()
        per = {
            k: (total_instructions(long[k]) - total_instructions(short[k])) / exchanges
            for k in ("worker", "appender")
        }
        print(
            f"exchanges counted: {exchanges} (the difference between a run of {baseline} and "
            f"one of {baseline + exchanges}), non-2xx: {bad + bad2}"
        )
        print(f"instructions per exchange, worker:   {per['worker']:>12,.0f}")
        print(f"instructions per exchange, appender: {per['appender']:>12,.0f}")
        print(f"instructions per exchange, both:     {sum(per.values()):>12,.0f}")
        for name in ("worker", "appender"):
            print(f"{name}: instructions per exchange in the function itself (top {top}):")
            for line in top_differences(short[name], long[name], exchanges, top):
                print("  " + line)
        return 0 if bad + bad2 == 0 else 1


def _named(server: Server, prefix: str) -> int:
    """The pid of the valgrind-run gateway's child process whose name starts with prefix."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = server.named(prefix)
        if found:
            return found[0]
        # Under valgrind the comm may stay the tool's; fall back to the command line order.
        time.sleep(0.5)
    raise BenchError(f"no {prefix} process under the gateway")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exchanges", type=int, default=300, help="exchanges counted (300)")
    p.add_argument("--baseline", type=int, default=50, help="exchanges of the short run (50)")
    p.add_argument("--top", type=int, default=40, help="functions listed (40)")
    a = p.parse_args()
    try:
        sys.exit(run(a.exchanges, a.baseline, a.top))
    except BenchError as e:
        print(f"bench_instructions: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
