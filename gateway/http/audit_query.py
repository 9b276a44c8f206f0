"""How the audit API reads a request and writes a record: parameters, cursors, item shape.

It exists so that every audit handler (search and export in :mod:`gateway.http.audit_api`,
the live tail in :mod:`gateway.http.audit_stream`, proofs and exchange state in
:mod:`gateway.http.audit_proofs`) reads parameters and serves records the same way, from one
place, without those modules importing each other.

Why these shapes:

* Every record is served as ``{"index", "leaf_hash", "record"}``, with ``record`` the stored
  canonical JSON spliced in unchanged (``orjson.Fragment``): what a client reads is byte for byte
  what was hashed, so ``leaf_hash`` can be recomputed from it, and serving costs no re-encoding.
* Cursors are opaque (``base64url("v1:<last index>")``) and mean "strictly after this index":
  records appended between two pages never cause duplicates or gaps.
* Unknown parameters and malformed values are 400s naming the parameter: a mistyped filter must
  not silently match everything.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.audit.log import AuditLog
from gateway.audit.store import StoredRecord
from gateway.authz import Principal
from gateway.errors import BadRequest
from gateway.http import app as keys
from gateway.models import UUID_PATTERN, rfc3339

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_INDEX = 2**62
OUTCOMES = {o: f"exchange.{o}" for o in ("accepted", "delivered", "failed", "rejected", "replayed")}
_UUID = re.compile(UUID_PATTERN)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+\- ]\d{2}:\d{2})"
)

PRINCIPAL = web.RequestKey("principal", Principal)
"""Set by the authorization middleware (``gateway.http.audit_api``) on every non-public route."""


# ------------------------------------------------------------------ parameters
def bad(name: str, expected: str) -> BadRequest:
    return BadRequest(f"parameter {name!r} must be {expected}")


def int_param(value: str | None, name: str, *, default: int | None = None) -> int | None:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > MAX_INDEX:
        raise bad(name, "a non-negative decimal integer")
    return int(value)


def time_param(value: str | None, name: str) -> str | None:
    """RFC 3339 -> the records' own form (UTC, milliseconds, Z), which sorts as a string.

    A space before the offset is read as ``+``: an unescaped ``+`` in a query string arrives
    as a space. Precision beyond milliseconds is cut, like the records' own times.
    """
    if value is None:
        return None
    if not _RFC3339.fullmatch(value):
        raise bad(name, "an RFC 3339 date-time, e.g. 2026-11-28T09:00:00Z")
    text = value.upper().replace(" ", "+")
    try:
        return rfc3339(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC))
    except (ValueError, OverflowError):  # Overflow: 9999-12-31T23:59:59-01:00 is past year 9999.
        raise bad(name, "a valid RFC 3339 date-time") from None


def req_int(value: str, name: str) -> int:
    index = int_param(value, name)
    assert index is not None  # A value was given, so int_param parsed it or raised.
    return index


def text_param(value: str | None, name: str) -> str | None:
    if value is not None and not (0 < len(value) <= 200 and value.isprintable()):
        raise bad(name, "a printable string of 1 to 200 characters")
    return value


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """-1 (start) for no cursor; 400 naming ``cursor`` for anything not made by encode_cursor."""
    if cursor is None:
        return -1
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad("cursor", "a next_cursor value returned by this API") from None
    version, _, index = raw.partition(":")
    if version != "v1" or not index.isdigit() or len(index) > 19:
        raise bad("cursor", "a next_cursor value returned by this API")
    return int(index)


def check_params(request: web.Request, allowed: frozenset[str]) -> None:
    """Unknown parameters are errors: a mistyped filter must not silently match everything.

    So is a parameter given twice: only one value would be used, so ``sender=a&sender=b``
    would silently answer for ``a`` alone.
    """
    for name in request.query:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name[:40]!r}; expected one of {sorted(allowed)}")
        if len(request.query.getall(name)) > 1:
            raise BadRequest(f"parameter {name!r} is given more than once; give it once")


def exchange_id_param(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise bad("exchange_id", "an exchange id (a lowercase UUID)")
    return value


# ------------------------------------------------------------------ responses
def record_json(raw: bytes) -> bytes:
    """Stored canonical JSON as it is; re-encoded only if it could break SSE/NDJSON framing."""
    if b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw))
    return raw


def record_item(r: StoredRecord) -> dict[str, Any]:
    return {
        "index": r.index,
        "leaf_hash": r.leaf_hash.hex(),
        "record": orjson.Fragment(record_json(r.record)),
    }


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(doc),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def audit_of(request: web.Request) -> AuditLog:
    return request.app[keys.AUDIT]
