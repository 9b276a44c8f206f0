"""RFC 8785 canonical JSON: corpus pairs, RFC known answers, ES6 numbers, differential properties.

Provenance:

* ``shared/corpora/jcs/testdata``: cyberphone/json-canonicalization @ 19d51d7f (Apache-2.0), the
  RFC author's repository, used unmodified (``input/X.json`` -> ``output/X.json`` byte for byte).
* ``tests/vectors/jcs``: RFC 8785 Appendix B number table and the section 3.2.3 sorting example,
  transcribed from the RFC (see the README there).
* ES6 number stream: the generator (numgen.js) and the SHA-256 of its first 1 000 / 10 000 /
  100 000 lines are from ``shared/corpora/jcs/testdata/README.md``; the stream is regenerated
  here and every line's number is produced by :func:`canonicalize`.

The differential properties hold :func:`canonicalize` (orjson plus rewrites) to ``rfc8785.dumps``,
the reference implementation, on exactly-typed JSON values.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import hashlib
import itertools
import json
import math
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.crypto.canonical import MAX_DEPTH, canonicalize

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
JCS = CORPORA / "jcs" / "testdata"
PAIRS = sorted(p.name for p in (JCS / "input").glob("*.json"))
VECTORS = Path(__file__).resolve().parent / "vectors" / "jcs"


def from_bits(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


# --- known answers ------------------------------------------------------------------------------


def test_corpus_is_present() -> None:
    assert PAIRS == [
        "arrays.json",
        "french.json",
        "structures.json",
        "unicode.json",
        "values.json",
        "weird.json",
    ]


@pytest.mark.parametrize("name", PAIRS)
def test_corpus_pairs(name: str) -> None:
    """input/X.json, parsed with json.loads, canonicalizes to output/X.json byte for byte."""
    value = json.loads((JCS / "input" / name).read_bytes())
    expected = (JCS / "output" / name).read_bytes()
    assert expected == bytes.fromhex((JCS / "outhex" / name.replace(".json", ".txt")).read_text())
    assert canonicalize(value) == expected


def appendix_b() -> list[tuple[str, str]]:
    rows = []
    for line in (VECTORS / "rfc8785_appendix_b.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            bits, expected, *_ = [*line.split("\t"), ""]
            rows.append((bits, expected))
    assert len(rows) == 26
    return rows


@pytest.mark.parametrize(("bits", "expected"), appendix_b())
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    """Every number of RFC 8785 Appendix B, alone and inside a structure (the Fragment path)."""
    number = from_bits(int(bits, 16))
    if not expected:
        with pytest.raises(ValueError):
            canonicalize(number)
        with pytest.raises(ValueError):
            canonicalize({"n": [number]})
        return
    assert canonicalize(number) == expected.encode()
    assert canonicalize({"n": [number, 1]}) == b'{"n":[' + expected.encode() + b",1]}"


def test_rfc8785_sorting_example() -> None:
    """RFC 8785 section 3.2.3: members sorted by UTF-16 code units, U+1F600 before U+FB33."""
    value = json.loads((VECTORS / "rfc8785_sorting_input.json").read_bytes())
    assert canonicalize(value) == (VECTORS / "rfc8785_sorting_output.json").read_bytes()


def es6_numbers() -> Iterator[int]:
    """numgen.js from the corpus README: static edge cases, 2000 serial values, then SHA-256."""
    readme = (JCS / "README.md").read_text()
    table = readme.split("staticU64s = new BigUint64Array([", 1)[1].split("])", 1)[0]
    yield from (int(tok.strip().rstrip("n"), 16) for tok in table.split(",") if tok.strip())
    yield from range(0x0010000000000000, 0x0010000000000000 + 2000)
    block = bytes(32)
    while True:
        block = hashlib.sha256(block).digest()
        for (bits,) in struct.iter_unpack("<Q", block):
            value = from_bits(bits)
            if value != 0.0 and math.isfinite(value):
                yield bits


@pytest.mark.parametrize(
    ("lines", "sha256"),
    [
        (1000, "be18b62b6f69cdab33a7e0dae0d9cfa869fda80ddc712221570f9f40a5878687"),
        (10000, "b9f7a8e75ef22a835685a52ccba7f7d6bdc99e34b010992cbc5864cd12be6892"),
        (100000, "22776e6d4b49fa294a0d0f349268e5c28808fe7e0cb2bcbe28f63894e494d4c7"),
    ],
)
def test_es6_number_stream_checksum(lines: int, sha256: str) -> None:
    """The cyberphone ES6 test file ("hex-ieee,expected" lines) rebuilt with our numbers."""
    digest = hashlib.sha256()
    for bits in itertools.islice(es6_numbers(), lines):
        digest.update(f"{bits:x},".encode() + canonicalize(from_bits(bits)) + b"\n")
    assert digest.hexdigest() == sha256


# --- the differences from orjson, one by one ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"1"),
        (-0.0, b"0"),
        (100.0, b"100"),
        (1e20, b"100000000000000000000"),
        (1e21, b"1e+21"),
        (1e-6, b"0.000001"),
        (1e-7, b"1e-7"),
        (0.1, b"0.1"),
        ([4.5, 2e-3, 1e30], b"[4.5,0.002,1e+30]"),
    ],
)
def test_floats_use_ecmascript_formatting(value: Any, expected: bytes) -> None:
    """Integral floats print as integers (1.0 -> 1), exponents as e+NN, like JS."""
    assert canonicalize(value) == expected == rfc8785.dumps(value)


@pytest.mark.parametrize("n", [0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**31, -(2**32)])
def test_integers_within_ijson_range(n: int) -> None:
    """Top level, in an array and as an object member: each has its own range check."""
    assert canonicalize(n) == str(n).encode() == canonicalize([n])[1:-1]
    assert canonicalize({"a": n}) == b'{"a":' + str(n).encode() + b"}"


@pytest.mark.parametrize("n", [2**53, -(2**53), 2**63, 2**64, -(2**70), 10**400])
def test_integers_beyond_ijson_range_refused(n: int) -> None:
    """Mirrors rfc8785: +-(2**53 - 1) is the limit; never rounded silently."""
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(n)
    for value in (n, [n], {"a": n}):
        with pytest.raises(ValueError, match="I-JSON"):
            canonicalize(value)


def test_bools_are_not_integers() -> None:
    assert canonicalize([True, 1, False, 0, None]) == b"[true,1,false,0,null]"
    assert canonicalize({"t": True}) == b'{"t":true}'
    assert canonicalize(True) == b"true"


def test_strings_escape_exactly_like_the_reference_for_every_code_point() -> None:
    """One string and one key holding every scalar value U+0000..U+10FFFF."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert canonicalize(every) == rfc8785.dumps(every)
    assert canonicalize({every: every, "a": 1}) == rfc8785.dumps({every: every, "a": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x00\x01\x1f", b'"\\u0000\\u0001\\u001f"'),
        ("\b\t\n\f\r", b'"\\b\\t\\n\\f\\r"'),
        ('"\\', b'"\\"\\\\"'),
        ("/", b'"/"'),
        ("\x7f", b'"\x7f"'),
        ("\u2028\u2029", '"\u2028\u2029"'.encode()),
        ("Nguyễn Văn Đức", '"Nguyễn Văn Đức"'.encode()),
        ("\U0001f600", '"\U0001f600"'.encode()),
    ],
)
def test_string_escaping(text: str, expected: bytes) -> None:
    """Only quote, backslash and C0 controls are escaped; DEL, U+2028/9, '/' and non-ASCII raw."""
    assert canonicalize(text) == expected


def test_non_bmp_keys_sort_by_utf16() -> None:
    """U+1F600 (D83D DE00) sorts before U+FB33 in UTF-16, after it in code points (orjson)."""
    value: Any = {"\ufb33": 1, "\U0001f600": 2, "a": {"\uffff": 3, "\U00010000": [4.5]}}
    expected = '{"a":{"\U00010000":[4.5],"\uffff":3},"\U0001f600":2,"\ufb33":1}'.encode()
    assert canonicalize(value) == expected == rfc8785.dumps(value)
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != expected  # why the rewrite exists


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        b"bytes",
        decimal.Decimal("1.5"),
        datetime.date(2024, 1, 1),
        uuid.UUID(int=0),
        Colour.RED,
        Text("x"),
        collections.OrderedDict(a=1),
        orjson.Fragment(b"1"),
        object(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_non_json_types_refused(value: Any) -> None:
    """Only exact JSON types: no guessing how a tuple, enum, subclass or UUID should look."""
    for wrapped in (value, [value], {"k": value}, {"\U0001f600": [value]}):
        with pytest.raises(TypeError):
            canonicalize(wrapped)


@pytest.mark.parametrize("key", [1, None, 1.5, ("a",), True])
def test_non_string_keys_refused(key: Any) -> None:
    with pytest.raises(TypeError, match="key"):
        canonicalize({key: 1})


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_refused(number: float) -> None:
    for value in (number, [1, number], {"a": {"b": number}}):
        with pytest.raises(ValueError):
            canonicalize(value)


@pytest.mark.parametrize(
    "value",
    ["\ud800", ["ok", "\udc00"], {"\ud800": 1}, {"\U0001f600": 1, "\ud800": 2}, {"a": "x\udfff"}],
)
def test_lone_surrogates_refused(value: Any) -> None:
    """No UTF-8 form exists, so no canonical form: ValueError, as in rfc8785."""
    with pytest.raises(ValueError):
        rfc8785.dumps(value)
    with pytest.raises(ValueError):
        canonicalize(value)


def test_depth_cap_and_cycles() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = [value] if isinstance(value, dict) else {"k": value}
    assert canonicalize(value) == rfc8785.dumps(value)
    with pytest.raises(ValueError, match="nesting"):
        canonicalize([value])
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="cycle"):
        canonicalize(cycle)


@pytest.mark.parametrize("innermost", ["array", "object"])
def test_nesting_of_200_containers_is_canonicalized_and_201_refused(innermost: str) -> None:
    """The depth cap is 200 containers (arrays and objects alike), below orjson's own 254."""
    value: Any = 1
    for level in range(200):
        value = [value] if (level % 2 == 0) == (innermost == "array") else {"k": value}
    assert canonicalize(value) == rfc8785.dumps(value)
    for deeper in ({"k": value}, [value]):
        with pytest.raises(ValueError, match="nesting deeper than 200"):
            canonicalize(deeper)


def test_input_is_not_modified() -> None:
    """Rewrites happen on copies; the caller's value is untouched."""
    value: Any = {"b": [1.0, {"\U0001f600": 2.5}], "a": {"x": 0.5}}
    snapshot = json.dumps(value)
    inner = value["b"]
    canonicalize(value)
    assert json.dumps(value) == snapshot
    assert value["b"] is inner


# --- properties -----------------------------------------------------------------------------------

# Keys from a small alphabet that straddles every ordering and escaping boundary.
TRICKY_CHARS = st.sampled_from(
    [
        *'ab1/"\\\x00\x1f\x7f\r\u0080\u00f6\u2028\u20ac\ud7ff\ue000\ufb33\uffff',
        "\U00010000",
        "\U0001f600",
        "\U0010ffff",
    ]
)
keys = st.text(TRICKY_CHARS, max_size=4) | st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.integers()  # mostly out of range: both must refuse
    | st.floats()  # NaN and infinities included: both must refuse
    | st.text(TRICKY_CHARS, max_size=8)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


@given(values)
def test_differential_against_rfc8785(value: Any) -> None:
    """Same bytes as the reference, or both refuse with ValueError."""
    try:
        expected = rfc8785.dumps(value)
    except ValueError:
        with pytest.raises(ValueError):
            canonicalize(value)
    else:
        assert canonicalize(value) == expected


def ijson_int(text: str) -> int | float:
    """JCS numbers are doubles: 1e20 prints as 100000000000000000000 and must read back as one."""
    n = int(text)
    return n if abs(n) <= 2**53 - 1 else float(text)


@given(values)
def test_idempotent_through_parse(value: Any) -> None:
    """Canonical output parses back to a value with the same canonical form."""
    try:
        first = canonicalize(value)
    except ValueError:
        return
    assert canonicalize(json.loads(first, parse_int=ijson_int)) == first


@given(values, values)
@settings(max_examples=300, deadline=None)
def test_embedding_a_canonical_value_equals_canonicalizing_the_whole(a: Any, b: Any) -> None:
    """The pipeline canonicalizes a payload once and embeds it in the envelope it signs."""
    from gateway.crypto.canonical import canonical

    try:
        whole = canonicalize({"payload": a, "other": [b, {"ấ": b}]})
    except ValueError:
        return
    embedded = {"payload": canonical(a), "other": [canonical(b), {"ấ": canonical(b)}]}
    assert canonicalize(embedded) == whole
    assert canonicalize(canonical(a)) == canonicalize(a)


def test_canonical_cannot_be_forged_from_arbitrary_bytes() -> None:
    from gateway.crypto.canonical import Canonical

    with pytest.raises(TypeError):
        Canonical(b'{"b":1,"a":2}')


def test_trusted_fast_path_is_checked_against_the_full_algorithm_in_tests() -> None:
    """conftest turns the check on: a value breaking the precondition cannot slip through."""
    from gateway.crypto import canonical as c

    assert c.VERIFY_TRUSTED
    good = {"b": "Thủ Đức\u2028\x01", "a": [1, None, True], "c": c.canonical({"y": 1.5, "x": 2})}
    assert c.canonicalize_trusted(good) == canonicalize(good)
    with pytest.raises(AssertionError):
        c.canonicalize_trusted({"n": 1.0})  # a float: JCS prints 1, orjson 1.0
    with pytest.raises(TypeError):
        c.canonicalize_trusted({"n": object()})


def test_trusted_fast_path_refuses_a_non_canonical_object_without_the_test_only_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In production VERIFY_TRUSTED is off: the orjson default hook alone must refuse an object
    that is not a Canonical (returning from it would let orjson write ``null``)."""
    from gateway.crypto import canonical as c

    monkeypatch.setattr(c, "VERIFY_TRUSTED", False)
    with pytest.raises(TypeError):
        c.canonicalize_trusted({"n": object()})
    assert c.canonicalize_trusted({"n": c.canonical({"b": 1.0, "a": 2})}) == b'{"n":{"a":2,"b":1}}'
