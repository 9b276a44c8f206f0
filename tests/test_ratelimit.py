"""Per-sender rate limits: one bucket step (pure), the workers' shared buckets, and the
configured rate holding for a whole `gateway serve --workers 2`, not for each worker."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RateLimited
from gateway.ratelimit import TokenBuckets, spend
from gateway.ratelimit_shared import SharedBuckets
from tests.support import (
    ServerProcess,
    audit_records,
    make_deployment,
    post_citizen_lookup,
    until_every_worker_serves,
    workers_of,
)

CITIZEN = "citizen-lookup.v1"


def test_spend_refills_at_the_rate_up_to_the_burst_and_says_how_long_to_wait() -> None:
    assert spend(2.0, 0.0, 0.0, 1.0, 2.0) == (1.0, 0)
    assert spend(0.0, 0.0, 0.5, 1.0, 2.0) == (0.5, 1)  # half a token: wait for the rest
    assert spend(0.0, 0.0, 100.0, 1.0, 2.0) == (1.0, 0)  # refilled to the burst, not beyond
    assert spend(0.0, 0.0, 0.0, 0.25, 2.0) == (0.0, 4)  # a token every 4 s
    assert spend(0.0, 0.0, 0.0, 1 / 86400, 1.0) == (0.0, 86400)  # the slowest rate allowed
    assert spend(0.5, 10.0, 9.0, 1.0, 2.0) == (0.5, 1)  # a clock read older than the last update


def _outcomes(limiter: TokenBuckets | SharedBuckets, steps: list[tuple[str, float]]) -> list[int]:
    now, out = 0.0, []
    for key, dt in steps:
        now += dt
        try:
            limiter.take(key, now)
            out.append(0)
        except RateLimited as e:
            out.append(e.retry_after or 0)
    return out


_STEPS = st.lists(
    st.tuples(st.sampled_from(["hcm.quan-1", "hcm.thu-duc", "unknown"]), st.floats(0, 3)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps=_STEPS, rate=st.floats(0.1, 50), burst=st.integers(1, 10))
def test_shared_buckets_decide_exactly_as_one_process_buckets(
    steps: list[tuple[str, float]], rate: float, burst: int
) -> None:
    """Same answers, same waits, for registered keys and for a key that is none."""
    shared = SharedBuckets(["hcm.quan-1", "hcm.thu-duc"], rate, burst)
    assert _outcomes(shared, steps) == _outcomes(TokenBuckets(rate, burst), steps)


@settings(max_examples=200, deadline=None)
@given(steps=_STEPS, rate=st.floats(0.1, 50), burst=st.integers(1, 10))
def test_no_window_lets_more_than_the_burst_plus_the_rate_through(
    steps: list[tuple[str, float]], rate: float, burst: int
) -> None:
    shared = SharedBuckets(["hcm.quan-1", "hcm.thu-duc"], rate, burst)
    now, accepted = 0.0, []
    for key, dt in steps:
        now += dt
        try:
            shared.take(key, now)
            accepted.append((key, now))
        except RateLimited:
            pass
    for key in ("hcm.quan-1", "hcm.thu-duc", "unknown"):
        times = [t for k, t in accepted if k == key]
        for i, start in enumerate(times):
            within = [t for t in times[i:] if t - start <= 1.0]
            assert len(within) <= burst + rate * 1.0 + 1e-9


def _spend_all(
    buckets: SharedBuckets, tries: int, conn: multiprocessing.connection.Connection
) -> None:
    taken = 0
    for _ in range(tries):
        try:
            buckets.take("hcm.quan-1", 1.0)  # the same instant: no refill, only the burst
            taken += 1
        except RateLimited:
            pass
    conn.send(taken)
    conn.close()


def test_forked_workers_spend_from_one_bucket() -> None:
    ctx = multiprocessing.get_context("fork")
    buckets = SharedBuckets(["hcm.quan-1"], rate=1.0, burst=50)
    pipes = [ctx.Pipe(duplex=False) for _ in range(4)]
    procs = [ctx.Process(target=_spend_all, args=(buckets, 40, w)) for _, w in pipes]
    for p in procs:
        p.start()
    taken = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join(timeout=30)
    assert sum(taken) == 50, taken  # 160 tries from 4 processes; each token spent once


def test_the_configured_rate_holds_for_the_gateway_not_for_each_worker(tmp_path: Path) -> None:
    """24 exchanges at once, each on its own connection, reach both workers; with a bucket
    per worker up to 8 would pass."""
    cfg = make_deployment(tmp_path / "dep")
    text = cfg.read_text().replace(
        "[limits]\n", "[limits]\nrate_per_second = 0.001\nrate_burst = 4\n", 1
    )
    cfg.write_text(text)
    server = ServerProcess(cfg, workers=2, stdout_to_file=True)
    try:
        until_every_worker_serves(server, cfg.parent)
        token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(lambda _: post_citizen_lookup(server.url, token), range(24)))
    finally:
        log = server.stop()
    assert "Traceback" not in log, log[-3000:]
    assert workers_of(log, "hcm.quan-1") == {"worker-0", "worker-1"}
    assert statuses.count(200) == 4, statuses
    assert statuses.count(429) == 20, statuses
    records = [r for r in audit_records(cfg.parent) if r.get("sender") == "hcm.quan-1"]
    assert [r.get("cause") for r in records if r.get("status") == 429] == ["rate-limited"] * 20


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0)])
def test_shared_buckets_refuse_a_rate_or_burst_that_admits_nothing(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        SharedBuckets(["hcm.quan-1"], rate, burst)
