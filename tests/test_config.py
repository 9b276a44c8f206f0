"""A wrong config stops start-up with a message naming file, field and problem."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load
from gateway.devinit import init_deployment
from gateway.errors import ConfigError
from gateway.http.app import create_app, server_ssl_context


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
        ("development = true", "development = false", "participants[0].auth", "development only"),
        (
            'participant = "hcm.quan-1"',
            'participant = "hcm.nobody"',
            "services[0].access[0].participant",
            "unknown participant",
        ),
        (
            'provider = "hcm.so-tc"',
            'provider = "hcm.so-tc-typo"',
            "services[2].provider",
            "not a participant",
        ),
        ('id = "hcm.thu-duc"', 'id = "hcm.quan-1"', "participants[1].id", "repeats"),
        ('id = "budget-proposal.v1"', 'id = "citizen-lookup.v1"', "services[2].id", "repeats"),
        ('id = "dtc-auditor"', 'id = "dtc-operator"', "roles[1].id", "repeats"),
        # A boolean where a number belongs was read as 1 (one worker, a burst of one, a
        # one-second delivery timeout): a type mistake must stop start-up, not pick a value.
        ("workers = 1", "workers = true", "gateway.workers", "valid integer"),
        (
            "delivery_timeout_seconds = 10",
            "delivery_timeout_seconds = true",
            "limits.delivery_timeout_seconds",
            "valid number",
        ),
        (
            "max_json_depth = 64",
            "max_json_depth = 64\nrate_burst = true",
            "limits.rate_burst",
            "valid integer",
        ),
        (
            'store = "sqlite"',
            'store = "sqlite"\nmax_batch = true',
            "audit.max_batch",
            "valid integer",
        ),
        (  # the published checkpoint replaced the state database: a worker traceback
            'state_path = "state.db"',
            'state_path = "audit.published"',
            "audit.published_path",
            "audit.state_path",
        ),
        ('path = "audit.db"', 'path = "./state.db"', "audit.state_path", "audit.path"),
        (  # a checkpoint key without the log's name signed nothing, and nothing said so
            'origin = "gateway.ttcds.hcm.dev/audit"',
            "",
            "audit.origin",
            "checkpoint_key",
        ),
        (  # a grant must say why and under which law: blank text says neither
            'purpose = "Lập và gửi dự toán ngân sách năm"',
            'purpose = "   "',
            "services[2].access[0].purpose",
            "blank",
        ),
        (
            'legal_basis = "Luật Ngân sách nhà nước 2015, Điều 44"',
            'legal_basis = "\\t"',
            "services[2].access[0].legal_basis",
            "blank",
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
        (
            "max_json_depth = 64",
            "max_json_depth = 64\nrate_per_second = 1e-320",
            "limits.rate_per_second",
            "greater than or equal",
        ),
        (  # RFC 8785 canonicalization stops at 200 and the envelope nests the payload once more
            "max_json_depth = 64",
            "max_json_depth = 200",
            "limits.max_json_depth",
            "less than or equal to 199",
        ),
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
            "gateway.intermediates[0]",
            "participants/hcm.quan-1/cert.pem: CN=hcm.quan-1 is not a CA certificate",
        ),
        (  # a participant's certificate listed as an anchor: the field is the anchor's
            'trust_anchors = ["pki/ca.crt"]',
            'trust_anchors = ["pki/ca.crt", "participants/hcm.quan-1/cert.pem"]',
            "gateway.trust_anchors[1]",
            "participants/hcm.quan-1/cert.pem: CN=hcm.quan-1 is not a CA certificate",
        ),
        (  # the JWKS would publish a participant's key as one of the gateway's
            "workers = 1",
            'workers = 1\nretired_certificates = ["participants/hcm.quan-1/cert.pem"]',
            "gateway.retired_certificates[0]",
            "names the participant 'hcm.quan-1'",
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


def test_a_config_saved_with_a_utf8_byte_order_mark_loads(cfg: Path) -> None:
    plain = load(cfg).config
    cfg.write_bytes(b"\xef\xbb\xbf" + cfg.read_bytes())
    assert load(cfg).config == plain


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
    assert e.value.field == "services[0].access[1].participant"
    assert "citizen-lookup.v1" in e.value.problem and "hcm.quan-1" in e.value.problem


def _install_gateway_cert(cfg: Path, key: object, cert: object) -> None:
    from gateway.crypto import devpki

    (cfg.parent / "pki/gateway.key").write_bytes(devpki.pem_private_key(key))  # type: ignore[arg-type]
    (cfg.parent / "pki/gateway.crt").write_bytes(devpki.pem_certificate(cert))  # type: ignore[arg-type]


def _dev_ca(cfg: Path) -> tuple[object, object]:
    from gateway.crypto.keys import load_certificates, load_private_key

    ca_key = load_private_key((cfg.parent / "pki/ca.key").read_bytes())
    ca_cert = load_certificates((cfg.parent / "pki/ca.crt").read_bytes())[0]
    return ca_key._key, ca_cert


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (  # a district's key and certificate: receipts would be signed by hcm.quan-1
            lambda ca_key, ca_cert, now: devpki_issue(ca_key, ca_cert, "hcm.quan-1", now),
            "hcm.ttcds.gw",
        ),
        (  # the gateway's own id, but from a CA the deployment does not trust
            lambda ca_key, ca_cert, now: devpki_issue(*other_ca(now), "hcm.ttcds.gw", now),
            "trust anchor",
        ),
        (  # expired yesterday: every receipt signed from now on fails verification
            lambda ca_key, ca_cert, now: devpki_issue(
                ca_key, ca_cert, "hcm.ttcds.gw", now - timedelta(days=10), days=9
            ),
            "trust anchor",
        ),
    ],
)
def test_a_gateway_certificate_receipts_could_not_be_verified_under_stops_start_up(
    cfg: Path, make: Any, problem: str
) -> None:
    """The gateway signs receipts and envelopes with gateway.key under gateway.certificate;
    verifiers (POST /v1/verify, `gateway verify`) require that chain to reach a trust anchor
    and to name gateway.id. A certificate of another participant, of an untrusted CA or past
    its validity was accepted, and the gateway then served receipts that fail verification."""
    ca_key, ca_cert = _dev_ca(cfg)
    key, cert = make(ca_key, ca_cert, datetime.now(UTC))
    _install_gateway_cert(cfg, key, cert)
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert e.value.field == "gateway.certificate"
    assert problem in e.value.problem, e.value.problem


def devpki_issue(
    ca_key: Any, ca_cert: Any, pid: str, now: datetime, *, days: int = 825
) -> tuple[Any, Any]:
    from gateway.crypto import devpki

    return devpki.issue(ca_key, ca_cert, pid, now=now, days=days, purposes=("signing",))


def other_ca(now: datetime) -> tuple[Any, Any]:
    from gateway.crypto import devpki

    return devpki.make_ca("Someone else", now=now)


@pytest.mark.parametrize(
    "other", ["participants/hcm.thu-duc/cert.pem", "pki/ca.crt", "pki/gateway.crt"]
)
def test_a_participant_certificate_that_names_someone_else_stops_start_up(
    cfg: Path, other: str
) -> None:
    """participants[i].certificate pins the one certificate that may speak for that participant.
    One naming another participant (a copy-paste slip), the CA or the gateway was accepted:
    hcm.quan-1 then could never authenticate by mTLS or signature, with nothing said at start."""
    text = cfg.read_text()
    old = 'certificate = "participants/hcm.quan-1/cert.pem"'
    assert old in text
    cfg.write_text(text.replace(old, f'certificate = "{other}"', 1))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert e.value.field == "participants[0].certificate"
    assert "hcm.quan-1" in e.value.problem, e.value.problem


@pytest.mark.parametrize(
    ("copy_from", "copy_to", "field"),
    [
        (2, 1, "roles[2].token_sha256"),  # the auditor's token was the admin's: it got admin
        (3, 4, "participants[1].token_sha256"),  # hcm.quan-1's token signed in as hcm.thu-duc
    ],
)
def test_a_bearer_token_shared_by_two_roles_or_participants_stops_start_up(
    cfg: Path, copy_from: int, copy_to: int, field: str
) -> None:
    """Tokens are looked up by their hash, one holder per hash: a copied [[roles]] or
    [[participants]] block that kept the hash silently gave the token to whichever holder
    came last (another role, or another participant's identity in the audit log)."""
    text = cfg.read_text()
    hashes = re.findall(r'token_sha256 = "([0-9a-f]{64})"', text)
    assert len(hashes) == 9  # 3 roles, then 6 participants
    cfg.write_text(text.replace(hashes[copy_to], hashes[copy_from]))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert e.value.field == field
    assert "token" in e.value.problem


def test_a_trust_anchor_file_with_a_non_ascii_comment_serves_tls(cfg: Path) -> None:
    """PEM files may carry explanatory text around the blocks (RFC 7468), and a Vietnamese CA
    describes itself in Vietnamese. The anchors loaded, but the TLS set-up decoded the file as
    ASCII and `gateway serve` died with a UnicodeDecodeError traceback."""
    ca = cfg.parent / "pki/ca.crt"
    ca.write_bytes("Chứng thư số gốc (phát triển) của TTCĐS\n".encode() + ca.read_bytes())
    text = cfg.read_text()
    assert "# tls = {" in text
    cfg.write_text(text.replace("# tls = {", "tls = {", 1))
    dep = load(cfg)
    create_app(dep)
    ctx = server_ssl_context(dep)
    assert ctx is not None and ctx.cert_store_stats()["x509_ca"] == 1


def test_the_repr_of_a_loaded_deployment_and_of_connector_settings_shows_no_secret(
    cfg: Path,
) -> None:
    """A Deployment holds the private keys' PEM and the config holds the PostgreSQL DSN with
    its password; the http connector's settings hold provider credentials and headers. Their
    reprs showed all of it, so one `log.info(..., deployment=dep)`, a debugger dump or an
    assertion message put the gateway's private keys and passwords in the clear."""
    from connectors._http_settings import parse_settings
    from gateway.connector import ConnectorContext

    text = cfg.read_text()
    old = 'store = "sqlite"'
    assert old in text
    cfg.write_text(
        text.replace(old, 'store = "postgres"\ndsn = "postgresql://gw:S3cret-pw@127.0.0.1/gw"')
    )
    dep = load(cfg)
    shown = repr(dep) + str(dep) + repr(dep.config) + repr(dep.config.audit)
    assert "S3cret-pw" not in shown
    assert "PRIVATE KEY" not in shown
    settings = parse_settings(
        {"url": "https://svc:Pr0vider-pw@127.0.0.1/x", "headers": {"X-Api-Key": "K3y-value"}},
        ConnectorContext(service="citizen-lookup.v1", provider="central.dan-cu", config_dir="."),
    )
    assert "Pr0vider-pw" not in repr(settings) and "K3y-value" not in repr(settings)
    assert base64.b64encode(b"svc:Pr0vider-pw").decode() not in repr(settings)


def test_a_gateway_id_that_is_also_a_participant_stops_start_up(cfg: Path) -> None:
    """Verifiers accept a receipt or envelope as the gateway's when its signer certificate
    names gateway.id. With gateway.id = "hcm.ttcds" and a participant "hcm.ttcds" (the
    operating centre registered as a unit too), that participant's own key signed receipts
    that verified as the gateway's: the registry must keep the two identities apart."""
    ca_key, ca_cert = _dev_ca(cfg)
    _install_gateway_cert(cfg, *devpki_issue(ca_key, ca_cert, "hcm.ttcds", datetime.now(UTC)))
    text = cfg.read_text()
    assert 'id = "hcm.ttcds.gw"' in text
    cfg.write_text(text.replace('id = "hcm.ttcds.gw"', 'id = "hcm.ttcds"', 1))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.file.endswith("gateway.toml")
    assert e.value.field == "gateway.id"
    assert "participants[4]" in e.value.problem, e.value.problem


@pytest.mark.parametrize("field", ["trust_anchors", "intermediates"])
def test_a_ca_file_that_also_holds_a_private_key_stops_start_up(cfg: Path, field: str) -> None:
    """Anchor and intermediate files are public (copied to every participant): a private key in
    one (a CA key pasted beside its certificate) is refused, not silently skipped."""
    bundle = cfg.parent / "pki/bundle.pem"
    bundle.write_bytes(
        (cfg.parent / "pki/ca.crt").read_bytes() + (cfg.parent / "pki/ca.key").read_bytes()
    )
    text = cfg.read_text()
    if field == "trust_anchors":
        text = text.replace('trust_anchors = ["pki/ca.crt"]', 'trust_anchors = ["pki/bundle.pem"]')
    else:
        text = text.replace("workers = 1", 'workers = 1\nintermediates = ["pki/bundle.pem"]')
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.field == f"gateway.{field}[0]"
    assert "bundle.pem holds a private key" in e.value.problem


def test_a_checkpoint_key_that_is_the_gateway_signing_key_stops_start_up(cfg: Path) -> None:
    """An Ed25519 gateway.key given as audit.checkpoint_key too was accepted: one key signed
    receipts and checkpoint notes, and the JWKS listed its kid twice (once without the x5c a
    JWS verifier needs), so a verifier picking the first entry by kid could fail receipts."""
    from gateway.crypto import devpki

    ca_key, ca_cert = _dev_ca(cfg)
    key, cert = devpki.issue(
        ca_key,  # type: ignore[arg-type]
        ca_cert,  # type: ignore[arg-type]
        "hcm.ttcds.gw",
        now=datetime.now(UTC),
        key_type="ed25519",
        purposes=("signing",),
    )
    _install_gateway_cert(cfg, key, cert)
    create_app(load(cfg))  # an Ed25519 gateway key of its own is fine
    text = cfg.read_text()
    old = 'checkpoint_key = "pki/checkpoint.key"'
    assert old in text
    cfg.write_text(text.replace(old, 'checkpoint_key = "pki/gateway.key"', 1))
    with pytest.raises(ConfigError) as e:
        create_app(load(cfg))
    assert e.value.field == "audit.checkpoint_key"
    assert "gateway's own signing key" in e.value.problem, e.value.problem
