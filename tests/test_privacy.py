"""No personal data in logs or the audit log: grep all output of a run for the citizen ids sent."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from gateway.devinit import init_deployment
from tests.support import ServerProcess, example, signed_request

IDS = ["079203004711", "079185006622", "001099008833"]
NAMES = ["Nguyễn Văn A"]


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_no_citizen_id_reaches_logs_or_audit_log(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    init_deployment(d)
    server = ServerProcess(d / "gateway.toml")
    statuses = []
    try:
        url = f"{server.url}/v1/exchange/citizen-lookup.v1"
        token = (d / "participants/hcm.quan-1/token").read_text().strip()
        for cid in IDS:
            good = {**example("citizen-lookup.v1"), "citizen_id": cid}
            statuses.append(
                _post(
                    url,
                    signed_request(d, "hcm.quan-1", "citizen-lookup.v1", good),
                    {"Content-Type": "application/jose+json"},
                )
            )
            # Rejected on purpose, in many ways: each must still keep the id out of every output.
            bad = {**good, "citizen_id": cid + "9", "full_name": NAMES[0]}
            statuses.append(
                _post(
                    url,
                    json.dumps(bad).encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                )
            )
            statuses.append(
                _post(
                    url,
                    f'{{"citizen_id": "{cid}", "citizen_id": "{cid}"}}'.encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                )
            )
            statuses.append(
                _post(url, json.dumps(good).encode(), {"Content-Type": "application/json"})
            )
            statuses.append(
                _post(
                    url,
                    signed_request(d, "hcm.so-tc", "citizen-lookup.v1", good),
                    {"Content-Type": "application/jose+json"},
                )
            )
    finally:
        output = server.stop()
    assert statuses.count(200) == len(IDS) and {422, 400, 401, 403} <= set(statuses)
    assert "exchange.delivered" in output and "exchange.rejected" in output
    conn = sqlite3.connect(d / "audit.db")
    audit = "\n".join(r[0].decode() for r in conn.execute("SELECT record FROM audit_records"))
    conn.close()
    assert audit.count("exchange.") >= len(statuses)
    dumps = {"logs": output, "audit": audit}
    for where, text in dumps.items():
        for secret in [*IDS, *(i + "9" for i in IDS), *NAMES]:
            assert secret not in text, f"{secret} found in {where}"
    raw_db = (d / "audit.db").read_bytes() + (d / "state.db").read_bytes()
    for cid in IDS:
        assert cid.encode() not in raw_db


def _logged_text(output: str) -> str:
    """Every log line decoded (JSON escapes undone), so an escaped name is found too."""
    out = []
    for line in output.splitlines():
        try:
            out.append(json.dumps(json.loads(line), ensure_ascii=False))
        except ValueError:
            out.append(line)
    return "\n".join(out)


def test_malformed_json_log_lines_name_no_key_or_number_of_the_body(tmp_path: Path) -> None:
    """A duplicate key was quoted, and an overflowing number echoed, in the rejection's log
    line (``reason``) as in the client's problem detail. Keys are payload too: a map keyed by
    a person's name or phone number put that name or number into the structured log."""
    d = tmp_path / "dep"
    init_deployment(d)
    name, phone = "Trần Thị Bích Ngọc", "0903123456"
    token = (d / "participants/hcm.quan-1/token").read_text().strip()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    url_of = "{}/v1/exchange/pilot-progress-report.v1".format
    bodies = [
        f'{{"members": {{"{name}": 1, "{name}": 2}}}}',
        f'{{"{phone}": 1, "{phone}": 2}}',
        f'{{"phone": {phone}1e999}}',
    ]
    server = ServerProcess(d / "gateway.toml")
    try:
        statuses = [_post(url_of(server.url), b.encode(), headers) for b in bodies]
    finally:
        output = server.stop()
    assert statuses == [400, 400, 400]
    assert output.count("malformed-json") >= len(bodies)
    logged = _logged_text(output)
    assert name not in logged and phone not in logged, logged


def test_signed_request_members_a_sender_got_wrong_are_not_echoed_into_the_log(
    tmp_path: Path,
) -> None:
    """A signed request's members are the sender's data like its payload: a wrong 'service'
    (signed for one service, posted to another) was quoted, whole and unbounded, in the
    rejection's log line. The sender may see its own value in the problem; the log may not."""
    d = tmp_path / "dep"
    init_deployment(d)
    name = "Trần Thị Bích Ngọc 0903123456"
    body = signed_request(d, "hcm.quan-1", name, example("citizen-lookup.v1"))
    server = ServerProcess(d / "gateway.toml")
    try:
        status = _post(
            f"{server.url}/v1/exchange/citizen-lookup.v1",
            body,
            {"Content-Type": "application/jose+json"},
        )
    finally:
        output = server.stop()
    assert status == 400
    assert "exchange.rejected" in output
    logged = _logged_text(output)
    assert name not in logged and "0903123456" not in logged, logged
