"""``gateway keys rotate`` and ``keys revoke``: the operator's side of
:func:`gateway.keyrotation.rotate` and :func:`gateway.keyrevocation.revoke`.

Apart from :mod:`gateway.cli` so the rotation instructions (send the request to your CA, install
the certificate, restart, destroy the old key) sit with the one command that prints them; the
rotation itself, and every check before it changes a file, is in :mod:`gateway.keyrotation`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from gateway import config as config_mod
from gateway.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _err


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from gateway.keyrotation import RotationError, rotate

    path = config_mod.find_config(args.config)
    try:
        r = rotate(
            path,
            now=datetime.now(UTC),
            key=Path(args.key) if args.key else None,
            certificate=Path(args.certificate) if args.certificate else None,
        )
    except RotationError as e:
        _err(f"key rotation refused, nothing changed: {e}")
        return EXIT_FAILED
    except FileExistsError as e:
        _err(f"{e.filename} already exists; nothing changed (retry in a second)")
        return EXIT_FAILED
    if r.mode == "csr":
        print(f"New signing key: {r.key_path} (kid {r.new_kid}); certificate request: {r.csr_path}")
        print("No development CA key (pki/ca.key) next to the config, so the certificate must")
        print("come from your CA. Send it this request (CN and SAN name the gateway; key usage")
        print("digitalSignature); when the certificate (PEM, leaf first) comes back, install it:")
        print(f"  gateway keys rotate --key {r.key_path} --certificate NEW-CERT.pem")
        print("gateway.toml is unchanged: the gateway keeps signing with its current key.\n")
        print((r.csr_pem or b"").decode("ascii"), end="")
        return EXIT_OK
    print(f"New signing key {r.key_path} (kid {r.new_kid}), certificate {r.certificate_path}.")
    print(
        f"{path}: key and certificate now point at them; {r.retired_certificate} moved to "
        f"retired_certificates (old config kept as {r.backup_path})."
    )
    print(
        f"Restart the gateway: new receipts are signed with kid {r.new_kid}; everything signed "
        f"with kid {r.old_kid} still verifies (the JWKS lists it as a retired key)."
    )
    print(
        f"The old private key {r.old_key} is no longer used: destroy it once the restart is done."
    )
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Put a participant's certificate on the development CRL; the gateway applies it on restart."""
    from gateway.keyrevocation import NotApplicable, RevocationError, revoke

    path = config_mod.find_config(args.config)
    try:
        r = revoke(path, args.participant, now=datetime.now(UTC), reason=args.reason)
    except NotApplicable as e:
        _err(f"cannot revoke here, nothing changed: {e}")
        return EXIT_USAGE
    except RevocationError as e:
        _err(f"revocation failed, nothing changed: {e}")
        return EXIT_FAILED
    if r.serial is None:
        print(f"{r.crl_path}: renewed (CRL number {r.crl_number}), no certificate added.")
    elif r.already_listed:
        print(f"{args.participant} (serial {r.serial:#x}) was already revoked; CRL renewed.")
    else:
        print(f"Revoked {args.participant}: serial {r.serial:#x} added to {r.crl_path}.")
    print(f"CRL number {r.crl_number}, next update {r.next_update.isoformat()}.")
    print("Restart the gateway to apply it: a running gateway keeps the CRLs it read at start.")
    return EXIT_OK
