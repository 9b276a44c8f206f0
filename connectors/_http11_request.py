"""The request side of the HTTP/1.1 client: one request, from method, target and fields to bytes.

Why this is a module of its own: it is the mirror of :mod:`connectors._http11_parse`, and the
other place where the client guards a protocol boundary. Header names and values come from the
gateway's configuration and from the exchange (``X-Exchange-Id``, ``Idempotency-Key``); a CR, an
LF or a NUL let through here would split the request and smuggle a second one to the provider.
Like the parser it is pure (values in; bytes or a ValueError out; no sockets, no asyncio, no
clock), so it can be reviewed and fed hostile field values directly, apart from the connection
and pool state of :mod:`connectors._http11`.

:func:`encode_request` checks every field in a few whole-block scans (the fast path of every
request) and only when one of them fails goes field by field with :func:`check_header`, which
raises naming the field. The framing fields (``Host``, ``Content-Length``,
``Transfer-Encoding``, ``Connection``) are the client's alone: a caller cannot set them.
``Content-Length`` goes with any body, and with an empty one too except for GET, HEAD, DELETE,
OPTIONS and TRACE (a ``POST`` of ``b""`` says ``Content-Length: 0``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from connectors._http11_parse import BLOCK_CHARS, FIELD_CHARS, TCHAR

__all__ = ["check_header", "encode_request"]

_TARGET_CHARS: Final = bytes(range(0x21, 0x7F))
_POOL_HEADERS: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})


def check_header(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    """Encode one request header field (value as UTF-8); ValueError for a bad name or value."""
    raw_name = name if isinstance(name, bytes) else name.encode("ascii", "replace")
    raw_value = value if isinstance(value, bytes) else value.encode("utf-8")
    if not raw_name or raw_name.translate(None, TCHAR):
        raise ValueError(f"invalid header name {name!r}")
    if raw_value.translate(None, FIELD_CHARS):
        raise ValueError(f"header {name!r}: value has control characters (CR, LF, NUL...)")
    if raw_name.lower() in _POOL_HEADERS:
        raise ValueError(f"header {name!r} is set by the client")
    return raw_name, raw_value


def encode_request(
    host_line: bytes,
    method: str,
    target: str,
    headers: Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    """The request's bytes; ``host_line`` is the pool's ``Host: ...\\r\\n``. ValueError if bad."""
    raw_method = method.encode("ascii")
    raw_target = target.encode("ascii")
    if not raw_method or raw_method.translate(None, TCHAR):
        raise ValueError("invalid method")
    if not raw_target or raw_target.translate(None, _TARGET_CHARS):
        raise ValueError("invalid request target")
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    names: list[bytes] = []
    fields: list[bytes] = []
    for name, value in pairs:  # encode; checked below, all at once
        raw_name = name if isinstance(name, bytes) else name.encode("ascii", "replace")
        raw_value = value if isinstance(value, bytes) else value.encode("utf-8")
        names.append(raw_name)
        fields += (raw_name, b": ", raw_value, b"\r\n")
    block = b"".join(fields)
    lowered = b" " + b" ".join(names).lower() + b" "
    if (
        not all(names)
        or b"".join(names).translate(None, TCHAR)
        or block.translate(None, BLOCK_CHARS)
        or block.count(b"\r") != len(names)
        or block.count(b"\n") != len(names)
        or b" host " in lowered
        or b" content-length " in lowered
        or b" transfer-encoding " in lowered
        or b" connection " in lowered
    ):
        for name, value in pairs:
            check_header(name, value)  # raises, naming the field
    length = b""
    if body or raw_method not in _NO_BODY_METHODS:
        length = b"Content-Length: %d\r\n" % len(body)
    return b"".join(
        (
            raw_method,
            b" ",
            raw_target,
            b" HTTP/1.1\r\n",
            host_line,
            block,
            length,
            b"\r\n",
            body,
        )
    )
