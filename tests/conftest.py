"""Suite-wide settings."""

from __future__ import annotations

from gateway.crypto import canonical

# Every record, envelope and receipt the gateway builds in any test is also canonicalized by the
# full RFC 8785 algorithm and compared with the trusted fast path (see canonicalize_trusted).
canonical.VERIFY_TRUSTED = True
