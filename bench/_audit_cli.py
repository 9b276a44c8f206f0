"""The command line both audit-log benchmarks share (bench_audit.py, bench_audit_postgres.py).

Same options, same meaning, so their figures are comparable run for run: group-commit records,
concurrent appenders, baseline records (one append per transaction), and uvloop on request.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run_cli(doc: str, main: Callable[[int, int, int], Coroutine[Any, Any, None]]) -> None:
    """Parse the shared options and run ``main(records, concurrency, serial)``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="group-commit records")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent appenders")
    parser.add_argument("--serial", type=int, default=1_000, help="baseline records")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the gateway does")
    args = parser.parse_args()
    factory = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.records, args.concurrency, args.serial))
