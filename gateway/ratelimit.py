"""Per-sender token buckets (pure: the caller passes the time).

Why per sender: one misbehaving unit system must not starve the others, and every refusal is
audited like any other rejection. The buckets live in each worker process, so with N workers a
sender may reach up to N times the configured rate; the limit is a guard against runaway
clients, not an accounting tool.
"""

from __future__ import annotations

import math

from gateway.errors import RateLimited


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
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            raise RateLimited(
                f"{key} is over its limit of {self._rate:g} exchanges per second; "
                f"retry after {wait} s",
                retry_after=wait,
            )
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._buckets.clear()  # bounded memory; keys are registered participants anyway
        self._buckets[key] = (tokens - 1.0, now)
