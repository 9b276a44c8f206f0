"""gateway.validation: the schema policy (fail closed at start-up) and payload errors (422).

The differential tests use the reference implementation, ``jsonschema``, as the oracle: for the
demo schemas, hand-made and hypothesis-generated instances are valid for us iff they are valid
for it. The oracle gets two corrections, both places where Python differs from the JSON Schema
specification rather than where we do: ``$`` in Python's ``re`` also matches before a final
newline (ECMA-262's does not), and without the optional ``rfc3339-validator`` package
``jsonschema`` does not check ``date-time`` at all, so RFC 3339 checkers are supplied here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import validation
from gateway.errors import ConfigError, SchemaInvalid
from gateway.validation import MAX_ERRORS, CompiledSchema, compile_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")
DRAFT = "https://json-schema.org/draft/2020-12/schema"
CITIZEN_ID = "079203001234"


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def schema(**body: Any) -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": "urn:test:schema", **body}


def errors_of(compiled: CompiledSchema, instance: Any) -> SchemaInvalid:
    with pytest.raises(SchemaInvalid) as caught:
        compiled.validate(instance)
    return caught.value


# --- compile-time policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        (schema(type="strin"), "/type"),
        (schema(properties={"a": {"minLength": -1}}), "/properties/a/minLength"),
        (schema(properties={"a/b": {"required": "x"}}), "/properties/a~1b/required"),
        (schema(items=[{"type": "string"}]), "/items"),
    ],
)
def test_meta_schema_violation_is_config_error_naming_the_pointer(document, pointer):
    with pytest.raises(ConfigError) as caught:
        compile_schema(document, source="schemas/x.json")
    assert caught.value.file == "schemas/x.json"
    assert caught.value.field == pointer
    assert "meta-schema" in caught.value.problem


def test_other_drafts_are_refused():
    document = schema()
    document["$schema"] = "http://json-schema.org/draft-07/schema#"
    with pytest.raises(ConfigError) as caught:
        compile_schema(document, source="s.json")
    assert caught.value.field == "/$schema"


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        (
            schema(
                properties={
                    "o": {
                        "$id": "urn:test:o",
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "properties": {"a": {}},
                        "unevaluatedProperties": False,
                    }
                }
            ),
            "/properties/o/$schema",
        ),
        (
            schema(**{"$defs": {"x": {"$schema": "http://json-schema.org/draft-04/schema#"}}}),
            "/$defs/x/$schema",
        ),
        (
            schema(items={"$id": "urn:test:i", "$schema": "https://example.com/meta"}),
            "/items/$schema",
        ),
    ],
)
def test_embedded_schemas_must_be_draft_2020_12_too(document, pointer):
    """An embedded resource naming another draft switches the engines to that draft's rules
    there: under draft-07, ``unevaluatedProperties`` (and a ``$ref``'s siblings) are silently
    ignored, so a constraint the contract shows would not be enforced."""
    with pytest.raises(ConfigError) as caught:
        compile_schema(document, source="s.json")
    assert caught.value.field == pointer
    assert "2020-12" in caught.value.problem


def test_schema_without_id_is_refused_because_receipts_name_it():
    with pytest.raises(ConfigError) as caught:
        compile_schema({"$schema": DRAFT, "type": "object"}, source="s.json")
    assert caught.value.field == "/$id"


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        (schema(**{"$ref": "https://example.com/s.json"}), "/$ref"),
        (schema(properties={"a": {"$ref": "other.json#/$defs/x"}}), "/properties/a/$ref"),
        (schema(properties={"a": {"$ref": "file:///etc/passwd"}}), "/properties/a/$ref"),
        (schema(items={"$dynamicRef": "https://example.com/s.json#meta"}), "/items/$dynamicRef"),
        # A property named like a data keyword is still a schema: its $ref is checked.
        (schema(properties={"enum": {"$ref": "https://x.test/a"}}), "/properties/enum/$ref"),
        (schema(anyOf=[{"type": "string"}, {"$ref": "urn:other"}]), "/anyOf/1/$ref"),
        # Unknown keywords are walked too: a hidden remote $ref is still refused.
        (schema(**{"x-extra": {"$ref": "https://x.test/a"}}), "/x-extra/$ref"),
    ],
)
def test_non_local_refs_are_refused_statically(document, pointer):
    with pytest.raises(ConfigError) as caught:
        compile_schema(document, source="s.json")
    assert caught.value.field == pointer
    assert "not local" in caught.value.problem


def test_local_refs_and_embedded_ids_are_allowed():
    document = {
        "$schema": DRAFT,
        "$id": "https://schemas.example.gov.vn/root.json",
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/a"},
            "b": {"$ref": "address.json"},
            "c": {"$ref": "https://schemas.example.gov.vn/address.json#/properties/ward"},
            "d": {"$ref": "https://schemas.example.gov.vn/root.json#/$defs/a"},
            # In const/enum/default/examples a "$ref" is data, not a reference.
            "e": {"const": {"$ref": "https://example.com/x"}},
        },
        "$defs": {
            "a": {"type": "string"},
            "address": {
                "$id": "address.json",
                "type": "object",
                "properties": {"ward": {"type": "string", "maxLength": 100}},
            },
        },
    }
    compiled = compile_schema(document, source="s.json")
    compiled.validate({"a": "x", "b": {"ward": "Phường Bến Nghé"}, "c": "Phường 1"})
    with pytest.raises(SchemaInvalid):
        compiled.validate({"c": 1})


def test_engine_is_given_a_retriever_that_refuses_everything():
    """Defence in depth: if the static walk ever missed a remote $ref, nothing is fetched."""
    with pytest.raises(LookupError):
        validation._refuse_retrieval("https://example.com/s.json")
    with pytest.raises(ConfigError) as caught:
        validation._compile(schema(**{"$ref": "https://example.com/s.json"}), "s.json")
    assert "retrieval is disabled" in caught.value.problem


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        (schema(pattern="^(?=.*[0-9]).+$"), "/pattern"),
        (schema(properties={"a": {"pattern": "(a)\\1"}}), "/properties/a/pattern"),
        (schema(patternProperties={"(?<!x)y": {}}), "/patternProperties/(?<!x)y"),
        # Compiles to a program far above the size cap.
        (schema(pattern="(?:[\\s\\S]{1000}){1000}"), "/pattern"),
    ],
)
def test_patterns_the_linear_time_engine_cannot_run_are_refused(document, pointer):
    with pytest.raises(ConfigError) as caught:
        compile_schema(document, source="s.json")
    assert caught.value.field == pointer
    assert "linear-time" in caught.value.problem


def test_catastrophic_backtracking_pattern_runs_in_linear_time():
    """``^(a+)+$`` is exponential on a backtracking engine; here it is a finite automaton."""
    compiled = compile_schema(schema(type="string", pattern="^(a+)+$"), source="s.json")
    hostile = "a" * 200_000 + "!"
    started = time.perf_counter()
    with pytest.raises(SchemaInvalid):
        compiled.validate(hostile)
    assert time.perf_counter() - started < 1.0


def test_unknown_format_is_refused_so_a_typo_cannot_turn_a_check_off():
    with pytest.raises(ConfigError) as caught:
        compile_schema(schema(properties={"d": {"format": "dat"}}), source="s.json")
    assert caught.value.field == "/properties/d/format"


def test_sha256_is_over_rfc8785_canonical_json_and_independent_of_key_order():
    document = load("citizen-lookup.v1.request.json")
    compiled = compile_schema(document, source="s.json")
    assert compiled.sha256 == hashlib.sha256(rfc8785.dumps(document)).hexdigest()
    assert compiled.canonical_json == rfc8785.dumps(document)
    reordered = dict(reversed(list(document.items())))
    assert compile_schema(reordered, source="s.json").sha256 == compiled.sha256
    assert compiled.schema_id == "urn:gateway:schema:citizen-lookup.v1:request"


def test_compiled_schema_is_immune_to_later_mutation_of_the_callers_dict():
    document = schema(type="object", properties={"a": {"type": "string"}})
    compiled = compile_schema(document, source="s.json")
    digest = compiled.sha256
    document["properties"]["a"]["type"] = "integer"
    compiled.validate({"a": "still a string"})
    assert compiled.sha256 == digest


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("side", ["request", "response"])
def test_demo_schemas_compile_and_carry_their_service_id(service, side):
    compiled = compile_schema(load(f"{service}.{side}.json"), source=f"{service}.{side}.json")
    assert compiled.schema_id == f"urn:gateway:schema:{service}:{side}"


@pytest.mark.parametrize("service", SERVICES)
def test_example_payloads_are_valid_requests(service):
    compiled = compile_schema(load(f"{service}.request.json"), source="s.json")
    compiled.validate(load(f"examples/{service}.json"))


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("side", ["request", "response"])
def test_demo_schemas_bound_every_string_and_array(service, side):
    """Limits by default: every string has a maxLength (or enum/const), every array a maxItems."""

    def walk(node: Any, pointer: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and "enum" not in node and "const" not in node:
                assert "maxLength" in node, pointer
            if node.get("type") == "array":
                assert "maxItems" in node, pointer
            if node.get("type") == "object" and "propertyNames" not in node:
                assert node.get("additionalProperties") is False, pointer
            for key, value in node.items():
                walk(value, f"{pointer}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{pointer}/{index}")

    walk(load(f"{service}.{side}.json"), "")


# --- payload errors -----------------------------------------------------------------------------


def test_valid_payload_returns_none():
    compiled = compile_schema(load("citizen-lookup.v1.request.json"), source="s.json")
    assert compiled.validate({"citizen_id": CITIZEN_ID, "purpose": "social-welfare"}) is None


def test_nested_errors_have_rfc6901_pointers_sorted_by_document_position():
    compiled = compile_schema(load("pilot-progress-report.v1.request.json"), source="s.json")
    payload = load("examples/pilot-progress-report.v1.json")
    payload["models"][1]["indicators"][1]["value"] = 120  # a percentage above 100
    payload["models"][0]["indicators"][0]["value"] = -1
    payload["period"]["month"] = 7  # quarter and month together
    del payload["models"][1]["stage"]
    error = errors_of(compiled, payload)
    assert [(e.pointer, e.message) for e in error.errors] == [
        ("/models/0/indicators/0/value", "must be >= 0 (minimum)"),
        ("/models/1", 'required property "stage" is missing'),
        ("/models/1/indicators/1/value", "must be <= 100 (maximum)"),
        ("/period", "must not match the schema under 'not'"),
    ]
    assert error.status == 422
    assert error.problem()["errors"][0] == {
        "pointer": "/models/0/indicators/0/value",
        "message": "must be >= 0 (minimum)",
    }


def test_pointer_tokens_escape_tilde_and_slash():
    compiled = compile_schema(
        schema(type="object", properties={"a/b~c": {"type": "integer"}}), source="s.json"
    )
    assert errors_of(compiled, {"a/b~c": "x"}).errors[0].pointer == "/a~1b~0c"


def test_root_errors_use_the_empty_pointer():
    compiled = compile_schema(load("citizen-lookup.v1.request.json"), source="s.json")
    error = errors_of(compiled, [])
    assert [(e.pointer, e.message) for e in error.errors] == [
        ("", "must be of type object, not array")
    ]


def test_unexpected_properties_are_pointed_at_one_by_one():
    compiled = compile_schema(load("citizen-lookup.v1.request.json"), source="s.json")
    error = errors_of(
        compiled, {"citizen_id": CITIZEN_ID, "purpose": "social-welfare", "x": 1, "y": 2}
    )
    assert [e.pointer for e in error.errors] == ["/x", "/y"]


def test_unevaluated_items_point_at_their_array_and_never_quote_the_items():
    """The engine names unevaluated items by their JSON text, not their index: taken as pointer
    tokens they made '/people/"079203001234"', a pointer to nothing that quoted a citizen id."""
    compiled = compile_schema(
        schema(
            type="object",
            properties={"people": {"prefixItems": [{"type": "string"}], "unevaluatedItems": False}},
        ),
        source="s.json",
    )
    error = errors_of(compiled, {"people": ["a", CITIZEN_ID, {"id": CITIZEN_ID}]})
    assert [e.pointer for e in error.errors] == ["/people"]
    assert "unevaluatedItems" in error.errors[0].message
    assert CITIZEN_ID not in json.dumps(error.problem(), ensure_ascii=False)


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ({"citizen_id": "07920300123x", "purpose": "social-welfare"}, "/citizen_id"),
        ({"citizen_id": 79203001234, "purpose": "social-welfare"}, "/citizen_id"),
        ({"citizen_id": CITIZEN_ID + "5", "purpose": "social-welfare"}, "/citizen_id"),
        ({"citizen_id": CITIZEN_ID, "purpose": CITIZEN_ID}, "/purpose"),
        ({"citizen_id": CITIZEN_ID, "purpose": "social-welfare", "case_reference": ""}, None),
        ({"citizen_id": CITIZEN_ID, "purpose": "x", "requested_fields": [CITIZEN_ID]}, None),
    ],
)
def test_messages_never_echo_payload_values(payload, pointer):
    """The engine says '"079203001234" is not ...'; our messages carry no payload value."""
    compiled = compile_schema(load("citizen-lookup.v1.request.json"), source="s.json")
    error = errors_of(compiled, payload)
    document = json.dumps(error.problem(), ensure_ascii=False)
    assert "0792030012" not in document
    assert "7920300123" not in document
    if pointer is not None:
        assert pointer in [e.pointer for e in error.errors]


def test_format_messages_keep_keyword_and_constraint_but_not_the_value():
    compiled = compile_schema(load("citizen-lookup.v1.response.json"), source="s.json")
    answer = {
        "citizen_id": CITIZEN_ID,
        "status": "found",
        "checked_at": "2026-11-28T09:00:00Z",
        "full_name": "Nguyễn Văn An",
        "date_of_birth": CITIZEN_ID[:10],
    }
    error = errors_of(compiled, answer)
    assert [(e.pointer, e.message) for e in error.errors] == [
        ("/date_of_birth", 'must be a valid "date" (format)')
    ]
    assert CITIZEN_ID[:10] not in error.detail


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2003-07-15", True),
        ("2024-02-29", True),
        ("2026-02-29", False),
        ("2026-04-31", False),
        ("15/07/2003", False),
        ("2003-7-15", False),
        ("2003-07-15T00:00:00Z", False),
    ],
)
def test_format_assertions_are_on(value, valid):
    compiled = compile_schema(schema(type="string", format="date"), source="s.json")
    if valid:
        compiled.validate(value)
    else:
        assert errors_of(compiled, value).errors[0].message == 'must be a valid "date" (format)'


def test_errors_are_capped_and_the_detail_says_so():
    compiled = compile_schema(load("budget-proposal.v1.request.json"), source="s.json")
    payload = load("examples/budget-proposal.v1.json")
    payload["line_items"] = [{"code": "6000", "description": "x", "amount_vnd": -1}] * 200
    error = errors_of(compiled, payload)
    assert len(error.errors) == MAX_ERRORS
    assert "first 50" in error.detail
    pointers = [e.pointer for e in error.errors]
    assert pointers[:3] == [
        "/line_items/0/amount_vnd",
        "/line_items/1/amount_vnd",
        "/line_items/2/amount_vnd",
    ]
    assert pointers.index("/line_items/2/amount_vnd") < pointers.index("/line_items/10/amount_vnd")


_PEAK_MEMORY_OF_LISTING_ERRORS = """
import resource, sys
from gateway.errors import SchemaInvalid
from gateway.validation import compile_schema
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "names":  # one error per bad name, each (in the engine) holding the whole object
    keyword = {"propertyNames": {"maxLength": 4}}
    payload = {f"k{i:05d}": 0 for i in range(n)}
else:  # one small error per item, but very many
    keyword = {"items": {"type": "string"}}
    payload = list(range(n))
compiled = compile_schema({"$id": "urn:test:schema", **keyword}, source="s.json")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    compiled.validate(payload)
except SchemaInvalid as e:
    errors = e.errors
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before, len(errors), errors[0].pointer, errors[0].message)
"""


@pytest.mark.parametrize(
    ("kind", "n", "pointer", "message"),
    [
        ("names", 1500, "", "propertyNames"),
        ("items", 250_000, "/0", "must be of type string, not integer"),
    ],
)
def test_listing_errors_costs_bounded_memory_whatever_the_payload(kind, n, pointer, message):
    """The engine's error list is built eagerly, each error holding a copy of the value that
    failed. Under ``propertyNames`` that value is the whole object, once per bad name: 1 500
    names (a 20 KiB body) took ~300 MB and 4 000 names ~2.6 GB and seconds on the event loop,
    so one small request from any allowed sender could stall or kill a worker; and a 1 MiB
    array of 250 000 wrong items took ~350 MB. Errors are now listed within a budget, still
    with pointers and never a value. Measured in a child process (the engine's memory is not
    Python's: tracemalloc misses it)."""
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_OF_LISTING_ERRORS, kind, str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    grown_kib, count, first_pointer, first_message = run.stdout.strip().split(" ", 3)
    assert int(grown_kib) < 64 * 1024, f"{int(grown_kib) // 1024} MiB to list the errors"
    assert 1 <= int(count) <= MAX_ERRORS
    assert first_pointer == pointer
    assert "k0" not in first_message and message in first_message


@pytest.mark.parametrize("instance", [{1, 2}, {"a": b"bytes"}, {"a": 1, "b": {"c": {1, 2}}}])
def test_non_json_values_the_schema_looks_at_are_refused_not_crashed_on(instance):
    """The strict parser never produces these; if a caller did, it is a 422, not a 500."""
    compiled = compile_schema(
        schema(
            type="object",
            properties={"a": {"type": "object"}, "b": {"properties": {"c": {"type": "array"}}}},
        ),
        source="s.json",
    )
    error = errors_of(compiled, instance)
    assert [(e.pointer, e.message) for e in error.errors] == [("", "is not a JSON value")]


# --- differential tests against the reference implementation -----------------------------------

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII)


def _full_date(text: str) -> bool:
    """RFC 3339 full-date, proleptic Gregorian (year 0000 included, as RFC 3339 allows)."""
    match = _DATE.fullmatch(text)
    if not match:
        return False
    year, month, day = (int(g) for g in match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1 <= month <= 12 and 1 <= day <= days[month - 1]


def _date_time(text: str) -> bool:
    """RFC 3339 date-time; a leap second only where it is 23:59:60 in UTC (JSON Schema suite)."""
    date, sep, rest = text[:10], text[10:11], text[11:]
    match = _TIME.fullmatch(rest)
    if sep not in ("T", "t") or not _full_date(date) or not match:
        return False
    hour, minute, second = int(match[1]), int(match[2]), int(match[3])
    off_h, off_m = int(match[5] or 0), int(match[6] or 0)
    if hour > 23 or minute > 59 or second > 60 or off_h > 23 or off_m > 59:
        return False
    if second == 60:
        sign = -1 if match[4] == "-" else 1
        utc = (hour * 60 + minute - sign * (off_h * 60 + off_m)) % 1440
        return utc == 23 * 60 + 59
    return True


_ORACLE_FORMATS = jsonschema.FormatChecker()
_ORACLE_FORMATS.checks("date")(lambda v: not isinstance(v, str) or _full_date(v))
_ORACLE_FORMATS.checks("date-time")(lambda v: not isinstance(v, str) or _date_time(v))


def _ecma_pattern(validator, pattern, instance, schema_):
    """``pattern`` with ECMA-262 ``$``: Python's also matches before a trailing newline."""
    if isinstance(instance, str):
        translated = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(translated, instance):
            yield jsonschema.ValidationError(f"does not match {pattern!r}")


_Oracle = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def oracle_valid(document: dict[str, Any], instance: Any) -> bool:
    return bool(_Oracle(document, format_checker=_ORACLE_FORMATS).is_valid(instance))


def ours_valid(compiled: CompiledSchema, instance: Any) -> bool:
    try:
        compiled.validate(instance)
    except SchemaInvalid:
        return False
    return True


def test_oracle_date_time_checker_agrees_with_known_answers():
    """The oracle's own checker, pinned on cases from the JSON Schema test suite."""
    assert _date_time("1963-06-19T08:30:06.283185Z")
    assert _date_time("1998-12-31T23:59:60Z")
    assert _date_time("1998-12-31T15:59:60.123-08:00")
    assert not _date_time("1998-12-31T22:59:60Z")
    assert not _date_time("1990-02-31T15:59:59.123-08:00")
    assert not _date_time("1990-12-31T15:59:59-24:00")
    assert not _date_time("06/19/1963 08:30:06 PST")
    assert not _date_time("2013-350T01:01:01")


_RESPONSES: dict[str, Any] = {
    "citizen-lookup.v1": {
        "citizen_id": CITIZEN_ID,
        "status": "found",
        "checked_at": "2026-11-28T09:00:00Z",
        "full_name": "Lê Minh Khang",
        "date_of_birth": "2003-05-14",
        "gender": "male",
        "nationality": "VN",
        "permanent_address": {
            "street_address": "12 Lê Lợi",
            "ward": "Phường Bến Nghé",
            "district": "Quận 1",
            "province": "Thành phố Hồ Chí Minh",
        },
    },
    "pilot-progress-report.v1": {
        "report_id": "BC-1A2B3C4D5E6F",
        "received_at": "2026-11-28T09:00:00+07:00",
        "status": "received",
    },
    "budget-proposal.v1": {
        "proposal_id": "DT2027-1A2B3C4D5E6F",
        "status": "returned",
        "received_at": "2026-11-28T02:00:00Z",
        "reasons": ["total_vnd differs from the sum of line items"],
    },
}

_INTERESTING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=200),
    st.sampled_from([0, 4, 12, 100, 101, 2019, 2027, 2101, 10**15, 10**15 + 1, 10**20]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([1.0, 99.5, 100.0, 100.5, -0.0]),
    st.sampled_from(
        [
            "",
            CITIZEN_ID,
            CITIZEN_ID + "\n",
            "07920300123",
            "０７９２０３００１２３４",
            "found",
            "not-found",
            "male",
            "percent",
            "count",
            "returned",
            "received",
            "social-welfare",
            "full_name",
            "hcm.quan-1",
            "hcm",
            "HCM.quan-1",
            "DA06-M01",
            "da06",
            "6000",
            "6000.1",
            "60001",
            "a" * 64,
            "A" * 65,
            "2003-05-14",
            "2026-02-29",
            "2024-02-29",
            "0000-01-01",
            "2026-11-28T09:00:00Z",
            "2026-11-28t09:00:00z",
            "2026-11-28T09:00:00",
            "1998-12-31T23:59:60Z",
            "1998-12-31T22:59:60Z",
            "2026-11-28T09:00:00+24:00",
            "application/pdf",
            "+84901234567",
            "0" * 64,
        ]
    ),
    st.text(max_size=20),
    st.text(alphabet="0123456789-.:TZ+ ", max_size=25),
    st.builds(list),
    st.builds(dict),
    st.lists(st.sampled_from(["full_name", "gender", "x", "gender"]), max_size=9),
    st.builds(lambda: {"year": 2026, "quarter": 3, "month": 7}),
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


@st.composite
def mutations(draw: st.DrawFn, base: Any) -> Any:
    """A valid document with a few random edits: replace, delete or add a member."""
    document = copy.deepcopy(base)
    fresh = _INTERESTING.map(copy.deepcopy)  # never share (or nest into itself) one drawn value
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace" and draw(st.booleans()):
                document = draw(fresh)
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(fresh)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "notes", "month", "district", "target"]))] = draw(
                fresh
            )
        else:
            parent.append(draw(fresh))
    return document


def _cases() -> list[tuple[str, str, Any]]:
    cases = []
    for service in SERVICES:
        cases.append((service, "request", load(f"examples/{service}.json")))
        cases.append((service, "response", _RESPONSES[service]))
    return cases


@pytest.mark.parametrize(("service", "side", "base"), _cases())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_differential_against_jsonschema_on_mutated_documents(service, side, base, data):
    document = load(f"{service}.{side}.json")
    compiled = _compiled(service, side)
    instance = data.draw(mutations(base))
    assert ours_valid(compiled, instance) == oracle_valid(document, instance), instance


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("side", ["request", "response"])
@settings(max_examples=100, deadline=None)
@given(instance=st.recursive(_INTERESTING, lambda inner: st.lists(inner, max_size=3)))
def test_differential_against_jsonschema_on_arbitrary_values(service, side, instance):
    document = load(f"{service}.{side}.json")
    assert ours_valid(_compiled(service, side), instance) == oracle_valid(document, instance)


@pytest.mark.parametrize("text", ["A\n", CITIZEN_ID + "\n"])
def test_dollar_does_not_match_before_a_trailing_newline(text):
    """ECMA-262 semantics, where Python's re.search (used by jsonschema) would accept."""
    compiled = compile_schema(schema(type="string", pattern="^[A-Z0-9]+$"), source="s.json")
    assert not ours_valid(compiled, text)
    assert jsonschema.Draft202012Validator({"pattern": "^[A-Z0-9]+$"}).is_valid(text)


_COMPILED: dict[tuple[str, str], CompiledSchema] = {}


def _compiled(service: str, side: str) -> CompiledSchema:
    key = (service, side)
    if key not in _COMPILED:
        _COMPILED[key] = compile_schema(load(f"{service}.{side}.json"), source=f"{key}")
    return _COMPILED[key]
