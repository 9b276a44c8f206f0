"""Where one exchange's CPU goes inside a worker: the pipeline alone, and its parts, same run.

``bench_exchange.py`` measures the whole gateway over HTTP; this isolates ``Pipeline.process``
(everything between the HTTP layer and the audit appender): a ``gateway init`` deployment, a
signed citizen-lookup.v1 request (ES256, fresh id each time), the test kit's ``FakeConnector``
answering at once with a valid answer, and an in-memory appender. Then each part is timed on its
own, with the same inputs: the strict parse, the sender's ES256 verification (chain cached, as
in steady state), schema validation, canonicalization, the two gateway signatures, the audit
records. Every figure is CPU time (``time.process_time``) per call, and a share of the full
exchange measured in the same run, so a slow or noisy machine changes the figures, not the
shares. The gap between the full exchange and the sum of the parts is the pipeline's own glue.

    .venv/bin/python bench/bench_pipeline.py            # about 20 seconds
    .venv/bin/python bench/bench_pipeline.py --quick    # a smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from bench_exchange import SERVICE, sign_bodies  # noqa: E402

from connectors.demo import DemoConnector  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.connector import ConnectorContext  # noqa: E402
from gateway.crypto import jws  # noqa: E402
from gateway.crypto.canonical import canonical  # noqa: E402
from gateway.devinit import init_deployment  # noqa: E402
from gateway.models import RawRequest, rfc3339  # noqa: E402
from gateway.ratelimit import TokenBuckets  # noqa: E402
from gateway.strictjson import loads  # noqa: E402
from gateway.testing import FakeConnector, make_message  # noqa: E402


class _Placed:
    __slots__ = ("index", "leaf_hash")

    def __init__(self, index: int) -> None:
        self.index = index
        self.leaf_hash = bytes(32)


class MemoryAppender:
    """The appender's interface, answering at once: the audit IPC and commit are not measured."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    async def append(self, record: bytes, *, claim: Any = None) -> _Placed:
        self.records.append(record)
        return _Placed(len(self.records) - 1)


def per_call(fn: Callable[[], Any], n: int) -> float:
    """CPU seconds per call of fn, after a short warm-up."""
    for _ in range(min(50, n)):
        fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


async def run(n: int, profile: bool = False) -> None:
    from aiohttp import web

    from gateway.http.app import PIPELINE, create_app

    d = Path(tempfile.mkdtemp(prefix="bench-pipeline-")) / "dep"
    init_deployment(d)
    dep = load(d / "gateway.toml")
    app = create_app(dep)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        pipeline = app[PIPELINE]
        example = orjson.loads((REPO / "schemas/examples" / f"{SERVICE}.json").read_bytes())
        demo = DemoConnector({}, ConnectorContext(SERVICE, "central.dan-cu", str(d)))
        answer = (await demo.deliver(make_message(example, service=SERVICE))).response
        svc = pipeline._services[SERVICE]
        pipeline._services = {
            **pipeline._services,
            SERVICE: dataclasses.replace(svc, connector=FakeConnector(answer)),
        }
        pipeline._audit = MemoryAppender()
        pipeline._rate = TokenBuckets(1e12, 10**12)  # one sender, many requests: no 429 here
        now = datetime.now(UTC)
        bodies = sign_bodies(str(d), n + 50, now.timestamp())  # bench_exchange's requests

        async def one(b: bytes) -> None:
            at = datetime.now(UTC)
            raw = RawRequest(
                service=SERVICE,
                body=b,
                content_type="application/jose+json",
                received_at=at,
                received_text=rfc3339(at),
            )
            result = await pipeline.process(raw)
            if result.status != 200:
                raise SystemExit(f"exchange failed: {result.status} {result.body[:300]!r}")

        for b in bodies[:50]:
            await one(b)
        prof = cProfile.Profile() if profile else None
        t0 = time.process_time()
        if prof:
            prof.enable()
        for b in bodies[50:]:
            await one(b)
        if prof:
            prof.disable()
        full = (time.process_time() - t0) / n
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)

        sample = bodies[0]
        doc = loads(sample)
        anchors = pipeline._authn._anchors
        canon = canonical(example)
        envelope_claims = {
            "exchange_id": str(uuid.uuid4()),
            "payload": canon,
            "sender_signature": doc,
            "request_sha256": "a" * 64,
        }
        receipt_claims = {"exchange_id": str(uuid.uuid4()), "audit": {"index": 1}}
        signer = pipeline._signer
        parts: list[tuple[str, float]] = [
            ("strict JSON parse of the request (1.6 KB)", per_call(lambda: loads(sample), n)),
            (
                "ES256 verification of the sender (chain cached)",
                per_call(lambda: jws.verify(doc, anchors, now=now, expected_typ="request+jws"), n),
            ),
            (
                "request schema validation",
                per_call(lambda: svc.request_schema.validate(example), n),
            ),
            ("RFC 8785 canonical payload", per_call(lambda: canonical(example), n)),
            (
                "envelope signature (ES256)",
                per_call(lambda: signer.sign(envelope_claims, typ="envelope+jws", trusted=True), n),
            ),
            (
                "response schema validation",
                per_call(lambda: svc.response_schema.validate(answer), n),
            ),
            (
                "receipt signature (ES256)",
                per_call(lambda: signer.sign(receipt_claims, typ="receipt+jws", trusted=True), n),
            ),
        ]
    finally:
        await runner.cleanup()

    print(f"Pipeline.process, signed citizen-lookup.v1, n={n}: {full * 1e6:,.0f} us CPU each")
    print(f"{'part (each measured alone, same inputs)':<52}{'us':>9}{'share':>9}")
    for name, cost in parts:
        print(f"  {name:<50}{cost * 1e6:>9,.1f}{cost / full:>9.0%}")
    rest = full - sum(c for _, c in parts)
    print(f"  {'the rest: records, digests, glue, the fake hops':<50}{rest * 1e6:>9,.1f}")
    print(f"  {'':<50}{'':>9}{rest / full:>9.0%}")
    crypto = sum(c for name, c in parts if "ES256" in name)
    print(f"ES256 (one verification, two signatures): {crypto / full:.0%} of the exchange")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer exchanges (smoke check)")
    p.add_argument(
        "--profile", action="store_true", help="also print cProfile's top self-times (slower)"
    )
    a = p.parse_args()
    asyncio.run(run(300 if a.quick else 3000, a.profile))


if __name__ == "__main__":
    main()
