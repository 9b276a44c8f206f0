"""Strict JSON (RFC 8259) parsing for untrusted request bodies.

Why strict: the gateway signs, audits and forwards what it parses, so two parties must never read
the same bytes differently. Inputs that parsers disagree on are refused with :class:`JsonError`
(a ``ValueError``; the HTTP layer answers 400): duplicate object keys at any depth (last-wins in
one parser, first-wins in another is a classic signature bypass), ``NaN``/``Infinity``, numbers
that overflow a double, lone UTF-16 surrogate escapes (they cannot be re-encoded as UTF-8, so the
canonical form we sign would not exist), invalid UTF-8, a leading UTF-8 BOM (RFC 8259 section 8.1
says parsers MAY ignore it; ignoring it would make two byte strings equal), nesting deeper than
``max_depth`` (arrays and objects both count; the root container is depth 1), trailing data and
empty input. Nothing but :class:`JsonError` escapes for any byte string (no ``RecursionError``,
no ``UnicodeDecodeError``).

Values: objects are ``dict`` (document order), arrays ``list``, integers exact ``int`` of any size
up to :data:`MAX_INT_DIGITS` digits, numbers with a fraction or exponent ``float`` (so ``1.0`` and
``1e2`` are floats). A number whose magnitude rounds to infinity (``1e400``) is refused; one that
underflows (``1e-400``) becomes ``0.0`` (or ``-0.0``), the nearest double, as IEEE 754 rounding
gives.

Two implementations, one answer. :func:`_reference_loads` is ``json.loads`` with hooks that refuse
what it would accept (it is the oracle, simple enough to review). :func:`loads` first tries
``orjson.loads`` (C speed; already strict about UTF-8, BOM, NaN, surrogates, overflow and the
RFC grammar) and accepts its result only when cheap whole-buffer checks prove the reference would
return the same value (:func:`_orjson_result_is_exact`); anything else, including every error, is
decided by the reference, so error messages and edge cases come from one place. Measured on a
2 KiB record (``bench/bench_canonical.py``): ~9 us, versus ~20 us for the reference and ~10 us
for a plain, non-strict ``json.loads``.

Decisions on the JSONTestSuite ``i_`` (implementation-defined) cases, pinned in the tests:

=================================================  =========  ===================================
case                                               decision   why
=================================================  =========  ===================================
i_number_double_huge_neg_exp, i_number_real_under  accept     underflow rounds to 0.0, the
flow                                                          nearest double
i_number_huge_exp, i_number_neg_int_huge_exp,      refuse     rounds to +-inf, which JSON cannot
i_number_pos_double_huge_exp, i_number_real_*_ove             carry
rflow
i_number_too_big_neg_int, i_number_too_big_pos_in  accept     exact Python int (signing refuses
t, i_number_very_big_negative_int                             beyond 2**53 later, by design)
i_object_key_lone_2nd_surrogate, i_string_*surrog  refuse     lone surrogate escape: no UTF-8
ate* (8 files), i_string_lone_second_surrogate,               form, so no canonical form
i_string_inverted_surrogates_U+1D11E
i_string_UTF8_surrogate_U+D800, *invalid_utf-8,    refuse     not UTF-8 (RFC 8259 section 8.1
*UTF-8_invalid_sequence, *iso_latin_1, *lone_utf8             requires UTF-8 between systems)
_continuation_byte, *not_in_unicode_range,
*overlong_sequence_*, *truncated-utf-8,
*UTF-16LE_with_BOM, *utf16BE_no_BOM,
*utf16LE_no_BOM
i_structure_500_nested_arrays                      refuse     depth 500 > max_depth (64)
i_structure_UTF-8_BOM_empty_object                 refuse     leading BOM
=================================================  =========  ===================================

Two ``y_`` cases are refused on purpose: y_object_duplicated_key and
y_object_duplicated_key_and_value (RFC 8259 only says names SHOULD be unique).

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

import orjson

__all__ = ["DEFAULT_MAX_DEPTH", "MAX_INT_DIGITS", "JsonError", "loads"]

DEFAULT_MAX_DEPTH: Final = 64
#: Longest integer accepted, in digits: CPython's default int/str conversion limit, fixed here so
#: the answer does not depend on ``sys.set_int_max_str_digits`` in the host process.
MAX_INT_DIGITS: Final = 4300

_BOM: Final = b"\xef\xbb\xbf"
_INDENT_UNIT: Final = 2  # orjson.OPT_INDENT_2
# Maps every ASCII digit to "0" and every other byte to "."; a run of 19 "0"s is a number (or
# string content) that orjson may have rounded: it keeps integers exact only within int64/uint64.
_DIGIT_CLASS: Final = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))
_LONG_DIGIT_RUN: Final = b"0" * 19

# A string token; an unterminated one runs to the end of the text. That keeps every scan linear
# (a required closing quote would retry from each later quote: quadratic on '"\"\"\"...'), and
# json.loads stops at such a string anyway, so nothing after it can matter.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"?'
_TOKEN: Final = re.compile(
    rf"""(?P<str>{_STRING})(?P<colon>[ \t\n\r]*:)?
    |(?P<open>[\[{{])
    |(?P<close>[\]}}])
    |(?P<num>-?(?:0|[1-9][0-9]*)(?P<real>(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))
    |(?P<const>NaN|-?Infinity)""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE: Final = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class JsonError(ValueError):
    """The body is not strict JSON; the message says what is wrong and where.

    Offsets are byte offsets into the input (e.g. ``duplicate key "a" at offset 17``), given
    whenever the position is known. ``loggable`` is the same without what the message quotes
    from the body (a duplicate key, an overflowing number): keys are payload too, so that is
    for the sender's eyes, not for the structured log. ``too_deep``: the refusal is the
    ``max_depth`` limit, which a caller that parses a wrapper around the payload words itself.
    """

    def __init__(
        self, message: str, *, loggable: str | None = None, too_deep: bool = False
    ) -> None:
        super().__init__(message)
        self.loggable = message if loggable is None else loggable
        self.too_deep = too_deep


def loads(data: bytes | bytearray | memoryview, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 JSON text) strictly; see the module docstring for what is refused.

    Raises :class:`JsonError` for every malformed input, and ``TypeError`` only when ``data`` is
    not bytes-like (a programming error, not bad input).
    """
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise TypeError(f"strictjson.loads expects bytes, not {type(data).__name__}")
        data = bytes(data)
    if max_depth >= 1:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the reference decides, and words the error
        else:
            if _orjson_result_is_exact(data, value, max_depth):
                return value
    return _reference_loads(data, max_depth)


def _orjson_result_is_exact(data: bytes, value: Any, max_depth: int) -> bool:
    """True when ``value`` (orjson's parse of ``data``) is what the reference would return.

    orjson already refuses everything the reference refuses except three things, each ruled out
    by a check over a whole buffer (C speed, no per-node Python work):

    * Duplicate keys (orjson keeps the last). Every ``:`` of a valid document is a key separator
      or sits in a string, and orjson prints ``:`` unescaped, so re-serialising gives
      ``dumps(value).count(":") = keys kept + colons in kept strings``. A dropped member only
      lowers that count, so equality with ``data.count(":")`` proves nothing was dropped. Colons
      written as ``\\u003a`` would break the argument; their presence sends the input to the
      reference.
    * Depth. In ``OPT_INDENT_2`` output a container at depth d + 1 starts a line indented 2*d
      spaces (strings never contain a raw newline), so no line indented 2*max_depth means depth
      <= max_depth; documents that reach that indent go to the reference, which counts exactly.
    * Integers beyond int64/uint64, which orjson turns into floats. They need >= 19 digits.
    """
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:  # nesting beyond orjson's serialiser limit (254)
        return False
    needle = _INDENT_64 if max_depth == DEFAULT_MAX_DEPTH else _indent(max_depth)
    return (
        data.count(b":") == text.count(b":")
        and needle not in text
        and _LONG_DIGIT_RUN not in data.translate(_DIGIT_CLASS)
        and not (b"\\" in data and (b"\\u003a" in data or b"\\u003A" in data))
    )


def _indent(max_depth: int) -> bytes:
    """The line start that marks an element of a container at depth ``max_depth``."""
    return b"\n" + b" " * (_INDENT_UNIT * max_depth)


_INDENT_64: Final = _indent(DEFAULT_MAX_DEPTH)


class _Refusal(Exception):
    """Raised by a ``json.loads`` hook; ``kind`` says what to look for to report the offset.

    Hooks are not told where they are, so the offset is recovered by re-tokenising the text, which
    is only paid on this error path.
    """

    def __init__(self, what: str, kind: str) -> None:
        super().__init__(what)
        self.what = what
        self.kind = kind


def _reference_loads(data: bytes, max_depth: int) -> Any:
    """The strict parser built on ``json.loads``: the oracle the fast path must agree with."""
    if not data.strip(b" \t\n\r"):
        raise JsonError("empty input")
    if data.startswith(_BOM):
        raise JsonError("UTF-8 byte order mark at offset 0 (not allowed)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"invalid UTF-8 at offset {exc.start}") from None
    if text.count("[") + text.count("{") > max_depth:  # cheap bound; brackets in strings count
        _check_depth(text, max_depth)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except json.JSONDecodeError as exc:
        msg = "trailing data" if exc.msg == "Extra data" else exc.msg.removesuffix(" at")
        raise JsonError(f"{msg} at offset {_byte_offset(text, exc.pos)}") from None
    except _Refusal as exc:
        _raise_located(text, exc)
    except RecursionError:  # unreachable after _check_depth unless the caller is already deep
        raise JsonError("nesting too deep for this interpreter stack") from None
    except ValueError as exc:  # int() refused by a host-wide limit lower than MAX_INT_DIGITS
        raise JsonError(f"number out of range ({exc})") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(text)
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the only place ``json.loads`` shows keys before it merges them."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refusal(f"duplicate key {_quote(key)}", "key")
            seen.add(key)
    return obj


def _constant(name: str) -> NoReturn:
    """``parse_constant``: NaN, Infinity and -Infinity are Python extensions, not JSON."""
    raise _Refusal(f"{name} is not allowed", "const")


def _float(token: str) -> float:
    """``parse_float``: refuse what would become infinity (JSON has no way to say it)."""
    value = float(token)
    if math.isinf(value):
        raise _Refusal(f"number {_shorten(token)} overflows a double", "overflow")
    return value


def _int(token: str) -> int:
    """``parse_int``: exact ints, with a fixed digit cap (int() is quadratic in the digits)."""
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refusal(f"integer longer than {MAX_INT_DIGITS} digits", "longint")
    return int(token)


def _raise_located(text: str, refusal: _Refusal) -> NoReturn:
    """Re-raise a hook's refusal as :class:`JsonError`, with the offset of the first culprit.

    For duplicates the first repeated key in text order is named, which may differ from the one
    the hook saw (``json.loads`` closes inner objects first); either is a true duplicate.
    """
    what, pos = refusal.what, None
    if refusal.kind == "key":
        found = _find_duplicate(text)
        if found is not None:
            pos, key = found
            what = f"duplicate key {_quote(key)}"
    else:
        pos = _find_token(text, refusal.kind)
    where = "" if pos is None else f" at offset {_byte_offset(text, pos)}"
    loggable = _LOGGABLE.get(refusal.kind, what)
    raise JsonError(what + where, loggable=loggable + where) from None


# What a refusal says in the log when its message quotes the body (see JsonError.loggable).
_LOGGABLE = {"key": "duplicate key", "overflow": "number overflows a double"}


def _find_token(text: str, kind: str) -> int | None:
    """Index of the first number or constant outside strings that a hook of ``kind`` refuses."""
    for match in _TOKEN.finditer(text):
        if kind == "const" and match["const"]:
            return match.start()
        num, real = match["num"], match["real"]
        if num is None:
            continue
        if kind == "overflow" and real and math.isinf(float(num)):
            return match.start()
        if kind == "longint" and not real and len(num.lstrip("-")) > MAX_INT_DIGITS:
            return match.start()
    return None


def _find_duplicate(text: str) -> tuple[int, str] | None:
    """Index and value of the first key repeating a key of its object (compared unescaped)."""
    stack: list[set[str] | None] = []
    for match in _TOKEN.finditer(text):
        if match["open"]:
            stack.append(set() if match["open"] == "{" else None)
        elif match["close"]:
            if stack:
                stack.pop()
        elif match["colon"] and stack and (keys := stack[-1]) is not None:
            try:
                key = json.loads(match["str"])  # valid: json.loads got past it before refusing
            except ValueError:  # pragma: no cover - defensive, keeps "only JsonError" true
                return None
            if key in keys:
                return match.start(), key
            keys.add(key)
    return None


def _check_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` before ``json.loads`` recurses into it.

    The tokeniser agrees with ``json.loads`` on every prefix that ``json.loads`` accepts (strings
    end at the first unescaped quote), so ``json.loads`` never nests deeper than counted here.
    """
    depth = 0
    for match in _TOKEN.finditer(text):
        if match["open"]:
            depth += 1
            if depth > max_depth:
                where = _byte_offset(text, match.start())
                raise JsonError(f"nesting deeper than {max_depth} at offset {where}", too_deep=True)
        elif match["close"]:
            depth -= 1


def _check_surrogates(text: str) -> None:
    """Refuse a ``\\uD800``-``\\uDFFF`` escape that is not half of an adjacent high+low pair.

    ``json.loads`` keeps lone surrogates as unpaired code points; they have no UTF-8 encoding.
    The text already parsed, so every backslash starts an escape and a left-to-right scan of
    escapes is exact.
    """
    pending: tuple[int, int] | None = None  # (start, end) of a high surrogate awaiting its pair
    for match in _ESCAPE.finditer(text):
        unit = int(match[1], 16) if match[1] else -1
        if pending is not None:
            if match.start() == pending[1] and 0xDC00 <= unit <= 0xDFFF:
                pending = None
                continue
            break
        if 0xD800 <= unit <= 0xDBFF:
            pending = (match.start(), match.end())
        elif 0xDC00 <= unit <= 0xDFFF:
            pending = (match.start(), match.end())
            break
    if pending is not None:
        raise JsonError(f"lone surrogate escape at offset {_byte_offset(text, pending[0])}")


def _byte_offset(text: str, index: int) -> int:
    """UTF-8 byte offset of character ``index`` (``text`` came from valid UTF-8)."""
    return len(text[:index].encode("utf-8"))


def _quote(key: str) -> str:
    """A key as it appears in messages: JSON-quoted, ASCII-only, shortened."""
    return json.dumps(_shorten(key))


def _shorten(text: str, limit: int = 40) -> str:
    """Bound what an error message echoes back from an untrusted body."""
    return text if len(text) <= limit else text[:limit] + "..."
