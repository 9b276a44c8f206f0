"""Strict JSON parsing: the JSONTestSuite corpus, the refusals the gateway relies on, properties.

Provenance: ``shared/corpora/jsontestsuite/test_parsing`` is nst/JSONTestSuite @ 1ef36fa0 (MIT),
used unmodified. ``y_`` files must parse (except the two duplicate-key files, refused on purpose,
see STRICTER_THAN_RFC), ``n_`` files must be refused, ``i_`` files follow I_DECISIONS, which
mirrors the table in the ``gateway.strictjson`` docstring.

The differential properties compare :func:`strictjson.loads` (orjson fast path) against
``_reference_loads`` (``json.loads`` with hooks), which is the oracle by design.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.strictjson import MAX_INT_DIGITS, JsonError, _reference_loads, loads

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
PARSING = CORPORA / "jsontestsuite" / "test_parsing"
CASES = sorted(p.name for p in PARSING.glob("*.json"))

# RFC 8259 only says names SHOULD be unique; the gateway refuses duplicates (signature-bypass risk).
STRICTER_THAN_RFC = {"y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json"}

# True = accepted. Reasons are in the gateway.strictjson module docstring.
I_DECISIONS = {
    "i_number_double_huge_neg_exp.json": True,  # underflow -> 0.0
    "i_number_huge_exp.json": False,  # overflow -> inf
    "i_number_neg_int_huge_exp.json": False,
    "i_number_pos_double_huge_exp.json": False,
    "i_number_real_neg_overflow.json": False,
    "i_number_real_pos_overflow.json": False,
    "i_number_real_underflow.json": True,
    "i_number_too_big_neg_int.json": True,  # exact int
    "i_number_too_big_pos_int.json": True,
    "i_number_very_big_negative_int.json": True,
    "i_object_key_lone_2nd_surrogate.json": False,  # lone surrogate escapes
    "i_string_1st_surrogate_but_2nd_missing.json": False,
    "i_string_1st_valid_surrogate_2nd_invalid.json": False,
    "i_string_incomplete_surrogate_and_escape_valid.json": False,
    "i_string_incomplete_surrogate_pair.json": False,
    "i_string_incomplete_surrogates_escape_valid.json": False,
    "i_string_invalid_lonely_surrogate.json": False,
    "i_string_invalid_surrogate.json": False,
    "i_string_inverted_surrogates_U+1D11E.json": False,
    "i_string_lone_second_surrogate.json": False,
    "i_string_UTF-16LE_with_BOM.json": False,  # not UTF-8
    "i_string_UTF-8_invalid_sequence.json": False,
    "i_string_UTF8_surrogate_U+D800.json": False,
    "i_string_invalid_utf-8.json": False,
    "i_string_iso_latin_1.json": False,
    "i_string_lone_utf8_continuation_byte.json": False,
    "i_string_not_in_unicode_range.json": False,
    "i_string_overlong_sequence_2_bytes.json": False,
    "i_string_overlong_sequence_6_bytes.json": False,
    "i_string_overlong_sequence_6_bytes_null.json": False,
    "i_string_truncated-utf-8.json": False,
    "i_string_utf16BE_no_BOM.json": False,
    "i_string_utf16LE_no_BOM.json": False,
    "i_structure_500_nested_arrays.json": False,  # deeper than 64
    "i_structure_UTF-8_BOM_empty_object.json": False,  # leading BOM
}


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1 from 1.0 from True, 0.0 from -0.0, and key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def outcome(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(data)
    except JsonError:
        return "refused", None


def agree(data: bytes) -> None:
    fast, ref = outcome(loads, data), outcome(lambda d: _reference_loads(d, 64), data)
    assert fast[0] == ref[0], (data, fast, ref)
    assert same(fast[1], ref[1]), (data, fast, ref)


# --- the corpus -----------------------------------------------------------------------------


def test_corpus_is_present_and_complete() -> None:
    """A missing corpus must fail loudly, not parametrize to nothing."""
    assert len(CASES) == 318
    assert {c for c in CASES if c.startswith("i_")} == set(I_DECISIONS)


@pytest.mark.parametrize("name", CASES)
def test_jsontestsuite(name: str) -> None:
    """y_ parse (same value as the reference), n_ are refused, i_ follow I_DECISIONS."""
    data = (PARSING / name).read_bytes()
    if name.startswith("y_") and name not in STRICTER_THAN_RFC:
        accept = True
    elif name.startswith("i_"):
        accept = I_DECISIONS[name]
    else:
        accept = False
    if accept:
        assert same(loads(data), _reference_loads(data, 64))
        if name.startswith("y_"):
            assert same(loads(data), json.loads(data))
    else:
        with pytest.raises(JsonError):
            loads(data)
    agree(data)


# --- refusals, with where they are reported ---------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b'{"a":1,"a":2}', 'duplicate key "a" at offset 7'),
        (b'{"a" : 1 , "a":2}', 'duplicate key "a" at offset 11'),
        (b'[1,{"x":[{"k":1,"j":2,"k":3}]}]', 'duplicate key "k" at offset 22'),
        (b'{"a":{"b":{"c":{"d":{"e":0,"e":0}}}}}', 'duplicate key "e" at offset 27'),
        (b'{"a":1,"\\u0061":2}', 'duplicate key "a" at offset 7'),  # equal after unescaping
        (b'{"a:":1,"a\\u003a":2}', 'duplicate key "a:" at offset 8'),  # escaped colon
        # Both colons escaped: raw colon counts agree, so only the escape check catches it.
        (b'{"a\\u003a":1,"a\\u003A":2}', 'duplicate key "a:" at offset 13'),
        (b'{"a\\u003a":1,"a\\u003a":2}', 'duplicate key "a:" at offset 13'),
        (b'{"a\\u003A":1,"a\\u003A":2}', 'duplicate key "a:" at offset 13'),
        (b'{"\xc3\xa9":1,"b":{},"\xc3\xa9":2}', 'duplicate key "\\u00e9" at offset 15'),
    ],
)
def test_duplicate_keys_refused_at_any_depth(doc: bytes, message: str) -> None:
    """Duplicates are refused wherever they are, and the byte offset of the repeat is given."""
    with pytest.raises(JsonError) as err:
        loads(doc)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("doc", "loggable"),
    [
        (b'{"secret-name":1,"secret-name":2}', "duplicate key at offset 17"),
        (b"[1e400]", "number overflows a double at offset 1"),
    ],
)
def test_the_loggable_text_of_a_refusal_quotes_nothing_from_the_body(
    doc: bytes, loggable: str
) -> None:
    """Keys and numbers are payload: the message for the sender names them, the log line not."""
    with pytest.raises(JsonError) as err:
        loads(doc)
    assert err.value.loggable == loggable
    assert str(err.value) != loggable


def test_same_key_in_sibling_objects_is_fine() -> None:
    """Uniqueness is per object: equal keys in different objects are not duplicates."""
    doc = b'{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":"a:b:c"}'
    assert loads(doc) == {"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}], "c": "a:b:c"}


def nest(depth: int, mixed: bool) -> bytes:
    opens = [b'{"k":' if mixed and i % 2 else b"[" for i in range(depth)]
    closes = [b"}" if o.startswith(b"{") else b"]" for o in reversed(opens)]
    return b"".join(opens) + b"1" + b"".join(closes)


@pytest.mark.parametrize("mixed", [False, True])
def test_depth_64_accepted_65_refused(mixed: bool) -> None:
    """Arrays and objects both count toward the default limit of 64 (root is depth 1)."""
    assert loads(nest(64, mixed)) == json.loads(nest(64, mixed))
    with pytest.raises(JsonError, match="nesting deeper than 64 at offset"):
        loads(nest(65, mixed))


@pytest.mark.parametrize("mixed", [False, True])
def test_the_reference_parser_alone_accepts_depth_64_and_refuses_65(mixed: bool) -> None:
    """loads answers depth from orjson's output when it can; the reference must agree by itself
    (it decides every document the fast path passes on), brackets inside strings not counted."""
    assert _reference_loads(nest(64, mixed), 64) == json.loads(nest(64, mixed))
    padded = b'["[[[[{{{{", ' + nest(63, mixed) + b"]"
    assert _reference_loads(padded, 64) == json.loads(padded)
    with pytest.raises(JsonError, match="nesting deeper than 64 at offset 64"):
        _reference_loads(b"[" * 65 + b"]" * 65, 64)
    with pytest.raises(JsonError, match="nesting deeper than 64 at offset 67"):
        _reference_loads(b"[[]," + b"[" * 64 + b"]" * 64 + b"]", 64)


def test_depth_limit_is_a_parameter() -> None:
    """max_depth changes the limit; 0 allows scalars only; large limits reach the reference."""
    assert loads(b"[[1]]", max_depth=2) == [[1]]
    with pytest.raises(JsonError):
        loads(b"[[[]]]", max_depth=2)
    assert loads(b"1", max_depth=0) == 1
    with pytest.raises(JsonError):
        loads(b"[]", max_depth=0)
    deep = nest(300, mixed=True)  # beyond orjson's serialiser limit: decided by the reference
    assert loads(deep, max_depth=300) == json.loads(deep)


def test_absurd_nesting_is_a_jsonerror_not_a_recursionerror() -> None:
    """Deeper than any interpreter stack: still just JsonError."""
    for doc in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 5000 + b"]" * 5000):
        with pytest.raises(JsonError, match="nesting"):
            loads(doc, max_depth=10_000)


@pytest.mark.parametrize(
    "doc",
    [
        b'["' + b'\\"' * 50_000 + b"[" * 70,  # unterminated string of escaped quotes
        b"[" + b'"' * 100_000 + b"[" * 70,
        b"[" * 60 + b'"\\' * 50_000,
    ],
)
def test_slow_path_scans_are_linear(doc: bytes) -> None:
    """Bodies that miss the fast path are still scanned in linear time (no regex backtracking).

    A string pattern that insists on a closing quote retries from every later quote: about 10**9
    steps here, minutes instead of milliseconds.
    """
    start = time.perf_counter()
    with pytest.raises(JsonError):
        loads(doc)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("doc", [b"\xef\xbb\xbf{}", b"\xef\xbb\xbf1", b"\xef\xbb\xbf"])
def test_utf8_bom_refused(doc: bytes) -> None:
    """A leading BOM is refused, not skipped (two byte strings must not mean the same body)."""
    with pytest.raises(JsonError, match=r"byte order mark at offset 0|empty"):
        loads(doc)


@pytest.mark.parametrize(
    "doc",
    [b"NaN", b"[NaN]", b"[Infinity]", b'{"a":-Infinity}', b"-NaN", b"[1,nan]", b"inf"],
)
def test_nan_and_infinity_refused(doc: bytes) -> None:
    """Non-finite literals are not JSON, whatever Python's json module accepts."""
    with pytest.raises(JsonError):
        loads(doc)


def test_nan_refusal_names_the_offset() -> None:
    with pytest.raises(JsonError, match=r"^-Infinity is not allowed at offset 11$"):
        loads(b'[1, "NaN", -Infinity]')


@pytest.mark.parametrize(
    ("doc", "offset"),
    [
        (b'"\xff"', 1),
        (b'["ok", "\xc3"]', 8),
        (b'"\xed\xa0\x80"', 1),  # encoded surrogate
        (b'"\xc0\xaf"', 1),  # overlong
        (b'"\xf4\x90\x80\x80"', 1),  # beyond U+10FFFF
        (b'{"\xe9t\xe9":1}', 2),  # Latin-1
    ],
)
def test_invalid_utf8_refused_with_offset(doc: bytes, offset: int) -> None:
    with pytest.raises(JsonError, match=f"invalid UTF-8 at offset {offset}$"):
        loads(doc)


@pytest.mark.parametrize(
    "doc",
    [
        b'"\\ud800"',
        b'"\\udc00"',
        b'"\\ud800\\u0041"',
        b'"\\udc00\\ud800"',
        b'["\\ud800", "\\udc00"]',  # halves in different strings do not pair
        b'{"\\ud83d": 1}',
        b'"\\ud800\\\\udc00"',  # the second is an escaped backslash, not an escape
        b'"\\udfff"',  # the last low surrogate
        b'"\\ud800\\udbff"',  # a high one followed by a high one, not a pair
        b'"\\ud800\\ue000"',  # followed by the first code point above the low range
        b'"\\ud83d\\ude00\\ud800"',  # a lone one after a valid pair
        b'"\\ud800\\ud800\\udc00"',  # a lone high one before a valid pair
        b'"\\udc00\\udc00"',  # two lone low ones
    ],
)
def test_lone_surrogate_escapes_refused(doc: bytes) -> None:
    """Decision: refuse; such strings have no UTF-8 form, so they could never be signed."""
    with pytest.raises(JsonError, match="lone surrogate escape"):
        loads(doc)


def test_surrogate_pairs_and_escaped_backslashes_accepted() -> None:
    assert loads(b'["\\ud83d\\ude00", "\\uD834\\uDD1E"]') == ["\U0001f600", "\U0001d11e"]
    assert loads(b'"\\\\ud800"') == "\\ud800"


@pytest.mark.parametrize(
    ("doc", "value"),
    [
        (b'["\\ud83d\\ude00", "\\uD834\\uDD1E"]', ["\U0001f600", "\U0001d11e"]),
        (b'"\\udbff\\udfff\\ud800\\udc00"', "\U0010ffff\U00010000"),  # the range ends
        (b'"\\\\ud800 \\ud83d\\ude00"', "\\ud800 \U0001f600"),
        # The code points around the surrogates, beside a pair so that the scan runs.
        (b'"\\ud7ff\\ue000\\ud83d\\ude00"', "\ud7ff\ue000\U0001f600"),
    ],
)
def test_the_reference_parser_accepts_surrogate_pairs(doc: bytes, value: Any) -> None:
    """Valid pairs never reach the reference through loads (orjson takes them): checked here."""
    assert _reference_loads(doc, 64) == value


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        (b"", "empty input"),
        (b" \r\n\t", "empty input"),
        (b"X", r"^Expecting value at offset 0$"),  # not whitespace: not "empty input"
        (b"[1] x", "trailing data at offset 4"),
        (b"{} {}", "trailing data at offset 3"),
        (b"1 2", "trailing data at offset 2"),
        (b"[1,]", "at offset 3"),
        (b"{'a':1}", "at offset 1"),
        (b"[01]", "at offset"),
        (b'["a\tb"]', "at offset"),  # raw control character in a string
        (b"\x0c1", "at offset 0"),  # form feed is not JSON whitespace
    ],
)
def test_grammar_errors_say_where(doc: bytes, pattern: str) -> None:
    with pytest.raises(JsonError, match=pattern):
        loads(doc)


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "value"),
    [
        (b"1", 1),
        (b"-0", 0),
        (b"1.0", 1.0),
        (b"-0.0", -0.0),
        (b"1e2", 100.0),
        (b"1E+2", 100.0),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775809", -(2**63) - 1),  # orjson would round this one
        (b"18446744073709551616", 2**64),
        (b"1" + b"0" * 100, 10**100),
        (b"1e-400", 0.0),  # underflow: nearest double
        (b"-1e-400", -0.0),
        (b"0.1", 0.1),
        (b"9007199254740993.0", 9007199254740992.0),  # halfway: rounds to even
        (b"2.2250738585072011e-308", 2.2250738585072011e-308),
    ],
)
def test_numbers_exact_ints_and_floats(doc: bytes, value: Any) -> None:
    """Integers stay exact Python ints of any size; fractions/exponents give floats."""
    assert same(loads(doc), value)
    assert same(loads(b"[" + doc + b"]"), [value])


@pytest.mark.parametrize("doc", [b"1e400", b"-1e400", b"[1.7976931348623159e308]", b"1e99999"])
def test_numbers_overflowing_a_double_refused(doc: bytes) -> None:
    """Decision: a number that would become inf is refused (JSON cannot carry infinity)."""
    with pytest.raises(JsonError, match="overflows a double"):
        loads(doc)


def test_integer_digit_cap() -> None:
    """Integers up to MAX_INT_DIGITS digits are exact; longer ones are always refused."""
    assert loads(b"9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    with pytest.raises(JsonError, match="integer longer than"):
        loads(b"[" + b"9" * (MAX_INT_DIGITS + 1) + b"]")


def test_the_integer_digit_cap_is_cpythons_default_4300_digits_signs_not_counted() -> None:
    """The cap is CPython's default int/str conversion limit (4300 digits), fixed whatever the
    host process sets, and a minus sign is not a digit."""
    assert loads(b"[-" + b"9" * 4300 + b"]") == [-int("9" * 4300)]
    with pytest.raises(JsonError, match="integer longer than 4300 digits at offset 1"):
        loads(b"[-" + b"9" * 4301 + b"]")


# --- API surface ----------------------------------------------------------------------------------


def test_bytes_like_accepted_and_str_refused() -> None:
    assert loads(bytearray(b"[1]")) == [1]
    assert loads(memoryview(b'{"a":1}')) == {"a": 1}
    with pytest.raises(TypeError, match=r"strictjson\.loads expects bytes, not str"):
        loads("[1]")  # type: ignore[arg-type]


def test_a_key_is_echoed_whole_up_to_40_characters_and_cut_after() -> None:
    """Messages echo untrusted keys, so at most 40 characters of one."""
    for key, shown in (("k" * 40, "k" * 40), ("k" * 41, "k" * 40 + "...")):
        doc = b'{"' + key.encode() + b'": 1, "' + key.encode() + b'": 2}'
        with pytest.raises(JsonError) as err:
            loads(doc)
        assert str(err.value) == f'duplicate key "{shown}" at offset {len(key) + 8}'


def test_the_integer_cap_refusal_names_the_first_integer_over_it() -> None:
    with pytest.raises(JsonError, match=r"^integer longer than 4300 digits at offset 4302$"):
        loads(b"[" + b"9" * 4300 + b"," + b"9" * 4301 + b"]")


def test_a_refusal_without_quoted_body_logs_its_message_as_is() -> None:
    with pytest.raises(JsonError) as err:
        loads(b" ")
    assert err.value.loggable == str(err.value) == "empty input"


def test_a_host_int_limit_below_the_cap_is_still_a_jsonerror() -> None:
    """sys.set_int_max_str_digits is process-wide: a host that lowers it below 4300 makes int()
    refuse; that must still be a JsonError (a 400), not a bare ValueError."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        with pytest.raises(JsonError, match="number out of range"):
            loads(b"[" + b"9" * 2000 + b"]")
    finally:
        sys.set_int_max_str_digits(old)


def test_jsonerror_is_a_valueerror() -> None:
    assert issubclass(JsonError, ValueError)


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


def depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(depth, v), default=0)
    return 0


@given(json_values, st.booleans(), st.sampled_from([None, 1, 2]))
def test_roundtrip_through_json_dumps(value: Any, ascii_only: bool, indent: int | None) -> None:
    """Any JSON value without duplicate keys reads back exactly as it was written."""
    assume(depth(value) <= 64)
    data = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    assert same(loads(data), value)


# Pieces that stress the places where orjson and the reference could differ.
TOKENS = [
    *(bytes([c]) for c in b'{}[]":,\\ 0123456789-+.eE'),
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"\\u003a",
    b"\\u003A",
    b"\\u0000",
    b"1e400",
    b"1e-400",
    b"12345678901234567890",
    b"-9223372036854775809",
    b"0.10000000000000000555",
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b"\n",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xc3\xa9",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b'"a":1,',
    b'"a":',
    b'{"a":',
    b"[[[[",
    b"]]]]",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = draw(json_values)
    doc = bytearray(json.dumps(value, ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(doc)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        if op == "insert":
            doc[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del doc[pos : pos + draw(st.integers(1, 3))]
        elif op == "replace":
            doc[pos : pos + 1] = draw(st.sampled_from(TOKENS))
        else:  # repeat a slice: often duplicates object members
            end = draw(st.integers(pos, len(doc)))
            doc[end:end] = doc[pos:end]
    return bytes(doc)


@settings(max_examples=1000)
@given(mutated())
def test_fast_path_agrees_with_reference_on_mutated_documents(data: bytes) -> None:
    """Same value or both refuse, for near-valid documents that probe every fast-path check."""
    agree(data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_ever_raise_jsonerror(data: bytes) -> None:
    agree(data)


@given(
    st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?", fullmatch=True)
)
def test_numbers_parse_like_python(text: str) -> None:
    """orjson's number parsing (ints and correctly rounded floats) matches int()/float()."""
    data = text.encode()
    integral = not any(c in text for c in ".eE")
    try:
        expected: Any = int(text) if integral else float(text)
    except ValueError:  # pragma: no cover - the regex only produces valid numbers
        raise
    if isinstance(expected, float) and math.isinf(expected):
        with pytest.raises(JsonError):
            loads(data)
    else:
        assert same(loads(data), expected)
    agree(data)


# Objects as pair lists, so keys can repeat (and often do: the key alphabet is tiny).
Pairs = st.deferred(
    lambda: st.lists(st.tuples(st.sampled_from(["a", "b", "a:", "\u00e9"]), trees), max_size=4)
)
trees: st.SearchStrategy[Any] = st.deferred(
    lambda: st.integers(0, 9) | st.lists(trees, max_size=3) | Pairs.map(lambda p: ("obj", p))
)


def render(tree: Any) -> str:
    if isinstance(tree, tuple):
        return "{" + ",".join(json.dumps(k) + ":" + render(v) for k, v in tree[1]) + "}"
    if isinstance(tree, list):
        return "[" + ",".join(render(v) for v in tree) + "]"
    return str(tree)


def has_duplicate(tree: Any) -> bool:
    if isinstance(tree, tuple):
        keys = [k for k, _ in tree[1]]
        return len(set(keys)) != len(keys) or any(has_duplicate(v) for _, v in tree[1])
    if isinstance(tree, list):
        return any(has_duplicate(v) for v in tree)
    return False


@given(trees)
def test_duplicates_refused_exactly_when_present(tree: Any) -> None:
    """Refused iff some object, at any depth, repeats a key."""
    data = render(tree).encode()
    assume(data.count(b"[") + data.count(b"{") <= 64)
    if has_duplicate(tree):
        with pytest.raises(JsonError, match="duplicate key"):
            loads(data)
    else:
        assert loads(data) == json.loads(data)
    agree(data)
