"""``gateway keys rotate``: a new gateway signing key, without breaking a single old signature.

What a rotation does, and why in this order:

1. A new key of the same type as the current one (ECDSA P-256 by default) is written next to
   the current key as ``<dir>/gateway-<UTC timestamp>.key`` (mode 0600, never overwritten).
2. Its certificate:

   * **Development CA** (``pki/ca.key`` next to the config, as ``gateway init`` writes it, and
     belonging to one of the trust anchors): the certificate is issued here at once, for the
     gateway's participant id, for signing only.
   * **Production CA** (no CA key next to the config): nothing can be issued here, and it must
     not be: the CA's key lives with the CA. A certificate signing request is written
     (``gateway-<timestamp>.csr``) and printed, and the config is left untouched, so the
     gateway keeps signing with its current key. When the CA has answered, the second step
     ``gateway keys rotate --key NEW.key --certificate NEW.crt`` checks that the certificate
     holds the key, chains to a trust anchor for signing (with the configured intermediates
     and CRLs, as start-up will: a revoked one is refused) and names the gateway, then
     installs it exactly as in the development case.

3. ``gateway.toml`` is edited as text, minimally: the ``key`` and ``certificate`` lines of
   ``[gateway]`` point at the new files and the old certificate path joins
   ``retired_certificates``; comments and every other line stay as they were. The edited text
   is parsed again and must equal the old configuration except for those three fields, else
   nothing is written. A copy of the old file is kept as ``gateway.toml.bak-<timestamp>`` and
   the new one replaces it atomically.

After a restart the JWKS lists the retired key with its ``x5c``, receipts and envelopes carry the
new ``kid``, and everything signed before still verifies (its chain is in its own ``x5c``; the
certificate stays valid until it expires). The old private key is not deleted: if the restart
fails, the backup config brings it back; destroy it once the new key is in service.

The checkpoint key (``audit.checkpoint_key``) is not rotated here: every published checkpoint
is verified with one note verifier key, and rotating it needs verifiers to accept a list of
retired note keys (and witnesses to learn the new key), which is a separate change.

This module does I/O (it writes keys and the config); the key and certificate work, the CSR
included, is gateway.crypto's (devpki).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from gateway import config as config_mod
from gateway import trust
from gateway.crypto import devpki, pki
from gateway.crypto.keys import (
    CryptoError,
    PrivateKey,
    SigningKey,
    jwk_thumbprint,
    load_certificates,
    load_private_key,
)
from gateway.devinit import DEV_CA_KEY, DevCaUnreadable, load_dev_ca
from gateway.errors import ConfigError
from gateway.files import Busy, exclusive, replace_durably, write_new

__all__ = ["DEV_CA_KEY", "RotationError", "RotationResult", "edit_gateway_section", "rotate"]

_KEY_TYPES: dict[str, devpki.KeyType] = {
    "ES256": "ec",
    "EdDSA": "ed25519",
    "PS256": "rsa",
    "RS256": "rsa",
}
_STRING = r"(\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')"


class RotationError(Exception):
    """The rotation cannot be done safely; nothing was changed. The message says why."""


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What ``rotate`` did: "installed" changed the config; "csr" wrote only a key and a CSR."""

    mode: Literal["installed", "csr"]
    key_path: Path
    old_kid: str
    new_kid: str
    certificate_path: Path | None = None
    csr_path: Path | None = None
    csr_pem: bytes | None = None
    retired_certificate: str | None = None
    backup_path: Path | None = None
    old_key: str | None = None


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def _rel(dep: config_mod.Deployment, path: Path) -> str:
    """A path as the config should name it: relative to the config's directory when inside it."""
    try:
        return path.resolve().relative_to(dep.base_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _current(dep: config_mod.Deployment) -> SigningKey:
    try:
        key = load_private_key(dep.key_pem)
        chain = load_certificates(dep.certificate_pem)
    except CryptoError as e:
        raise RotationError(f"the current key or certificate is unusable: {e.reason}") from None
    if not chain or jwk_thumbprint(chain[0].public_key()) != key.kid:
        raise RotationError("the current certificate does not hold the current key")
    return key


def rotate(
    config_path: Path,
    *,
    now: datetime,
    key: Path | None = None,
    certificate: Path | None = None,
) -> RotationResult:
    """Rotate the signing key of the deployment at ``config_path`` (see the module doc).

    With ``certificate`` (and ``key``): install a CA-issued certificate for a key made earlier.
    Without: issue with the development CA if present, else write a key and a CSR only.
    Raises :class:`RotationError` or ``ConfigError``; on either, the config is unchanged.
    """
    try:
        with exclusive(config_path.resolve().parent):
            return _rotate(config_path, now=now, key=key, certificate=certificate)
    except Busy as e:
        raise RotationError(str(e)) from None


def _rotate(
    config_path: Path, *, now: datetime, key: Path | None, certificate: Path | None
) -> RotationResult:
    dep = config_mod.load(config_path)
    old = _current(dep)
    if certificate is not None or key is not None:
        if certificate is None or key is None:
            raise RotationError("installing a certificate needs both --key and --certificate")
        return _install_issued(dep, old, key, certificate, now)
    key_dir = dep.resolve(dep.config.gateway.key).parent
    stamp = _stamp(now)
    new_key_path = key_dir / f"gateway-{stamp}.key"
    ca_key_path = dep.base_dir / DEV_CA_KEY
    if not ca_key_path.is_file():
        return _write_csr(new_key_path, old, dep.config.gateway.id)
    return _issue_with_dev_ca(dep, old, ca_key_path, new_key_path, stamp, now)


def _write_csr(new_key_path: Path, old: SigningKey, gateway_id: str) -> RotationResult:
    """Production CA: write the new key and its CSR only; the config keeps the current key."""
    new_key = devpki.generate_key(_KEY_TYPES[old.alg])
    csr = devpki.csr_pem(new_key, gateway_id)
    csr_path = new_key_path.with_suffix(".csr")
    write_new(new_key_path, devpki.pem_private_key(new_key), mode=0o600)
    write_new(csr_path, csr, mode=0o644)
    return RotationResult(
        mode="csr",
        key_path=new_key_path,
        old_kid=old.kid,
        new_kid=jwk_thumbprint(new_key.public_key()),
        csr_path=csr_path,
        csr_pem=csr,
    )


def _issue_with_dev_ca(
    dep: config_mod.Deployment,
    old: SigningKey,
    ca_key_path: Path,
    new_key_path: Path,
    stamp: str,
    now: datetime,
) -> RotationResult:
    """Development CA: issue the certificate here and install it.

    The edited config is prepared (and checked) before any file is written, so a config that
    cannot be edited safely leaves no stray key behind.
    """
    gateway_id = dep.config.gateway.id
    ca_key, ca_cert = _dev_ca(dep, ca_key_path)
    new_key, cert = devpki.issue(
        ca_key, ca_cert, gateway_id, now=now, key_type=_KEY_TYPES[old.alg], purposes=("signing",)
    )
    cert_path = new_key_path.with_suffix(".crt")
    new_text, backup = _prepare_config(dep, new_key_path, cert_path, stamp)
    write_new(new_key_path, devpki.pem_private_key(new_key), mode=0o600)
    write_new(cert_path, devpki.pem_certificate(cert), mode=0o644)
    _replace_config(dep.path, new_text, backup)
    return RotationResult(
        mode="installed",
        key_path=new_key_path,
        certificate_path=cert_path,
        old_kid=old.kid,
        new_kid=jwk_thumbprint(new_key.public_key()),
        retired_certificate=dep.config.gateway.certificate,
        backup_path=backup,
        old_key=dep.config.gateway.key,
    )


def _dev_ca(dep: config_mod.Deployment, ca_key_path: Path) -> tuple[PrivateKey, Any]:
    """The development CA's key and its certificate among the trust anchors."""
    try:
        ca_key, ca_cert = load_dev_ca(dep.trust_anchor_pems, ca_key_path)
    except DevCaUnreadable as e:
        raise RotationError(str(e)) from None
    if ca_cert is not None:
        return ca_key, ca_cert
    raise RotationError(
        f"{ca_key_path} belongs to none of the trust anchors: a certificate issued with it "
        "would not verify; issue the certificate with your CA (remove or move this key to get "
        "a CSR instead)"
    )


def _install_issued(
    dep: config_mod.Deployment, old: SigningKey, key: Path, certificate: Path, now: datetime
) -> RotationResult:
    """Second step of a production rotation: check the CA's certificate, then install it."""
    try:
        new = load_private_key(key.read_bytes())
        chain = load_certificates(certificate.read_bytes())
    except OSError as e:
        raise RotationError(f"cannot read {e.filename}: {e.strerror}") from None
    except CryptoError as e:
        raise RotationError(e.reason) from None
    if jwk_thumbprint(chain[0].public_key()) != new.kid:
        raise RotationError(f"{certificate} does not hold the key in {key}")
    try:  # as start-up will check it: the configured intermediates and CRLs too
        anchors = trust.build_anchors(dep, now=now)
    except ConfigError as e:
        raise RotationError(f"the deployment's trust does not load: {e}") from None
    try:
        leaf = pki.verify_chain(chain, anchors, now=now, purpose="signing")
        named = pki.participant_id(leaf)
    except CryptoError as e:
        raise RotationError(f"{certificate} is refused: {e.reason}") from None
    if named != dep.config.gateway.id:
        raise RotationError(
            f"{certificate} names {named!r}, not the gateway {dep.config.gateway.id}"
        )
    if new.kid == old.kid:
        raise RotationError("this is the key the gateway already signs with")
    stamp = _stamp(now)
    new_text, backup = _prepare_config(dep, key, certificate, stamp)
    _replace_config(dep.path, new_text, backup)
    return RotationResult(
        mode="installed",
        key_path=key,
        certificate_path=certificate,
        old_kid=old.kid,
        new_kid=new.kid,
        retired_certificate=dep.config.gateway.certificate,
        backup_path=backup,
        old_key=dep.config.gateway.key,
    )


# ---------------------------------------------------------------- the config edit
def _prepare_config(
    dep: config_mod.Deployment, key: Path, cert: Path, stamp: str
) -> tuple[str, Path]:
    """The edited config text (checked), and where the backup of the old one goes."""
    g = dep.config.gateway
    text = dep.path.read_text(encoding="utf-8-sig")  # as config.load reads it
    retired = [c for c in g.retired_certificates if c != g.certificate] + [g.certificate]
    new_text = edit_gateway_section(
        text, key=_rel(dep, key), certificate=_rel(dep, cert), retired=retired
    )
    try:
        config_mod.parse_config(new_text, source=str(dep.path))
    except ConfigError as e:
        raise RotationError(f"the edited config would not load ({e}); nothing changed") from None
    return new_text, dep.path.with_name(f"{dep.path.name}.bak-{stamp}")


def _replace_config(path: Path, text: str, backup: Path) -> None:
    """Keep the old file as ``backup``, then swap the new text in atomically (same mode)."""
    write_new(backup, path.read_bytes(), mode=0o600)
    replace_durably(
        path,
        text.encode("utf-8"),
        tag="rotate-tmp",
        mode=0o600,
        final_mode=path.stat().st_mode & 0o777,
    )


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _section_bounds(lines: list[str]) -> tuple[int, int]:
    start = next(
        (i for i, ln in enumerate(lines) if re.fullmatch(r"\s*\[\s*gateway\s*\]\s*(#.*)?", ln)),
        None,
    )
    if start is None:
        raise RotationError("gateway.toml has no [gateway] table header to edit")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines)
    )
    return start + 1, end


def _set_string(lines: list[str], lo: int, hi: int, name: str, value: str) -> int:
    """Replace the string value of ``name = "..."`` in lines[lo:hi], keeping any comment."""
    pattern = re.compile(rf"(\s*{name}\s*=\s*){_STRING}(\s*(#.*)?)")
    for i in range(lo, hi):
        m = pattern.fullmatch(lines[i])
        if m:
            lines[i] = m.group(1) + _toml_str(value) + m.group(3)
            return i
    raise RotationError(f'[gateway] has no single-line {name} = "..." to edit; change it by hand')


def edit_gateway_section(text: str, *, key: str, certificate: str, retired: list[str]) -> str:
    """``text`` with [gateway] key/certificate set and retired_certificates = ``retired``.

    Only those lines change (comments kept); a missing ``retired_certificates`` is added after
    the ``certificate`` line. The result is parsed and compared with the original: any other
    difference (a construct this editor does not understand) raises :class:`RotationError`.
    """
    lines = text.split("\n")
    lo, hi = _section_bounds(lines)
    _set_string(lines, lo, hi, "key", key)
    cert_line = _set_string(lines, lo, hi, "certificate", certificate)
    rendered = "[" + ", ".join(_toml_str(r) for r in retired) + "]"
    pattern = re.compile(r"(\s*retired_certificates\s*=\s*)\[[^\]\n]*\](\s*(#.*)?)")
    for i in range(lo, hi):
        if re.match(r"\s*retired_certificates\s*=", lines[i]):
            m = pattern.fullmatch(lines[i])
            if m is None:
                raise RotationError(
                    "[gateway] retired_certificates spans several lines; put it on one line "
                    "or edit it by hand"
                )
            lines[i] = m.group(1) + rendered + m.group(2)
            break
    else:
        indent = re.match(r"\s*", lines[cert_line])
        lines.insert(
            cert_line + 1, f"{indent.group(0) if indent else ''}retired_certificates = {rendered}"
        )
    new_text = "\n".join(lines)
    _check_only_these_changed(text, new_text, key, certificate, retired)
    return new_text


def _check_only_these_changed(
    old: str, new: str, key: str, certificate: str, retired: list[str]
) -> None:
    try:
        before, after = tomllib.loads(old), tomllib.loads(new)
    except tomllib.TOMLDecodeError as e:
        raise RotationError(f"the edited config is not valid TOML ({e}); nothing changed") from None
    gateway = dict(before.get("gateway", {}))
    gateway.update(key=key, certificate=certificate, retired_certificates=retired)
    before["gateway"] = gateway
    if before != after:
        raise RotationError(
            "editing gateway.toml would change more than key, certificate and "
            "retired_certificates; edit it by hand"
        )
