"""``gateway init DIR``: a complete development deployment modelled on Ho Chi Minh City.

Everything written here is for development: the CA says so in its name, the bearer tokens are
stored beside the keys, and ``development = true`` is set in the config. A production
deployment brings its own PKI and leaves tokens off.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import token_hash
from gateway.crypto import devpki
from gateway.crypto.keys import PrivateKey, jwk_thumbprint, load_certificates
from gateway.files import write_new

if TYPE_CHECKING:
    from cryptography import x509

GATEWAY_ID = "hcm.ttcds.gw"
ORIGIN = "gateway.ttcds.hcm.dev/audit"
#: Where ``gateway init`` puts the development CA's key, relative to the config's directory;
#: ``gateway keys rotate`` and ``gateway keys revoke`` use it when they find it there.
DEV_CA_KEY = "pki/ca.key"
ROLES = (("dtc-operator", "operator"), ("dtc-auditor", "auditor"), ("dtc-admin", "admin"))


@dataclass(frozen=True)
class DemoParticipant:
    id: str
    tier: str
    name: str


PARTICIPANTS = (
    DemoParticipant("hcm.quan-1", "unit", "Ủy ban nhân dân Quận 1"),
    DemoParticipant("hcm.thu-duc", "unit", "Ủy ban nhân dân thành phố Thủ Đức"),
    DemoParticipant("hcm.so-tc", "city", "Sở Tài chính TP.HCM"),
    DemoParticipant("hcm.ca-tp", "city", "Công an Thành phố Hồ Chí Minh"),
    DemoParticipant("hcm.ttcds", "city", "Trung tâm Chuyển đổi số TP.HCM"),
    DemoParticipant("central.dan-cu", "central", "Cơ sở dữ liệu quốc gia về dân cư"),
)

SERVICES = (
    {
        "id": "citizen-lookup.v1",
        "provider": "central.dan-cu",
        "description": "Tra cứu thông tin công dân theo số định danh cá nhân (12 chữ số)",
        "access": [
            (
                "hcm.quan-1",
                "Xác minh thông tin công dân khi giải quyết thủ tục hành chính",
                "Nghị định 47/2020/NĐ-CP, Điều 14; Luật Căn cước 2023, Điều 10",
            ),
            (
                "hcm.thu-duc",
                "Xác minh thông tin công dân khi giải quyết thủ tục hành chính",
                "Nghị định 47/2020/NĐ-CP, Điều 14; Luật Căn cước 2023, Điều 10",
            ),
            (
                "hcm.ca-tp",
                "Quản lý cư trú theo Đề án 06",
                "Quyết định 06/QĐ-TTg ngày 06/01/2022; Luật Cư trú 2020, Điều 37",
            ),
        ],
    },
    {
        "id": "pilot-progress-report.v1",
        "provider": "hcm.ca-tp",
        "description": "Báo cáo tiến độ các mô hình thí điểm Đề án 06 gửi Công an Thành phố",
        "access": [
            (
                p,
                "Báo cáo định kỳ tiến độ mô hình thí điểm Đề án 06",
                "Quyết định 06/QĐ-TTg ngày 06/01/2022, Mục IV",
            )
            for p in ("hcm.quan-1", "hcm.thu-duc", "hcm.so-tc", "hcm.ttcds")
        ],
    },
    {
        "id": "budget-proposal.v1",
        "provider": "hcm.so-tc",
        "description": "Đề xuất dự toán ngân sách gửi Sở Tài chính",
        "access": [
            (p, "Lập và gửi dự toán ngân sách năm", "Luật Ngân sách nhà nước 2015, Điều 44")
            for p in ("hcm.quan-1", "hcm.thu-duc", "hcm.ca-tp", "hcm.ttcds")
        ],
    },
)


def schemas_dir() -> Path:
    """The service schemas: shipped in the wheel as gateway/_schemas, or the repo's schemas/."""
    shipped = Path(str(resources.files("gateway"))) / "_schemas"
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent / "schemas"


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Create ``path`` with its final mode: a private key or token is 0600 from its first byte.

    Writing first and chmod-ing after left each key readable by every local user (mode 0644
    under the usual umask) until the chmod, and for good if the write failed half way.
    """
    write_new(path, data, mode=0o600 if private else 0o644)


class DevCaUnreadable(Exception):
    """The development CA's key file cannot be read or loaded; the message says which and why."""


def load_dev_ca(
    anchor_pems: Sequence[bytes], path: Path
) -> tuple[PrivateKey, x509.Certificate | None]:
    """The development CA's key at ``path``, and its certificate among the trust anchors
    (``anchor_pems``), found by key; None when the key is none of theirs.

    ``gateway keys rotate`` issues with it and ``gateway keys revoke`` signs its CRL with it:
    both need the certificate that verifiers will hold the result against.
    """
    try:
        key = devpki.load_private_key_raw(path.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise DevCaUnreadable(f"cannot load the development CA key {path}: {e}") from None
    kid = jwk_thumbprint(key.public_key())
    for pem in anchor_pems:
        for cert in load_certificates(pem):
            if jwk_thumbprint(cert.public_key()) == kid:
                return key, cert
    return key, None


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dev_token(path: Path) -> str:
    """A fresh development bearer token, also written to ``path`` (0600) for the developer."""
    token = "dev-" + secrets.token_urlsafe(24)
    _write(path, token.encode() + b"\n", private=True)
    return token


def _write_gateway_pki(target: Path, now: datetime) -> tuple[PrivateKey, x509.Certificate]:
    """The CA and the gateway's own keys (signing, TLS, checkpoint, witness); returns the CA."""
    ca_key, ca_cert = devpki.make_ca("HCM DTC", now=now)
    _write(target / "pki/ca.crt", devpki.pem_certificate(ca_cert))
    _write(target / DEV_CA_KEY, devpki.pem_private_key(ca_key), private=True)
    # Empty, valid for devpki.CRL_DAYS (30 days); `gateway keys revoke` adds to it and renews it.
    _write(target / "pki/ca.crl", devpki.make_crl(ca_key, ca_cert, now=now))
    gw_key, gw_cert = devpki.issue(ca_key, ca_cert, GATEWAY_ID, now=now, purposes=("signing",))
    _write(target / "pki/gateway.crt", devpki.pem_certificate(gw_cert))
    _write(target / "pki/gateway.key", devpki.pem_private_key(gw_key), private=True)
    tls_key, tls_cert = devpki.issue(
        ca_key,
        ca_cert,
        GATEWAY_ID,
        now=now,
        purposes=("server_auth",),
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    _write(target / "pki/tls.crt", devpki.pem_certificate(tls_cert))
    _write(target / "pki/tls.key", devpki.pem_private_key(tls_key), private=True)

    cp_key = devpki.generate_key("ed25519")
    _write(target / "pki/checkpoint.key", devpki.pem_private_key(cp_key), private=True)
    w_key = devpki.generate_key("ed25519")
    _write(target / "pki/witness.key", devpki.pem_private_key(w_key), private=True)
    return ca_key, ca_cert


def _write_roles(target: Path) -> list[str]:
    """One token per operator role; returns the ``[[roles]]`` TOML blocks."""
    roles_toml = []
    for rid, role in ROLES:
        token = _dev_token(target / "roles" / f"{rid}.token")
        roles_toml.append(
            f"[[roles]]\nid = {_toml_str(rid)}\nrole = {_toml_str(role)}\n"
            f"token_sha256 = {_toml_str(token_hash(token))}\n"
        )
    return roles_toml


def _write_participants(
    target: Path, ca: tuple[PrivateKey, x509.Certificate], now: datetime
) -> list[str]:
    """A certificate, key and token per participant; returns the ``[[participants]]`` blocks."""
    participants_toml = []
    for p in PARTICIPANTS:
        key, cert = devpki.issue(*ca, p.id, now=now, purposes=("signing", "client_auth"))
        d = target / "participants" / p.id
        _write(d / "cert.pem", devpki.pem_certificate(cert))
        _write(d / "key.pem", devpki.pem_private_key(key), private=True)
        token = _dev_token(d / "token")
        participants_toml.append(
            "[[participants]]\n"
            f"id = {_toml_str(p.id)}\n"
            f"tier = {_toml_str(p.tier)}\n"
            f"name = {_toml_str(p.name)}\n"
            'auth = ["mtls", "signed", "token"]\n'
            f'certificate = "participants/{p.id}/cert.pem"\n'
            f"token_sha256 = {_toml_str(token_hash(token))}\n"
        )
    return participants_toml


def _write_services(target: Path) -> list[str]:
    """Schemas and example requests copied in; returns the ``[[services]]`` TOML blocks."""
    src = schemas_dir()
    shutil.copytree(src, target / "schemas", ignore=shutil.ignore_patterns("examples"))
    services_toml = []
    for s in SERVICES:
        sid = str(s["id"])
        example = src / "examples" / f"{sid}.json"
        _write(target / "examples" / f"{sid}.json", example.read_bytes())
        grants = "".join(
            f"[[services.access]]\nparticipant = {_toml_str(p)}\n"
            f"purpose = {_toml_str(purpose)}\nlegal_basis = {_toml_str(basis)}\n"
            for p, purpose, basis in s["access"]
        )
        services_toml.append(
            "[[services]]\n"
            f"id = {_toml_str(sid)}\n"
            f"provider = {_toml_str(str(s['provider']))}\n"
            f"description = {_toml_str(str(s['description']))}\n"
            'connector = "demo"\n'
            f'request_schema = "schemas/{sid}.request.json"\n'
            f'response_schema = "schemas/{sid}.response.json"\n'
            'mode = "sync"\n'
            f"{grants}"
        )
    return services_toml


def _config_header(port: int) -> str:
    """The fixed sections of gateway.toml, ahead of the roles, participants and services."""
    return (
        "# DEVELOPMENT deployment written by `gateway init`: development CA, bearer tokens on.\n"
        "# Do not use these keys or tokens anywhere else.\n\n"
        "[gateway]\n"
        f'id = "{GATEWAY_ID}"\n'
        'key = "pki/gateway.key"\n'
        'certificate = "pki/gateway.crt"\n'
        'trust_anchors = ["pki/ca.crt"]\n'
        "# mTLS clients whose certificates come from an issuing CA below an anchor: list that\n"
        "# CA's certificate here (untrusted, it only completes the path; clients send it too).\n"
        "# intermediates = []\n"
        "# Certificate revocation lists, read at start-up (restart to apply a new one). The\n"
        "# development CA's is valid for 30 days: `gateway keys revoke` adds to it and renews it.\n"
        'crls = ["pki/ca.crl"]\n'
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "workers = 1\n"
        "development = true\n"
        "# For mTLS, uncomment (clients then use https and the CA in pki/ca.crt):\n"
        '# tls = { certificate = "pki/tls.crt", key = "pki/tls.key", client_auth = "optional" }\n\n'
        "[limits]\n"
        "max_body_bytes = 1048576\n"
        "max_json_depth = 64\n"
        "clock_skew_seconds = 300\n"
        "delivery_timeout_seconds = 10\n"
        "idle_timeout_seconds = 60\n"
        "body_timeout_seconds = 60\n"
        "max_concurrent_exchanges = 512  # per worker process\n\n"
        "[audit]\n"
        'store = "sqlite"\n'
        'path = "audit.db"\n'
        'state_path = "state.db"\n'
        f'origin = "{ORIGIN}"\n'
        'checkpoint_key = "pki/checkpoint.key"\n'
        "checkpoint_interval_seconds = 1.0\n"
        'published_path = "audit.published"\n\n'
        "[witness]\n"
        'key = "pki/witness.key"\n'
        f'name = "{GATEWAY_ID}/witness"\n\n'
    )


def init_deployment(target: Path, *, port: int = 8080, now: datetime | None = None) -> list[str]:
    """Write the deployment into ``target`` (must be empty or absent); return its tokens' owners."""
    now = now or datetime.now(UTC)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; choose a new directory")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty; choose a new directory")
    target.mkdir(parents=True, exist_ok=True)
    ca = _write_gateway_pki(target, now)
    roles_toml = _write_roles(target)
    participants_toml = _write_participants(target, ca, now)
    services_toml = _write_services(target)
    config = (
        _config_header(port)
        + "\n".join(roles_toml)
        + "\n"
        + "\n".join(participants_toml)
        + "\n"
        + "\n".join(services_toml)
    )
    _write(target / "gateway.toml", config.encode())
    return [p.id for p in PARTICIPANTS]
