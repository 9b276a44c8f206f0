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
from gateway.children import STOP_SIGNAL, STOPPED_BY, Children, how_it_ended, signal_child
from gateway.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _err, _http_base, _load
from gateway.ratelimit_shared import SharedBuckets

if TYPE_CHECKING:  # fork contexts do not exist on every platform
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkContext


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


def _take_over_signals(supervisor: int) -> None:
    """First thing in a child: ignore the group's signals; until the child serves (and puts
    its own handler in place), the supervisor's stop signal ends it at once, cleanly. Its
    default action would kill it: a worker still starting up when the gateway was stopped
    made the supervisor exit 1. And the stop signal comes when the supervisor dies."""
    for signum in STOPPED_BY:
        signal.signal(signum, signal.SIG_IGN)
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


def stop_times(limits: config_mod.Limits) -> tuple[float, float, float]:
    """How long stopping may take: (a worker's grace, the appender's drain, the supervisor's
    patience with a child), from the configured delivery timeout.

    The grace lets an in-flight exchange finish its delivery, then its outcome record and
    state write (10 s). aiohttp's own grace was a fixed 10 s, after which it waited as long
    again before it cancelled the handler: a delivery allowed longer than that was cut off
    by a stop, delivered but unanswered. A worker may thus take twice its grace; the
    appender serves connected workers a little longer than that, and the supervisor kills
    a child only after longer still.
    """
    grace = limits.delivery_timeout_seconds + 10.0
    return grace, 2 * grace + 10.0, 2 * grace + 20.0


def _run_appender(
    dep: config_mod.Deployment, address: str, ready: Connection, supervisor: int
) -> None:
    """The audit appender process: the only writer of audit records while the gateway runs.

    It tells the supervisor over ``ready`` that its store is open (``None``) or why it could
    not open it (the error's text), so the supervisor learns either at once: it used to wait
    60 s for an appender that had died, with a bare "did not start".
    """
    from gateway.audit.appender import serve
    from gateway.audit.factory import open_store, periodic_publisher
    from gateway.logging import configure

    _take_over_signals(supervisor)
    _name_process("gw-appender")
    configure(dep.config.logging.level, process="appender")
    serving = False

    def started() -> None:
        nonlocal serving
        serving = True
        with contextlib.suppress(OSError):  # the supervisor gave up waiting: it stops us
            ready.send(None)

    try:
        store = open_store(dep, appends=True)
        publisher = periodic_publisher(dep, store)
        serve(
            store,
            address,
            ready=started,
            publisher=publisher,
            stop_signals=(STOP_SIGNAL,),
            drain_seconds=stop_times(dep.config.limits)[1],
        )
    except Exception as e:
        import structlog

        structlog.get_logger("gateway.appender").exception(
            "appender.failed" if serving else "appender.start_failed"
        )
        if not serving:
            with contextlib.suppress(OSError):
                ready.send(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None


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
    from gateway.logging import configure

    _take_over_signals(supervisor)
    _name_process(f"gw-worker-{worker}")
    configure(dep.config.logging.level, process=f"worker-{worker}")
    try:
        _serve_as_worker(dep, sock, appender, metrics_dir, rate)
    except Exception:  # one JSON log line (redacted as all are), not a bare traceback
        import structlog

        structlog.get_logger("gateway.worker").exception("worker.failed")
        raise SystemExit(1) from None


def _serve_as_worker(
    dep: config_mod.Deployment,
    sock: socket.socket,
    appender: str,
    metrics_dir: Path | None,
    rate: SharedBuckets,
) -> None:
    from gateway.http.app import create_app, server_ssl_context
    from gateway.http.serving import run
    from gateway.metrics import use_multiprocess_dir

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
        grace=stop_times(dep.config.limits)[0],
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


APPENDER_START_SECONDS = 60.0
"""How long the appender may take to open its store (a PostgreSQL server slow to answer)."""


def _supervise(
    dep: config_mod.Deployment, sock: socket.socket, workers: int, metrics_dir: Path | None
) -> int:
    """Fork the appender, then the workers; if any dies, stop all and exit non-zero.

    No child is restarted: a worker or appender that died unasked is a fault (a crash, the OOM
    killer) that the service manager (systemd's Restart=on-failure) should see and count,
    rather than a loop of restarts hidden inside the gateway. Stop order: workers first (they
    finish in-flight exchanges, whose audit records the appender still commits), then the
    appender.
    """
    ctx = multiprocessing.get_context("fork")
    children = Children(stop_seconds=stop_times(dep.config.limits)[2])
    for signum in STOPPED_BY:
        signal.signal(signum, children.on_signal)
    try:
        address = _start_appender(ctx, dep, children)
        if address is not None:
            _serve_workers(ctx, dep, sock, workers, address, metrics_dir, children)
        elif not children.asked_to_stop:
            return EXIT_FAILED  # the cause is said
    except BaseException:  # a fork that failed: the children started must not be left
        children.stop()
        raise
    finally:
        children.join_all(metrics_dir)
    failed = children.failed()
    if failed:
        _err(f"not stopped cleanly: {', '.join(failed)}")
    return EXIT_OK if children.asked_to_stop and not failed else EXIT_FAILED


def _serve_workers(
    ctx: ForkContext,
    dep: config_mod.Deployment,
    sock: socket.socket,
    workers: int,
    appender: str,
    metrics_dir: Path | None,
    children: Children,
) -> None:
    """Fork the workers; return once one child ended (and, unasked, all were told to stop)."""
    from multiprocessing.connection import wait

    limits = dep.config.limits
    # One set of buckets for all workers: the configured rate is the gateway's, not a worker's.
    rate = SharedBuckets(
        (p.id for p in dep.config.participants), limits.rate_per_second, limits.rate_burst
    )
    for i in range(workers):
        if children.asked_to_stop:  # while forking: the rest need not start
            break
        args = (dep, sock, i, appender, metrics_dir, rate, children.supervisor)
        worker = ctx.Process(target=_run_worker, args=args, name=f"worker-{i}")
        try:
            worker.start()  # then counted: a fork that failed leaves nothing to join
        except OSError as e:  # EAGAIN at the process limit, ENOMEM
            _err(f"cannot start {worker.name}: {e.strerror or e}; stopping the gateway")
            children.stop()
            return
        children.workers.append(worker)
    sock.close()
    if children.asked_to_stop:
        children.stop()  # also the workers forked after the signal came
    ended = wait([p.sentinel for p in children.all()])
    if children.asked_to_stop:
        return
    dead = [p for p in children.all() if p.sentinel in ended]
    for p in dead:
        p.join(timeout=1)  # reaped, so its exit status is known
    said = ", ".join(f"{p.name} ({how_it_ended(p)})" for p in dead)
    _err(f"{said} exited unexpectedly; stopping the gateway")
    children.stop()


_NO_WORD = object()


def _start_appender(ctx: ForkContext, dep: config_mod.Deployment, children: Children) -> str | None:
    """Fork the appender and wait until its store is open: its address, or None (the cause
    said on stderr) if it failed, died, hung, or the gateway was asked to stop meanwhile.

    Waits on the appender's word and its death together: either is seen at once (it used to
    wait 60 s for an appender that had died, then said only "did not start")."""
    from multiprocessing.connection import wait

    from gateway.audit.appender import new_address

    address = new_address()
    reader, writer = ctx.Pipe(duplex=False)
    appender = ctx.Process(
        target=_run_appender, args=(dep, address, writer, children.supervisor), name="appender"
    )
    try:
        appender.start()
    except OSError as e:
        _err(f"cannot start the audit appender: {e.strerror or e}")
        return None
    children.appender = appender
    writer.close()  # the child holds the only other copy: its death is an EOF here
    word: object = _NO_WORD
    try:
        if wait([reader, appender.sentinel], timeout=APPENDER_START_SECONDS):
            with contextlib.suppress(EOFError, OSError):
                word = reader.recv()
    finally:
        reader.close()
    if children.asked_to_stop:
        signal_child(appender, STOP_SIGNAL)  # join_all waits for it
        return None
    if word is None:
        return address
    if isinstance(word, str):
        _err(f"the audit appender could not start: {word}")
    elif appender.is_alive():
        _err(f"the audit appender did not start within {APPENDER_START_SECONDS:g} s")
        signal_child(appender, STOP_SIGNAL)
    else:
        appender.join(timeout=1)
        _err(f"the audit appender exited while starting ({how_it_ended(appender)})")
    return None
