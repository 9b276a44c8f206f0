"""Token buckets shared by the worker processes of one ``gateway serve``.

Why: each worker used to keep its own buckets, so with ``--workers N`` a sender could reach N
times its configured rate (more, the more connections it opened: SO_REUSEPORT spreads them over
the workers). The supervisor makes these buckets before it forks the workers; the children
inherit the shared memory and the lock, and every worker spends from the same bucket.

Layout: two doubles per registered participant (tokens, time of the last update, from
``time.monotonic()``, which is one clock for every process of the machine), indexed in the
order of the participant ids. The lock is held for one bucket step (gateway.ratelimit.spend):
well under a microsecond, so the workers hardly ever wait for it. A key that is no registered
participant (it cannot be: the rate is taken after authentication) falls back to a bucket of
this process.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterable

from gateway.ratelimit import TokenBuckets, refusal, spend

__all__ = ["SharedBuckets"]


class SharedBuckets:
    """``rate`` tokens per second per participant, up to ``burst`` saved, for all workers.

    Build it in the parent before forking (``multiprocessing`` "fork" start method); it is not
    meant to be pickled to a spawned process."""

    def __init__(self, keys: Iterable[str], rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        ctx = multiprocessing.get_context("fork")
        self._slot = {k: 2 * i for i, k in enumerate(sorted(set(keys)))}
        self._rate = rate
        self._burst = float(burst)
        # NaN time: never used yet (the bucket starts full at its first use).
        self._cells = ctx.RawArray("d", [float(burst), math.nan] * len(self._slot))
        self._lock = ctx.Lock()
        self._others = TokenBuckets(rate, burst)

    def take(self, key: str, now: float) -> None:
        """Spend one token of ``key`` at monotonic time ``now``, or raise RateLimited."""
        slot = self._slot.get(key)
        if slot is None:
            self._others.take(key, now)
            return
        cells = self._cells
        with self._lock:
            last = cells[slot + 1]
            if math.isnan(last):
                last = now
            tokens, wait = spend(cells[slot], last, now, self._rate, self._burst)
            cells[slot] = tokens
            cells[slot + 1] = max(last, now)
        if wait:
            raise refusal(key, self._rate, wait)
