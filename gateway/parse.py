"""Stage (0) of the pipeline: a request's bytes to JSON, every limit checked before parsing.

Why a module of its own: the checks here are on the raw request alone (timeout, size, the
``Idempotency-Key`` header, the media type, strict JSON), need no state and no I/O, and each
refusal is a cause the pipeline audits like any other. Pure, like the stages after it.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.authn import SIGNED_MEDIA_TYPE
from gateway.errors import (
    BadRequest,
    GatewayBusy,
    MalformedJson,
    MalformedRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.models import Limits, RawRequest
from gateway.strictjson import JsonError, loads

__all__ = ["parse_request"]

# Visible ASCII only: the key is stored (state store) and compared byte for byte; a header byte
# above 0x7f reaches us as a lone surrogate that no store can encode.
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
_MEDIA_TYPES = ("application/json", SIGNED_MEDIA_TYPE)
_UTF8 = ("utf-8", "utf8")
# What the HTTP layer decodes. Any other coding reached the pipeline still encoded. (aiohttp
# also knows br and zstd, but without their optional packages, which this project does not
# install, its parser refuses them before routing: a 400 malformed-request problem.)
_CODINGS = ("identity", "gzip", "deflate")


def parse_request(raw: RawRequest, limits: Limits) -> Any:
    """The body as JSON (a JWS object for a signed request), or the GatewayError that says why
    not: 503 worker at capacity, 408 body too slow, 415 a content coding it cannot decode, 400
    body cut short by the client leaving or not decodable, 413 too large, 400 a repeated
    one-value header, a bad ``Idempotency-Key`` or JSON, 415 media type or a charset other
    than UTF-8.
    """
    if raw.over_capacity:
        raise GatewayBusy(
            "this gateway worker has as many exchanges going as it takes at once; retry in a "
            "moment (on a new connection: this one is closed)"
        )
    if raw.body_timed_out:
        raise RequestTimeout.after("the body", limits.body_timeout)
    coding = raw.content_encoding
    if coding is not None and coding.strip().lower() not in _CODINGS:
        # RFC 9110 section 8.4.1: a coding the server does not decode is a 415. The body was
        # passed on as it came, so x-foo (or "gzip, gzip") bytes that happened to parse as JSON
        # were signed and forwarded as something the sender never meant.
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported; send the body as is "
            "(identity), gzip or deflate"
        )
    if raw.body_malformed is not None:
        raise MalformedRequest(raw.body_malformed)
    if raw.client_gone:  # no one reads this answer; the audit record is what it is for
        raise BadRequest(
            "the connection closed before the whole body arrived; send the request again",
            slug="incomplete-body",
        )
    declared = raw.declared_length or 0
    if len(raw.body) > limits.max_body_bytes or declared > limits.max_body_bytes:
        raise PayloadTooLarge(f"the body exceeds the limit of {limits.max_body_bytes} bytes")
    if raw.repeated_header is not None:
        raise BadRequest(
            f"send one {raw.repeated_header} header, not several: which one is meant is unknowable"
        )
    key = raw.idempotency_key
    if key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID)")
    if raw.content_type not in _MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"send application/json (mTLS or bearer) or {SIGNED_MEDIA_TYPE} (signed request),"
            f" not {raw.content_type[:80]!r}"
        )
    if raw.charset is not None and raw.charset.lower() not in _UTF8:
        # RFC 8259 section 8.1: JSON between systems is UTF-8. A body declared in another
        # charset whose bytes happen to be valid UTF-8 would otherwise be read (and signed) as
        # text its sender never wrote.
        raise UnsupportedMediaType(
            f"JSON must be sent in UTF-8 (RFC 8259), not charset={raw.charset[:40]!r}; "
            "omit the charset parameter or say charset=utf-8"
        )
    try:
        return loads(raw.body, max_depth=limits.max_depth)
    except JsonError as e:
        raise MalformedJson(
            f"the body is not valid JSON: {e}",
            log_detail=f"the body is not valid JSON: {e.loggable}",
        ) from None
