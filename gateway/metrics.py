"""Prometheus metrics: what ``GET /metrics`` exposes; the only importer of prometheus_client.

What is counted (one observation per answered ``POST /v1/exchange/{service}``):

    gateway_exchanges_total{service, outcome, status}           counter
    gateway_exchange_duration_seconds{service, outcome}         histogram, the handler's time
    gateway_exchange_audit_wait_seconds{service, outcome}       histogram, durable audit appends
    gateway_exchange_provider_wait_seconds{service, outcome}    histogram, the connector's delivery
    gateway_build_info{version}                                 gauge, always 1

Label values are bounded by the configuration, never by what a caller sends: ``service`` is a
configured service id or ``UNKNOWN_SERVICE`` (which cannot be a service id: those end in
``.vN``), ``outcome`` is one of ``OUTCOMES``' values and ``status`` an HTTP status the pipeline
answers with. No sender, citizen id or payload content is ever a label. The two wait
histograms are observed only for accepted exchanges (delivered or failed), which have timings.

Several worker processes (``gateway serve --workers N``): a scrape reaches one worker, so every
worker writes its values to memory-mapped files in one directory the supervisor made for this
run, and a scrape sums them all (prometheus_client's multiprocess mode). The library finds
that directory in ``PROMETHEUS_MULTIPROC_DIR`` when it names a value's file, and offers no
parameter for it, so ``use_multiprocess_dir`` sets that variable in the worker (after the fork,
before any metric exists) together with the library's value class; the collector and
``mark_process_dead`` get the directory explicitly. Nothing here reads the environment.
Per-process collectors (CPU, memory, open files, GC) would describe whichever worker answered,
so in that mode only ``python_info`` is exposed besides the gateway's own metrics.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway.models import Timings

__all__ = [
    "CONTENT_TYPE",
    "OUTCOMES",
    "UNKNOWN_SERVICE",
    "ExchangeMetrics",
    "mark_worker_dead",
    "use_multiprocess_dir",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN_SERVICE = "unknown"
# The pipeline's log event -> the outcome label. Anything else (the handler's
# "exchange.unavailable" when the audit or state store is down) counts as failed.
OUTCOMES = {
    "exchange.delivered": "delivered",
    "exchange.failed": "failed",
    "exchange.rejected": "rejected",
    "exchange.idempotent_replay": "replayed",  # the stored answer again, nothing delivered
}
_FAILED = "failed"
_ACCEPTED = ("delivered", "failed")  # the outcomes that have audit and provider waits
# From a fast rejection (about a millisecond) to a provider at the delivery timeout.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A group commit is typically well under a millisecond to a few; a stalled disk, seconds.
AUDIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)
_ENV = "PROMETHEUS_MULTIPROC_DIR"
_multiprocess_dir: Path | None = None


def use_multiprocess_dir(directory: Path) -> None:
    """Make every metric created from now on in this process write to ``directory``.

    Call once per worker process, after the fork and before ``ExchangeMetrics`` is built. The
    variable is set only for prometheus_client, which reads it when it names a value's file.
    """
    global _multiprocess_dir
    if _multiprocess_dir is not None:
        if _multiprocess_dir != directory:
            raise RuntimeError(f"metrics already go to {_multiprocess_dir}, not {directory}")
        return
    os.environ[_ENV] = str(directory)
    # The library's own hook (metrics.py keeps `from . import values` "for testability").
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Forget the live gauges of a worker that exited (its counters stay in the sums)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def gateway_version() -> str:
    try:
        return importlib.metadata.version("dtc-gateway")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def _add_collectors(
    registry: CollectorRegistry, multiprocess_dir: Path | None
) -> CollectorRegistry | None:
    """Register what ``registry`` exposes besides our metrics; return the registry our metrics
    join (None in multiprocess mode: they are read back from the files with everyone's)."""
    PlatformCollector(registry=registry)
    if multiprocess_dir is None:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        return registry
    if _multiprocess_dir != multiprocess_dir:
        raise RuntimeError("call use_multiprocess_dir(directory) first, in this process")
    MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return None


def _histogram(
    name: str, doc: str, buckets: tuple[float, ...], into: CollectorRegistry | None
) -> Histogram:
    return Histogram(name, doc, ("service", "outcome"), registry=into, buckets=buckets)


@dataclass(slots=True)
class _Series:
    """The label children of one (service, outcome), bound once so a request does no lookup.
    The wait histograms exist only for accepted outcomes."""

    service: str
    outcome: str
    duration: Histogram
    audit: Histogram | None
    provider: Histogram | None
    by_status: dict[int, Counter]


class ExchangeMetrics:
    """The gateway's metrics over one registry; ``observe`` is on every exchange's path."""

    def __init__(
        self,
        services: Iterable[str],
        *,
        version: str | None = None,
        multiprocess_dir: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        into = _add_collectors(self.registry, multiprocess_dir)
        self._exchanges = Counter(
            "gateway_exchanges",
            "Exchanges answered, by service, outcome and HTTP status.",
            ("service", "outcome", "status"),
            registry=into,
        )
        self._duration = _histogram(
            "gateway_exchange_duration_seconds",
            "Time from reading an exchange request to its answer.",
            DURATION_BUCKETS,
            into,
        )
        self._audit = _histogram(
            "gateway_exchange_audit_wait_seconds",
            "Time an accepted exchange waited for its audit records to be durable.",
            AUDIT_BUCKETS,
            into,
        )
        self._provider = _histogram(
            "gateway_exchange_provider_wait_seconds",
            "Time an accepted exchange waited for its provider (the connector's delivery).",
            DURATION_BUCKETS,
            into,
        )
        info = Gauge(
            "gateway_build_info",
            "The gateway's version, as a label; the value is always 1.",
            ("version",),
            registry=into,
            multiprocess_mode="max",
        )
        info.labels(version or gateway_version()).set(1)
        self._series = {
            (service, outcome): self._bind(service, outcome)
            for service in services
            for outcome in dict.fromkeys(OUTCOMES.values())
        }

    def _bind(self, service: str, outcome: str) -> _Series:
        waits = outcome in _ACCEPTED
        return _Series(
            service,
            outcome,
            self._duration.labels(service, outcome),
            self._audit.labels(service, outcome) if waits else None,
            self._provider.labels(service, outcome) if waits else None,
            {},
        )

    def observe(
        self,
        service: str,
        event: str | None,
        status: int,
        seconds: float,
        timings: Timings | None = None,
    ) -> None:
        """Count one answered exchange. ``service`` is the name from the URL: one that is not
        configured counts as ``UNKNOWN_SERVICE``."""
        outcome = OUTCOMES.get(event or "", _FAILED)
        series = self._series.get((service, outcome))
        if series is None:  # not a configured service: bound on first use, to one placeholder
            series = self._series.get((UNKNOWN_SERVICE, outcome))
            if series is None:
                series = self._series[UNKNOWN_SERVICE, outcome] = self._bind(
                    UNKNOWN_SERVICE, outcome
                )
        counter = series.by_status.get(status)
        if counter is None:  # the first answer with this status: statuses are few and fixed
            counter = self._exchanges.labels(series.service, outcome, str(status))
            series.by_status[status] = counter
        counter.inc()
        series.duration.observe(seconds)
        if timings is not None and series.audit is not None and series.provider is not None:
            series.audit.observe(timings.audit)
            series.provider.observe(timings.upstream)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (reads the files in multiprocess mode)."""
        return generate_latest(self.registry)
