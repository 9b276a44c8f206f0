"""The `gateway` command as a person uses it: init, serve, send, verify; and openssl agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SERVICES, ServerProcess

GW = [sys.executable, "-m", "gateway.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GW, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "demo"
    r = run("init", str(d))
    assert r.returncode == 0, r.stderr
    return d


def test_init_writes_a_complete_deployment(deployment: Path) -> None:
    for rel in ["gateway.toml", "pki/ca.crt", "pki/gateway.key", "pki/gateway.crt", "pki/tls.crt"]:
        assert (deployment / rel).is_file(), rel
    for pid in [
        "hcm.quan-1",
        "hcm.thu-duc",
        "hcm.so-tc",
        "hcm.ca-tp",
        "hcm.ttcds",
        "central.dan-cu",
    ]:
        assert (deployment / "participants" / pid / "cert.pem").is_file()
        assert (deployment / "participants" / pid / "key.pem").stat().st_mode & 0o077 == 0
    for sid in SERVICES:
        assert (deployment / "examples" / f"{sid}.json").is_file()
    assert "DEVELOPMENT" in (deployment / "gateway.toml").read_text()
    assert run("init", str(deployment)).returncode == 2  # refuses to overwrite


def test_openssl_verifies_every_certificate_against_the_development_ca(deployment: Path) -> None:
    ca = deployment / "pki/ca.crt"
    certs = [
        deployment / "pki/gateway.crt",
        deployment / "pki/tls.crt",
        *sorted((deployment / "participants").glob("*/cert.pem")),
    ]
    for cert in certs:
        r = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True
        )
        assert r.returncode == 0 and ": OK" in r.stdout, (cert, r.stdout, r.stderr)


def test_openssl_refuses_a_certificate_of_another_ca(deployment: Path, tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "other")).returncode == 0
    r = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(deployment / "pki/ca.crt"),
            str(tmp_path / "other/participants/hcm.quan-1/cert.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0


def test_send_then_verify_the_receipt_offline(deployment: Path, tmp_path: Path) -> None:
    server = ServerProcess(deployment / "gateway.toml")
    try:
        for sid in SERVICES:
            receipt = tmp_path / f"{sid}.receipt.json"
            r = run(
                "send",
                sid,
                str(deployment / "examples" / f"{sid}.json"),
                "--url",
                server.url,
                "--receipt",
                str(receipt),
                cwd=deployment,
            )
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["status"] == "delivered"
            v = run(
                "verify",
                str(receipt),
                "--request",
                str(deployment / "examples" / f"{sid}.json"),
                cwd=deployment,
            )
            assert v.returncode == 0, v.stdout + v.stderr
            assert "OK    request payload matches" in v.stdout
        # A refused exchange exits non-zero and prints the problem.
        r = run(
            "send",
            "budget-proposal.v1",
            str(deployment / "examples/budget-proposal.v1.json"),
            "--as",
            "central.dan-cu",
            "--url",
            server.url,
            cwd=deployment,
        )
        assert r.returncode == 1 and "403" in r.stderr
    finally:
        server.stop()


def test_verify_fails_on_a_tampered_receipt_and_on_the_wrong_payload(
    deployment: Path, tmp_path: Path
) -> None:
    server = ServerProcess(deployment / "gateway.toml")
    try:
        receipt = tmp_path / "r.json"
        sid = "citizen-lookup.v1"
        assert (
            run(
                "send",
                sid,
                str(deployment / f"examples/{sid}.json"),
                "--url",
                server.url,
                "--receipt",
                str(receipt),
                cwd=deployment,
            ).returncode
            == 0
        )
    finally:
        server.stop()
    other = tmp_path / "other.json"
    doc = json.loads((deployment / f"examples/{sid}.json").read_text())
    doc["citizen_id"] = "079203009999"
    other.write_text(json.dumps(doc))
    v = run("verify", str(receipt), "--request", str(other), cwd=deployment)
    assert v.returncode == 1 and "FAIL  request payload does not match" in v.stdout
    tampered = json.loads(receipt.read_text())
    tampered["signature"] = tampered["signature"][:-4] + (
        "AAAA" if not tampered["signature"].endswith("AAAA") else "BBBB"
    )
    receipt.write_text(json.dumps(tampered))
    v = run("verify", str(receipt), cwd=deployment)
    assert v.returncode == 1 and "FAIL" in v.stdout


def test_config_error_exits_2_with_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("[gateway]\nid = 'x'\n")
    r = run("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert "gateway.toml" in r.stderr and "gateway.id" in r.stderr


def test_serve_refuses_a_database_behind_its_published_checkpoint(tmp_path: Path) -> None:
    """Rollback guard: restore an older copy of the audit database; the gateway will not serve."""
    import shutil
    import urllib.request

    d = tmp_path / "dep"
    assert run("init", str(d)).returncode == 0
    server = ServerProcess(d / "gateway.toml")
    try:
        token = (d / "participants/hcm.quan-1/token").read_text().strip()
        body = (d / "examples/budget-proposal.v1.json").read_bytes()
        for i in range(3):
            req = urllib.request.Request(
                f"{server.url}/v1/exchange/budget-proposal.v1",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            urllib.request.urlopen(req, timeout=10).read()
            if i == 0:
                server.stop()  # a clean stop checkpoints the WAL into audit.db
                shutil.copy(d / "audit.db", tmp_path / "old-audit.db")
                server = ServerProcess(d / "gateway.toml")
        admin = (d / "roles/dtc-admin.token").read_text().strip()
        req = urllib.request.Request(
            f"{server.url}/v1/audit/checkpoint",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {admin}"},
        )
        urllib.request.urlopen(req, timeout=10).read()
    finally:
        server.stop()
    assert (d / "audit.published").is_file()
    for suffix in ("", "-wal", "-shm"):
        (d / f"audit.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old-audit.db", d / "audit.db")
    r = run("serve", "--config", str(d / "gateway.toml"), "--port", "0")
    assert r.returncode == 1
    assert "refusing to serve" in r.stderr and "published" in r.stderr


def test_audit_tail_follows_the_log_and_audit_verify_checks_it(
    deployment: Path, tmp_path: Path
) -> None:
    server = ServerProcess(deployment / "gateway.toml")
    try:
        sid = "budget-proposal.v1"
        assert (
            run(
                "send",
                sid,
                str(deployment / f"examples/{sid}.json"),
                "--url",
                server.url,
                "--receipt",
                str(tmp_path / "r.json"),
                cwd=deployment,
            ).returncode
            == 0
        )
        r = subprocess.run(
            [
                *GW,
                "audit",
                "tail",
                "--url",
                server.url,
                "--from",
                "0",
                "--max",
                "2",
                "--token-file",
                str(deployment / "roles/dtc-operator.token"),
            ],
            cwd=deployment,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert [x["index"] for x in lines] == [0, 1]
        assert all("leaf_hash" in x and "record" in x for x in lines)
        no_token = subprocess.run(
            [*GW, "audit", "tail", "--url", server.url, "--max", "1"],
            cwd=deployment,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert no_token.returncode == 1 and "401" in no_token.stderr
    finally:
        server.stop()
    v = run("audit", "verify", cwd=deployment)
    assert v.returncode == 0, v.stdout + v.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_serve_names_its_processes_and_only_the_appender_publishes_checkpoints(
    tmp_path: Path,
) -> None:
    """N workers used to run N periodic publishers; now the one writer signs each size once."""
    import time

    from gateway.audit.publisher import read_published
    from gateway.config import load

    d = tmp_path / "demo"
    assert run("init", str(d)).returncode == 0
    published = load(d / "gateway.toml").published_path()
    server = ServerProcess(d / "gateway.toml", workers=2)
    try:
        names = sorted(
            Path(f"/proc/{pid}/comm").read_text().strip() for pid in _children(server.proc.pid)
        )
        assert [n for n in names if n.startswith("gw-")] == [
            "gw-appender",
            "gw-worker-0",
            "gw-worker-1",
        ]
        for _ in range(3):
            r = run(
                "send",
                "citizen-lookup.v1",
                str(d / "examples/citizen-lookup.v1.json"),
                "--url",
                server.url,
                cwd=d,
            )
            assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cp = read_published(published)
            if cp is not None and cp.size >= 6:  # 3 exchanges, 2 records each
                break
            time.sleep(0.1)
        assert cp is not None and cp.size >= 6
        time.sleep(1.5)  # more than an interval: any other publisher would have run by now
    finally:
        log = server.stop()
    sizes = [
        json.loads(line)["size"]
        for line in log.splitlines()
        if line.startswith("{") and '"audit.checkpoint_published"' in line
    ]
    assert 6 in sizes
    assert len(sizes) == len(set(sizes)), sizes  # each size signed and written once


def test_a_gateway_listening_on_ipv6_loopback_prints_a_url_that_gateway_send_reaches(
    tmp_path: Path,
) -> None:
    """`host = "::1"` printed `http://::1:PORT` (no URL at all), and `gateway send` without
    --url built the same broken address from the config. Both now bracket the literal."""
    import socket
    import time
    import urllib.request

    d = tmp_path / "v6"
    assert run("init", str(d)).returncode == 0
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    toml = d / "gateway.toml"
    text = toml.read_text()
    assert 'host = "127.0.0.1"' in text
    text = text.replace('host = "127.0.0.1"', 'host = "::1"', 1)
    toml.write_text(text.replace("\nport = ", f"\nport = {port}\n# port = ", 1))
    proc = subprocess.Popen(
        [*GW, "serve"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"listening on http://[::1]:{port} " in first, first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://[::1]:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        sid = "citizen-lookup.v1"
        r = run("send", sid, str(d / "examples" / f"{sid}.json"), cwd=d)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "delivered"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def test_serve_warns_when_the_state_database_of_a_used_log_is_missing(tmp_path: Path) -> None:
    """The witness's cosigned checkpoints and the kept Idempotency-Key answers live in the
    state database; one lost while the gateway was stopped was silently made anew."""
    from tests.support import make_deployment, post_citizen_lookup

    cfg = make_deployment(tmp_path / "dep")
    token = (cfg.parent / "participants/hcm.quan-1/token").read_text().strip()
    server = ServerProcess(cfg)
    try:
        assert post_citizen_lookup(server.url, token) == 200
    finally:
        first = server.stop()
    assert "warning:" not in first
    (cfg.parent / "state.db").unlink()
    for leftover in cfg.parent.glob("state.db-*"):  # -wal, -shm
        leftover.unlink()
    server = ServerProcess(cfg)
    try:
        assert post_citizen_lookup(server.url, token) == 200
    finally:
        second = server.stop()
    assert "warning: audit.state_path" in second and "lost or moved" in second, second
