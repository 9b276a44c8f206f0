"""The OpenAPI 3.1 description of this gateway, generated from the loaded deployment.

Generated rather than hand-written so it cannot drift from the services actually served: each
service's request and response schemas are embedded as they are enforced.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Deployment

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_responses(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "RFC 9457 problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for c in codes
    }


def openapi_document(dep: Deployment) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
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
    for sid, svc in dep.services.items():
        req_name, resp_name = f"{sid}.request", f"{sid}.response"
        schemas[req_name] = svc.request_schema
        schemas[resp_name] = svc.response_schema
        paths[f"/v1/exchange/{sid}"] = {
            "post": {
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
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{req_name}"}
                        },
                        "application/jose+json": {"schema": {"$ref": "#/components/schemas/Jws"}},
                    },
                },
                "responses": {
                    "200": {
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
                    },
                    **_problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 502, 503, 504),
                },
            }
        }
    paths["/.well-known/jwks.json"] = {
        "get": {
            "summary": "Public keys, current and retired",
            "responses": {"200": {"description": "JWK set"}},
        }
    }
    paths["/healthz"] = {
        "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Readiness",
            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Integration gateway {dep.config.gateway.id}", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
