"""``gateway serve``: the pre-fork supervisor, one audit appender process and N workers.

Apart from :mod:`gateway.cli` because it is the one command that owns processes, a shared
listening socket and signal handlers; every other command runs once and exits. ``_run_appender``
and ``_run_worker`` are the targets of fork-context processes, so they stay module-level
functions of this module.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import config as config_mod
from gateway.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _err, _http_base, _load
from gateway.ratelimit_shared import SharedBuckets

if TYPE_CHECKING:  # fork contexts do not exist on every platform
    from multiprocessing.context import ForkContext, ForkProcess


def _bind(host: str, port: int) -> socket.socket:
    """One listening socket, inherited by every worker (the pre-fork model).

    Not SO_REUSEPORT: the kernel then spreads connections by a hash of their addresses, and
    with a few dozen keep-alive clients one worker measured 20 connections to the other's 12
    (and saturated first). With one shared socket, whichever worker is free accepts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _name_process(name: str) -> None:
    """Show ``name`` in ``ps -o comm``/``top`` so operators (and profilers) can tell the forked
    processes apart; they share the parent's command line. Best effort: Linux only."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:  # pragma: no cover - not Linux, or /proc not mounted
        pass


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNAL = signal.SIGUSR2
"""How the supervisor stops a worker or the appender. Not SIGTERM/SIGINT: systemd (its default
KillMode=control-group) and a terminal's Ctrl-C send those to every process of the gateway at
once. The appender then stopped while workers still finished their exchanges (delivered, but
answered 503 for want of their outcome record), and each worker got the signal twice (the
second broke its cleanup half way). The children ignore SIGTERM/SIGINT; the supervisor
stops the workers first, then the appender, whichever way it was told to stop."""


def _take_over_signals(supervisor: int) -> None:
    """First thing in a child: ignore the group's signals; until the child serves (and puts
    its own handler in place), the supervisor's stop signal ends it at once, cleanly. Its
    default action would kill it: a worker still starting up when the gateway was stopped
    made the supervisor exit 1. And the stop signal comes when the supervisor dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(STOP_SIGNAL, _stop_before_serving)
    _stop_with(supervisor)


def _stop_with(supervisor: int) -> None:
    """Ask Linux to send the stop signal when the supervisor dies (PR_SET_PDEATHSIG).

    Why: a supervisor killed with SIGKILL (or the OOM killer) left its workers serving on the
    port and the appender holding the log, unsupervised, and a new `gateway serve` then found
    its port taken. Best effort: without prctl (not Linux) nothing changes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(STOP_SIGNAL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != supervisor:  # it died before the prctl: no signal will come
        os.kill(os.getpid(), STOP_SIGNAL)


def _stop_before_serving(signum: int, _: Any) -> None:
    raise SystemExit(0)  # nothing is in flight yet


def _run_appender(dep: config_mod.Deployment, address: str, ready: Any, supervisor: int) -> None:
    """The audit appender process: the only writer of audit records while the gateway runs."""
    from gateway.audit.appender import serve
    from gateway.audit.factory import open_store, periodic_publisher
    from gateway.logging import configure

    _take_over_signals(supervisor)
    _name_process("gw-appender")
    configure(dep.config.logging.level, process="appender")
    store = open_store(dep, appends=True)
    publisher = periodic_publisher(dep, store)
    serve(store, address, ready=ready.set, publisher=publisher, stop_signals=(STOP_SIGNAL,))


def _run_worker(
    dep: config_mod.Deployment,
    sock: socket.socket,
    worker: int,
    appender: str,
    metrics_dir: Path | None,
    rate: SharedBuckets,
    supervisor: int,
) -> None:
    """One worker process: its own event loop and app; the shared socket, appender, metrics
    directory and rate buckets."""
    from gateway.http.app import create_app, server_ssl_context
    from gateway.http.serving import run
    from gateway.logging import configure
    from gateway.metrics import use_multiprocess_dir

    _take_over_signals(supervisor)
    _name_process(f"gw-worker-{worker}")
    configure(dep.config.logging.level, process=f"worker-{worker}")
    if metrics_dir is not None:  # before create_app builds the metrics
        use_multiprocess_dir(metrics_dir)
    # Helper threads (reads for proofs and search, the state store) need the GIL for a few
    # microseconds at a time; with the default 5 ms switch interval a busy event loop keeps
    # them waiting that long. 0.5 ms keeps those waits short.
    sys.setswitchinterval(0.0005)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app = create_app(dep, appender_address=appender, metrics_dir=metrics_dir, rate=rate)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations, so full collections under load stay short (they show up in p99 latency).
    gc.collect()
    gc.freeze()
    run(
        app,
        sock,
        server_ssl_context(dep),
        STOP_SIGNAL,
        idle_timeout=dep.config.limits.idle_timeout_seconds,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.http.app import create_app, server_ssl_context
    from gateway.stores import prepare_stores

    dep = _load(args)
    g = dep.config.gateway
    host = g.host if args.host is None else args.host  # flags checked as the config is (cli.py)
    port = g.port if args.port is None else args.port
    workers = g.workers if args.workers is None else args.workers
    # Build once in the parent so a bad config (schema, key, connector) fails before any fork.
    create_app(dep)
    server_ssl_context(dep)
    from gateway.audit.publisher import RolledBack

    try:
        warnings = prepare_stores(dep)
    except RolledBack as e:
        _err(f"refusing to serve: {e}")
        return EXIT_FAILED
    for warning in warnings:
        _err(f"warning: {warning}")
    try:
        sock = _bind(host, port)
    except OSError as e:  # port in use, address not on this host, unknown host name
        _err(f"cannot listen on {host}:{port}: {e.strerror or e}")
        return EXIT_USAGE
    actual_port = sock.getsockname()[1]
    base = _http_base(g.tls is not None, host, actual_port)
    print(f"gateway {g.id} listening on {base} with {workers} worker(s)", flush=True)
    print(
        "  first payload: gateway send citizen-lookup.v1 examples/citizen-lookup.v1.json"
        f" --url {base}",
        flush=True,
    )
    with _metrics_dir(workers) as metrics_dir:
        return _supervise(dep, sock, workers, metrics_dir)


@contextlib.contextmanager
def _metrics_dir(workers: int) -> Iterator[Path | None]:
    """The workers' shared metrics directory (see gateway.metrics), private to this run: made
    before the fork (mkdtemp: mode 0700, owner only), removed when the gateway stops (not after
    a SIGKILL of the supervisor). A single worker keeps its metrics in memory and needs none."""
    if workers < 2:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _supervise(
    dep: config_mod.Deployment, sock: socket.socket, workers: int, metrics_dir: Path | None
) -> int:
    """Fork the appender, then the workers; if any dies, stop all and exit non-zero.

    Stop order matters: workers first (they finish in-flight exchanges, whose audit records the
    appender still commits), then the appender.
    """
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    started = _start_appender(ctx, dep)
    if started is None:
        return EXIT_FAILED
    appender, address = started
    limits = dep.config.limits
    # One set of buckets for all workers: the configured rate is the gateway's, not a worker's.
    rate = SharedBuckets(
        (p.id for p in dep.config.participants), limits.rate_per_second, limits.rate_burst
    )
    procs = [
        ctx.Process(
            target=_run_worker,
            args=(dep, sock, i, address, metrics_dir, rate, os.getpid()),
            name=f"worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    sock.close()
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, STOP_SIGNAL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait([p.sentinel for p in [*procs, appender]])
    if not stopping:
        _err("a gateway process exited unexpectedly; stopping the others")
        stop(signal.SIGTERM, None)
    _join_all(procs, appender, metrics_dir)
    failed = [f"{p.name} ({p.exitcode})" for p in [*procs, appender] if p.exitcode != 0]
    if failed:
        _err(f"not stopped cleanly, with exit codes: {', '.join(failed)}")
    return EXIT_OK if stopping and not failed else EXIT_FAILED


def _start_appender(ctx: ForkContext, dep: config_mod.Deployment) -> tuple[ForkProcess, str] | None:
    """Fork the appender and wait until its store is open; None (said on stderr) if it fails."""
    from gateway.audit.appender import new_address

    address = new_address()
    ready = ctx.Event()
    appender = ctx.Process(
        target=_run_appender, args=(dep, address, ready, os.getpid()), name="appender"
    )
    appender.start()
    if not ready.wait(60) or not appender.is_alive():
        _err("the audit appender did not start")
        appender.terminate()
        return None
    return appender, address


def _join_all(procs: list[ForkProcess], appender: ForkProcess, metrics_dir: Path | None) -> None:
    """Wait for the workers (already told to stop), then stop the appender and wait for it.

    Each worker that exited is marked dead in the metrics directory, as prometheus_client's
    multiprocess mode asks (its live gauges go; its counts stay in the sums)."""
    from gateway.metrics import mark_worker_dead

    for p in procs:
        p.join(timeout=30)
        if metrics_dir is not None and p.pid and p.exitcode is not None:
            mark_worker_dead(metrics_dir, p.pid)
    if appender.is_alive() and appender.pid:
        os.kill(appender.pid, STOP_SIGNAL)
    appender.join(timeout=30)
