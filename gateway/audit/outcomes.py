"""What an append to the audit log can come to: where the record landed, or why it did not.

Why a module of its own: two appenders hand out these outcomes, the in-process
:class:`~gateway.audit.log.AuditLog` (whose writer thread is :mod:`gateway.audit.log_writer`)
and the worker's :class:`~gateway.audit.appender.RemoteAppender`, and the pipeline and the HTTP
layer act on them without caring which appender made them. Keeping them apart from both lets
the writer thread and the appenders share them without importing each other.
:mod:`gateway.audit.log` re-exports them, where callers have always found them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gateway.errors import NotReady

__all__ = ["AppendResult", "AuditUnavailable", "ClaimRefused", "Refusal", "unavailable"]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where a record landed: its leaf index and leaf hash (both go into the receipt)."""

    index: int
    leaf_hash: bytes


class AuditUnavailable(NotReady):
    """The audit log could not durably record: the exchange must not be acknowledged (503).

    The client sees one fixed detail; the cause (the store's error) goes to ``log_detail`` and
    ``__cause__``, never to the client, since it may name files or SQL.
    """

    PUBLIC_DETAIL: ClassVar[str] = (
        "The audit log is unavailable, so the exchange could not be recorded. Retry later."
    )

    def __init__(self, cause: str) -> None:
        super().__init__(self.PUBLIC_DETAIL, log_detail=f"audit log unavailable: {cause}")


class ClaimRefused(Exception):
    """The record's one-time claim was already taken (a replay): the record was not appended."""


class Refusal(ValueError):
    """A request the log refuses on its own terms (not a store failure): passed to the caller
    as is, where any other exception from a store call becomes AuditUnavailable."""


def unavailable(cause: Exception) -> AuditUnavailable:
    """A fresh exception per waiter (tracebacks are per raise), chained to the store's error."""
    exc = AuditUnavailable(f"{type(cause).__name__}: {cause}")
    exc.__cause__ = cause
    return exc
