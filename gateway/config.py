"""The deployment's configuration: TOML parsed once into frozen pydantic models.

Why frozen and ``extra="forbid"``: a typo in a production config (``acess`` for ``access``) must
stop start-up with a message naming the file and the field, not silently open or close a
service. This is also the only module that reads files or environment variables: it loads the
keys, certificates and schema documents the config names, so the rest of the gateway works on
values and stays testable without a disk.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config_checks import cross_check
from gateway.crypto.canonical import MAX_DEPTH as CANONICAL_MAX_DEPTH
from gateway.errors import ConfigError
from gateway.idempotency import pending_lease

PARTICIPANT_ID = r"^[a-z0-9]+(?:-[a-z0-9]+)*(?:\.[a-z0-9]+(?:-[a-z0-9]+)*)+$"
SERVICE_ID = r"^[a-z0-9]+(?:-[a-z0-9]+)*\.v[0-9]+$"
CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG_NAME = "gateway.toml"
#: Deepest payload a deployment may admit: the envelope (and a signed request) carries the payload
#: one level down, and both are canonicalized (RFC 8785), which stops at CANONICAL_MAX_DEPTH.
#: A larger limit would let payloads through stage (0) only to fail at signing with a 400 that
#: blames something else, and give envelopes no verifier accepts.
MAX_JSON_DEPTH = CANONICAL_MAX_DEPTH - 1

AuthMethod = Literal["mtls", "signed", "token"]


class _Model(BaseModel):
    # strict: TOML has real types, so a value of the wrong one is a mistake to report, never
    # to convert (lax mode read `workers = true` as 1 and `development = "no"` as False).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TlsConfig(_Model):
    """Server TLS; with ``client_auth`` the gateway asks for client certificates (mTLS)."""

    certificate: str
    key: str
    client_auth: Literal["none", "optional", "required"] = "optional"


class GatewaySection(_Model):
    id: str = Field(pattern=PARTICIPANT_ID)
    key: str
    certificate: str
    # Certificates (chains) of retired signing keys: still published in the JWKS so receipts
    # and envelopes signed before a rotation keep verifying (``gateway keys rotate``).
    retired_certificates: list[str] = Field(default_factory=list)
    trust_anchors: list[str] = Field(min_length=1)
    # Intermediate CA certificates (PEM files), untrusted: they only complete the path of a TLS
    # client certificate issued below an anchor (TLS hands the gateway the leaf alone). Signed
    # requests carry their own chain in x5c and do not need them.
    intermediates: list[str] = Field(default_factory=list)
    # CRLs (PEM or DER files) of the anchors and intermediates, read once at start-up: a
    # certificate they list is refused. Restart to apply a new CRL (see README, Revocation).
    crls: list[str] = Field(default_factory=list)
    host: str = Field(default="127.0.0.1", min_length=1)  # "" would bind every interface
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    tls: TlsConfig | None = None
    development: bool = False


class Limits(_Model):
    """Safe defaults for every limit; each can be tightened per deployment."""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_json_depth: int = Field(default=64, ge=2, le=MAX_JSON_DEPTH)
    clock_skew_seconds: int = Field(default=300, ge=1, le=3600)
    delivery_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # A connection must complete a request's headers within idle_timeout_seconds of opening
    # (or of its previous response), and then send the whole body within body_timeout_seconds;
    # otherwise slow or silent clients could hold connections and handlers without end.
    idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    idempotency_ttl_seconds: int = Field(default=86400, ge=60)
    # Exchanges one worker reads or processes at once; beyond, a 503 before the body is read.
    # Bounds a worker's request memory near max_concurrent_exchanges x max_body_bytes.
    max_concurrent_exchanges: int = Field(default=512, ge=1, le=100_000)
    # At least one exchange a day: a rate near zero (1e-320) made the Retry-After of a 429
    # overflow into a 500, and a limit that admits nothing is a refusal in disguise.
    rate_per_second: float = Field(default=200.0, ge=1 / 86400)
    rate_burst: int = Field(default=400, ge=1)

    @model_validator(mode="after")
    def _keys_outlive_deliveries(self) -> Limits:
        # An answer kept for less than a pending key's lease would be forgotten before the
        # lease that no live delivery outlasts; a retry could then be delivered too.
        if self.idempotency_ttl_seconds < pending_lease(self.delivery_timeout_seconds):
            raise ValueError("idempotency_ttl_seconds must be at least 2 x delivery_timeout + 60")
        return self


class AuditConfig(_Model):
    """Where the log lives and how it is published.

    ``origin`` is the first line of every checkpoint (C2SP tlog-checkpoint): a schema-less URL
    naming this log, e.g. ``dtc.hcm.gov.vn/gateway/audit``. ``checkpoint_key`` is the Ed25519
    private key (PEM) of the note signature. ``published_path`` keeps the newest checkpoint this
    gateway published, outside the database, so a restored older database is refused at start.
    """

    store: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "audit.db"
    dsn: str | None = Field(default=None, repr=False)  # may hold a password
    state_path: str = "state.db"
    max_batch: int = Field(default=512, ge=1, le=10000)
    origin: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][\x21-\x7e]*$", max_length=200)
    checkpoint_key: str | None = None
    checkpoint_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    published_path: str = "audit.published"

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> AuditConfig:
        if self.store == "postgres" and not self.dsn:
            raise ValueError("store = 'postgres' needs dsn (e.g. postgresql://127.0.0.1/gateway)")
        return self

    @field_validator("origin")
    @classmethod
    def _origin_is_a_key_name(cls, origin: str | None) -> str | None:
        if origin is not None and "+" in origin:
            raise ValueError(
                "must not contain a plus sign: checkpoints are signed under the origin as the "
                "note key name, and signed-note key names cannot hold one"
            )
        return origin


class Role(_Model):
    """An operator, auditor or admin: a bearer token (stored as its SHA-256) or an mTLS identity.

    ``participant`` names the participant whose client certificate carries this role; a role
    holder never gains a unit system's right to send exchanges, and vice versa.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    role: Literal["operator", "auditor", "admin"]
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    participant: str | None = Field(default=None, pattern=PARTICIPANT_ID)

    @model_validator(mode="after")
    def _one_credential(self) -> Role:
        if (self.token_sha256 is None) == (self.participant is None):
            raise ValueError("a role needs exactly one of token_sha256 or participant")
        return self


class WitnessPeer(_Model):
    """A peer gateway whose checkpoints this gateway cosigns (C2SP tlog-witness)."""

    origin: str = Field(min_length=1, max_length=200)
    verifier_key: str = Field(min_length=1, description="the peer's note verifier key (vkey)")


class WitnessConfig(_Model):
    key: str | None = Field(default=None, description="Ed25519 PEM private key for cosignatures")
    name: str | None = Field(default=None, description="this witness's key name in cosignatures")
    peers: list[WitnessPeer] = Field(default_factory=list)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Participant(_Model):
    id: str = Field(pattern=PARTICIPANT_ID)
    tier: Literal["unit", "city", "central"]
    name: str = ""
    auth: list[AuthMethod] = Field(default_factory=lambda: list[AuthMethod](["mtls", "signed"]))
    certificate: str | None = None
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _token_needs_hash(self) -> Participant:
        if "token" in self.auth and not self.token_sha256:
            raise ValueError("auth allows 'token' but token_sha256 is not set")
        return self


class Grant(_Model):
    """One entry of a service's access list: who, for what purpose, under which legal basis."""

    participant: str = Field(pattern=PARTICIPANT_ID)
    purpose: str = Field(min_length=1)
    legal_basis: str = Field(min_length=1)


class Service(_Model):
    id: str = Field(pattern=SERVICE_ID)
    provider: str = Field(pattern=PARTICIPANT_ID)
    description: str = ""
    connector: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    connector_settings: dict[str, Any] = Field(default_factory=dict)
    request_schema: str
    response_schema: str
    mode: Literal["sync", "async"] = "sync"
    access: list[Grant] = Field(min_length=1)

    @field_validator("mode")
    @classmethod
    def _sync_only(cls, v: str) -> str:
        if v == "async":
            raise ValueError("mode 'async' needs the queue connector, which is not built yet")
        return v


class Config(_Model):
    gateway: GatewaySection
    limits: Limits = Limits()
    audit: AuditConfig = AuditConfig()
    logging: LoggingConfig = LoggingConfig()
    participants: list[Participant] = Field(min_length=1)
    services: list[Service] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    witness: WitnessConfig = WitnessConfig()

    def participant(self, pid: str) -> Participant | None:
        for p in self.participants:
            if p.id == pid:
                return p
        return None


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A service with its schema documents read (still unchecked: gateway.validation compiles)."""

    spec: Service
    request_schema: dict[str, Any]
    response_schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deployment:
    """Everything start-up needs, read from disk once."""

    path: Path
    config: Config
    key_pem: bytes = field(repr=False)  # private keys: never in a repr (logs, tracebacks)
    certificate_pem: bytes
    trust_anchor_pems: tuple[bytes, ...]
    participant_cert_pems: Mapping[str, bytes]
    services: Mapping[str, LoadedService]
    tls_cert_pem: bytes | None
    tls_key_pem: bytes | None = field(repr=False)
    retired_certificate_pems: tuple[bytes, ...] = ()
    intermediate_pems: tuple[bytes, ...] = ()
    crl_data: tuple[bytes, ...] = ()
    checkpoint_key_pem: bytes | None = field(default=None, repr=False)
    witness_key_pem: bytes | None = field(default=None, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, rel: str) -> Path:
        return _resolve(self.path, rel)

    def audit_path(self) -> Path:
        return self.resolve(self.config.audit.path)

    def state_path(self) -> Path:
        return self.resolve(self.config.audit.state_path)

    def published_path(self) -> Path:
        return self.resolve(self.config.audit.published_path)


def _resolve(config_path: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (config_path.parent / p)


def find_config(explicit: str | None) -> Path:
    """``--config`` wins, then ``$GATEWAY_CONFIG``, then ``./gateway.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(text: str, *, source: str) -> Config:
    """TOML text -> Config, or ConfigError naming the file, the field and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(syntax)", str(e)) from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        extra = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        raise ConfigError(source, _loc(tuple(err["loc"])), msg + extra) from None
    cross_check(cfg, source=source)
    return cfg


def _read(config_path: Path, field: str, rel: str) -> bytes:
    path = _resolve(config_path, rel)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(str(config_path), field, f"cannot read {path}: {e.strerror}") from None


def _read_json(config_path: Path, field: str, rel: str) -> dict[str, Any]:
    raw = _read(config_path, field, rel)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ConfigError(str(config_path), field, f"{rel} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(str(config_path), field, f"{rel} is not a JSON object")
    return doc


def _read_all(config_path: Path, field: str, rels: list[str]) -> tuple[bytes, ...]:
    """Each file of a list field, reported as ``field[i]`` when it cannot be read."""
    return tuple(_read(config_path, f"{field}[{i}]", rel) for i, rel in enumerate(rels))


def _read_optional(config_path: Path, field: str, rel: str | None) -> bytes | None:
    """An optional file: None when the field is unset (or empty)."""
    return _read(config_path, field, rel) if rel else None


def _read_services(path: Path, specs: list[Service]) -> dict[str, LoadedService]:
    return {
        s.id: LoadedService(
            spec=s,
            request_schema=_read_json(path, f"services[{i}].request_schema", s.request_schema),
            response_schema=_read_json(path, f"services[{i}].response_schema", s.response_schema),
        )
        for i, s in enumerate(specs)
    }


def load(path: Path) -> Deployment:
    """Read the config and every file it names. Raises ConfigError; never half-loads."""
    path = path.resolve()
    try:
        # utf-8-sig: an editor that saves UTF-8 with a byte order mark (Windows Notepad) made
        # every config fail as "Invalid statement (at line 1, column 1)", naming no cause.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(str(path), "(file)", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "(file)", "not UTF-8 text") from None
    cfg = parse_config(text, source=str(path))
    g = cfg.gateway
    # Read in the order of the arguments: the first file that fails is the one reported.
    return Deployment(
        path=path,
        config=cfg,
        key_pem=_read(path, "gateway.key", g.key),
        certificate_pem=_read(path, "gateway.certificate", g.certificate),
        trust_anchor_pems=_read_all(path, "gateway.trust_anchors", g.trust_anchors),
        intermediate_pems=_read_all(path, "gateway.intermediates", g.intermediates),
        crl_data=_read_all(path, "gateway.crls", g.crls),
        participant_cert_pems={
            p.id: _read(path, f"participants[{i}].certificate", p.certificate)
            for i, p in enumerate(cfg.participants)
            if p.certificate
        },
        services=_read_services(path, cfg.services),
        tls_cert_pem=_read(path, "gateway.tls.certificate", g.tls.certificate) if g.tls else None,
        tls_key_pem=_read(path, "gateway.tls.key", g.tls.key) if g.tls else None,
        retired_certificate_pems=_read_all(
            path, "gateway.retired_certificates", g.retired_certificates
        ),
        checkpoint_key_pem=_read_optional(path, "audit.checkpoint_key", cfg.audit.checkpoint_key),
        witness_key_pem=_read_optional(path, "witness.key", cfg.witness.key),
    )


def token_hash(token: str) -> str:
    """How bearer tokens are stored in the config: hex SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
