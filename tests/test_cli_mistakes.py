"""The `gateway` command given a user's mistake: a message naming the cause, never a traceback.

Each test runs the real command in a subprocess, as a person would, and pins the exit status
(2 for a usage or configuration problem, 1 when what was asked does not hold) and that stderr
names the cause instead of showing a Python traceback.
"""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support import ServerProcess, audit_records

GW = [sys.executable, "-m", "gateway.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GW, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr


# -- init -----------------------------------------------------------------------------------
def test_init_into_a_path_that_is_a_file_exits_2_and_says_so(tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("keep me\n")
    r = run("init", str(f))
    no_traceback(r)
    assert r.returncode == 2 and "not a directory" in r.stderr
    assert f.read_text() == "keep me\n"
    r = run("init", str(f / "sub"))
    no_traceback(r)
    assert r.returncode == 2 and str(f / "sub") in r.stderr


@pytest.mark.parametrize("port", ["70000", "-5", "eighty"])
def test_init_with_a_port_no_gateway_could_listen_on_exits_2_and_writes_nothing(
    tmp_path: Path, port: str
) -> None:
    """`gateway init DIR --port 70000` wrote a deployment, said "Next: gateway serve", and
    that deployment then refused to start (gateway.port must be 0 to 65535)."""
    d = tmp_path / "demo"
    r = run("init", str(d), "--port", port)
    no_traceback(r)
    assert r.returncode == 2 and "port" in r.stderr, r.stderr
    assert not d.exists()


# -- send -----------------------------------------------------------------------------------
SID = "citizen-lookup.v1"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mistakes") / "demo"
    assert run("init", str(d)).returncode == 0
    return d


@pytest.fixture(scope="module")
def server(deployment: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(deployment / "gateway.toml")
    try:
        yield s
    finally:
        s.stop()


def send(d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("send", SID, str(d / "examples" / f"{SID}.json"), *extra, cwd=d)


def test_send_with_a_receipt_path_that_cannot_be_written_sends_nothing_and_says_why(
    deployment: Path, server: ServerProcess, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    before = len(audit_records(deployment))
    for out in (blocker / "r.json", tmp_path):
        r = send(deployment, "--url", server.url, "--receipt", str(out))
        no_traceback(r)
        assert r.returncode == 2 and "--receipt" in r.stderr and str(out) in r.stderr
    assert len(audit_records(deployment)) == before  # refused before anything was sent


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers POST /<status>/<case>/... with a canned body: what a wrong --url may answer."""

    BODIES: ClassVar[dict[str, bytes]] = {
        "list": b"[1, 2]",
        "null": b"null",
        "string": b'"ok"',
        "no-receipt": b'{"status": "ok"}',
        "bad-id": b'{"exchange_id": "../../x", "receipt": {"protected": ""}}',
    }

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _, status, case = self.path.split("/")[:3]
        body = self.BODIES[case]
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Canned)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=10)


def _send_to(deployment: Path, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`gateway send` of the demo example to ``url`` (a canned answer), run in ``cwd``."""
    example = str(deployment / "examples" / f"{SID}.json")
    return run(
        "send", SID, example, "--config", str(deployment / "gateway.toml"), "--url", url, cwd=cwd
    )


def test_send_to_something_that_is_not_a_gateway_exits_1_without_a_traceback(
    deployment: Path, canned: str, tmp_path: Path
) -> None:
    for status, case in [
        (200, "list"),
        (500, "list"),
        (403, "null"),
        (200, "string"),
        (200, "no-receipt"),
    ]:
        r = _send_to(deployment, f"{canned}/{status}/{case}", tmp_path)
        no_traceback(r)
        assert r.returncode == 1 and f"HTTP {status}" in r.stderr, (status, case, r.stderr)
    assert list(tmp_path.iterdir()) == []  # no receipt file for an answer without a receipt


def test_send_names_the_default_receipt_file_only_from_a_well_formed_exchange_id(
    deployment: Path, canned: str, tmp_path: Path
) -> None:
    r = _send_to(deployment, f"{canned}/200/bad-id", tmp_path)
    no_traceback(r)
    assert r.returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["receipt-unknown.json"]


def test_send_with_an_unusable_participant_key_or_ca_file_exits_2_naming_the_file(
    tmp_path: Path,
) -> None:
    d = tmp_path / "demo"
    assert run("init", str(d)).returncode == 0
    mine = d / "participants/hcm.quan-1"
    good_key, good_cert = (mine / "key.pem").read_bytes(), (mine / "cert.pem").read_bytes()
    cases = [
        ("key.pem", b"not a key\n", "http://127.0.0.1:9", str(mine)),
        ("cert.pem", b"not a certificate\n", "http://127.0.0.1:9", str(mine)),
        ("cert.pem", (d / "pki/gateway.crt").read_bytes(), "http://127.0.0.1:9", str(mine)),
        ("../../pki/ca.crt", b"not a CA\n", "https://127.0.0.1:9", "trust_anchors"),
    ]
    for name, content, url, named in cases:
        (mine / name).write_bytes(content)
        r = send(d, "--url", url)
        no_traceback(r)
        assert r.returncode == 2 and named in r.stderr, (name, r.stderr)
        (mine / "key.pem").write_bytes(good_key)
        (mine / "cert.pem").write_bytes(good_cert)


def test_send_refuses_a_url_that_is_not_http_and_a_timeout_that_is_not_positive(
    deployment: Path,
) -> None:
    for bad in (["--url", "ftp://127.0.0.1:9"], ["--url", "127.0.0.1:9"], ["--url", "file:///"]):
        r = send(deployment, *bad)
        no_traceback(r)
        assert r.returncode == 2 and "--url" in r.stderr and "http://" in r.stderr, r.stderr
    for bad in ("0", "-1", "nan"):
        r = send(deployment, "--url", "http://127.0.0.1:9", "--timeout", bad)
        no_traceback(r)
        assert r.returncode == 2 and "--timeout" in r.stderr, r.stderr


def test_audit_tail_refuses_a_url_that_is_not_http(deployment: Path) -> None:
    r = run("audit", "tail", "--url", "ftp://127.0.0.1:9", "--max", "1", cwd=deployment)
    no_traceback(r)
    assert r.returncode == 2 and "--url" in r.stderr


def test_audit_tail_with_a_token_file_that_holds_no_token_exits_2_naming_it(
    deployment: Path, tmp_path: Path
) -> None:
    for name, content in [("binary", b"\xf5\x00\xff"), ("two-lines", b"dev-a\ndev-b\n")]:
        f = tmp_path / name
        f.write_bytes(content)
        r = run(
            "audit", "tail", "--token-file", str(f), "--url", "http://127.0.0.1:9", cwd=deployment
        )
        no_traceback(r)
        assert r.returncode == 2 and str(f) in r.stderr, r.stderr


def run_into_a_closed_pipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is gone, as in ``gateway audit tail | head -5``."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*GW, *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_end)


def test_send_into_a_closed_pipe_saves_the_receipt_without_a_traceback(
    deployment: Path, server: ServerProcess, tmp_path: Path
) -> None:
    """`gateway send ... | head`: the exchange happened, so its receipt (the sender's proof)
    is saved even though the answer cannot be printed; it used to be lost with a traceback."""
    receipt = tmp_path / "receipt.json"
    r = run_into_a_closed_pipe(
        "send",
        SID,
        str(deployment / "examples" / f"{SID}.json"),
        "--url",
        server.url,
        "--receipt",
        str(receipt),
        cwd=deployment,
    )
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr, r.stderr
    assert r.returncode == 1
    assert "signature" in receipt.read_text()


def test_audit_tail_into_a_closed_pipe_stops_quietly(
    deployment: Path, server: ServerProcess
) -> None:
    """`gateway audit tail | head -5`: the reader stopping is not the gateway failing; it used
    to say "cannot follow <url>: Broken pipe"."""
    send(deployment, "--url", server.url)
    r = run_into_a_closed_pipe(
        "audit",
        "tail",
        "--url",
        server.url,
        "--from",
        "0",
        "--max",
        "1",
        "--token-file",
        str(deployment / "roles/dtc-operator.token"),
        cwd=deployment,
    )
    assert r.stderr == "" and r.returncode == 1


# -- verify ---------------------------------------------------------------------------------
def test_verify_with_a_damaged_trust_anchor_file_exits_2_naming_it(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    assert run("init", str(d)).returncode == 0
    receipt = tmp_path / "receipt.json"
    receipt.write_text('{"protected": "e30", "payload": "e30", "signature": ""}')
    (d / "pki/ca.crt").write_text("not a certificate\n")
    r = run("verify", str(receipt), cwd=d)
    no_traceback(r)
    assert r.returncode == 2 and "gateway.trust_anchors[0]" in r.stderr, r.stderr


# -- serve ----------------------------------------------------------------------------------
def test_serve_on_a_port_in_use_exits_2_naming_the_address(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    assert run("init", str(d)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run("serve", "--port", str(port), cwd=d)
    no_traceback(r)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        # Nothing listens on port 1: the server is down.
        ('store = "postgres"\ndsn = "postgresql://gw:s3cret@127.0.0.1:1/test"', "audit.dsn"),
        ('store = "postgres"\ndsn = "postgresql://gw:s3cret@127.0.0.1:x/test"', "audit.dsn"),
        ('store = "postgres"\ndsn = "mysql://gw:s3cret@127.0.0.1/test"', "audit.dsn"),
        ('store = "postgres"\ndsn = "postgresql://gw:s3cret@127.0.0.1/test?schema="', "audit.dsn"),
        ('store = "sqlite"\npath = "no-such-dir/audit.db"', "audit.path"),
    ],
)
def test_serve_with_a_store_it_cannot_open_exits_2_naming_the_field(
    deployment: Path, tmp_path: Path, setting: str, field: str
) -> None:
    """A wrong DSN or a server that is down at start-up: exit 2, the field to fix, no traceback,
    and never the DSN's password."""
    d = tmp_path / "demo"
    # The module's server may be running in ``deployment``: leave its live files behind.
    live = shutil.ignore_patterns(".*", "*.db", "*.db-*", "audit.published*", "*.log")
    shutil.copytree(deployment, d, ignore=live)
    cfg = d / "gateway.toml"
    text, n = re.subn(r'(?m)^store = "sqlite"\npath = "audit.db"$', setting, cfg.read_text())
    assert n == 1
    cfg.write_text(text)
    r = run("serve", "--port", "0", cwd=d)
    no_traceback(r)
    assert r.returncode == 2 and f"{field}: cannot open" in r.stderr, r.stderr
    assert "s3cret" not in r.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ("--port", "70000"),  # was a traceback (OverflowError from bind)
        ("--port", "-1"),
        ("--workers", "-3"),  # was "listening with -3 worker(s)": no worker, and no way to stop
        ("--workers", "0"),  # was the config's value, silently
        ("--workers", "65"),  # gateway.workers allows 1 to 64
        ("--host", ""),  # was the config's value, silently
    ],
)
def test_serve_flags_that_override_the_config_are_checked_like_it(
    deployment: Path, flags: tuple[str, str]
) -> None:
    """`gateway serve` flags override gateway.host, gateway.port and gateway.workers; they
    went around the config's checks."""
    r = subprocess.run(
        [*GW, "serve", *flags], cwd=deployment, capture_output=True, text=True, timeout=30
    )
    no_traceback(r)
    assert r.returncode == 2 and flags[0] in r.stderr, r.stderr
    assert "listening" not in r.stdout


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('path = "audit.db"', 'path = "no-such-dir/audit.db"', "audit.path"),
        ('path = "audit.db"', 'path = "pki"', "audit.path"),
        ('state_path = "state.db"', 'state_path = "no-such-dir/state.db"', "audit.state_path"),
        ('published_path = "audit.published"', 'published_path = "pki"', "audit.published_path"),
        (  # nothing listens on port 1; the DSN's password must not be shown either
            'store = "sqlite"',
            'store = "postgres"\ndsn = "postgresql://gw:S3cret-pw@127.0.0.1:1/gateway"',
            "audit.dsn",
        ),
        (
            'store = "sqlite"',
            'store = "postgres"\ndsn = "postgresql://gw:S3cret-pw@127.0.0.1:5432/x?sslmode=bogus"',
            "audit.dsn",
        ),
    ],
)
def test_serve_with_a_store_that_cannot_be_opened_exits_2_naming_the_field(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    """A store path in a missing directory (or a directory), or a PostgreSQL DSN that cannot
    connect, stopped `gateway serve` with a Python traceback instead of the file and field."""
    d = tmp_path / "demo"
    assert run("init", str(d)).returncode == 0
    cfg = d / "gateway.toml"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    r = run("serve", "--port", "0", cwd=d)
    no_traceback(r)
    assert r.returncode == 2, r.stderr
    assert str(cfg) in r.stderr and field in r.stderr, r.stderr
    assert "S3cret-pw" not in r.stderr + r.stdout


_WATCH_INIT = """
import os, stat, sys
from pathlib import Path
from gateway import cli

target, seen, busy = Path(sys.argv[1]), [], [False]

def private(p):
    return p.suffix == ".key" or p.name in ("key.pem", "token") or p.suffix == ".token"

def hook(event, args):
    # Before every file opened or chmod-ed: no private file may be open to others, even briefly.
    if event not in ("open", "os.chmod") or busy[0] or not target.exists():
        return
    busy[0] = True
    try:
        for p in target.rglob("*"):
            if p.is_file() and private(p) and p.stat().st_mode & 0o077:
                seen.append(f"{p.relative_to(target)} {stat.filemode(p.stat().st_mode)}")
    finally:
        busy[0] = False

os.umask(0o022)
sys.addaudithook(hook)
code = cli.main(["init", str(target)])
for line in sorted(set(seen)):
    print("EXPOSED", line)
sys.exit(code)
"""


def test_init_never_lets_a_private_key_or_token_be_readable_by_others_even_briefly(
    tmp_path: Path,
) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _WATCH_INIT, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("EXPOSED")] == []
