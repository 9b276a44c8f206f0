"""``gateway send`` and ``gateway verify``: a participant's side of an exchange, from a terminal.

``send`` signs a payload as a unit system, posts it and saves the receipt; ``verify`` checks that
receipt (or any other artifact the gateway signs) offline with :mod:`gateway.verify`. Apart from
:mod:`gateway.cli` so that module stays the parser and the exit codes; these two commands are
the ones that handle a participant's keys and the gateway's certificates.
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway import config as config_mod
from gateway.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    _checkpoint_verifiers,
    _err,
    _gateway_url,
    _load,
    _tls_context,
)
from gateway.errors import ConfigError
from gateway.models import UUID_PATTERN

_UUID = re.compile(UUID_PATTERN)


# ---------------------------------------------------------------- send
def _participant_files(dep: config_mod.Deployment, pid: str) -> tuple[bytes, bytes]:
    d = dep.base_dir / "participants" / pid
    try:
        return (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes()
    except OSError as e:
        raise ConfigError(
            str(dep.path), "--as", f"no key/certificate for {pid} in {d}: {e.strerror}"
        ) from None


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.crypto.canonical import MAX_DEPTH
    from gateway.strictjson import JsonError, loads

    dep = _load(args)
    sender = args.as_ or _default_sender(dep)
    try:
        # One level under what canonicalization takes: the signed request wraps the payload.
        # The gateway applies its own, possibly lower, limit.
        payload = loads(Path(args.file).read_bytes(), max_depth=MAX_DEPTH - 1)
    except OSError as e:
        _err(f"cannot read {args.file}: {e.strerror}")
        return EXIT_USAGE
    except JsonError as e:
        _err(f"{args.file} is not valid JSON: {e}")
        return EXIT_USAGE
    if args.receipt and (Path(args.receipt).is_dir() or not Path(args.receipt).parent.is_dir()):
        _err(f"--receipt {args.receipt}: not a file in an existing directory; nothing sent")
        return EXIT_USAGE
    body = _signed_request(dep, sender, args.service, payload)
    url = _gateway_url(dep, args.url, f"/v1/exchange/{args.service}")
    headers = {"Content-Type": "application/jose+json", "Accept": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    answer = _post(url, body, headers, _tls_context(dep, url), args.timeout)
    if answer is None:
        return EXIT_FAILED
    return _report_answer(*answer, args.receipt)


def _report_answer(status: int, data: bytes, receipt: str | None) -> int:
    """Print the gateway's answer; on a 2xx, save its receipt. Anything else is a failure.

    The answer is checked for shape, not trusted: ``--url`` may name something that is not a
    gateway (a proxy's error page, another service), and its JSON decides no file name.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        _err(f"HTTP {status} with a non-JSON body")
        return EXIT_FAILED
    problem = _not_an_exchange_answer(status, doc)
    if problem is None:
        xid = doc.get("exchange_id")
        safe = isinstance(xid, str) and _UUID.fullmatch(xid) is not None
        out = Path(receipt or f"receipt-{xid if safe else 'unknown'}.json")
        # Saved before anything is printed: the receipt is the sender's proof of the exchange,
        # and printing can fail (`gateway send ... | head` closes stdout) after it happened.
        try:
            out.write_bytes(orjson.dumps(doc["receipt"], option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as e:  # The exchange happened: its receipt is in the response printed.
            problem = (
                f"cannot save the receipt to {out}: {e.strerror} (it is in the response above)"
            )
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    if problem is not None:
        _err(problem)
        return EXIT_FAILED
    print(f"receipt saved to {out}", file=sys.stderr)
    return EXIT_OK


def _not_an_exchange_answer(status: int, doc: Any) -> str | None:
    """Why ``doc`` (HTTP ``status``) is no delivered exchange with a receipt, or None."""
    if not isinstance(doc, dict):
        return f"HTTP {status} with JSON that is not an object: not a gateway's answer"
    if not 200 <= status < 300:
        return f"HTTP {status}: {doc.get('title', '')}: {doc.get('detail', '')}"
    if not isinstance(doc.get("receipt"), dict):
        return f"HTTP {status} without a receipt: not a gateway's exchange answer"
    return None


def _signed_request(dep: config_mod.Deployment, sender: str, service: str, payload: Any) -> bytes:
    """The request JWS, signed with ``sender``'s key from the deployment's participants/."""
    from gateway.crypto import jws
    from gateway.crypto.keys import CryptoError, load_certificates, load_private_key
    from gateway.models import rfc3339

    key_pem, cert_pem = _participant_files(dep, sender)
    request = {
        "id": str(uuid.uuid4()),
        "sender": sender,
        "service": service,
        "created": rfc3339(datetime.now(UTC)).replace(".000Z", "Z"),
        "payload": payload,
    }
    try:
        key, chain = load_private_key(key_pem), load_certificates(cert_pem)
        return jws.serialize(jws.sign(request, key, chain, typ="request+jws"))
    except CryptoError as e:
        where = dep.base_dir / "participants" / sender
        raise ConfigError(
            str(dep.path), "--as", f"{sender}'s key.pem/cert.pem in {where}: {e.reason}"
        ) from None


def _post(
    url: str, body: bytes, headers: dict[str, str], ctx: ssl.SSLContext | None, timeout: float
) -> tuple[int, bytes] | None:
    """Status and body, error statuses included; None (reported) if the gateway is unreachable."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        _err(f"cannot reach {url}: {getattr(e, 'reason', e)}")
        return None
    return status, data


def _default_sender(dep: config_mod.Deployment) -> str:
    for p in dep.config.participants:
        if p.tier == "unit":
            return p.id
    return dep.config.participants[0].id


# ---------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.trust import build_anchors
    from gateway.verify import describe_verification

    dep = _load(args)
    try:
        raw = Path(args.file).read_bytes()
    except OSError as e:
        _err(f"cannot read {args.file}: {e.strerror}")
        return EXIT_USAGE
    payloads: dict[str, bytes] = {}
    for name in ("request", "response"):
        path = getattr(args, name)
        if path:
            try:
                payloads[name] = Path(path).read_bytes()
            except OSError as e:
                _err(f"cannot read {path}: {e.strerror}")
                return EXIT_USAGE
    try:
        verifiers = _checkpoint_verifiers(dep, args.vkey or [])
    except ValueError as e:
        _err(f"checkpoint verifier key: {e}")
        return EXIT_USAGE
    now = datetime.now(UTC)
    # A CRL past its nextUpdate still says what was revoked: offline, it is used, not refused.
    revocations = build_anchors(dep, now=now, allow_stale_crls=True).revocations
    ok, lines = describe_verification(
        raw,
        dep.trust_anchor_pems,
        now=now,
        revocations=revocations,
        payloads=payloads,
        note_verifiers=verifiers,
        gateway_id=dep.config.gateway.id,
        gateway_kids=_gateway_kids(dep),
        origin=dep.config.audit.origin,
    )
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


def _gateway_kids(dep: config_mod.Deployment) -> dict[str, str]:
    """Thumbprint -> "current"/"retired" for the gateway's configured certificates."""
    from gateway.crypto.keys import CryptoError, jwk_thumbprint, load_certificates

    kids: dict[str, str] = {}
    for status, pems in (
        ("current", [dep.certificate_pem]),
        ("retired", dep.retired_certificate_pems),
    ):
        for pem in pems:
            try:
                kids.setdefault(jwk_thumbprint(load_certificates(pem)[0].public_key()), status)
            except (CryptoError, IndexError):
                continue
    return kids
