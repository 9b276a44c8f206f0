"""`gateway serve`'s supervisor when a child dies, hangs or is slow: it notices at once, stops
everything (no child is restarted: the service manager is told by a non-zero exit), names the
child and how it ended, and leaves no process behind.

Faults are injected into a real `gateway serve` by a small launcher that replaces one function
before the supervisor forks (the children inherit the replacement); the processes, signals and
sockets are all real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import (
    ServerProcess,
    audit_records,
    free_port,
    group_members,
    group_processes,
    make_deployment,
    post_citizen_lookup,
)

_LAUNCHER = """
import signal, sys, time

fault = sys.argv[1]


def hang(*args, **kwargs):
    time.sleep(600)


def fail(*args, **kwargs):
    raise RuntimeError("the audit store cannot be opened")


def hang_deaf(*args, **kwargs):
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # deaf to the supervisor's stop signal
    time.sleep(600)


if fault.startswith("appender-"):
    import gateway.audit.appender
    gateway.audit.appender.serve = {"fails": fail, "hangs": hang, "deaf": hang_deaf}[fault[9:]]
if fault == "appender-deaf":
    import gateway.cli_serve
    gateway.cli_serve.APPENDER_START_SECONDS = 1
    gateway.cli_serve.stop_times = lambda limits: (20.0, 50.0, 1.0)
if fault == "worker-fails":
    import gateway.http.serving
    gateway.http.serving.run = fail
if fault == "second-fork-fails":  # EAGAIN: the user's (or the container's) process limit
    import errno, multiprocessing.context
    start = multiprocessing.context.ForkProcess.start

    def limited(self):
        if self.name == "worker-1":
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        start(self)

    multiprocessing.context.ForkProcess.start = limited
if fault == "short-stop":
    import gateway.cli_serve
    gateway.cli_serve.stop_times = lambda limits: (20.0, 50.0, 2.0)

from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _serve(cfg: Path, fault: str, workers: int = 2) -> subprocess.Popen[str]:
    launcher = cfg.parent / "launch.py"
    launcher.write_text(_LAUNCHER)
    argv = ["serve", "--config", str(cfg), "--port", str(free_port()), "--workers", str(workers)]
    return subprocess.Popen(
        [sys.executable, str(launcher), fault, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _ended(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """Its stderr once it exited by itself within ``timeout``; fails (and kills) otherwise."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the supervisor did not exit within {timeout} s: {err[-2000:]}")
    return err


def _no_one_left(pgid: int) -> list[int]:
    """The group's processes still alive a while after the supervisor exited (should be
    none); kills any left, so a failed test leaves nothing behind."""
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_members(pgid)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return left


def _until_started(pgid: int, name: str) -> int:
    """The pid of the group's process called ``name``, once it exists."""
    for _ in range(600):
        for pid, comm in group_processes(pgid):
            if comm == name:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {name} started")


def test_an_appender_that_dies_while_starting_stops_the_gateway_at_once_naming_why(
    tmp_path: Path,
) -> None:
    """The supervisor used to wait 60 s for the appender's readiness before it noticed, then
    said only "did not start"."""
    proc = _serve(make_deployment(tmp_path / "dep"), "appender-fails")
    err = _ended(proc, timeout=30)
    assert proc.returncode == 1, err
    assert "audit appender could not start: RuntimeError: the audit store cannot be opened" in err
    assert "Process appender:" not in err  # multiprocessing's bare traceback: the JSON log has it
    assert _no_one_left(proc.pid) == []


def test_an_appender_that_hangs_while_starting_is_killed_and_the_gateway_exits(
    tmp_path: Path,
) -> None:
    """An appender stuck opening its store, deaf even to the stop signal: after the start-up
    timeout the supervisor stops it, kills it when it will not stop, and exits 1. It used to
    send it SIGTERM (which the children ignore), then wait for ever for it at exit."""
    proc = _serve(make_deployment(tmp_path / "dep"), "appender-deaf")
    err = _ended(proc, timeout=60)
    assert proc.returncode == 1, err
    assert "the audit appender did not start within 1 s" in err
    assert "appender did not stop within 1 s; killing it" in err
    assert _no_one_left(proc.pid) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_appender_starts_stops_the_gateway_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C (or systemd's SIGTERM) while the appender is still opening its store (a slow
    PostgreSQL): the gateway stops then, with status 0, instead of ignoring Ctrl-C until the
    start-up wait ran out."""
    proc = _serve(make_deployment(tmp_path / "dep"), "appender-hangs")
    _until_started(proc.pid, "gw-appender")
    os.killpg(proc.pid, signum)
    err = _ended(proc, timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert _no_one_left(proc.pid) == []


def test_a_worker_that_fails_to_start_stops_the_gateway_naming_it(tmp_path: Path) -> None:
    proc = _serve(make_deployment(tmp_path / "dep"), "worker-fails")
    err = _ended(proc, timeout=60)
    assert proc.returncode == 1, err
    assert "(exit status 1) exited unexpectedly; stopping the gateway" in err
    assert '"event":"worker.failed"' in err  # in the JSON log, not multiprocessing's traceback
    assert "Process worker-" not in err
    assert _no_one_left(proc.pid) == []


def test_a_fork_that_fails_stops_the_children_already_started(tmp_path: Path) -> None:
    """The process limit reached while forking the workers: the appender and the workers
    already forked were left serving, and the supervisor waited for them for ever at exit."""
    proc = _serve(make_deployment(tmp_path / "dep"), "second-fork-fails")
    err = _ended(proc, timeout=60)
    assert proc.returncode == 1, err
    assert "cannot start worker-1: Resource temporarily unavailable; stopping the gateway" in err
    assert "Traceback" not in err
    assert _no_one_left(proc.pid) == []


def test_a_worker_killed_with_sigkill_stops_the_gateway_cleanly_naming_it(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) on one worker: the others finish and stop, the appender
    stops last, the supervisor exits 1 naming the worker and the signal, and the audit log
    holds every answered exchange. Not restarted: a service manager (Restart=on-failure)
    restarts the gateway as a whole and counts it."""
    cfg = make_deployment(tmp_path / "dep")
    server = ServerProcess(cfg, workers=2, stdout_to_file=True)
    token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
    try:
        assert post_citizen_lookup(server.url, token) == 200
        os.kill(_until_started(server.proc.pid, "gw-worker-1"), signal.SIGKILL)
        server.proc.wait(timeout=60)
    finally:
        log = server.stop()  # kills the group if it is still there
    assert server.proc.returncode == 1, log[-3000:]
    assert "worker-1 (killed by SIGKILL) exited unexpectedly; stopping the gateway" in log
    assert "not stopped cleanly: worker-1 (killed by SIGKILL)" in log
    assert _no_one_left(server.proc.pid) == []
    records = audit_records(cfg.parent)
    assert [r["event"] for r in records].count("exchange.delivered") == 1


def test_an_appender_killed_with_sigkill_stops_the_gateway_and_the_log_stays_whole(
    tmp_path: Path,
) -> None:
    """Without its appender no worker can have an exchange audited: the gateway stops at
    once, exits 1 naming the appender, and what was acknowledged is in the log."""
    cfg = make_deployment(tmp_path / "dep")
    server = ServerProcess(cfg, workers=2, stdout_to_file=True)
    token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
    try:
        assert post_citizen_lookup(server.url, token) == 200
        os.kill(_until_started(server.proc.pid, "gw-appender"), signal.SIGKILL)
        server.proc.wait(timeout=60)
    finally:
        log = server.stop()
    assert server.proc.returncode == 1, log[-3000:]
    assert "appender (killed by SIGKILL) exited unexpectedly; stopping the gateway" in log
    assert _no_one_left(server.proc.pid) == []
    records = audit_records(cfg.parent)
    assert [r["event"] for r in records].count("exchange.delivered") == 1
    verify = [sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(cfg)]
    checked = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_worker_that_does_not_stop_is_killed_and_the_gateway_still_exits(
    tmp_path: Path,
) -> None:
    """A hung worker (here: stopped with SIGSTOP) when the gateway is told to stop: killed
    after the stop timeout; the supervisor used to wait for it for ever."""
    cfg = make_deployment(tmp_path / "dep")
    launcher = _serve(cfg, "short-stop")
    try:
        worker = _until_started(launcher.pid, "gw-worker-0")
        _until_started(launcher.pid, "gw-worker-1")
        time.sleep(0.5)  # let both get past start-up (not asserted: only a head start)
        os.kill(worker, signal.SIGSTOP)
        os.kill(launcher.pid, signal.SIGTERM)
        err = _ended(launcher, timeout=60)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        raise
    assert launcher.returncode == 1, err
    assert "worker-0 did not stop within 2 s; killing it" in err
    assert "not stopped cleanly: worker-0 (killed by SIGKILL)" in err
    assert _no_one_left(launcher.pid) == []
