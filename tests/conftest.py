"""Suite-wide settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.crypto import canonical
from tests.support import Provider, running_provider

# Every record, envelope and receipt the gateway builds in any test is also canonicalized by the
# full RFC 8785 algorithm and compared with the trusted fast path (see canonicalize_trusted).
canonical.VERIFY_TRUSTED = True


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    """A real HTTP provider on 127.0.0.1 that counts what reaches it (tests.support.Provider)."""
    async with running_provider(Provider()) as p:
        yield p
