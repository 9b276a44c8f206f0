"""Per-sender token buckets (pure: the caller passes the time).

Why per sender: one misbehaving unit system must not starve the others, and every refusal is
audited like any other rejection. :class:`TokenBuckets` keeps the buckets of one process;
under ``gateway serve --workers N`` the workers share theirs instead
(gateway.ratelimit_shared), so the configured rate holds for the gateway as a whole, whichever
worker a connection lands on. Gateways sharing a PostgreSQL log each apply it on their own.
"""

from __future__ import annotations

import math
from typing import Protocol

from gateway.errors import RateLimited


class RateLimiter(Protocol):
    """What the pipeline needs: spend one token of ``key`` at monotonic time ``now``."""

    def take(self, key: str, now: float) -> None: ...


def spend(tokens: float, last: float, now: float, rate: float, burst: float) -> tuple[float, int]:
    """One bucket's step: refill ``tokens`` (saved at ``last``) up to ``burst`` at ``rate`` per
    second until ``now``, then spend one. Returns the tokens left and 0, or, when there is no
    whole token, the refilled tokens and the whole seconds to wait (at least 1).

    ``now`` earlier than ``last`` (another process's clock read that lost a race to the lock)
    refills nothing rather than draining the bucket.
    """
    tokens = min(burst, tokens + max(0.0, now - last) * rate)
    if tokens < 1.0:
        return tokens, max(1, math.ceil((1.0 - tokens) / rate))
    return tokens - 1.0, 0


def refusal(key: str, rate: float, wait: int) -> RateLimited:
    """The 429 of a sender over its rate, the same from every limiter."""
    return RateLimited(
        f"{key} is over its limit of {rate:g} exchanges per second; retry after {wait} s",
        retry_after=wait,
    )


class TokenBuckets:
    """``rate`` tokens per second per key, up to ``burst`` saved; one token per exchange."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> None:
        """Spend one token of ``key`` at monotonic time ``now``, or raise RateLimited."""
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens, wait = spend(tokens, last, now, self._rate, self._burst)
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._buckets.clear()  # bounded memory; keys are registered participants anyway
        self._buckets[key] = (tokens, max(last, now))
        if wait:
            raise refusal(key, self._rate, wait)
