"""Start-up preparation of the stores: create them once, refuse a rolled-back log.

Apart from :mod:`gateway.http.app` because `gateway serve` runs this in the parent, before any
process is forked, and because its failures are the operator's to fix: an audit path in a
directory that does not exist, a state path that is a directory, a PostgreSQL server that
refuses the DSN. Each stops start-up as a ConfigError naming the file and the field
(``audit.path``, ``audit.dsn``...), never as a traceback, and never showing the DSN's password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from gateway.audit.factory import open_store
from gateway.audit.publisher import RolledBack, check_not_rolled_back, read_published
from gateway.audit.store import root_at
from gateway.config import Deployment
from gateway.errors import ConfigError
from gateway.state import prepare as prepare_state

__all__ = ["prepare_stores"]


def prepare_stores(dep: Deployment) -> list[str]:
    """Create the database files (or tables) once, before worker processes open them.

    Also the rollback guard: raises RolledBack when the log is behind (or forked from) the
    newest checkpoint this gateway published, e.g. after an older backup was restored. Any
    other failure is a ConfigError naming the field of the store that could not be opened.

    Returns warnings for the operator: things that do not stop start-up but must be said.
    """
    audit = dep.config.audit
    field = "audit.dsn" if audit.store == "postgres" else "audit.path"
    with _opening(dep, field, "the audit store"):
        store = open_store(dep)
    try:
        with _opening(dep, field, "the audit store"):
            size, _ = store.tree_head()
        with _opening(dep, "audit.published_path", "the published checkpoint"):
            read_published(dep.published_path())

        async def root_at_size(n: int) -> bytes:
            return root_at(store, n)

        with _opening(dep, field, "the audit store"):
            asyncio.run(check_not_rolled_back(dep.published_path(), size, root_at_size))
    finally:
        with contextlib.suppress(Exception):  # never connected, or already failed: said above
            store.close()
    # With PostgreSQL the state (Idempotency-Key) table lives in the audit DSN's database.
    state_field = "audit.dsn" if audit.store == "postgres" else "audit.state_path"
    warnings = []
    if audit.store != "postgres" and size > 0 and not dep.state_path().exists():
        warnings.append(_lost_state(dep, size))
    with _opening(dep, state_field, "the state store"):
        prepare_state(audit.store, dep.state_path(), audit.dsn)
    return warnings


def _lost_state(dep: Deployment, size: int) -> str:
    """A log that holds records was served with a state database, made at its first start: a
    missing one was lost or moved. That cannot be refused (an operator may have reset it on
    purpose), but it must not pass silently: the witness's promise never to cosign a checkpoint
    inconsistent with one it cosigned rests on that file, and so do the answers kept for
    ``Idempotency-Key`` retries."""
    return (
        f"audit.state_path {dep.state_path()} is missing, but the audit log holds {size} "
        "records: the state database was lost or moved, and a new one is made. Answers kept "
        "for Idempotency-Key retries are gone (a retry is delivered again), and as a witness "
        "this gateway no longer knows which checkpoints it cosigned. Restore the file from a "
        "backup and restart if that is not intended."
    )


@contextlib.contextmanager
def _opening(dep: Deployment, field: str, what: str) -> Iterator[None]:
    """Turn a failure to open ``what`` into a ConfigError on ``field``; RolledBack passes."""
    try:
        yield
    except (RolledBack, ConfigError):
        raise
    except Exception as e:
        problem = _without_secrets(f"cannot open {what}: {type(e).__name__}: {e}", dep)
        raise ConfigError(str(dep.path), field, problem) from None


def _without_secrets(text: str, dep: Deployment) -> str:
    """``text`` with the DSN, and its password wherever it appears, masked."""
    dsn = dep.config.audit.dsn
    if not dsn:
        return text
    text = text.replace(dsn, "<audit.dsn>")
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
