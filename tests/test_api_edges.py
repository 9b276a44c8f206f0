"""Edges of the operators' and auditors' HTTP surface on a real gateway on 127.0.0.1: wrong
methods, repeated parameters, a failing store, and the OpenAPI document against what is served.

Every answer to bad input is an RFC 9457 problem with a status the client can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import Gateway, Provider, make_deployment, running_gateway

PROBLEM = "application/problem+json"


@pytest.fixture
async def gw(tmp_path: Path, provider: Provider) -> AsyncIterator[Gateway]:
    cfg = make_deployment(tmp_path / "dep", provider_port=provider.port, timeout=2)
    async with running_gateway(cfg) as g:
        yield g


def role(gw: Gateway, rid: str) -> dict[str, str]:
    token = (gw.dir / "roles" / f"{rid}.token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def call(
    gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.url + path, headers=headers or {}) as r,
    ):
        raw = await r.read()
        ctype = r.headers.get("Content-Type", "")
        is_json = ctype.startswith(("application/json", PROBLEM))
        body: Any = orjson.loads(raw) if is_json and raw else raw
        return r.status, dict(r.headers), body


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/audit/records", {"GET", "HEAD"}),
        ("DELETE", "/v1/audit/checkpoint", {"GET", "HEAD", "POST"}),
        ("GET", "/v1/verify", {"POST"}),
        ("PATCH", "/metrics", {"GET", "HEAD"}),
        ("HEAD", "/v1/audit/stream", {"GET"}),
    ],
)
async def test_a_wrong_method_is_a_405_problem_naming_the_allowed_methods(
    gw: Gateway, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 15.5.6: a 405 must carry ``Allow``; clients and scanners read it."""
    status, headers, body = await call(gw, method, path, role(gw, "dtc-admin"))
    assert status == 405
    assert headers["Content-Type"].startswith(PROBLEM)
    assert {m.strip() for m in headers["Allow"].split(",")} == allowed
    if method != "HEAD":
        assert body["type"] == "urn:gateway:problem:method-not-allowed"
        assert body["instance"] == path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit/records?sender=hcm.quan-1&sender=hcm.so-tc",
        "/v1/audit/records?limit=1&limit=500",
        "/v1/audit/export?since=2026-01-01T00:00:00Z&since=2020-01-01T00:00:00Z",
        "/v1/audit/proof/consistency?first=0&first=1&second=1",
        "/v1/audit/proof/inclusion?index=0&index=1&tree_size=2",
    ],
)
async def test_a_parameter_given_twice_is_a_400_not_silently_the_first_value(
    gw: Gateway, path: str
) -> None:
    """``sender=a&sender=b`` must not answer for ``a`` alone as if ``b`` were not asked."""
    status, headers, body = await call(gw, "GET", path, role(gw, "dtc-admin"))
    assert status == 400, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert "more than once" in body["detail"]
