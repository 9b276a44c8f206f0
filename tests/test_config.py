"""A wrong config stops start-up with a message naming file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load
from gateway.devinit import init_deployment
from gateway.errors import ConfigError
from gateway.http.app import create_app


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    init_deployment(tmp_path / "dep")
    return tmp_path / "dep" / "gateway.toml"


def test_the_init_deployment_loads_and_builds(cfg: Path) -> None:
    dep = load(cfg)
    assert set(dep.services) == {
        "citizen-lookup.v1",
        "pilot-progress-report.v1",
        "budget-proposal.v1",
    }
    create_app(dep)


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        ("workers = 1", "workers = 1\nwrokers = 2", "gateway.wrokers", "unknown field"),
        ("port = 8080", 'port = "eighty"', "gateway.port", "integer"),
        ('id = "hcm.ttcds.gw"', 'id = "Not An Id"', "gateway.id", "pattern"),
        ("development = true", "development = false", "(top level)", "development only"),
        (
            'participant = "hcm.quan-1"',
            'participant = "hcm.nobody"',
            "(top level)",
            "unknown participant",
        ),
        ('mode = "sync"', 'mode = "fast"', "services[0].mode", "'sync'"),
        ('key = "pki/gateway.key"', 'key = "pki/missing.key"', "gateway.key", "cannot read"),
        (
            'connector = "demo"',
            'connector = "carrier-pigeon"',
            "services[0].connector",
            "unknown connector",
        ),
        ("max_json_depth = 64", "max_json_depth = 100000", "limits.max_json_depth", "less than"),
        (  # a pending key must not expire while its first delivery may still run
            "delivery_timeout_seconds = 10",
            "delivery_timeout_seconds = 100\nidempotency_ttl_seconds = 120",
            "limits",
            "idempotency_ttl_seconds must be at least",
        ),
        (
            "workers = 1",
            'workers = 1\nintermediates = ["pki/missing.crt"]',
            "gateway.intermediates[0]",
            "cannot read",
        ),
        (
            "workers = 1",
            'workers = 1\nintermediates = ["participants/hcm.quan-1/cert.pem"]',
            "gateway.intermediates",
            "not a CA certificate",
        ),
        (  # an empty host is every interface to bind(): never what an operator meant by ""
            'host = "127.0.0.1"',
            'host = ""',
            "gateway.host",
            "at least 1 character",
        ),
        (  # the log signs its checkpoints under its origin as the note key name
            'origin = "gateway.ttcds.hcm.dev/audit"',
            'origin = "gateway.ttcds.hcm.dev/audit+2"',
            "audit.origin",
            "plus",
        ),
    ],
)
def test_config_errors_name_file_field_and_problem(
    cfg: Path, old: str, new: str, field: str, problem: str
) -> None:
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert e.value.field == field
    assert problem in e.value.problem


def test_a_schema_that_fails_the_meta_schema_stops_start_up(cfg: Path) -> None:
    schema = cfg.parent / "schemas" / "citizen-lookup.v1.request.json"
    schema.write_text('{"type": "objekt"}')
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert "citizen-lookup.v1.request.json" in str(e.value)


def test_toml_syntax_error_names_the_file(cfg: Path) -> None:
    cfg.write_text("[gateway\n")
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert e.value.field == "(syntax)"


def test_two_grants_for_one_participant_on_one_service_stop_start_up(cfg: Path) -> None:
    """The access list keeps one grant per participant: a second one silently replaced the
    first, so every exchange was audited under the last purpose and legal basis listed."""
    text = cfg.read_text()
    old = 'participant = "hcm.thu-duc"'
    assert old in text
    cfg.write_text(text.replace(old, 'participant = "hcm.quan-1"', 1))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert "citizen-lookup.v1" in e.value.problem and "hcm.quan-1" in e.value.problem
