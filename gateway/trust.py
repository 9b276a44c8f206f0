"""The deployment's trust, built once from what the config loaded: anchors, intermediates, CRLs.

Apart from :mod:`gateway.http.app` because the web app, ``gateway verify`` and ``gateway keys
revoke`` all need the same answer to "what do we trust, and what has been revoked", with the
same start-up errors: a ConfigError naming the file, the field (``gateway.crls[1]``) and the
problem. The checks themselves are gateway.crypto's (:mod:`gateway.crypto.revocation`); this
module only maps their failures to the config fields.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.config import Deployment
from gateway.crypto import pki
from gateway.crypto.keys import CryptoError, load_certificates
from gateway.crypto.revocation import Revocations, load_crl
from gateway.errors import ConfigError

__all__ = ["build_anchors", "build_revocations"]


def _certificates(dep: Deployment, field: str, pems: tuple[bytes, ...]) -> list[pki.Certificate]:
    """The certificates of ``gateway.<field>`` (files already read by config.py); ConfigError
    naming the field and the file for one that holds none."""
    certs = []
    for i, pem in enumerate(pems):
        try:
            certs.extend(load_certificates(pem))
        except CryptoError as e:
            path = dep.resolve(getattr(dep.config.gateway, field)[i])
            raise ConfigError(str(dep.path), f"gateway.{field}[{i}]", f"{path}: {e}") from None
    return certs


def build_revocations(
    dep: Deployment,
    issuers: list[pki.Certificate],
    *,
    now: datetime,
    allow_stale: bool = False,
) -> Revocations:
    """The configured CRLs, each checked against ``issuers`` (anchors and intermediates).

    ``allow_stale``: accept CRLs past their nextUpdate (offline verification); the gateway's
    start-up does not.
    """
    crls = []
    for i, data in enumerate(dep.crl_data):
        try:
            crls.append(load_crl(data, issuers, now=now, allow_stale=allow_stale))
        except CryptoError as e:
            path = dep.resolve(dep.config.gateway.crls[i])
            raise ConfigError(str(dep.path), f"gateway.crls[{i}]", f"{path}: {e.reason}") from None
    return Revocations(crls)


def build_anchors(
    dep: Deployment, *, now: datetime | None = None, allow_stale_crls: bool = False
) -> pki.TrustAnchors:
    """Trust anchors with the configured intermediates and CRLs; ConfigError naming the field."""
    anchors = _certificates(dep, "trust_anchors", dep.trust_anchor_pems)
    intermediates = _certificates(dep, "intermediates", dep.intermediate_pems)
    revocations = build_revocations(
        dep,
        anchors + intermediates,
        now=now or datetime.now(UTC),
        allow_stale=allow_stale_crls,
    )
    try:
        return pki.TrustAnchors(anchors, intermediates=intermediates, revocations=revocations)
    except CryptoError as e:
        raise ConfigError(str(dep.path), "gateway.intermediates", str(e)) from None
