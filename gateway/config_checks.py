"""The checks across a configuration's sections, each naming the exact field it refuses.

Apart from :mod:`gateway.config` (the models and the only reader of files) because these rules
look at several sections at once: a service's provider must be a participant, a grant must
name a participant and say, in words, why and under which law. As a pydantic model validator
they could only be reported at "(top level)"; here each failure is a ConfigError on the field
to edit, ``services[2].access[0].participant``. Pure: the Config is already parsed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Config, Service

__all__ = ["cross_check"]


def cross_check(cfg: Config, *, source: str) -> None:
    """Raise ConfigError(source, field, problem) for the first rule the config breaks."""
    _unique(source, "participants", (p.id for p in cfg.participants))
    _unique(source, "services", (s.id for s in cfg.services))
    _unique(source, "roles", (r.id for r in cfg.roles))
    known = {p.id for p in cfg.participants}
    for i, p in enumerate(cfg.participants):
        if p.id == cfg.gateway.id:  # verifiers take the signer named gateway.id for the gateway
            raise ConfigError(
                source,
                "gateway.id",
                f"{p.id!r} is also participants[{i}].id: that participant's key would sign "
                f"receipts that verify as the gateway's; give the gateway an id of its own "
                f"(e.g. {p.id}.gw)",
            )
    if not cfg.gateway.development:
        for i, p in enumerate(cfg.participants):
            if "token" in p.auth:
                raise ConfigError(
                    source,
                    f"participants[{i}].auth",
                    f"participant {p.id} allows bearer tokens, which are for development "
                    "only: set gateway.development = true or remove 'token' from auth",
                )
    _unique_tokens(cfg, source)
    _distinct_files(cfg, source)
    if cfg.audit.checkpoint_key and not cfg.audit.origin:
        raise ConfigError(
            source,
            "audit.origin",
            "audit.checkpoint_key is set but origin is not: checkpoints are signed under the "
            "log's origin (e.g. dtc.hcm.gov.vn/gateway/audit); without it none were published",
        )
    for i, r in enumerate(cfg.roles):
        if r.participant is not None and r.participant not in known:
            raise ConfigError(
                source,
                f"roles[{i}].participant",
                f"role {r.id}: participant {r.participant!r} is not registered",
            )
    for i, s in enumerate(cfg.services):
        if s.provider not in known:
            raise ConfigError(
                source,
                f"services[{i}].provider",
                f"service {s.id}: provider {s.provider!r} is not a participant",
            )
        _check_grants(source, i, s, known)


def _unique(source: str, section: str, ids: Iterable[str]) -> None:
    first: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in first:
            raise ConfigError(
                source,
                f"{section}[{i}].id",
                f"{ident!r} repeats {section}[{first[ident]}].id: ids must be unique",
            )
        first[ident] = i


def _distinct_files(cfg: Config, source: str) -> None:
    """The audit database, the state database and the published checkpoint are three files:
    one written over another (the checkpoint replaces its file atomically) destroys it."""
    audit = cfg.audit
    files = [("audit.state_path", audit.state_path), ("audit.published_path", audit.published_path)]
    if audit.store == "sqlite":
        files.insert(0, ("audit.path", audit.path))
    seen: dict[str, str] = {}
    for name, value in files:
        key = os.path.normpath(value)  # all relative to the config's directory
        if key in seen:
            raise ConfigError(
                source, name, f"names the same file as {seen[key]} ({value!r}): use another file"
            )
        seen[key] = name


def _unique_tokens(cfg: Config, source: str) -> None:
    """One holder per bearer token: tokens are looked up by their hash, so a shared hash gave
    the token to whichever role or participant came last."""
    held = [(f"roles[{i}]", r.id, r.token_sha256) for i, r in enumerate(cfg.roles)]
    held += [
        (f"participants[{i}]", p.id, p.token_sha256)
        for i, p in enumerate(cfg.participants)
        if "token" in p.auth
    ]
    holders: dict[str, str] = {}
    for where, who, digest in held:
        if digest is None:
            continue
        if digest in holders:
            raise ConfigError(
                source,
                f"{where}.token_sha256",
                f"{who} has the token of {holders[digest]}: each role and participant needs "
                "a token of its own",
            )
        holders[digest] = f"{where} ({who})"


def _check_grants(source: str, i: int, s: Service, known: set[str]) -> None:
    granted: set[str] = set()
    for k, g in enumerate(s.access):
        field = f"services[{i}].access[{k}]"
        if g.participant not in known:
            raise ConfigError(
                source,
                f"{field}.participant",
                f"service {s.id}: access grant names unknown participant {g.participant!r}",
            )
        if g.participant in granted:  # one grant decides and is audited: which one?
            raise ConfigError(
                source,
                f"{field}.participant",
                f"service {s.id}: participant {g.participant!r} has more than one access "
                "grant; keep one, with its purpose and legal basis",
            )
        granted.add(g.participant)
        for name, text in (("purpose", g.purpose), ("legal_basis", g.legal_basis)):
            if not text.strip():
                raise ConfigError(
                    source,
                    f"{field}.{name}",
                    "is blank: every grant states its purpose and legal basis in words "
                    "(they are audited with each exchange)",
                )
