"""Problem ``errors`` for a payload that fails its schema: RFC 6901 pointers and messages.

Apart from the schema policy in ``gateway.validation`` because it is a concern of its own: the
engine's messages quote the offending value (citizens' personal data), so every message here is
rebuilt from the error kind and the schema's constraint, and the payload contributes only its
structure (pointer tokens and JSON type names). Part of the ``gateway.validation`` package, the
only owner of ``jsonschema_rs`` (ARCHITECTURE rule 3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jsonschema_rs
from jsonschema_rs import ValidationErrorKind as Kind

from gateway.errors import PointerError

if TYPE_CHECKING:
    from jsonschema_rs import EvaluationErrorEntry

_MAX_MESSAGE = 200
#: What the engine's detailed error list may cost, in JSON values it copies: the engine builds
#: that list whole, each error holding a copy of the value that failed (under
#: ``propertyNames`` the whole object, once per bad name: quadratic). ~30 ms at most.
WALK_BUDGET = 100_000
_PER_ERROR = 16  # an error's own cost, in the same unit


def detailed_walk_is_cheap(instance: Any, located: Sequence[EvaluationErrorEntry]) -> bool:
    """Whether ``iter_errors`` would copy at most :data:`WALK_BUDGET` values (or twice the
    payload's), judged from the errors ``evaluate`` located (cheap: it copies nothing)."""
    sizes: dict[str, int] = {}
    # One copy of the whole payload is linear (additionalProperties reports the object once);
    # many copies of big values are what must not happen.
    budget = max(WALK_BUDGET, 2 * count_values(instance, 2**62))
    for error in located:
        where = error["instanceLocation"]
        size = sizes.get(where)
        if size is None:
            size = sizes[where] = count_values(_resolve(instance, where), budget)
        budget -= size + _PER_ERROR
        if budget < 0:
            return False
    return True


def located_errors(
    located: Sequence[EvaluationErrorEntry], limit: int
) -> tuple[list[PointerError], bool]:
    """Errors from ``evaluate``'s output, for payloads too costly to describe in detail: the
    pointer and the schema keyword that failed (schema text, never payload values), one per
    distinct pair; the first ``limit`` in the engine's order, then sorted, and whether there
    were more. Stops at ``limit``: sorting every error of a huge payload costs seconds."""
    pairs: dict[tuple[str, str], None] = {}
    for error in located:
        pair = (error["instanceLocation"], error["schemaLocation"])
        if pair not in pairs:
            if len(pairs) == limit:
                break
            pairs[pair] = None
    else:
        return _listed(pairs), False
    return _listed(pairs), True


def _listed(pairs: dict[tuple[str, str], None]) -> list[PointerError]:
    errors = [
        PointerError(where, clip(f"does not satisfy {json.dumps(keyword)} of the schema"))
        for where, keyword in pairs
    ]
    errors.sort(key=sort_key)
    return errors


def _resolve(instance: Any, pointer: str) -> Any:
    """The value at an RFC 6901 ``pointer`` the engine gave (None if it names nothing)."""
    value = instance
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        try:
            value = value[int(token)] if isinstance(value, list) else value[token]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value


def count_values(value: Any, limit: int) -> int:
    """Number of JSON values in ``value`` (itself included), counting no further than limit."""
    count, stack = 0, [value]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def describe(error: jsonschema_rs.ValidationError) -> list[PointerError]:
    """Turn one engine error into pointer errors whose text never contains the payload's values."""
    path = list(error.instance_path)
    kind = error.kind
    if isinstance(kind, Kind.AdditionalProperties | Kind.UnevaluatedProperties):
        message = f"property is not allowed here ({kind.name})"
        return [PointerError(json_pointer([*path, name]), message) for name in kind.unexpected]
    if isinstance(kind, Kind.UnevaluatedItems):
        # The engine lists these items by their JSON text, not their index: payload values,
        # never pointer tokens. The array itself is pointed at instead.
        count = len(kind.unexpected)
        message = f"has {count} item(s) that are not allowed here (unevaluatedItems)"
        return [PointerError(json_pointer(path), message)]
    return [PointerError(json_pointer(path), clip(_message(kind, error.instance)))]


def _message(kind: Kind, instance: Any) -> str:
    """The message for one kind, built from the keyword and the schema's constraint only."""
    match kind:
        case Kind.Type(types=types):
            return f"must be of type {' or '.join(types)}, not {_json_type(instance)}"
        case Kind.Required(property=name):
            return f"required property {json.dumps(name)} is missing"
        case Kind.Format(format=fmt):
            return f"must be a valid {json.dumps(fmt)} (format)"
        case Kind.Pattern(pattern=pattern):
            return f"must match the pattern {json.dumps(pattern)}"
        case Kind.Enum(options=options):
            return f"must be one of {_values(options)} (enum)"
        case Kind.Constant(expected_value=expected):
            return f"must be {_values([expected])} (const)"
        case Kind.MinLength(limit=n):
            return f"must be at least {n} characters long (minLength)"
        case Kind.MaxLength(limit=n):
            return f"must be at most {n} characters long (maxLength)"
        case Kind.MinItems(limit=n):
            return f"must have at least {n} items (minItems)"
        case Kind.MaxItems(limit=n) | Kind.AdditionalItems(limit=n):
            return f"must have at most {n} items ({kind.name})"
        case Kind.MinProperties(limit=n):
            return f"must have at least {n} properties (minProperties)"
        case Kind.MaxProperties(limit=n):
            return f"must have at most {n} properties (maxProperties)"
        case Kind.Minimum(limit=n):
            return f"must be >= {n} (minimum)"
        case Kind.Maximum(limit=n):
            return f"must be <= {n} (maximum)"
        case Kind.ExclusiveMinimum(limit=n):
            return f"must be > {n} (exclusiveMinimum)"
        case Kind.ExclusiveMaximum(limit=n):
            return f"must be < {n} (exclusiveMaximum)"
        case Kind.MultipleOf(multiple_of=n):
            return f"must be a multiple of {n} (multipleOf)"
        case Kind.PropertyNames(error=inner):
            return (
                f"has a property name that {_message(inner.kind, inner.instance)} (propertyNames)"
            )
    return _STATIC_MESSAGES.get(kind.name, f"does not satisfy the {json.dumps(kind.name)} keyword")


_STATIC_MESSAGES = {
    "uniqueItems": "items must be unique (uniqueItems)",
    "contains": "must contain the required number of matching items (contains)",
    "not": "must not match the schema under 'not'",
    "anyOf": "does not match any of the allowed alternatives (anyOf)",
    "oneOf": "must match exactly one of the alternatives (oneOf)",
    "falseSchema": "no value is allowed here",
    "contentEncoding": "is not in the declared encoding (contentEncoding)",
    "contentMediaType": "is not of the declared media type (contentMediaType)",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _values(values: list[Any]) -> str:
    """Schema-side values (enum options, const), clipped: never payload data."""
    shown = ", ".join(json.dumps(v, ensure_ascii=False) for v in values[:10])
    return shown + (", ..." if len(values) > 10 else "")


def clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def escape(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def json_pointer(path: list[str | int]) -> str:
    """RFC 6901 JSON Pointer for a path; the root is the empty string."""
    return "".join(f"/{escape(part)}" for part in path)


def sort_key(error: PointerError) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Document order-ish: array indexes compare as numbers (``/2`` before ``/10``)."""
    parts = error.pointer.split("/")[1:]
    key = tuple((0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in parts)
    return key, error.message
