"""The response side of the HTTP/1.1 client: one response, from bytes to status, headers, body.

Why this is a module of its own: parsing is the part of the client that meets untrusted input,
and it is pure (bytes in; a :class:`Response` or an error out; no sockets, no asyncio, no clock).
Kept apart from the pool in :mod:`connectors._http11` (connections, slots, keep-alive), it can be
read, reviewed and fed hostile bytes directly, in tests, without any connection state around it.

Framing (RFC 9112 section 6): no body for HEAD, 1xx, 204 and 304; ``Transfer-Encoding: chunked``
(trailers are read, checked and dropped); ``Content-Length``; otherwise the body runs to the end of
the connection. Interim 1xx answers are skipped. Anything ambiguous is refused with
:class:`ProtocolError` rather than guessed at: both ``Content-Length`` and ``Transfer-Encoding``,
differing ``Content-Length`` values, a transfer coding other than ``chunked``, obs-fold, bare CR
or LF, control characters, bad chunk sizes, an oversized head. A body over ``max_response_bytes``
raises :class:`ResponseTooLarge` (which carries the status and headers) as soon as it is known,
read no further. No error message quotes the response: it may hold personal data.

:class:`Parser` is incremental: the connection feeds it whatever bytes arrive, in any split, and
it says when the response is complete and whether the connection may be reused (``keep_alive``,
and no stray bytes after the response: ``extra``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BLOCK_CHARS",
    "FIELD_CHARS",
    "MAX_FIELDS",
    "MAX_HEAD_BYTES",
    "TCHAR",
    "HttpClientError",
    "Parser",
    "ProtocolError",
    "Response",
    "ResponseTooLarge",
]

MAX_HEAD_BYTES: Final = 64 * 1024  # status line + header section (and, separately, trailers)
MAX_FIELDS: Final = 128
_MAX_CHUNK_LINE: Final = 4096
_MAX_CHUNK_EXT_BYTES: Final = 64 * 1024  # all chunk extensions of one response together

# Character classes of RFC 9110, shared with the request encoder in connectors._http11_request.
TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FIELD_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
BLOCK_CHARS: Final = FIELD_CHARS + b"\r\n"
_HEX: Final = b"0123456789abcdefABCDEF"


class HttpClientError(Exception):
    """Base of this client's errors. Messages name the cause, never quote the response."""


class ProtocolError(HttpClientError):
    """The response is not well-formed HTTP/1.1, or its framing is ambiguous."""


class ResponseTooLarge(HttpClientError):
    """The body exceeds ``max_response_bytes``; the head is kept for the caller's checks."""

    def __init__(self, limit: int, status: int, headers: dict[str, str]) -> None:
        super().__init__(f"response body exceeds {limit} bytes")
        self.status = status
        self.headers = headers


class Response:
    """A complete response: header names are lowercased, repeated fields joined with ', '."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_EOF, _DONE = range(8)


def _parse_fields(block: bytes, headers: dict[str, str]) -> None:
    """Field lines (``name: value`` joined by CRLF) into ``headers``; ProtocolError if malformed.

    The whole block is checked at once (only field characters, CR and LF only as CRLF pairs),
    then each line only needs a token check of its name: no obs-fold, no space before the colon.
    """
    if block.translate(None, BLOCK_CHARS):
        raise ProtocolError("control character in the response head")
    lines = block.decode("latin-1").split("\r\n")
    if block.count(b"\r") != len(lines) - 1 or block.count(b"\n") != len(lines) - 1:
        raise ProtocolError("bare CR or LF in the response head")
    if len(lines) > MAX_FIELDS:
        raise ProtocolError("too many header fields")
    names = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name:
            names.append(" ")  # refused below, with the reason
            continue
        names.append(name)
        key = name.lower()
        value = value.strip(" \t")
        seen = headers.get(key)
        headers[key] = value if seen is None else f"{seen}, {value}"
    if "".join(names).encode("latin-1").translate(None, TCHAR):
        if any(line[:1] in (" ", "\t") for line in lines):
            raise ProtocolError("obsolete line folding in a header field")
        raise ProtocolError("malformed header field")


class Parser:
    """Incremental parser of one response; ``feed`` returns it once complete."""

    __slots__ = (
        "_body", "_chunk_ext", "_head_bytes", "_head_only", "_max_body", "_pending",
        "_remaining", "_state", "_trailer_lines", "extra", "headers", "keep_alive", "status",
    )  # fmt: skip

    def __init__(self, max_body: int, *, head_only: bool) -> None:
        self._max_body = max_body
        self._head_only = head_only
        self._state = _HEAD
        self._pending = b""
        self._head_bytes = 0
        self._body: bytes | bytearray = b""
        self._remaining = 0
        self._chunk_ext = 0
        self._trailer_lines = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.extra = False  # bytes after the response: the connection is out of step, not reused

    @property
    def started(self) -> bool:
        return self._state != _HEAD or bool(self._pending) or self._head_bytes > 0

    def response(self) -> Response:
        return Response(self.status, self.headers, bytes(self._body))

    def feed(self, data: bytes) -> bool:
        """Consume ``data``; True once the response is complete (then ``response()``)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, size = 0, len(data)
        while True:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                take = min(size - pos, self._remaining)
                if take:
                    if not self._body and take == self._remaining and state == _LENGTH:
                        self._body = data[pos : pos + take]  # the whole body at once: no copy
                    else:
                        if not isinstance(self._body, bytearray):
                            self._body = bytearray(self._body)
                        self._body += data[pos : pos + take]
                    pos += take
                    self._remaining -= take
                if self._remaining:
                    return False
                self._state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    start = data[pos : pos + 7]
                    if start != b"HTTP/1."[: len(start)]:
                        raise ProtocolError("not an HTTP/1.1 response")
                    self._need_more(data, pos, MAX_HEAD_BYTES - self._head_bytes, "head")
                    return False
                self._head_bytes += end + 4 - pos
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                self._on_head(data[pos:end])
                pos = end + 4
            elif state in (_CHUNK_SIZE, _TRAILER):
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._need_more(data, pos, _MAX_CHUNK_LINE, "chunk line")
                    return False
                line = data[pos:end]
                pos = end + 2
                if state == _CHUNK_SIZE:
                    self._on_chunk_size(line)
                elif line:
                    self._on_trailer(line)
                else:
                    self._state = _DONE
            elif state == _CHUNK_END:
                if size - pos < 2:
                    self._pending = data[pos:]
                    return False
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _UNTIL_EOF:
                self._grow(data[pos:])
                return False
            else:  # _DONE
                self.extra = pos < size
                return True

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the response (a body delimited by the close)."""
        if self._state == _UNTIL_EOF:
            self.keep_alive = False
            self._state = _DONE
            return True
        return self._state == _DONE

    def _need_more(self, data: bytes, pos: int, limit: int, what: str) -> None:
        rest = data[pos:]
        if len(rest) > limit:
            raise ProtocolError(f"response {what} too large")
        if rest.count(b"\n") != rest.count(b"\r\n"):
            raise ProtocolError("bare LF line ending in the response")
        self._pending = rest

    def _grow(self, data: bytes) -> None:
        if len(self._body) + len(data) > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        if not isinstance(self._body, bytearray):
            self._body = bytearray(self._body)
        self._body += data

    def _on_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        version = line[:9]
        if version == b"HTTP/1.1 ":
            http10 = False
        elif version == b"HTTP/1.0 ":
            http10 = True
        else:
            raise ProtocolError("not an HTTP/1.1 status line")
        code = line[9:12]
        if (
            len(code) != 3
            or not code.isdigit()
            or line[12:13] not in (b"", b" ")
            or line[13:].translate(None, FIELD_CHARS)
        ):
            raise ProtocolError("malformed status line")
        status = int(code)
        if not 100 <= status <= 599:
            raise ProtocolError("status code out of range")
        headers: dict[str, str] = {}
        if line_end >= 0:
            _parse_fields(head[line_end + 2 :], headers)
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch (101)")
            return  # interim answer (100, 103): the final one follows; its bytes count too
        self.status, self.headers = status, headers
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = not http10
        else:
            tokens = {t.strip().lower() for t in connection.split(",")}
            self.keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
        if self._head_only or status == 204 or status == 304:
            self._state = _DONE
        elif "transfer-encoding" in headers:
            self._framing_chunked(headers["transfer-encoding"], http10)
        elif "content-length" in headers:
            self._framing_length(headers["content-length"])
        else:
            self.keep_alive = False  # delimited by the close (RFC 9112 6.3 rule 8)
            self._state = _UNTIL_EOF

    def _framing_chunked(self, coding: str, http10: bool) -> None:
        if http10 or "content-length" in self.headers:
            raise ProtocolError("ambiguous framing: Transfer-Encoding with Content-Length")
        if coding != "chunked" and [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
            raise ProtocolError("unsupported Transfer-Encoding")
        self._state = _CHUNK_SIZE

    def _framing_length(self, value: str) -> None:
        if not (value.isdigit() and value.isascii()):
            values = {v.strip() for v in value.split(",")}  # "42, 42" is allowed; "42, 43" not
            value = values.pop()
            if values or not (value.isdigit() and value.isascii()):
                raise ProtocolError("invalid or conflicting Content-Length")
        if len(value) > 18:
            raise ProtocolError("invalid Content-Length")
        self._remaining = int(value)
        if self._remaining > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        self._state = _LENGTH if self._remaining else _DONE

    def _on_chunk_size(self, line: bytes) -> None:
        digits, semicolon, extension = line.partition(b";")
        if semicolon:
            digits = digits.rstrip(b" \t")
            self._chunk_ext += len(extension)
            if extension.translate(None, FIELD_CHARS) or self._chunk_ext > _MAX_CHUNK_EXT_BYTES:
                raise ProtocolError("invalid chunk extension")
        if not digits or digits.translate(None, _HEX) or len(digits) > 16:
            raise ProtocolError("invalid chunk size")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILER
            return
        if len(self._body) + size > self._max_body:
            raise ResponseTooLarge(self._max_body, self.status, self.headers)
        self._remaining = size
        self._state = _CHUNK_DATA

    def _on_trailer(self, line: bytes) -> None:
        self._trailer_lines += 1
        self._head_bytes += len(line) + 2
        if self._trailer_lines > MAX_FIELDS or self._head_bytes > 2 * MAX_HEAD_BYTES:
            raise ProtocolError("trailer section too large")
        _parse_fields(line, {})  # checked, then dropped: nothing here reads trailers
