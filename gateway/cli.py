"""The ``gateway`` command; the only place that maps errors to exit codes.

Exit status: 0 when what was asked holds; 1 when it does not (a refused exchange, a signature
that does not verify); 2 for a usage or configuration problem. Messages name the cause.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
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
from gateway.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"gateway: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from gateway.devinit import GATEWAY_ID, init_deployment

    target = Path(args.dir)
    try:
        owners = init_deployment(target, port=args.port)
    except FileExistsError as e:
        _err(str(e))
        return EXIT_USAGE
    print(f"Development deployment written to {target} (gateway {GATEWAY_ID}).")
    print(f"  config:        {target / 'gateway.toml'}")
    print(f"  trust anchor:  {target / 'pki/ca.crt'}  (DEVELOPMENT CA: not for production)")
    print(f"  participants:  {', '.join(owners)} (keys, certificates, dev tokens in participants/)")
    print(f"  examples:      {target / 'examples'}")
    print(f"Next: cd {target} && gateway serve")
    return EXIT_OK


# ---------------------------------------------------------------- serve
def _load(args: argparse.Namespace) -> config_mod.Deployment:
    return config_mod.load(config_mod.find_config(args.config))


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _run_worker(dep: config_mod.Deployment, sock: socket.socket, worker: int) -> None:
    """One worker process: its own event loop, app, audit appender; the shared socket."""
    from aiohttp import web

    from gateway.http.app import create_app, server_ssl_context
    from gateway.logging import configure

    configure(dep.config.logging.level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app = create_app(dep)
    web.run_app(
        app,
        sock=sock,
        ssl_context=server_ssl_context(dep),
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=10,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.http.app import create_app, prepare_stores, server_ssl_context

    dep = _load(args)
    g = dep.config.gateway
    host = args.host or g.host
    port = g.port if args.port is None else args.port
    workers = args.workers or g.workers
    # Build once in the parent so a bad config (schema, key, connector) fails before any fork.
    create_app(dep)
    server_ssl_context(dep)
    prepare_stores(dep)
    sock = _bind(host, port, reuse_port=workers > 1)
    actual_port = sock.getsockname()[1]
    scheme = "https" if g.tls else "http"
    base = f"{scheme}://{host}:{actual_port}"
    print(f"gateway {g.id} listening on {base} with {workers} worker(s)", flush=True)
    print(
        "  first payload: gateway send citizen-lookup.v1 examples/citizen-lookup.v1.json"
        f" --url {base}",
        flush=True,
    )
    if workers == 1:
        _run_worker(dep, sock, 0)
        return EXIT_OK
    return _supervise(dep, sock, workers)


def _supervise(dep: config_mod.Deployment, sock: socket.socket, workers: int) -> int:
    """Fork the workers; if one dies, stop the others and exit non-zero (let the init restart)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_worker, args=(dep, sock, i)) for i in range(workers)]
    for p in procs:
        p.start()
    sock.close()
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from multiprocessing.connection import wait

    wait([p.sentinel for p in procs])
    if not stopping:
        _err("a worker exited unexpectedly; stopping the others")
        stop(signal.SIGTERM, None)
    for p in procs:
        p.join(timeout=30)
    return EXIT_OK if stopping and all(p.exitcode == 0 for p in procs) else EXIT_FAILED


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
    from gateway.crypto import jws
    from gateway.crypto.keys import load_certificates, load_private_key
    from gateway.models import rfc3339
    from gateway.strictjson import JsonError, loads

    dep = _load(args)
    g = dep.config.gateway
    sender = args.as_ or _default_sender(dep)
    try:
        payload = loads(Path(args.file).read_bytes())
    except OSError as e:
        _err(f"cannot read {args.file}: {e.strerror}")
        return EXIT_USAGE
    except JsonError as e:
        _err(f"{args.file} is not valid JSON: {e}")
        return EXIT_USAGE
    key_pem, cert_pem = _participant_files(dep, sender)
    key = load_private_key(key_pem)
    chain = load_certificates(cert_pem)
    request = {
        "id": str(uuid.uuid4()),
        "sender": sender,
        "service": args.service,
        "created": rfc3339(datetime.now(UTC)).replace(".000Z", "Z"),
        "payload": payload,
    }
    body = jws.serialize(jws.sign(request, key, chain, typ="request+jws"))
    base = args.url or f"{'https' if g.tls else 'http'}://{g.host}:{g.port}"
    url = f"{base.rstrip('/')}/v1/exchange/{args.service}"
    headers = {"Content-Type": "application/jose+json", "Accept": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    ctx = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(dep.resolve(g.trust_anchors[0])))
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=args.timeout, context=ctx) as resp:  # noqa: S310
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        _err(f"cannot reach {url}: {getattr(e, 'reason', e)}")
        return EXIT_FAILED
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        _err(f"HTTP {status} with a non-JSON body")
        return EXIT_FAILED
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    if not 200 <= status < 300:
        _err(f"HTTP {status}: {doc.get('title', '')}: {doc.get('detail', '')}")
        return EXIT_FAILED
    out = Path(args.receipt or f"receipt-{doc.get('exchange_id', 'unknown')}.json")
    out.write_bytes(orjson.dumps(doc["receipt"], option=orjson.OPT_INDENT_2) + b"\n")
    print(f"receipt saved to {out}", file=sys.stderr)
    return EXIT_OK


def _default_sender(dep: config_mod.Deployment) -> str:
    for p in dep.config.participants:
        if p.tier == "unit":
            return p.id
    return dep.config.participants[0].id


# ---------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
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
    ok, lines = describe_verification(
        raw, dep.trust_anchor_pems, now=datetime.now(UTC), payloads=payloads
    )
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Data-sharing integration gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="write a development deployment into DIR")
    s.add_argument("dir")
    s.add_argument("--port", type=int, default=8080)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("send", help="sign FILE as a unit system and send it to SERVICE")
    s.add_argument("service")
    s.add_argument("file")
    s.add_argument("--config")
    s.add_argument("--as", dest="as_", metavar="PARTICIPANT")
    s.add_argument("--url")
    s.add_argument("--receipt")
    s.add_argument("--idempotency-key")
    s.add_argument("--timeout", type=float, default=30.0)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser("verify", help="check a receipt, envelope or signed request offline")
    s.add_argument("file")
    s.add_argument("--request", help="the request payload (JSON) a receipt should bind")
    s.add_argument("--response", help="the response payload (JSON) a receipt should bind")
    s.add_argument("--config")
    s.set_defaults(func=cmd_verify)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
