"""JSON Schema validation of payloads: pipeline stages (3) request and (7) response.

This is the only module that imports ``jsonschema`` or ``jsonschema_rs`` (rule 3), so the policy
below holds everywhere a schema is used:

* **Draft 2020-12 only.** ``$schema``, when present, must name it; documents are checked against
  the 2020-12 meta-schema with the reference implementation (``jsonschema``) before anything else,
  so a broken contract stops start-up with the file and the JSON Pointer of the bad keyword.
* **Nothing is ever fetched.** A ``$ref`` must be a ``#...`` fragment or name a ``$id`` declared in
  the same document. This is checked statically, and ``jsonschema_rs`` is also given a retriever
  that refuses every URI, so a reference the static walk missed still cannot reach the network or
  the file system. A contract that depends on a server being up is not a contract.
* **Patterns run in linear time.** ``jsonschema_rs`` translates ECMA-262 patterns for the Rust
  engines. Its default engine is ``fancy-regex``, a backtracking engine bounded only by a
  backtrack limit (one million steps per match, per the crate docs), and it supports look-around
  and back-references. We select the ``regex`` crate instead (``RegexOptions``): a finite-automaton
  engine whose matching time is linear in the input, at the price of refusing look-around and
  back-references. Such patterns, and patterns whose compiled program exceeds
  ``REGEX_SIZE_LIMIT``, are refused at start-up with a pointer to the offending keyword. A hostile
  payload therefore cannot make a pattern hang the event loop.
* **Formats are assertions.** ``format: date`` must really be a date; an unknown format name is a
  configuration error (a typo must not silently turn a check off).
* **Errors never echo the payload.** The engine's messages quote the offending value
  (``"079123456789" is not a "date"``), and values here are citizens' personal data. We write our
  own messages from the error kind and the schema's constraint; the payload contributes only its
  structure (JSON Pointers and JSON type names).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import urldefrag, urljoin, urlsplit

import jsonschema_rs
import rfc8785
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

from gateway.errors import ConfigError, PointerError, SchemaInvalid
from gateway.validation.messages import (
    clip,
    count_values,
    describe,
    detailed_walk_is_cheap,
    escape,
    json_pointer,
    located_errors,
    sort_key,
)

__all__ = ["DRAFT_2020_12", "MAX_ERRORS", "REGEX_SIZE_LIMIT", "CompiledSchema", "compile_schema"]

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
#: Errors reported per payload: enough to fix a form in one round trip, small enough that a
#: payload with a million bad items cannot make the problem document huge.
MAX_ERRORS = 50
#: Cap, in bytes, on one compiled pattern (and on its lazy-DFA cache): a pattern like
#: ``(?:.{1000}){1000}`` compiles to a program far above it and is refused at start-up.
REGEX_SIZE_LIMIT = 1 << 20
#: Payloads of more JSON values than this get their first schema error only (see _errors).
LIST_ALL_UP_TO = 20_000

# Keywords whose values are schemas, by shape (Draft 2020-12 core and applicator vocabularies).
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
# Keywords whose values are instance data, not schemas: a "$ref" string inside them is a value.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_REF_KEYWORDS = ("$ref", "$dynamicRef")


class CompiledSchema:
    """A service schema, checked and compiled once at start-up; build it with ``compile_schema``.

    ``schema_id`` (the ``$id``) and ``sha256`` (hex SHA-256 of the RFC 8785 canonical JSON of the
    document) go into receipts, so an auditor can prove which contract an exchange was held to.
    ``canonical_json`` is that canonical form, for serving or re-hashing; the compiled validator
    was built from the same private copy, so the three can never disagree.
    """

    __slots__ = ("_validator", "canonical_json", "schema_id", "sha256", "source")

    def __init__(
        self,
        *,
        validator: jsonschema_rs.Validator,
        schema_id: str,
        canonical_json: bytes,
        source: str,
    ) -> None:
        self._validator = validator
        self.schema_id = schema_id
        self.canonical_json = canonical_json
        self.sha256 = hashlib.sha256(canonical_json).hexdigest()
        self.source = source

    def __repr__(self) -> str:
        return f"CompiledSchema({self.schema_id!r}, sha256={self.sha256[:12]}...)"

    def validate(self, instance: Any) -> None:
        """Return if ``instance`` is valid, else raise ``SchemaInvalid`` listing the errors.

        Valid payloads are the common case, so the cheap first-error-exit ``is_valid`` runs first
        and the full error walk only on failure. Errors carry RFC 6901 pointers into the payload,
        at most ``MAX_ERRORS`` of them, sorted by pointer, with messages free of payload values.
        """
        try:
            if self._validator.is_valid(instance):
                return
            errors, truncated = self._errors(instance)
        except ValueError:
            # Not a JSON value (a set, bytes) where the schema looked: the strict parser upstream
            # never produces one, but refusing is safer than a 500.
            err = PointerError("", "is not a JSON value")
            raise SchemaInvalid("The payload is not a JSON value.", errors=[err]) from None
        shown = f"the first {len(errors)} are listed" if truncated else "all are listed"
        detail = (
            f"The payload does not match schema {self.schema_id}: "
            f"{len(errors)}{'+' if truncated else ''} error(s), {shown} with JSON Pointers."
        )
        raise SchemaInvalid(detail, errors=errors)

    def _errors(self, instance: Any) -> tuple[list[PointerError], bool]:
        """Up to MAX_ERRORS errors, and whether there may be more, at a bounded cost: the
        engine lists errors only eagerly (~1 KB each, and under ``propertyNames`` a copy of
        the whole object each), so a large payload gets its first error only, and a smaller
        one the detailed walk only when ``evaluate`` shows it cheap."""
        if count_values(instance, LIST_ALL_UP_TO) > LIST_ALL_UP_TO:
            return self._first_error(instance), True
        located = self._validator.evaluate(instance).errors()
        if not detailed_walk_is_cheap(instance, located):
            return located_errors(located, MAX_ERRORS)
        errors = []
        truncated = False
        for count, error in enumerate(self._validator.iter_errors(instance)):
            if count == MAX_ERRORS:
                truncated = True
                break
            errors.extend(describe(error))
        errors.sort(key=sort_key)
        if len(errors) > MAX_ERRORS:
            errors, truncated = errors[:MAX_ERRORS], True
        return errors, truncated

    def _first_error(self, instance: Any) -> list[PointerError]:
        try:
            self._validator.validate(instance)  # stops at the first error
        except jsonschema_rs.ValidationError as error:
            return describe(error)[:MAX_ERRORS]
        return [PointerError("", "does not match the schema")]  # is_valid said it does not


def compile_schema(document: Mapping[str, Any], *, source: str) -> CompiledSchema:
    """Check ``document`` against the gateway's schema policy and compile it; fail closed.

    ``source`` names where the document came from (a file path) for ``ConfigError`` messages;
    reading the file is ``config.py``'s job, so this module does no I/O. Every refusal raises
    ``ConfigError(source, json_pointer_in_schema, problem)``. The caller's mapping is copied, so
    mutating it afterwards cannot desynchronise the validator from ``sha256``.
    """
    doc: dict[str, Any] = copy.deepcopy(dict(document))
    _check_draft(doc, source)
    _check_meta_schema(doc, source)
    schema_id = _root_id(doc, source)
    _check_refs_local(doc, source, schema_id)
    _check_patterns(doc, source)
    try:
        canonical = rfc8785.dumps(doc)
    except Exception as exc:  # rfc8785 raises its own error types for unrepresentable numbers
        raise ConfigError(source, "", f"cannot be canonicalized (RFC 8785): {exc}") from None
    return CompiledSchema(
        validator=_compile(doc, source),
        schema_id=schema_id,
        canonical_json=canonical,
        source=source,
    )


# --- compile-time checks -------------------------------------------------------------------------


def _check_draft(doc: dict[str, Any], source: str) -> None:
    """Every ``$schema``, the root's and any embedded resource's, must name Draft 2020-12: an
    embedded draft-07 one makes both engines ignore ``unevaluatedProperties`` there."""
    for pointer, node, _base in _walk(doc, "", ""):
        if node.get("$schema", DRAFT_2020_12) != DRAFT_2020_12:
            problem = f"must be {DRAFT_2020_12!r} (Draft 2020-12)"
            raise ConfigError(source, f"{pointer}/$schema", problem)


def _check_meta_schema(doc: dict[str, Any], source: str) -> None:
    """Check against the 2020-12 meta-schema with the reference implementation.

    ``format_checker=None``: the default would check ``pattern`` values with Python's ``re``,
    whose dialect is neither ECMA-262 nor what ``jsonschema_rs`` runs (it refuses ``\\p{L}``, for
    one). Pattern validity is ``_check_patterns``' job, with the engine that will run them.
    """
    try:
        Draft202012Validator.check_schema(doc, format_checker=None)
    except SchemaError as exc:
        pointer = json_pointer(list(exc.absolute_path))
        raise ConfigError(
            source, pointer, f"violates the Draft 2020-12 meta-schema: {clip(exc.message)}"
        ) from None


def _root_id(doc: dict[str, Any], source: str) -> str:
    schema_id = doc.get("$id")
    if not isinstance(schema_id, str) or not schema_id:
        raise ConfigError(source, "/$id", "missing: receipts name the schema by its $id")
    return schema_id


def _check_refs_local(doc: dict[str, Any], source: str, root_id: str) -> None:
    """Refuse any ``$ref``/``$dynamicRef`` that is not a fragment or a ``$id`` of this document."""
    ids: set[str] = set()
    refs: list[tuple[str, str, str]] = []  # (pointer, reference, base URI)
    for pointer, node, base in _walk(doc, "", root_id):
        if isinstance(node.get("$id"), str):
            ids.add(urldefrag(base).url)
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str):
                refs.append((f"{pointer}/{escape(keyword)}", ref, base))
    for pointer, ref, base in refs:
        if ref.startswith("#") or urldefrag(_resolve(base, ref)).url in ids:
            continue
        raise ConfigError(
            source,
            pointer,
            f"reference {clip(json.dumps(ref))} is not local: only '#...' fragments and $ids "
            "defined in this document may be referenced (nothing is ever retrieved)",
        )


def _check_patterns(doc: dict[str, Any], source: str) -> None:
    """Compile every ``pattern`` and ``patternProperties`` key with the linear-time engine."""
    for pointer, node, _base in _walk(doc, "", ""):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern, f"{pointer}/pattern", source)
        pattern_properties = node.get("patternProperties")
        if isinstance(pattern_properties, dict):
            for key in pattern_properties:
                _check_pattern(key, f"{pointer}/patternProperties/{escape(key)}", source)


def _check_pattern(pattern: str, pointer: str, source: str) -> None:
    try:
        jsonschema_rs.Draft202012Validator({"pattern": pattern}, pattern_options=_regex_options())
    except jsonschema_rs.ValidationError:
        raise ConfigError(
            source,
            pointer,
            f"pattern {clip(json.dumps(pattern))} is refused: patterns run on a linear-time "
            "engine, so look-around and back-references are not supported and the compiled "
            f"size is capped at {REGEX_SIZE_LIMIT} bytes",
        ) from None


def _compile(doc: dict[str, Any], source: str) -> jsonschema_rs.Validator:
    try:
        return jsonschema_rs.Draft202012Validator(
            doc,
            validate_formats=True,
            ignore_unknown_formats=False,
            retriever=_refuse_retrieval,
            pattern_options=_regex_options(),
        )
    except jsonschema_rs.ValidationError as exc:
        # Here the "instance" is the schema, so instance_path points into the document.
        raise ConfigError(source, json_pointer(exc.instance_path), clip(exc.message)) from None
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ConfigError(source, "", clip(str(exc))) from None


def _regex_options() -> jsonschema_rs.RegexOptions:
    return jsonschema_rs.RegexOptions(size_limit=REGEX_SIZE_LIMIT, dfa_size_limit=REGEX_SIZE_LIMIT)


def _refuse_retrieval(uri: str) -> NoReturn:
    """Retriever for ``jsonschema_rs``: schemas never come from the network or the disk."""
    raise LookupError(f"schema retrieval is disabled (asked for {uri})")


def _walk(node: Any, pointer: str, base: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Yield ``(pointer, schema object, base URI)`` for every schema object in the document.

    Shape-aware, so a property *named* ``enum`` or ``$ref`` is still walked as a schema, while
    ``const``/``enum``/``default``/``examples`` values are data. Unknown keywords holding objects
    are walked too: refusing a remote ``$ref`` hidden there costs nothing.
    """
    if not isinstance(node, dict):
        return
    node_id = node.get("$id")
    if isinstance(node_id, str):
        base = _resolve(base, node_id)
    yield pointer, node, base
    for key, value in node.items():
        here = f"{pointer}/{escape(key)}"
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _walk(sub, f"{here}/{escape(name)}", base)
        elif isinstance(value, list):  # allOf/anyOf/oneOf/prefixItems, or unknown keywords
            for index, sub in enumerate(value):
                yield from _walk(sub, f"{here}/{index}", base)
        else:
            yield from _walk(value, here, base)


def _resolve(base: str, reference: str) -> str:
    """Resolve ``reference`` against ``base`` (RFC 3986); relative refs under a URN stay as-is."""
    if urlsplit(reference).scheme or not base:
        return reference
    return urljoin(base, reference)
