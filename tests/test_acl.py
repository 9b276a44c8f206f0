"""Access decisions of gateway.acl on their own: deny by default, the grant is the decision."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.acl import AccessList, Grant
from gateway.errors import Forbidden

LOOKUP = Grant("hcm.quan-1", "civil status check", "Decree 47/2020/ND-CP, art. 12")


def test_only_a_listed_sender_of_a_listed_service_is_allowed_with_its_grant() -> None:
    acl = AccessList({"citizen-lookup.v1": [LOOKUP], "empty.v1": []})
    assert acl.decide("citizen-lookup.v1", "hcm.quan-1") is LOOKUP
    for service, sender in [
        ("citizen-lookup.v1", "hcm.quan-2"),  # a sender with no grant
        ("empty.v1", "hcm.quan-1"),  # a service that grants no one
        ("unknown.v1", "hcm.quan-1"),  # a service with no access list
    ]:
        with pytest.raises(Forbidden, match=f"{sender} has no grant for {service}"):
            acl.decide(service, sender)


def test_a_grant_cannot_be_altered_after_it_was_decided() -> None:
    """The grant a decision returns is what its audit record says; nothing may change it."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        LOOKUP.purpose = "anything"  # type: ignore[misc]
