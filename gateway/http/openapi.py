"""The OpenAPI 3.1 description of this gateway, generated from the loaded deployment.

Generated rather than hand-written so it cannot drift from the services actually served: each
service's request and response schemas are embedded as they are enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import authz
from gateway.config import Deployment, LoadedService
from gateway.http.audit_query import DEFAULT_LIMIT, MAX_INDEX, MAX_LIMIT, OUTCOMES
from gateway.models import UUID_PATTERN
from gateway.witness import SIZE_CONTENT_TYPE

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_responses(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "RFC 9457 problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for c in codes
    }


_JSON = "application/json"
_READ = (400, 401, 403, 404, 503)  # 503: the audit store is unavailable (retry)
_INDEX = {"type": "integer", "minimum": 0, "maximum": MAX_INDEX}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}
_TIME = {"type": "string", "format": "date-time"}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "index": _INDEX,
    "tree_size": _INDEX,
    "first": _INDEX,
    "second": _INDEX,
    "from": _INDEX,
    "Last-Event-ID": _INDEX,
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "cursor": {"type": "string", "minLength": 1},
    "outcome": {"type": "string", "enum": list(OUTCOMES)},
    "since": _TIME,
    "until": _TIME,
    "sender": _TEXT,
    "service": _TEXT,
    "provider": _TEXT,
    "exchange_id": {"type": "string", "pattern": f"^{UUID_PATTERN}$"},
}
"""What each parameter accepts, as gateway.http.audit_query reads it (anything else: 400)."""
_HEADER_PARAMETERS = frozenset({"Last-Event-ID"})
_REQUIRED_QUERY = frozenset({("/v1/audit/proof/consistency", "first")})


@dataclass(frozen=True, slots=True)
class _Op:
    """One operation of the table below: what it answers with, and when."""

    path: str
    method: str
    summary: str
    who: str
    params: tuple[str, ...] = ()
    ok: tuple[str, ...] = (_JSON,)  # the 200 answer's media types
    problems: tuple[int, ...] = _READ
    also: tuple[tuple[int, str], ...] = ()  # (status, media type) answered besides a problem


_CHECKPOINT = ("text/plain", _JSON)  # the signed note, or JSON with Accept: application/json
_OPERATIONS: tuple[_Op, ...] = (
    _Op(
        "/v1/exchanges/{exchange_id}",
        "get",
        "State of one exchange from its audit records, which are listed a page at a time"
        " (next_cursor, null on the last page; an exchange gains a record per replayed answer)",
        "its sender, operators, admins",
        ("exchange_id", "cursor"),
    ),
    _Op(
        "/v1/exchanges/{exchange_id}/proof",
        "get",
        "Inclusion proof bundle of an exchange (completes its receipt)",
        "its sender, operators, auditors, admins",
        ("exchange_id",),
    ),
    _Op(
        "/v1/audit/records",
        "get",
        "Search audit records (cursor pagination)",
        "operators, auditors, admins",
        (
            *("since", "until", "sender", "service", "provider", "outcome"),
            *("exchange_id", "cursor", "limit"),
        ),
    ),
    _Op(
        "/v1/audit/records/{index}",
        "get",
        "One audit record with its leaf hash",
        "operators, auditors, admins",
        ("index",),
    ),
    _Op(
        "/v1/audit/stream",
        "get",
        "Live tail of the audit log (Server-Sent Events, Last-Event-ID)",
        "operators, auditors, admins",
        ("from", "Last-Event-ID"),
        ok=("text/event-stream",),
        problems=(*_READ, 429),
    ),
    _Op(
        "/v1/audit/export",
        "get",
        "Audit records as JSON Lines for a time range",
        "auditors, admins",
        ("since", "until"),
        ok=("application/x-ndjson",),
    ),
    _Op(
        "/v1/audit/checkpoint",
        "get",
        "Latest signed checkpoint (C2SP signed note; JSON with Accept: application/json)",
        "anyone",
        ok=_CHECKPOINT,
        problems=(503,),
    ),
    _Op(
        "/v1/audit/checkpoint",
        "post",
        "Publish a checkpoint now",
        "admins",
        ok=_CHECKPOINT,
        problems=(401, 403, 503),
    ),
    _Op(
        "/v1/audit/proof/inclusion",
        "get",
        "RFC 9162 inclusion proof",
        "operators, auditors, admins",
        ("index", "tree_size", "exchange_id"),
    ),
    _Op(
        "/v1/audit/proof/consistency",
        "get",
        "RFC 9162 consistency proof",
        "operators, auditors, admins",
        ("first", "second"),
    ),
    _Op(
        "/v1/verify",
        "post",
        "Verify any artifact the gateway signed: receipt, envelope, request, checkpoint, proof",
        "security staff",
        problems=(400, 408, 413),
    ),
    _Op(
        "/v1/witness/add-checkpoint",
        "post",
        "C2SP tlog-witness: cosign a peer gateway's checkpoint",
        "configured peer gateways",
        ok=("text/plain",),
        problems=(400, 403, 404, 408, 409, 413, 422, 503),
        also=((409, SIZE_CONTENT_TYPE),),  # a stale old size: the latest size, as the spec says
    ),
)


def _base_schemas() -> dict[str, Any]:
    """The shared components: the problem document and a flattened JWS (JSON serialization)."""
    return {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "exchange_id": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "pointer": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Jws": {
            "type": "object",
            "required": ["payload", "protected", "signature"],
            "properties": {k: {"type": "string"} for k in ("payload", "protected", "signature")},
            "additionalProperties": False,
        },
    }


def _delivered_response(resp_name: str) -> dict[str, Any]:
    """The 200 answer of an exchange: the provider's response (its own schema) and a receipt."""
    return {
        "description": "delivered, with the provider's answer and a signed receipt",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "exchange_id": {"type": "string"},
                        "status": {"const": "delivered"},
                        "response": {"$ref": f"#/components/schemas/{resp_name}"},
                        "receipt": {"$ref": "#/components/schemas/Jws"},
                    },
                }
            }
        },
    }


def _exchange_operation(sid: str, svc: LoadedService) -> dict[str, Any]:
    """``POST /v1/exchange/{sid}``: plain JSON against the service's schema, or a signed JWS."""
    return {
        "summary": svc.spec.description or f"Exchange with {svc.spec.provider}",
        "operationId": f"exchange_{sid.replace('.', '_').replace('-', '_')}",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{sid}.request"}},
                "application/jose+json": {"schema": {"$ref": "#/components/schemas/Jws"}},
            },
        },
        "responses": {
            "200": _delivered_response(f"{sid}.response"),
            **_problem_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 502, 503, 504),
        },
    }


def _parameter(path: str, name: str) -> dict[str, Any]:
    where = "path" if "{" + name + "}" in path else "query"
    if name in _HEADER_PARAMETERS:
        where = "header"
    return {
        "name": name,
        "in": where,
        "required": where == "path" or (path, name) in _REQUIRED_QUERY,
        "schema": _PARAMETERS[name],
    }


def _operation(op: _Op) -> dict[str, Any]:
    """One of ``_OPERATIONS``: its parameters, its 200 media types and its problem statuses."""
    ok: dict[str, Any] = {"description": "OK", "content": {m: {} for m in op.ok}}
    if op.ok == (_JSON,):
        ok["content"] = {_JSON: {"schema": {"type": "object"}}}
    doc: dict[str, Any] = {
        "summary": op.summary,
        "description": f"Who: {op.who}.",
        "responses": {"200": ok, **_problem_responses(*op.problems)},
    }
    for status, media in op.also:
        doc["responses"][str(status)]["content"][media] = {}
    if op.params:
        doc["parameters"] = [_parameter(op.path, n) for n in op.params]
    return doc


def _public_paths() -> dict[str, Any]:
    """Keys, this document, the probes and the metrics: no authentication; a problem response
    only where collecting can fail (the metrics)."""
    return {
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys, current and retired",
                "responses": {"200": {"description": "JWK set"}},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format), summed over the workers",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {}}},
                    **_problem_responses(503),
                },
            }
        },
    }


_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A role's token (operator, auditor, admin); in development also a"
        " participant's token.",
    },
    "mtls": {
        "type": "mutualTLS",
        "description": "A client certificate under the trust anchors naming a participant,"
        " or the participant a role is bound to.",
    },
}
_CREDENTIALS: list[dict[str, list[str]]] = [{"bearer": []}, {"mtls": []}]  # Either one.


def openapi_document(dep: Deployment) -> dict[str, Any]:
    """The document: one exchange path per service, then ``_OPERATIONS``, then the public paths."""
    paths: dict[str, Any] = {}
    schemas = _base_schemas()
    for sid, svc in dep.services.items():
        schemas[f"{sid}.request"] = svc.request_schema
        schemas[f"{sid}.response"] = svc.response_schema
        paths[f"/v1/exchange/{sid}"] = {"post": _exchange_operation(sid, svc)}
    for op in _OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    paths.update(_public_paths())
    for path, ops in paths.items():
        for method, doc in ops.items():
            rule = authz.rule_for(method.upper(), path)
            if rule is not None and not rule.own_auth:  # The exchange authenticates itself.
                doc["security"] = [] if rule.public else [dict(c) for c in _CREDENTIALS]
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Integration gateway {dep.config.gateway.id}", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": _SECURITY_SCHEMES},
    }
