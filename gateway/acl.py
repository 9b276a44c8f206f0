"""Deny-by-default access decisions (pure: no I/O, no clock, no logging).

A service lists who may call it, and each grant carries the purpose and the legal basis that
justify the exchange; the decision (allow or deny, with that grant) goes into the audit record,
so an auditor can see not only who asked but under which decree article.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import Forbidden


@dataclass(frozen=True, slots=True)
class Grant:
    participant: str
    purpose: str
    legal_basis: str


class AccessList:
    """service id -> participant id -> grant. Unknown pairs are denied."""

    def __init__(self, grants: Mapping[str, Iterable[Grant]]):
        self._table: dict[str, dict[str, Grant]] = {
            service: {g.participant: g for g in gs} for service, gs in grants.items()
        }

    def decide(self, service: str, sender: str) -> Grant:
        """Return the grant that allows ``sender`` to call ``service``, or raise Forbidden."""
        grant = self._table.get(service, {}).get(sender)
        if grant is None:
            raise Forbidden(
                f"{sender} has no grant for {service}. Ask the gateway operator to add an access "
                "rule with a purpose and a legal basis."
            )
        return grant
