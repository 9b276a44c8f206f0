"""The one place structlog is configured: JSON lines on stderr, with redaction.

Why redaction here as well as discipline at call sites: one careless ``log.info(..., body=x)``
must not put a citizen id into a log shipped to a SIEM. Values under sensitive keys are
dropped, and any 12-digit run (the shape of a Vietnamese citizen id) in a string is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_SENSITIVE_KEYS = frozenset(
    {"payload", "body", "response", "token", "authorization", "password", "key", "citizen_id"}
)
_CONTAINERS = (list, tuple, dict)
_CITIZEN_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop sensitive keys, mask citizen-id shaped numbers.

    One regex search over all string values joined (NUL is not a digit, so no run spans two
    values) decides whether any masking is needed: the usual line has none, and this runs
    for every line, a regex substitution per value was a quarter of a log line's cost. A line
    with a list or a mapping among its values (rare) takes the slow path: every string in it,
    keys included, at any depth, and sensitive keys inside it too.
    """
    for k in _SENSITIVE_KEYS.intersection(event):
        event[k] = "[redacted]"
    values = event.values()
    strings = [v for v in values if isinstance(v, str)]
    nested = len(strings) < len(values) and any(isinstance(v, _CONTAINERS) for v in values)
    if nested or (strings and _CITIZEN_ID.search("\0".join(strings))):
        for k, v in event.items():
            event[k] = _masked(v)
    return event


def _masked(value: Any) -> Any:
    """``value`` with every string in it masked, and sensitive keys of mappings dropped."""
    if isinstance(value, str):
        return _CITIZEN_ID.sub("[redacted-id]", value)
    if isinstance(value, dict):
        return {
            _masked(k): "[redacted]" if k in _SENSITIVE_KEYS else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def _name(process: str) -> structlog.typing.Processor:
    def add(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event["process"] = process
        return event

    return add


def configure(level: str = "info", *, process: str | None = None) -> None:
    """JSON lines at ``level`` and above. ``process`` (``worker-0``, ``appender``) goes into
    every line: with ``--workers N`` an operator can tell which process wrote what."""
    lvl = getattr(logging, level.upper())
    named: list[structlog.typing.Processor] = [] if process is None else [_name(process)]
    structlog.configure(
        processors=[
            *named,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Before redact: the traceback (and the exception's message in it) is a string
            # only once rendered, and must be masked like any other value.
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
