"""The ``gateway serve`` supervisor's children: which there are, how they are stopped, how
they ended.

Apart from :mod:`gateway.cli_serve` (which forks them and says what each one runs) because
stopping is a policy of its own: workers first, then the appender; every child within a
bounded time, killed after it; and an operator told which child ended and how.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fork contexts do not exist on every platform
    from multiprocessing.context import ForkProcess

STOP_SIGNAL = signal.SIGUSR2
"""How the supervisor stops a worker or the appender. Not SIGTERM/SIGINT: systemd (its default
KillMode=control-group) and a terminal's Ctrl-C send those to every process of the gateway at
once. The appender then stopped while workers still finished their exchanges (delivered, but
answered 503 for want of their outcome record), and each worker got the signal twice (the
second broke its cleanup half way). The children ignore STOPPED_BY; the supervisor
stops the workers first, then the appender, whichever way it was told to stop."""

STOPPED_BY = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that stop the gateway gracefully; the supervisor takes them, the children
ignore them. SIGHUP too: a terminal that hangs up (an ssh session lost) sends it to every
process of the foreground group, and its default action killed the children at once,
their in-flight exchanges cut off, where SIGTERM would have let them finish."""


def _say(msg: str) -> None:
    print(f"gateway: {msg}", file=sys.stderr, flush=True)


class Children:
    """The supervisor's children; :meth:`on_signal` is its handler of STOPPED_BY.

    The handler is in place before the first fork: a gateway stopped while its appender was
    still starting used to ignore Ctrl-C until the start-up wait ran out.
    """

    def __init__(self, stop_seconds: float) -> None:
        """``stop_seconds``: how long a child told to stop may take before it is killed.
        Without a bound, a hung child kept the supervisor waiting for ever (multiprocessing
        joins every child at exit), and the PDEATHSIG that would have stopped it never
        came."""
        self.stop_seconds = stop_seconds
        self.supervisor = os.getpid()
        self.appender: ForkProcess | None = None
        self.workers: list[ForkProcess] = []
        self.asked_to_stop = False  # by an operator (a signal), not by a child's death

    def on_signal(self, signum: int, _: Any) -> None:
        if os.getpid() != self.supervisor:  # a child that has not yet taken over its signals
            return
        self.asked_to_stop = True
        self.stop()

    def stop(self) -> None:
        """Tell the workers to stop; only the appender if there are none yet (the appender
        is stopped after the workers, by :meth:`join_all`)."""
        for p in self.workers or ([self.appender] if self.appender else []):
            signal_child(p, STOP_SIGNAL)

    def all(self) -> list[ForkProcess]:
        return [*self.workers, *([self.appender] if self.appender else [])]

    def failed(self) -> list[str]:
        """Each child that did not exit with status 0, and how it ended."""
        return [f"{p.name} ({how_it_ended(p)})" for p in self.all() if p.exitcode != 0]

    def join_all(self, metrics_dir: Path | None) -> None:
        """Wait for the workers (already told to stop), then stop the appender and wait for
        it; kill any that does not stop in time, so none outlives the supervisor.

        Each worker that exited is marked dead in the metrics directory, as
        prometheus_client's multiprocess mode asks (its live gauges go; its counts stay in
        the sums)."""
        from gateway.metrics import mark_worker_dead

        for p in self.workers:
            _end(p, self.stop_seconds)
            if metrics_dir is not None and p.pid and p.exitcode is not None:
                mark_worker_dead(metrics_dir, p.pid)
        if self.appender is not None:
            signal_child(self.appender, STOP_SIGNAL)
            _end(self.appender, self.stop_seconds)


def signal_child(p: ForkProcess, signum: int) -> None:
    """Send ``signum`` to ``p`` if it was started and has not been reaped."""
    if p.pid and p.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signum)


def _end(p: ForkProcess, seconds: float) -> None:
    """Wait up to ``seconds`` for ``p`` (already told to stop), then kill it; reap it."""
    p.join(timeout=seconds)
    if p.exitcode is None:
        _say(f"{p.name} did not stop within {seconds:g} s; killing it")
        signal_child(p, signal.SIGKILL)
        p.join(timeout=seconds)


def how_it_ended(p: ForkProcess) -> str:
    """How ``p`` ended, for an operator: its exit status or the signal that killed it."""
    code = p.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
