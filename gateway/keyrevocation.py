"""``gateway keys revoke PARTICIPANT``: put a participant's certificate on the development CRL.

What it does, and why this way:

* **Development CA only.** A CRL is signed by the CA that issued the certificates; in
  production that key lives with the CA, which publishes its own CRL (list that file in
  ``gateway.crls``). So the command needs ``pki/ca.key`` next to the config (as ``gateway init``
  writes it), belonging to one of the trust anchors, and a configured CRL of that CA.
* The participant's certificate is the one the config pins (``participants[i].certificate``)
  or, failing that, ``participants/ID/cert.pem``; it must have been issued by that CA (a CRL
  can only revoke its own CA's certificates).
* The CRL is re-signed with every entry it had, the new serial (dated ``now``, with the
  ``--reason`` code when given), a CRL number one higher, thisUpdate ``now`` and nextUpdate
  ``now`` + 30 days. Without a participant it is only renewed (same entries), which is how a
  development CRL past its nextUpdate is brought back. A serial already listed keeps its date.
* Written atomically: a temporary file in the same directory (mode 0644: a CRL is public),
  fsynced, renamed over the old one, then the directory fsynced. A running gateway keeps the
  CRLs it read at start-up: restart it to apply the new one.

This module does I/O; the CRL itself is made by gateway.crypto (devpki).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from gateway import config as config_mod
from gateway.crypto import devpki, pki
from gateway.crypto.keys import CryptoError, PrivateKey, load_certificates
from gateway.crypto.revocation import is_crl_of, issued_by
from gateway.devinit import DEV_CA_KEY, DevCaUnreadable, load_dev_ca
from gateway.files import Busy, exclusive, replace_durably

__all__ = ["DEV_CA_KEY", "NotApplicable", "RevocationError", "RevokeResult", "revoke"]


class NotApplicable(Exception):
    """The command does not apply to this deployment or participant (a usage error)."""


class RevocationError(Exception):
    """The revocation could not be done; the CRL on disk is unchanged. The message says why."""


@dataclass(frozen=True, slots=True)
class RevokeResult:
    crl_path: Path
    crl_number: int
    next_update: datetime
    serial: int | None
    already_listed: bool


def _dev_ca(dep: config_mod.Deployment) -> tuple[PrivateKey, pki.Certificate]:
    path = dep.base_dir / DEV_CA_KEY
    if not path.is_file():
        raise NotApplicable(
            f"no development CA key ({path}): revocation here is for development deployments; "
            "in production your CA publishes the CRL (list it in gateway.crls and restart)"
        )
    try:
        key, cert = load_dev_ca(dep.trust_anchor_pems, path)
    except DevCaUnreadable as e:
        raise RevocationError(str(e)) from None
    if cert is None:
        raise RevocationError(f"{path} belongs to none of the trust anchors")
    return key, cert


def _serial_of(dep: config_mod.Deployment, pid: str, ca: pki.Certificate) -> int:
    if dep.config.participant(pid) is None:
        raise NotApplicable(f"{pid!r} is not a registered participant")
    pem = dep.participant_cert_pems.get(pid)
    if pem is None:
        path = dep.base_dir / "participants" / pid / "cert.pem"
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise NotApplicable(f"no certificate for {pid}: {path}: {e.strerror}") from None
    cert = load_certificates(pem)[0]
    if not issued_by(cert, ca):
        raise NotApplicable(
            f"the certificate of {pid} was not issued by the development CA (issuer "
            f"{cert.issuer.rfc4514_string()}): revoke it on its issuer's CRL"
        )
    return int(cert.serial_number)


def _crl_path(dep: config_mod.Deployment, ca: pki.Certificate) -> tuple[Path, bytes]:
    for rel, data in zip(dep.config.gateway.crls, dep.crl_data, strict=True):
        if is_crl_of(data, ca):
            return dep.resolve(rel), data
    raise NotApplicable(
        "no CRL of the development CA is listed in gateway.crls (gateway init writes "
        'pki/ca.crl; add crls = ["pki/ca.crl"] with a CRL made by it)'
    )


def revoke(
    config_path: Path, participant: str | None, *, now: datetime, reason: str | None = None
) -> RevokeResult:
    """Revoke ``participant``'s certificate (or, with None, only renew the CRL); see module doc.

    Raises NotApplicable, RevocationError or ConfigError; on any of them the CRL is unchanged.
    """
    try:
        with exclusive(config_path.resolve().parent):
            return _revoke(config_path, participant, now=now, reason=reason)
    except Busy as e:
        raise RevocationError(str(e)) from None


def _revoke(
    config_path: Path, participant: str | None, *, now: datetime, reason: str | None
) -> RevokeResult:
    dep = config_mod.load(config_path)
    try:
        ca_key, ca_cert = _dev_ca(dep)
        serial = _serial_of(dep, participant, ca_cert) if participant else None
    except CryptoError as e:
        raise RevocationError(e.reason) from None
    path, old = _crl_path(dep, ca_cert)
    try:
        pem, number, listed = devpki.revoke_in_crl(
            ca_key, ca_cert, old, serial, now=now, reason=reason
        )
    except ValueError as e:
        raise RevocationError(f"{path}: {e}") from None
    try:
        replace_durably(path, pem, tag="revoke-tmp", mode=0o644)
    except OSError as e:
        raise RevocationError(f"cannot write {path}: {e.strerror}") from None
    return RevokeResult(path, number, now + timedelta(days=devpki.CRL_DAYS), serial, listed)
