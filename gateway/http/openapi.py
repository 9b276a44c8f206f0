"""The OpenAPI 3.1 description of this gateway, generated from the loaded deployment.

Generated rather than hand-written so it cannot drift from the services actually served: each
service's request and response schemas are embedded as they are enforced.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Deployment, LoadedService

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_responses(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "RFC 9457 problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for c in codes
    }


_OPERATIONS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "/v1/exchanges/{exchange_id}",
        "get",
        "State of one exchange from its audit records",
        "its sender, operators, admins",
        ("exchange_id",),
    ),
    (
        "/v1/exchanges/{exchange_id}/proof",
        "get",
        "Inclusion proof bundle of an exchange (completes its receipt)",
        "its sender, operators, auditors, admins",
        ("exchange_id",),
    ),
    (
        "/v1/audit/records",
        "get",
        "Search audit records (cursor pagination)",
        "operators, auditors, admins",
        (
            "since",
            "until",
            "sender",
            "service",
            "provider",
            "outcome",
            "exchange_id",
            "cursor",
            "limit",
        ),
    ),
    (
        "/v1/audit/records/{index}",
        "get",
        "One audit record with its leaf hash",
        "operators, auditors, admins",
        ("index",),
    ),
    (
        "/v1/audit/stream",
        "get",
        "Live tail of the audit log (Server-Sent Events, Last-Event-ID)",
        "operators, auditors, admins",
        ("from",),
    ),
    (
        "/v1/audit/export",
        "get",
        "Audit records as JSON Lines for a time range",
        "auditors, admins",
        ("since", "until"),
    ),
    (
        "/v1/audit/checkpoint",
        "get",
        "Latest signed checkpoint (C2SP signed note; JSON with Accept: application/json)",
        "anyone",
        (),
    ),
    ("/v1/audit/checkpoint", "post", "Publish a checkpoint now", "admins", ()),
    (
        "/v1/audit/proof/inclusion",
        "get",
        "RFC 9162 inclusion proof",
        "operators, auditors, admins",
        ("index", "tree_size", "exchange_id"),
    ),
    (
        "/v1/audit/proof/consistency",
        "get",
        "RFC 9162 consistency proof",
        "operators, auditors, admins",
        ("first", "second"),
    ),
    (
        "/v1/verify",
        "post",
        "Verify any artifact the gateway signed: receipt, envelope, request, checkpoint, proof",
        "security staff",
        (),
    ),
    (
        "/v1/witness/add-checkpoint",
        "post",
        "C2SP tlog-witness: cosign a peer gateway's checkpoint",
        "configured peer gateways",
        (),
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


def _operation(
    path: str, method: str, summary: str, who: str, params: tuple[str, ...]
) -> dict[str, Any]:
    """One of ``_OPERATIONS``; a parameter named in the path template is a path parameter.
    A POST reads a body, held to the body limits (413, 408)."""
    codes = (400, 401, 403, 404, *((408, 413) if method == "post" else ()))
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Who: {who}.",
        "responses": {"200": {"description": "OK"}, **_problem_responses(*codes)},
    }
    if params:
        op["parameters"] = [
            {
                "name": n,
                "in": "path" if "{" + n + "}" in path else "query",
                "required": "{" + n + "}" in path,
                "schema": {"type": "string"},
            }
            for n in params
        ]
    return op


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


def openapi_document(dep: Deployment) -> dict[str, Any]:
    """The document: one exchange path per service, then ``_OPERATIONS``, then the public paths."""
    paths: dict[str, Any] = {}
    schemas = _base_schemas()
    for sid, svc in dep.services.items():
        schemas[f"{sid}.request"] = svc.request_schema
        schemas[f"{sid}.response"] = svc.response_schema
        paths[f"/v1/exchange/{sid}"] = {"post": _exchange_operation(sid, svc)}
    for path, method, summary, who, params in _OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(path, method, summary, who, params)
    paths.update(_public_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Integration gateway {dep.config.gateway.id}", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
