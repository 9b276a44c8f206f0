"""The ``gateway`` command; the only place that maps errors to exit codes.

Exit status: 0 when what was asked holds; 1 when it does not (a refused exchange, a signature
that does not verify); 2 for a usage or configuration problem. Messages name the cause.

This module is the parser, :func:`main`, the exit codes and the helpers every command shares,
plus the small ``init``. The other commands live beside it, one module per group:
:mod:`gateway.cli_serve` (serve), :mod:`gateway.cli_exchange` (send, verify),
:mod:`gateway.cli_audit` (audit verify, audit tail) and :mod:`gateway.cli_keys` (keys rotate,
keys revoke).
They import the helpers from here; :func:`build_parser` imports them when it runs. (Under
``python -m gateway.cli`` this file is loaded twice, as ``__main__`` and as ``gateway.cli`` for
those imports; it keeps no state, so the two copies cannot disagree.)
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeAlias, cast

from gateway import config as config_mod
from gateway.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"gateway: {msg}", file=sys.stderr)


def _stdout_closed() -> int:
    """Standard output's reader went away (``gateway audit tail | head -5``): stop quietly.

    stdout is pointed at /dev/null, so the interpreter's last flush of what is buffered cannot
    raise again at exit; the status is 1, since not all was printed.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILED


def _load(args: argparse.Namespace) -> config_mod.Deployment:
    return config_mod.load(config_mod.find_config(args.config))


def _checkpoint_verifiers(dep: config_mod.Deployment | None, vkeys: list[str]) -> tuple[Any, ...]:
    """Note verifiers: ``--vkey`` values plus the one derived from the config's checkpoint key."""
    from gateway.audit.checkpoint import NoteError
    from gateway.crypto.keys import CryptoError
    from gateway.verify import checkpoint_verifiers

    origin = dep.config.audit.origin if dep else None
    pem = dep.checkpoint_key_pem if dep else None
    try:
        return checkpoint_verifiers(origin, pem, vkeys)
    except NoteError as e:
        raise ValueError(e.reason) from None
    except CryptoError as e:
        raise ValueError(f"audit.checkpoint_key: {e.reason}") from None


def _http_base(tls: bool, host: str, port: int) -> str:
    """The base URL of a listen address. An IPv6 literal goes in brackets (RFC 3986 3.2.2):
    unbracketed, ``http://::1:8080`` is no URL, and ``gateway send`` could not reach a gateway
    configured with ``host = "::1"``."""
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def _gateway_url(dep: config_mod.Deployment, base_url: str | None, path: str) -> str:
    """``path`` on the gateway: at ``--url`` if given, else at the configured address."""
    g = dep.config.gateway
    base = base_url or _http_base(g.tls is not None, g.host, g.port)
    return f"{base.rstrip('/')}{path}"


def _tls_context(dep: config_mod.Deployment, url: str) -> ssl.SSLContext | None:
    """For https, trust the deployment's first anchor (the development CA after ``init``)."""
    if not url.startswith("https:"):
        return None
    cafile = dep.resolve(dep.config.gateway.trust_anchors[0])
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except ssl.SSLError as e:
        raise ConfigError(
            str(dep.path), "gateway.trust_anchors[0]", f"{cafile} is no usable CA: {e}"
        ) from None


def _base_url(value: str) -> str:
    """``--url``: an http(s) base URL. urllib would also open ftp: and file: URLs (an ftp URL
    at a gateway waits out the timeout and says only "timed out"), and a bare host:port is
    taken for a scheme."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// base URL")
    return value


def _seconds(value: str) -> float:
    """``--timeout``: a positive number of seconds (0 or less made urllib fail obscurely)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _as_gateway_field(name: str) -> Callable[[str], Any]:
    """The argparse type of the flag that overrides ``gateway.<name>`` (``--host``, ``--port``,
    ``--workers``): the config field's own rules check it (its type and range; a host must
    not be empty, which would listen on every interface), so the flag and the file cannot
    disagree."""
    from pydantic import TypeAdapter, ValidationError

    field = config_mod.GatewaySection.model_fields[name]
    adapter: TypeAdapter[Any] = TypeAdapter(
        cast(Any, Annotated)[(field.annotation, *field.metadata)]
    )

    def check(value: str) -> Any:
        try:
            return adapter.validate_strings(value)
        except ValidationError as e:
            problem = e.errors()[0]["msg"]
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a valid gateway.{name}: {problem}"
            ) from None

    return check


# ---------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from gateway.devinit import GATEWAY_ID, init_deployment

    target = Path(args.dir)
    try:
        owners = init_deployment(target, port=args.port)
    except FileExistsError as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:  # e.g. a parent that is a file, or no permission to write there
        _err(f"cannot write the deployment into {target}: {e.strerror or e}")
        return EXIT_USAGE
    print(f"Development deployment written to {target} (gateway {GATEWAY_ID}).")
    print(f"  config:        {target / 'gateway.toml'}")
    print(f"  trust anchor:  {target / 'pki/ca.crt'}  (DEVELOPMENT CA: not for production)")
    print(f"  participants:  {', '.join(owners)} (keys, certificates, dev tokens in participants/)")
    print(f"  examples:      {target / 'examples'}")
    print(f"Next: cd {target} && gateway serve")
    return EXIT_OK


# ---------------------------------------------------------------- main
# The command modules are imported inside the ``_add_*`` helpers, not at the top: they import the
# helpers above from this one.
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_init(sub: _Subparsers) -> None:
    s = sub.add_parser("init", help="write a development deployment into DIR")
    s.add_argument("dir")
    s.add_argument("--port", type=_as_gateway_field("port"), default=8080)
    s.set_defaults(func=cmd_init)


def _add_serve(sub: _Subparsers) -> None:
    from gateway.cli_serve import cmd_serve

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config")
    s.add_argument("--host", type=_as_gateway_field("host"))
    s.add_argument("--port", type=_as_gateway_field("port"))
    s.add_argument("--workers", type=_as_gateway_field("workers"))
    s.set_defaults(func=cmd_serve)


def _add_exchange(sub: _Subparsers) -> None:
    """``send`` and ``verify``: a participant's side of an exchange."""
    from gateway.cli_exchange import cmd_send, cmd_verify

    s = sub.add_parser("send", help="sign FILE as a unit system and send it to SERVICE")
    s.add_argument("service")
    s.add_argument("file")
    s.add_argument("--config")
    s.add_argument("--as", dest="as_", metavar="PARTICIPANT")
    s.add_argument("--url", type=_base_url)
    s.add_argument("--receipt")
    s.add_argument("--idempotency-key")
    s.add_argument("--timeout", type=_seconds, default=30.0)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser(
        "verify",
        help="check any artifact offline: receipt, envelope, signed request, checkpoint, "
        "inclusion proof bundle",
    )
    s.add_argument("file")
    s.add_argument("--request", help="the request payload (JSON) a receipt should bind")
    s.add_argument("--response", help="the response payload (JSON) a receipt should bind")
    s.add_argument("--config")
    s.add_argument("--vkey", action="append", help="checkpoint verifier key (note vkey)")
    s.set_defaults(func=cmd_verify)


def _add_audit(sub: _Subparsers) -> None:
    from gateway.cli_audit import cmd_audit_tail, cmd_audit_verify

    s = sub.add_parser("audit", help="the audit log")
    audit_sub = s.add_subparsers(dest="audit_command", required=True)
    a = audit_sub.add_parser(
        "verify", help="check the whole audit log offline: records, tree, head, checkpoints"
    )
    a.add_argument("--config")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--db", help="the SQLite audit database (default: the config's audit.path)")
    src.add_argument("--export", help="a JSON Lines export (GET /v1/audit/export) of the log")
    a.add_argument("--checkpoints", help="with --export: a checkpoint note file or directory")
    a.add_argument("--trusted", action="append", help="a checkpoint note saved earlier")
    a.add_argument("--vkey", action="append", help="checkpoint verifier key (note vkey)")
    a.add_argument(
        "--no-published",
        action="store_true",
        help="with a database: ignore the published file (audit.published)",
    )
    a.set_defaults(func=cmd_audit_verify)
    t = audit_sub.add_parser("tail", help="follow the audit log live (GET /v1/audit/stream)")
    t.add_argument("--config")
    t.add_argument(
        "--url", type=_base_url, help="the gateway's base URL (default: the configured address)"
    )
    t.add_argument("--token-file", help="a file holding an operator/auditor token")
    t.add_argument("--from", dest="from_index", type=int, help="start at this index")
    t.add_argument("--max", type=int, help="stop after this many records")
    t.set_defaults(func=cmd_audit_tail)


def _add_keys(sub: _Subparsers) -> None:
    from gateway.cli_keys import cmd_keys_revoke, cmd_keys_rotate
    from gateway.crypto.devpki import CRL_REASONS

    s = sub.add_parser("keys", help="the gateway's signing keys")
    keys_sub = s.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("rotate", help="new signing key and certificate; the old one retires")
    k.add_argument("--config")
    k.add_argument("--key", help="install: the key made by an earlier rotate (production CA)")
    k.add_argument("--certificate", help="install: the certificate your CA issued for --key")
    k.set_defaults(func=cmd_keys_rotate)
    r = keys_sub.add_parser(
        "revoke",
        help="development CA: add PARTICIPANT's certificate to the CRL (none: renew the CRL); "
        "restart the gateway to apply",
    )
    r.add_argument("participant", nargs="?")
    r.add_argument("--config")
    r.add_argument("--reason", choices=CRL_REASONS, help="RFC 5280 reason code")
    r.set_defaults(func=cmd_keys_revoke)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Data-sharing integration gateway")
    sub = p.add_subparsers(dest="command", required=True)
    _add_init(sub)
    _add_serve(sub)
    _add_exchange(sub)
    _add_audit(sub)
    _add_keys(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        _err(f"configuration error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:  # a traceback before; the command's work is done or stopped
        return _stdout_closed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
