"""Open the audit store the configuration names (SQLite by default, PostgreSQL to share)."""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from gateway.audit.checkpoint import NoteSigner
from gateway.audit.publisher import PublisherThread
from gateway.audit.store import AuditStore
from gateway.config import Deployment
from gateway.crypto.keys import load_private_key
from gateway.errors import ConfigError
from gateway.state import StateUnavailable

T = TypeVar("T")


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


def opening(dep: Deployment, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, which first opens the audit (``what`` "audit") or state store; a store that
    cannot be opened (server down, wrong DSN, file in a missing directory) is a ConfigError
    naming the field to fix, so start-up ends with exit 2 and a sentence, not a traceback.

    The DSN is never quoted (it may hold a password); its password is masked in the driver's
    message too.
    """
    audit = dep.config.audit
    failures: tuple[type[Exception], ...] = (OSError, TimeoutError, StateUnavailable)
    if audit.store == "postgres":
        import asyncpg  # type: ignore[import-untyped]  # the postgres extra: installed if used

        from gateway.audit.postgres import StoreCorrupted

        failures += (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, StoreCorrupted)
        field = "audit.dsn"
    else:
        failures += (sqlite3.Error,)
        field = "audit.path" if what == "audit" else "audit.state_path"
    try:
        return fn()
    except failures as e:
        problem = f"cannot open the {what} store: {type(e).__name__}: {e}"
        password = urllib.parse.urlsplit(audit.dsn or "").password if audit.dsn else None
        if password:
            problem = problem.replace(password, "***")
        raise ConfigError(str(dep.path), field, problem) from None


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
