"""Every response names its request id, and every log line of that request carries it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from gateway.devinit import init_deployment
from tests.support import ServerProcess, example, signed_request


def _call(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers)


def test_request_ids_are_kept_or_made_and_logged_with_the_request(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    init_deployment(d)
    server = ServerProcess(d / "gateway.toml")
    try:
        url = f"{server.url}/v1/exchange/citizen-lookup.v1"
        jose = {"Content-Type": "application/jose+json"}
        body = signed_request(d, "hcm.quan-1", "citizen-lookup.v1", example("citizen-lookup.v1"))
        status, headers = _call(url, body, {**jose, "X-Request-Id": "unit-trace-42"})
        assert status == 200 and headers["X-Request-Id"] == "unit-trace-42"
        # Not plain (a space, too long): replaced by an id of ours, not logged as given.
        for bad in ["two words", "x" * 200]:
            status, headers = _call(
                url, b"{}", {"Content-Type": "application/json", "X-Request-Id": bad}
            )
            assert status == 401 and headers["X-Request-Id"] not in ("", bad)
        status, headers = _call(url, b"{}", {"Content-Type": "application/json"})
        assert status == 401 and len(headers["X-Request-Id"]) == 36  # a UUIDv7 of ours
        made = headers["X-Request-Id"]
        # A streamed response (the export) names its request id too.
        token = (d / "roles/dtc-auditor.token").read_text().strip()
        status, headers = _call(
            f"{server.url}/v1/audit/export", None, {"Authorization": f"Bearer {token}"}
        )
        assert status == 200 and headers["X-Request-Id"]
    finally:
        output = server.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    delivered = [e for e in lines if e.get("event") == "exchange.delivered"]
    assert [e["request_id"] for e in delivered] == ["unit-trace-42"]
    rejected = [e for e in lines if e.get("event") == "exchange.rejected"]
    assert made in {e["request_id"] for e in rejected}
    assert not any("two words" in line for line in output.splitlines())
