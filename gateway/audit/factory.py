"""Open the audit store the configuration names (SQLite by default, PostgreSQL to share)."""

from __future__ import annotations

from gateway.audit.store import AuditStore
from gateway.config import Deployment
from gateway.errors import ConfigError


def open_store(dep: Deployment) -> AuditStore:
    """Build (not connect) the store; connecting happens on the audit writer thread."""
    audit = dep.config.audit
    if audit.store == "sqlite":
        from gateway.audit.sqlite import SqliteAuditStore

        return SqliteAuditStore(str(dep.audit_path()))
    if audit.store == "postgres":
        try:
            from gateway.audit.postgres import PostgresAuditStore
        except ImportError as e:  # asyncpg is the optional 'postgres' extra
            raise ConfigError(
                str(dep.path), "audit.store", f"PostgreSQL support missing: {e}"
            ) from None
        assert audit.dsn is not None  # checked by the config model
        return PostgresAuditStore(audit.dsn)
    raise ConfigError(str(dep.path), "audit.store", f"unknown store {audit.store!r}")
