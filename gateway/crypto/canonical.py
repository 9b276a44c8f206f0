"""RFC 8785 JSON Canonicalization Scheme (JCS): the one byte string we sign for a JSON value.

Why: a signature over JSON must survive re-serialisation by every hop, so signer and verifier
hash the JCS form (RFC 8785: I-JSON values, ECMAScript number formatting, minimal string
escaping, object members sorted by UTF-16 code units, no whitespace) rather than the wire bytes.

How, and why it is fast: the ``rfc8785`` package is the reference but walks the value in Python
(~100-200 us for a 2 KiB message). ``orjson.dumps(value, option=OPT_SORT_KEYS)`` (~2 us) gives
the same bytes except in the cases below, which one Python pass over the value (:func:`_object`,
:func:`_array`; ~6 us for 2 KiB, no copy when nothing needs changing) rewrites or refuses:

* Floats: orjson prints ``1.0``/``1e30``, JCS the ECMAScript ``1``/``1e+30``. Each float becomes
  an ``orjson.Fragment`` holding ``rfc8785.dumps(f)`` (tests check it against cyberphone's
  100 000-number ES6 vector). ``-0.0`` prints ``0``; NaN and infinities are refused.
* Integers: JCS numbers are IEEE doubles, and ``rfc8785`` refuses ``abs(n) > 2**53 - 1`` rather
  than round; so do we (``ValueError``). orjson would print any 64-bit integer exactly.
* Key order: orjson sorts by UTF-8 bytes (code points), JCS by UTF-16 code units. They disagree
  only when a key holds a character >= U+10000 (its surrogates 0xD800.. sort below U+E000..U+FFFF),
  so such objects are sorted here by UTF-16 and embedded as a Fragment.
* Types: only exact ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` are accepted
  (``TypeError`` otherwise, and for non-``str`` keys). orjson would silently encode dataclasses,
  datetimes, UUIDs, enums and tuples; ``rfc8785`` accepts tuples and subclasses. A signing
  primitive should not guess how a subclass wants to be seen.

Everything else was checked to be identical (pinned in ``tests/test_canonical.py`` over every
code point): both escape only ``"``, ``\\`` and U+0000..U+001F (``\\b \\t \\n \\f \\r`` short
forms, else ``\\u00xx`` lower-case), and write all other characters, including DEL, U+2028,
U+2029 and ``/``, as raw UTF-8; both refuse lone surrogates (``ValueError``).

Preconditions: nesting depth at most :data:`MAX_DEPTH` (deeper values and cycles raise
``ValueError``; orjson's own limit is 254). Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import rfc8785

__all__ = ["MAX_DEPTH", "Canonical", "canonical", "canonicalize", "canonicalize_trusted"]

#: When true, canonicalize_trusted also runs the full canonicalize and raises on any difference.
#: The test suite turns it on for every test (tests/conftest.py), so every record the gateway
#: builds in the end-to-end tests is checked against the full algorithm.
VERIFY_TRUSTED = False

MAX_DEPTH: Final = 200
_MAX_INT: Final = 2**53 - 1
_FIRST_ASTRAL: Final = "\U00010000"
_SORT: Final = orjson.OPT_SORT_KEYS
_Fragment: Final = orjson.Fragment
_float_jcs: Final = rfc8785.dumps  # for a float: its ECMAScript Number::toString bytes


class Canonical:
    """A JSON value already in canonical form, to embed in a larger value without re-walking it.

    Only :func:`canonical` makes one, so ``data`` is always the output of :func:`canonicalize`:
    JCS of a whole is the JCS of its members put together, so embedding the bytes as they are
    gives the same result as canonicalizing the original value again.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use canonical(value) to make a Canonical")
        self.data = data


_TOKEN: Final = object()


def canonical(value: Any) -> Canonical:
    """Canonicalize ``value`` once; the result embeds in other values at no further cost."""
    return Canonical(canonicalize(value), _TOKEN)


def _fragment(value: Any) -> orjson.Fragment:
    if type(value) is Canonical:
        return _Fragment(value.data)
    raise TypeError(f"{type(value).__name__} is not allowed in a trusted value")


def canonicalize_trusted(value: Any) -> bytes:
    """JCS of a value the gateway built itself, without the safety scan of :func:`canonicalize`.

    Precondition (the caller's, checked in tests): objects have ASCII keys; leaves are str,
    bool, None, int within +-(2**53 - 1), or :class:`Canonical`. For such values orjson's
    sorted output is byte-identical to JCS (strings escape the same way, ASCII keys sort the
    same in UTF-16 and in code points), so the per-member type scan, which costs more than the
    serialization itself on the audit records of every exchange, can be skipped. Untrusted
    input (payloads, provider answers) always goes through :func:`canonicalize`.
    """
    out = orjson.dumps(value, option=_SORT, default=_fragment)
    if VERIFY_TRUSTED:
        full = canonicalize(value)
        if full != out:
            raise AssertionError(f"canonicalize_trusted differs from canonicalize: {out!r}")
    return out


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical bytes of the JSON ``value``.

    Raises ``TypeError`` for anything that is not exactly a JSON type (or a non-``str`` key) and
    ``ValueError`` for values JCS cannot represent: integers beyond +-(2**53 - 1), NaN and
    infinities, strings with lone surrogates, nesting deeper than :data:`MAX_DEPTH`.
    """
    t = type(value)
    if t is str or t is bool or value is None or (t is int and -_MAX_INT <= value <= _MAX_INT):
        return _dumps(value)
    if t is Canonical:
        return bytes(value.data)
    return _dumps(_prepare(value, 0))


def _dumps(prepared: Any) -> bytes:
    """``orjson.dumps`` of a prepared value, whose only possible failure is a lone surrogate."""
    try:
        return orjson.dumps(prepared, option=_SORT)
    except TypeError as exc:  # orjson.JSONEncodeError is TypeError itself
        raise ValueError(f"not canonicalizable: {exc}") from None


def _prepare(x: Any, depth: int) -> Any:
    """Value for orjson standing for ``x``, which is not a str, bool, None or in-range int."""
    t = type(x)
    if t is dict:
        return _object(x, depth + 1)
    if t is list:
        return _array(x, depth + 1)
    if t is float:
        return _Fragment(_float_jcs(x))  # raises ValueError for NaN and infinities
    if t is Canonical:
        return _Fragment(x.data)
    if t is int:
        raise ValueError("integer outside the I-JSON range +-(2**53 - 1)")
    raise TypeError(f"{t.__name__} is not a JSON type")


def _array(v: list[Any], depth: int) -> list[Any]:
    """``v`` itself when orjson prints it as JCS does, else a copy with elements prepared."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} (or a cycle)")
    out: list[Any] | None = None
    for i, x in enumerate(v):
        t = type(x)
        if t is str or t is bool or x is None or (t is int and -_MAX_INT <= x <= _MAX_INT):
            continue
        y = _prepare(x, depth)
        if y is not x:
            if out is None:
                out = v.copy()
            out[i] = y
    return v if out is None else out


def _object(v: dict[Any, Any], depth: int) -> Any:
    """Like :func:`_array` for objects; a Fragment when the keys need UTF-16 ordering."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} (or a cycle)")
    out: dict[str, Any] | None = None
    astral = False
    for k, x in v.items():
        if type(k) is not str:
            raise TypeError(f"object key {type(k).__name__} is not a str")
        if not k.isascii() and max(k) >= _FIRST_ASTRAL:
            astral = True
        t = type(x)
        if t is str or t is bool or x is None or (t is int and -_MAX_INT <= x <= _MAX_INT):
            continue
        y = _prepare(x, depth)
        if y is not x:
            if out is None:
                out = v.copy()
            out[k] = y
    prepared = v if out is None else out
    return _utf16_sorted(prepared) if astral else prepared


def _utf16_sorted(members: dict[str, Any]) -> orjson.Fragment:
    """Serialise an object (values already prepared) with members in UTF-16 code-unit order."""
    ordered = sorted(members.items(), key=lambda kv: kv[0].encode("utf-16-be", "surrogatepass"))
    body = b",".join(_dumps(k) + b":" + _dumps(x) for k, x in ordered)
    return _Fragment(b"{" + body + b"}")
