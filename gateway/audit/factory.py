"""Open the audit store the configuration names (SQLite by default, PostgreSQL to share)."""

from __future__ import annotations

from gateway.audit.checkpoint import NoteSigner
from gateway.audit.publisher import PublisherThread
from gateway.audit.store import AuditStore
from gateway.config import Deployment
from gateway.crypto.keys import load_private_key
from gateway.errors import ConfigError


def open_store(dep: Deployment, *, appends: bool = False) -> AuditStore:
    """Build (not connect) the store; connecting happens on the audit writer thread.

    ``appends``: this process is the one that appends (the appender, or an app without one);
    a SQLite store then checkpoints its WAL on a thread of its own, off the commit path.
    """
    audit = dep.config.audit
    if audit.store == "sqlite":
        from gateway.audit.sqlite import SqliteAuditStore

        return SqliteAuditStore(str(dep.audit_path()), background_checkpoints=appends)
    if audit.store == "postgres":
        try:
            from gateway.audit.postgres import PostgresAuditStore
        except ImportError as e:  # asyncpg is the optional 'postgres' extra
            raise ConfigError(
                str(dep.path), "audit.store", f"PostgreSQL support missing: {e}"
            ) from None
        assert audit.dsn is not None  # checked by the config model
        try:
            return PostgresAuditStore(audit.dsn)
        except ValueError as e:  # e.g. an empty ?schema=
            raise ConfigError(
                str(dep.path), "audit.dsn", f"cannot open the audit store: {e}"
            ) from None
    raise ConfigError(str(dep.path), "audit.store", f"unknown store {audit.store!r}")


def note_signer(dep: Deployment) -> NoteSigner | None:
    """The checkpoint signer, named after the log's origin; None without checkpoints."""
    audit = dep.config.audit
    if not (audit.origin and dep.checkpoint_key_pem):
        return None
    return NoteSigner(audit.origin, load_private_key(dep.checkpoint_key_pem))


def periodic_publisher(dep: Deployment, store: AuditStore) -> PublisherThread | None:
    """The appender's checkpoint publisher over ``store``, or None without checkpoints."""
    signer = note_signer(dep)
    if signer is None:
        return None
    return PublisherThread(
        store,
        signer,
        signer.name,  # the log's origin: note_signer names the key after it
        interval=dep.config.audit.checkpoint_interval_seconds,
        published_path=dep.published_path(),
    )
