"""The deployment's trust, built once from what the config loaded: anchors, intermediates, CRLs.

Apart from :mod:`gateway.http.app` because the web app, ``gateway verify`` and ``gateway keys
revoke`` all need the same answer to "what do we trust, and what has been revoked", with the
same start-up errors: a ConfigError naming the file, the field (``gateway.crls[1]``) and the
problem. The checks themselves are gateway.crypto's (:mod:`gateway.crypto.revocation`); this
module only maps their failures to the config fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.config import Deployment
from gateway.crypto import pki
from gateway.crypto.keys import CryptoError, load_certificates
from gateway.crypto.revocation import Revocations, load_crl
from gateway.errors import ConfigError

__all__ = [
    "anchor_certificates",
    "build_anchors",
    "build_revocations",
    "check_bound",
    "check_own_certificate",
]


def _certificates(dep: Deployment, field: str, pems: tuple[bytes, ...]) -> list[pki.Certificate]:
    """The CA certificates of ``gateway.<field>`` (files already read by config.py); ConfigError
    naming the field and the file for one that holds none, one that is no CA's, or a private key.

    Why refuse a private key: anchor and intermediate files are public, copied to every
    participant; a CA key pasted beside its certificate must be noticed, not skipped.
    """
    certs = []
    for i, pem in enumerate(pems):
        path = dep.resolve(getattr(dep.config.gateway, field)[i])
        where = f"gateway.{field}[{i}]"
        if b"PRIVATE KEY-----" in pem:
            raise ConfigError(
                str(dep.path),
                where,
                f"{path} holds a private key: certificate files are public; keep the key apart "
                "(and replace it if this file was shared)",
            )
        try:
            found = load_certificates(pem)
            not_ca = next((c for c in found if not pki.is_ca(c)), None)
        except CryptoError as e:
            raise ConfigError(str(dep.path), where, f"{path}: {e}") from None
        if not_ca is not None:
            raise ConfigError(
                str(dep.path),
                where,
                f"{path}: {pki.name_of(not_ca)} is not a CA certificate (basicConstraints CA)",
            )
        certs.extend(found)
    return certs


def anchor_certificates(dep: Deployment) -> list[pki.Certificate]:
    """The trust anchors' certificates; ConfigError naming ``gateway.trust_anchors[i]`` and its
    file for one that holds none."""
    return _certificates(dep, "trust_anchors", dep.trust_anchor_pems)


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
    anchors = anchor_certificates(dep)
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


def check_own_certificate(
    dep: Deployment, chain: Sequence[pki.Certificate], anchors: pki.TrustAnchors, *, now: datetime
) -> None:
    """ConfigError (``gateway.certificate``) unless the gateway's signing chain verifies as a
    receipt's does: to a trust anchor, valid at ``now``, not revoked, naming ``gateway.id``.

    Every receipt and envelope carries this chain in ``x5c``; a chain verifiers refuse (another
    participant's certificate, an untrusted CA, an expired one) would have the gateway serve
    signatures that fail verification, its own ``POST /v1/verify`` included.
    """
    where = dep.resolve(dep.config.gateway.certificate)
    try:
        leaf = pki.verify_chain(chain, anchors, now=now, purpose="signing")
        named = pki.participant_id(leaf)
    except CryptoError as e:
        raise ConfigError(
            str(dep.path),
            "gateway.certificate",
            f"{where}: cannot be verified under the trust anchors, so neither could the "
            f"receipts signed with it: {e}",
        ) from None
    if named != dep.config.gateway.id:
        raise ConfigError(
            str(dep.path),
            "gateway.certificate",
            f"{where} names {named!r}, not gateway.id {dep.config.gateway.id!r}: receipts "
            "signed under it would not verify as the gateway's",
        )


def check_bound(dep: Deployment, field: str, cert: pki.Certificate, expected: str) -> None:
    """ConfigError on ``field`` unless ``cert`` speaks for ``expected`` (pki.participant_id):
    a participant's pinned certificate naming someone else could never authenticate it."""
    try:
        named = pki.participant_id(cert)
    except CryptoError as e:
        raise ConfigError(str(dep.path), field, f"names no single participant: {e}") from None
    if named != expected:
        raise ConfigError(
            str(dep.path),
            field,
            f"the certificate names {named!r}, not {expected!r}: it could never authenticate "
            f"{expected}",
        )
